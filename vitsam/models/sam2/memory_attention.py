"""SAM 2's memory attention: the current frame's features attend to themselves and to the memory bank.

Each of the `num_layers` layers (pre-norm, LayerNorm eps 1e-5):
  1. self-attention of the frame's h*w tokens, with rotary position encoding (RoPE) on queries and keys,
  2. cross-attention to the memory (keys/values of width `kv_dim`, 64 in SAM 2), with RoPE on the queries and on
     the memory frames' keys, not on the object-pointer tokens at the end of the memory,
  3. MLP (ReLU),
each added to the residual stream; a final LayerNorm follows. The sam2.1 flags: positions are added to the
memory keys only (`pos_enc_at_cross_attn_keys`), and 0.1 x the frame's positions to its features at the input.

The memory is laid out as the tracker builds it: `F` frames of the same h*w grid (frame-major, row-major
within a frame), then `num_obj_ptr_tokens` object-pointer tokens (each 256-dim pointer split by the tracker into
4 tokens of 64). Every memory frame is rotated like the queries, so RoPE encodes only the 2-D offset within the
grid; frames are told apart by their (temporal) `memory_pos`.

Dropout (0.1 in the official training config) is omitted: these modules are for inference and fine-tuning
without it.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitsam.nn import Mlp, MultiHeadAttention


def axial_rope_angles(dim: int, height: int, width: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the 2-D axial rotary angles, each (height * width, dim // 2), numpy float64.

    Channel pair i (channels 2i, 2i+1) of token t = y * width + x turns by x·f_i for i < dim/4 and by
    y·f_{i - dim/4} after, with f_j = theta^(-4j / dim).
    """
    if dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {dim}")
    freqs = theta ** (-np.arange(0, dim, 4, dtype=np.float64) / dim)  # (dim // 4,)
    t = np.arange(height * width)
    x, y = t % width, t // width
    angles = np.concatenate([np.outer(x, freqs), np.outer(y, freqs)], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rope(x: jnp.ndarray, cos: np.ndarray, sin: np.ndarray) -> jnp.ndarray:
    """Rotate each channel pair (2i, 2i+1) of x (B, N, H, Dh) by the angles of its token: cos, sin (N, Dh // 2).

    Computed in float32 at least (as the official code), returned in x's dtype.
    """
    cos = jnp.asarray(cos, jnp.float32)[:, None, :]  # (N, 1, Dh/2): broadcast over batch and heads
    sin = jnp.asarray(sin, jnp.float32)[:, None, :]
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def rope_queries_keys(q: jnp.ndarray, k: jnp.ndarray, *, height: int, width: int, num_k_exclude: int = 0,
                      theta: float = 10000.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Axial RoPE on queries (B, h*w, H, Dh) and keys (B, S, H, Dh).

    The keys are `F` = (S - num_k_exclude) / (h*w) frames of the queries' grid, each rotated like the queries
    (F = 1 in self-attention); the last `num_k_exclude` keys (object pointers) are left as they are.
    """
    hw = height * width
    if q.shape[1] != hw:
        raise ValueError(f"RoPE on a {height}x{width} grid needs {hw} queries, got {q.shape[1]}")
    num_rope = k.shape[1] - num_k_exclude
    if num_rope < 0 or num_rope % hw:
        raise ValueError(f"the {k.shape[1]} keys less {num_k_exclude} unrotated ones are not whole frames of "
                         f"{hw} tokens")
    cos, sin = axial_rope_angles(q.shape[-1], height, width, theta)
    frames = num_rope // hw
    k_rope = apply_rope(k[:, :num_rope], np.tile(cos, (frames, 1)), np.tile(sin, (frames, 1)))
    return apply_rope(q, cos, sin), jnp.concatenate([k_rope, k[:, num_rope:]], axis=1)


class MemoryAttentionLayer(nn.Module):
    """One layer: x (B, HW, D) on an h x w grid, memory (B, S, kv_dim) -> (B, HW, D).

    Parameters: `self_attn`, `cross_attn_image` (MultiHeadAttention, query/key/value kernels (D or kv_dim, H, Dh),
    out (H, Dh, D)), `mlp` (Dense_0, Dense_1), `norm1`..`norm3`.
    """

    d_model: int = 256
    kv_dim: int = 64
    num_heads: int = 1
    mlp_dim: int = 2048
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_queries: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attention_impl: str = "einsum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, memory, *, grid: tuple[int, int], pos=None, memory_pos=None, num_k_exclude_rope: int = 0,
                 memory_mask=None):
        """x, pos (B, HW, D); memory, memory_pos (B, S, kv_dim); grid (h, w); memory_mask (B, S) bool or None."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = lambda name, **o: MultiHeadAttention(  # noqa: E731
            self.num_heads, qkv_features=self.d_model, implementation=self.attention_impl, name=name, **o, **kw)
        norm = lambda name: nn.LayerNorm(self.norm_eps, use_fast_variance=False, name=name, **kw)  # noqa: E731
        rope = partial(rope_queries_keys, height=grid[0], width=grid[1], theta=self.rope_theta)

        h = norm("norm1")(x)
        q = h + pos if self.pos_enc_at_attn and pos is not None else h
        x = x + attn("self_attn")(q, q, inputs_v=h, qk_transform=rope)

        h = norm("norm2")(x)
        q = h + pos if self.pos_enc_at_cross_attn_queries and pos is not None else h
        k = memory + memory_pos if self.pos_enc_at_cross_attn_keys and memory_pos is not None else memory
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        # The memory (kv_dim wide) is weighed before its value projection: a quarter of the work at 64 / 256.
        x = x + attn("cross_attn_image", late_values=True)(q, k, inputs_v=memory, mask=mask,
                                         qk_transform=partial(rope, num_k_exclude=num_k_exclude_rope))

        mlp = Mlp(self.mlp_dim, activation="relu", name="mlp", **kw)
        return x + mlp(norm("norm3")(x))


_LAYER_FIELDS = ("d_model", "kv_dim", "num_heads", "mlp_dim", "pos_enc_at_attn", "pos_enc_at_cross_attn_queries",
                 "pos_enc_at_cross_attn_keys", "rope_theta", "norm_eps", "attention_impl", "dtype", "param_dtype")


class MemoryAttention(nn.Module):
    """curr (B, HW, D) conditioned on the memory (B, S, kv_dim) -> (B, HW, D); the sam2.1 configuration.

    Parameters: `layers_{i}` (MemoryAttentionLayer), `norm`.
    """

    d_model: int = 256
    kv_dim: int = 64
    num_layers: int = 4
    num_heads: int = 1
    mlp_dim: int = 2048
    pos_enc_at_input: bool = True
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_queries: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attention_impl: str = "einsum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens: int = 0, memory_mask=None, *,
                 grid: tuple[int, int] | None = None):
        """Fuse the current frame with its memory bank.

        Args:
          curr, curr_pos: (B, HW, D) the frame's features and position encoding (curr_pos may be None).
          memory, memory_pos: (B, S, kv_dim), S = F·HW + num_obj_ptr_tokens: F memory frames of the same grid,
            then the object-pointer tokens (not rotated). A batch of 1 is shared by the B frames.
          num_obj_ptr_tokens: a static int.
          memory_mask: (B, S) bool, True for valid memory tokens, or None (all valid). Padding must be whole
            frames of HW tokens, or pointer slots among the last num_obj_ptr_tokens; with at least one valid
            token per row, masked tokens do not change the result.
          grid: (h, w) of the frame; default square, h = w = sqrt(HW) (the official code assumes square grids).

        Returns:
          (B, HW, D).
        """
        if grid is None:
            side = math.isqrt(curr.shape[1])
            if side * side != curr.shape[1]:
                raise ValueError(f"{curr.shape[1]} tokens are not a square grid: pass grid=(h, w)")
            grid = (side, side)
        x = curr + 0.1 * curr_pos if self.pos_enc_at_input and curr_pos is not None else curr
        for i in range(self.num_layers):
            x = MemoryAttentionLayer(**{f: getattr(self, f) for f in _LAYER_FIELDS}, name=f"layers_{i}")(
                x, memory, grid=grid, pos=curr_pos, memory_pos=memory_pos, num_k_exclude_rope=num_obj_ptr_tokens,
                memory_mask=memory_mask)
        return nn.LayerNorm(self.norm_eps, use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="norm")(x)
