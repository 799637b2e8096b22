"""SAM's image encoder: a ViT with windowed attention and decomposed relative positions, and a conv neck.

images (B, S, S, 3) -> 16-px patches (B, S/16, S/16, D) + learned absolute positions -> blocks -> neck
-> (B, S/16, S/16, out_dim). Most blocks attend inside 14×14 windows (the 64×64 grid padded to 70×70);
the blocks listed in `global_attn_indexes` attend over the whole grid. Every attention adds the decomposed
relative-position term of MViTv2: logits[q, k] += q · R_h[q_row − k_row] + q · R_w[q_col − k_col].

Parameter names mirror the official `segment_anything` modules (`patch_embed`, `pos_embed`, `blocks_{i}`
with `norm1`, `attn/qkv`, `attn/proj`, `attn/rel_pos_h`, `attn/rel_pos_w`, `norm2`, `mlp`; `neck_conv1`,
`neck_norm1`, `neck_conv2`, `neck_norm2`), so the importer is a plain renaming.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitsam.models.sam.interpolate import resize_linear
from vitsam.nn import Mlp, PatchEmbedding, chunked_attention, dot_product_attention, query_chunk_size
from vitsam.nn.encoder import residual_branch


def resize_linear_1d(table: jnp.ndarray, size: int) -> jnp.ndarray:
    """Resample rows of `table` (L, C) to (size, C) by linear interpolation with half-pixel centres.

    PyTorch's `F.interpolate(mode="linear", align_corners=False)`, which the official code uses to resize
    relative-position tables, with its weights reproduced exactly (`interpolate.linear_taps`, fused rounding).
    """
    return resize_linear(table, size, axis=0, fused=True)


def relative_position_table(rel_pos: jnp.ndarray, size: int) -> jnp.ndarray:
    """R[q, k] = rel_pos[q − k + size − 1] for a query and key axis of equal `size`: (size, size, C).

    A table of another length than 2·size − 1 is first resized linearly, as the official code does.
    """
    rel_pos = resize_linear_1d(rel_pos, 2 * size - 1)
    idx = jnp.arange(size)[:, None] - jnp.arange(size)[None, :] + (size - 1)
    return rel_pos[idx]


def window_partition(x: jnp.ndarray, window: int) -> tuple[jnp.ndarray, tuple[int, int]]:
    """(B, H, W, C) -> windows (B·nH·nW, window, window, C), zero-padding H and W up to multiples of window."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: jnp.ndarray, window: int, padded: tuple[int, int], size: tuple[int, int]) -> jnp.ndarray:
    """Inverse of `window_partition`: (B·nH·nW, window, window, C) -> (B, H, W, C), dropping the padding."""
    hp, wp = padded
    h, w = size
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, c)[:, :h, :w]


