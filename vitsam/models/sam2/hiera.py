"""Hiera (Ryali et al., 2023), SAM 2's hierarchical image trunk: images (B, S, S, 3) -> one feature map per stage.

A 7×7 stride-4 conv embeds the image into a (S/4, S/4) grid; a position embedding is added (a small background
table resized bicubically to the grid plus a window-sized table tiled over it: "window position embeddings",
Bolya et al., 2023). Then `sum(stages)` pre-norm blocks; the first block of each later stage doubles the width
and the heads and halves the grid by max-pooling its queries 2×2 (the keys and values keep the full grid, the
residual is projected and pooled alike). Blocks attend inside non-overlapping windows ("mask units"), except the
global blocks listed in `global_att_blocks`. The output of every stage's last block is returned, highest
resolution first: strides 4, 8, 16, 32.

Parameter names mirror the official `sam2.modeling.backbones.hieradet.Hiera` (`patch_embed`, `pos_embed`,
`pos_embed_window`, `blocks_{i}` with `norm1`, `attn/qkv` (fused, as the official Linear), `attn/proj`, `norm2`,
`mlp`, and `proj` where the width changes), so `vitsam.convert.sam2.hiera_key_map` is a plain renaming.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitsam.models.sam.image_encoder import window_partition, window_unpartition
from vitsam.models.sam.interpolate import resize_cubic
from vitsam.nn import Mlp, chunked_attention, dot_product_attention, query_chunk_size
from vitsam.nn.encoder import residual_branch


def max_pool(x: jnp.ndarray, stride: Sequence[int] | None) -> jnp.ndarray:
    """(B, H, W, C) -> (B, H/s, W/s, C) by the max over s×s cells (odd remainders dropped); x when no stride."""
    if not stride:
        return x
    # A max over reshaped cells, not a reduce-window: the same values, and its gradient on XLA:CPU is ~6× faster
    # than the window's select-and-scatter (a (32, 32, 32, 64) pool, 2-core EPYC, 2026-12-07). Equal maxima in a
    # cell share the gradient here, where the window gives it to the first.
    b, h, w, c = x.shape
    sh, sw = stride
    x = x[:, : h // sh * sh, : w // sw * sw]
    return x.reshape(b, h // sh, sh, w // sw, sw, c).max(axis=(2, 4))


class MultiScaleAttention(nn.Module):
    """Self-attention over a grid, queries optionally pooled: (B, H, W, D) -> (B, H/s, W/s, dim_out).

    `query_chunk` > 0 attends that many queries at a time, one image and one head at a time
    (`chunked_attention`; the same result); None chooses (`query_chunk_size`: on CPU for the global blocks at
    1024 px, whose logits would spill every cache), 0 attends all at once.
    """

    dim_out: int
    num_heads: int
    q_stride: Sequence[int] | None = None
    attention_impl: str = "einsum"
    query_chunk: int | None = None
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, _ = x.shape
        heads, head_dim = self.num_heads, self.dim_out // self.num_heads
        qkv = nn.Dense(3 * self.dim_out, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh)
        if self.q_stride:
            q = max_pool(q.reshape(b, h, w, self.dim_out), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, heads, head_dim)
        chunk = self.query_chunk
        if chunk is None:
            chunk = query_chunk_size(heads, h * w, k.shape[1], jax.default_backend())
        if chunk > 0:
            out = chunked_attention(q, k, v, min(chunk, h * w))
        else:
            out = dot_product_attention(q, k, v, implementation=self.attention_impl)
        out = out.reshape(b, h, w, self.dim_out)
        return nn.Dense(self.dim_out, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm block, windowed (window_size > 0) or global: (B, H, W, D) -> (B, H/s, W/s, dim_out).

    With a `q_stride` s, queries are pooled inside each window (a window of side w becomes w/s), and the
    residual is the pooled projection `proj` of the normalized input.
    """

    dim_out: int
    num_heads: int
    window_size: int = 0
    q_stride: Sequence[int] | None = None
    mlp_ratio: float = 4.0
    attention_impl: str = "einsum"
    drop_path_rate: float = 0.0
    deterministic: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def _residual(self, branch: jnp.ndarray) -> jnp.ndarray:
        return residual_branch(self, branch, self.deterministic, self.drop_path_rate)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: nn.LayerNorm(1e-6, use_fast_variance=False, name=name, **kw)  # noqa: E731
        shortcut = x
        x = norm("norm1")(x)
        if x.shape[-1] != self.dim_out:
            shortcut = max_pool(nn.Dense(self.dim_out, name="proj", **kw)(x), self.q_stride)

        window = self.window_size
        if window > 0:
            x, (hp, wp) = window_partition(x, window)
        x = MultiScaleAttention(self.dim_out, self.num_heads, self.q_stride, self.attention_impl, name="attn",
                                **kw)(x)
        if window > 0:
            pooled = window // self.q_stride[0] if self.q_stride else window
            # The windows' grid is unchanged by the pooling; each window just shrinks.
            padded = (hp // window * pooled, wp // window * pooled)
            x = window_unpartition(x, pooled, padded, shortcut.shape[1:3])
        x = shortcut + self._residual(x)
        mlp = Mlp(int(self.dim_out * self.mlp_ratio), activation="gelu", name="mlp", **kw)
        return x + self._residual(mlp(norm("norm2")(x)))


class BlockSpec(NamedTuple):
    """One block's shape: input and output width, heads, window side (0: global), query stride (None: none)."""
    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_stride: tuple[int, int] | None


class Hiera(nn.Module):
    """Hiera trunk: normalized images (B, S, S, 3) -> [(B, S/4, S/4, C_0), (B, S/8, S/8, C_1), ...], one per stage,
    highest resolution first (the official `Hiera.forward` outputs, NHWC instead of NCHW).

    Fields are the official constructor's. `window_spec[j]` is the window side of stage j's blocks, except that
    a stage's first block still uses the previous stage's side (before its query pooling), as the official code
    does. The patch grid S/4 must be a multiple of `window_spec[0]` (the tiled window position embedding), and
    S a multiple of 32 for the default three poolings. `drop_path_rate` is the stochastic-depth rate of the last
    block, rising linearly from 0 at the first; it acts when called with deterministic=False (rng "dropout").
    `remat` recomputes block activations in the backward pass.
    """

    embed_dim: int = 96
    num_heads: int = 1
    stages: Sequence[int] = (2, 3, 16, 3)
    global_att_blocks: Sequence[int] = (12, 16, 20)
    window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14)
    window_spec: Sequence[int] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: Sequence[int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    drop_path_rate: float = 0.0
    attention_impl: str = "einsum"
    remat: bool = False
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @property
    def stage_ends(self) -> list[int]:
        """Index of each stage's last block."""
        ends, total = [], 0
        for n in self.stages:
            total += n
            ends.append(total - 1)
        return ends

    def block_specs(self) -> list[BlockSpec]:
        """Every block's shape, in order."""
        if len(self.stages) != len(self.window_spec):
            raise ValueError(f"Hiera: {len(self.stages)} stages but {len(self.window_spec)} window sizes")
        ends = self.stage_ends
        if not 0 <= self.q_pool <= len(ends) - 1:
            raise ValueError(f"Hiera: q_pool must be in [0, {len(ends) - 1}], got {self.q_pool}")
        pool_blocks = [e + 1 for e in ends[:-1]][:self.q_pool]
        dim, heads, stage = self.embed_dim, self.num_heads, 0
        specs = []
        for i in range(sum(self.stages)):
            window = 0 if i in tuple(self.global_att_blocks) else self.window_spec[stage]
            dim_out = dim
            if i - 1 in ends:  # first block of a new stage; its window is still the previous stage's
                dim_out, heads, stage = int(dim * self.dim_mul), int(heads * self.head_mul), stage + 1
            specs.append(BlockSpec(dim, dim_out, heads, window, tuple(self.q_stride) if i in pool_blocks else None))
            dim = dim_out
        return specs

    @property
    def channels(self) -> list[int]:
        """Widths of the outputs, highest resolution first (the official `channel_list` reversed)."""
        specs = self.block_specs()
        return [specs[i].dim_out for i in self.stage_ends]

    @nn.compact
    def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> list[jnp.ndarray]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Hiera expects NHWC images (B, S, S, 3), got shape {images.shape}")
        specs = self.block_specs()
        dtype = self.dtype or jnp.float32
        kw = dict(dtype=dtype, param_dtype=self.param_dtype)
        x = nn.Conv(self.embed_dim, (7, 7), strides=(4, 4), padding=((3, 3), (3, 3)), name="patch_embed",
                    **kw)(images.astype(dtype))  # (B, h, w, C)
        h, w = x.shape[1:3]
        win = self.window_spec[0]
        if h % win or w % win:
            raise ValueError(f"Hiera: the patch grid {h}x{w} (image / 4) must be a multiple of the first window "
                             f"size {win}")

        # Both tables start at zero, as the official ones.
        bkg = self.param("pos_embed", nn.initializers.zeros,
                         (1, *self.window_pos_embed_bkg_spatial_size, self.embed_dim), self.param_dtype)
        tile = self.param("pos_embed_window", nn.initializers.zeros, (1, win, win, self.embed_dim),
                          self.param_dtype)
        pos = resize_cubic(resize_cubic(bkg, h, axis=1), w, axis=2) + jnp.tile(tile, (1, h // win, w // win, 1))
        x = x + pos.astype(dtype)

        block_cls = nn.remat(MultiScaleBlock) if self.remat else MultiScaleBlock
        depth = len(specs)
        outputs = []
        for i, spec in enumerate(specs):
            x = block_cls(spec.dim_out, spec.num_heads, spec.window_size, spec.q_stride,
                          attention_impl=self.attention_impl,
                          drop_path_rate=self.drop_path_rate * i / max(depth - 1, 1),
                          deterministic=deterministic, name=f"blocks_{i}", **kw)(x)
            if i in self.stage_ends:
                outputs.append(x)
        return outputs


# The SAM 2.1 trunks (configs/sam2.1/sam2.1_hiera_*.yaml); the other fields keep the defaults above.
HIERA_VARIANTS: dict[str, dict] = {
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
               window_pos_embed_bkg_spatial_size=(14, 14), window_spec=(8, 4, 14, 7)),
    "l": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}


def hiera_variant(name: str, **overrides) -> Hiera:
    """A SAM 2.1 trunk by name ("t", "s", "b+", "l"); `overrides` replace any field."""
    if name not in HIERA_VARIANTS:
        raise ValueError(f"unknown Hiera variant {name!r}; valid: {', '.join(HIERA_VARIANTS)}")
    return Hiera(**dict(HIERA_VARIANTS[name], **overrides))


__all__ = ["HIERA_VARIANTS", "BlockSpec", "Hiera", "MultiScaleAttention", "MultiScaleBlock", "hiera_variant",
           "max_pool"]