def default_query_rows(heads: int, grid: tuple[int, int], backend: str) -> int:
    """`RelPosAttention(query_rows=None)`'s choice for a (h, w) grid: `query_chunk_size` in whole grid rows
    (on CPU, when one image's fp32 logits pass `CHUNK_LOGITS_BYTES`, the most rows whose logits for one head
    stay within it; else 0, all at once: GPUs and TPUs have fused attention kernels for that)."""
    h, w = grid
    return query_chunk_size(heads, h * w, h * w, backend, step=w) // w


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a 2-D grid with decomposed relative positions: (B, h, w, D) -> same.

    `rel_size` is the grid side the tables are sized for: (2·rel_size − 1, head_dim) each; a grid of
    another side resamples them linearly. `query_rows` > 0 attends one image and one head at a time, that many
    grid rows of queries at a time (`chunked_attention`), each chunk with its own slice of the relative term,
    so the (B, heads, T, T) logits and bias never exist whole; the result is the same. None chooses
    (`default_query_rows`): on CPU, when one image's logits pass `CHUNK_LOGITS_BYTES`, the most rows whose
    logits for one head stay within it (SAM's 4096-token global attention: 16 rows), else all at once.
    """

    num_heads: int
    rel_size: int
    attention_impl: str = "einsum"
    query_rows: int | None = 0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, dim = x.shape
        heads = self.num_heads
        head_dim = dim // heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh)

        table_len = 2 * self.rel_size - 1
        rel_pos_h = self.param("rel_pos_h", nn.initializers.zeros, (table_len, head_dim), self.param_dtype)
        rel_pos_w = self.param("rel_pos_w", nn.initializers.zeros, (table_len, head_dim), self.param_dtype)
        r_h = relative_position_table(rel_pos_h, h).astype(q.dtype)  # (h, h, Dh)
        r_w = relative_position_table(rel_pos_w, w).astype(q.dtype)  # (w, w, Dh)

        # The relative term uses the unscaled queries (as the official code does).
        q_grid = q.reshape(b, h, w, heads, head_dim)
        rows = self.query_rows
        if rows is None:
            rows = default_query_rows(heads, (h, w), jax.default_backend())
        if rows <= 0:
            rel_h = jnp.einsum("byxnc,ykc->bnyxk", q_grid, r_h, preferred_element_type=jnp.float32)
            rel_w = jnp.einsum("byxnc,xkc->bnyxk", q_grid, r_w, preferred_element_type=jnp.float32)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
            # Reshaped from q_grid (the same values as q): so written, XLA compiles SAM's training step as
            # before and the recipes' runs repeat bit for bit.
            out = dot_product_attention(q_grid.reshape(b, h * w, heads, head_dim), k, v, bias=bias,
                                        implementation=self.attention_impl)
        else:
            rows = min(rows, h)
            if h % rows:
                raise ValueError(f"query_rows {rows} does not divide the grid's {h} rows")

            def chunk_bias(q_chunk, i):
                """The relative term of queries (rows·w, Dh) in grid rows i·rows ... -> (rows·w, T)."""
                q_rows = q_chunk.reshape(rows, w, head_dim)
                r_h_rows = jax.lax.dynamic_slice_in_dim(r_h, i * rows, rows)
                rel_h = jnp.einsum("yxc,ykc->yxk", q_rows, r_h_rows, preferred_element_type=jnp.float32)
                rel_w = jnp.einsum("yxc,xkc->yxk", q_rows, r_w, preferred_element_type=jnp.float32)
                return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(rows * w, h * w)

            out = chunked_attention(q, k, v, rows * w, chunk_bias)
        out = out.reshape(b, h, w, dim)
        return nn.Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out)


class EncoderBlock(nn.Module):
    """Pre-norm block with windowed (window > 0) or global (window = 0) attention: (B, h, w, D) -> same.

    `drop_path_rate` > 0 with `deterministic` False drops each residual branch per example (rng "dropout").
    """

    num_heads: int
    mlp_dim: int
    window_size: int
    rel_size: int
    norm_eps: float = 1e-6
    attention_impl: str = "einsum"
    query_rows: int | None = 0
    drop_path_rate: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def _residual(self, branch: jnp.ndarray) -> jnp.ndarray:
        return residual_branch(self, branch, self.deterministic, self.drop_path_rate)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        norm = lambda name: nn.LayerNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                         use_fast_variance=False, name=name)
        h, w = x.shape[1], x.shape[2]
        y = norm("norm1")(x)
        if self.window_size > 0:
            y, padded = window_partition(y, self.window_size)
        y = RelPosAttention(self.num_heads, self.rel_size, self.attention_impl, self.query_rows, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="attn")(y)
        if self.window_size > 0:
            y = window_unpartition(y, self.window_size, padded, (h, w))
        x = x + self._residual(y)
        return x + self._residual(Mlp(self.mlp_dim, activation="gelu", dtype=self.dtype,
                                      param_dtype=self.param_dtype, name="mlp")(norm("norm2")(x)))


class ImageEncoder(nn.Module):
    """SAM's ViT image encoder: (B, S, S, 3) normalized, padded images -> (B, S/P, S/P, out_dim).

    `image_size` sizes the absolute position table ((1, S/P, S/P, D)) and the global blocks' relative
    tables; other input sizes (multiples of the patch) resample both (bicubic / linear).
    `remat` recomputes block activations in the backward pass. `drop_path` is the stochastic-depth rate of the
    last block, rising linearly from 0 at the first; it acts when called with deterministic=False.
    `global_query_rows` is the global blocks' `RelPosAttention.query_rows` (None: chosen by size and backend).
    """

    image_size: int = 1024
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_dim: int = 256
    window_size: int = 14
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    norm_eps: float = 1e-6
    attention_impl: str = "einsum"
    global_query_rows: int | None = None
    remat: bool = False
    drop_path: float = 0.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ImageEncoder expects NHWC images (B, S, S, 3), got shape {images.shape}")
        if self.dim % self.num_heads:
            raise ValueError(f"encoder dim {self.dim} is not divisible by the number of heads {self.num_heads}")
        dtype = self.dtype or jnp.float32
        x = PatchEmbedding(self.patch_size, self.dim, dtype=dtype, param_dtype=self.param_dtype,
                           name="patch_embed")(images.astype(dtype))  # (B, h, w, D)
        grid = self.image_size // self.patch_size
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, grid, grid, self.dim), self.param_dtype)
        b, h, w, _ = x.shape
        if (h, w) != (grid, grid):
            pos = jax.image.resize(pos, (1, h, w, self.dim), method="bicubic", antialias=False)
        x = x + pos.astype(dtype)

        block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.depth):
            is_global = i in tuple(self.global_attn_indexes)
            x = block_cls(
                num_heads=self.num_heads, mlp_dim=int(self.dim * self.mlp_ratio),
                window_size=0 if is_global else self.window_size,
                rel_size=grid if is_global else self.window_size, norm_eps=self.norm_eps,
                attention_impl=self.attention_impl, query_rows=self.global_query_rows if is_global else 0,
                drop_path_rate=self.drop_path * i / max(self.depth - 1, 1),
                deterministic=deterministic, dtype=dtype, param_dtype=self.param_dtype, name=f"blocks_{i}",
            )(x)

        conv = lambda k, name: nn.Conv(self.out_dim, (k, k), padding="SAME" if k > 1 else "VALID",  # noqa: E731
                                       use_bias=False, dtype=dtype, param_dtype=self.param_dtype, name=name)
        norm = lambda name: nn.LayerNorm(self.norm_eps, dtype=dtype, param_dtype=self.param_dtype,  # noqa: E731
                                         use_fast_variance=False, name=name)
        x = norm("neck_norm1")(conv(1, "neck_conv1")(x))
        return norm("neck_norm2")(conv(3, "neck_conv2")(x))
