"""Positional encodings: the lecture's sinusoidal formula, a 2-D version for patch grids, the normalized 2-D sine
encoding of DETR / SAM 2, learned tables.

The lecture fixes, for position t = 0 … T−1 and a token dimension D (even):

    p_t = [sin(ω_1 t), cos(ω_1 t), …, sin(ω_{D/2} t), cos(ω_{D/2} t)],   ω_k = 1 / 10000^(2k/D),  k = 1 … D/2

sin and cos are interleaved, and k starts at 1 as written (the original Transformer paper starts at 0).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoidal_encoding(num_tokens: int, dim: int, dtype=jnp.float32) -> jnp.ndarray:
    """The lecture's sinusoidal positional encoding P, shape (num_tokens, dim).

    Row t is p_t; every value lies in [−1, 1] and P·Pᵀ depends only on the offset between positions.
    Computed in float64 numpy, so it is a compile-time constant under jit.
    """
    num_tokens, dim = int(num_tokens), int(dim)
    if num_tokens < 1:
        raise ValueError(f"sinusoidal_encoding: num_tokens must be positive, got {num_tokens}")
    if dim < 2 or dim % 2:
        raise ValueError(f"sinusoidal_encoding: dim must be a positive even number (sin/cos pairs), got {dim}")
    k = np.arange(1, dim // 2 + 1, dtype=np.float64)
    omega = 1.0 / 10000.0 ** (2.0 * k / dim)  # (D/2,)
    angles = np.arange(num_tokens, dtype=np.float64)[:, None] * omega[None, :]  # (T, D/2)
    enc = np.empty((num_tokens, dim), dtype=np.float64)
    enc[:, 0::2] = np.sin(angles)
    enc[:, 1::2] = np.cos(angles)
    return jnp.asarray(enc, dtype=dtype)


def sinusoidal_encoding_2d(height: int, width: int, dim: int, dtype=jnp.float32) -> jnp.ndarray:
    """2-D sinusoidal encoding for a patch grid, shape (height, width, dim).

    The first dim/2 channels encode the row with the lecture's 1-D formula, the last dim/2 the column,
    so dim must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sinusoidal_encoding_2d: dim must be a multiple of 4 (sin/cos for rows and columns), got {dim}")
    rows = sinusoidal_encoding(height, dim // 2, dtype)  # (H, D/2)
    cols = sinusoidal_encoding(width, dim // 2, dtype)  # (W, D/2)
    return jnp.concatenate(
        [jnp.broadcast_to(rows[:, None, :], (height, width, dim // 2)),
         jnp.broadcast_to(cols[None, :, :], (height, width, dim // 2))],
        axis=-1,
    )



def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0,
                           dtype=jnp.float32) -> jnp.ndarray:
    """The 2-D sine encoding of DETR / SAM 2 (`PositionEmbeddingSine`, normalized, scale 2π): (height, width, dim).

    Row i and column j become y = 2π (i + 1) / (height + 1e-6) and x = 2π (j + 1) / (width + 1e-6). With
    F = dim/2 channels per axis and t_k = temperature^(2⌊k/2⌋ / F), the first F channels are
    [sin(y / t_0), cos(y / t_1), sin(y / t_2), cos(y / t_3), …] (t_{2m} = t_{2m+1}, so sin / cos pairs share
    a frequency) and the last F the same for x. dim must be a multiple of 4. Computed in float64 numpy, so it
    is a compile-time constant under jit.
    """
    height, width, dim = int(height), int(width), int(dim)
    if height < 1 or width < 1:
        raise ValueError(f"sine_position_encoding: height and width must be positive, got {height}x{width}")
    if dim < 4 or dim % 4:
        raise ValueError(f"sine_position_encoding: dim must be a positive multiple of 4 (sin/cos pairs for y and x), "
                         f"got {dim}")
    feats = dim // 2
    k = np.arange(feats)
    freq = float(temperature) ** (2.0 * (k // 2) / feats)  # (F,)

    def axis(n):  # (n,) -> (n, F)
        pos = np.arange(1, n + 1, dtype=np.float64) / (n + 1e-6) * (2.0 * np.pi)
        angles = pos[:, None] / freq[None, :]
        return np.where(k % 2 == 0, np.sin(angles), np.cos(angles))

    y, x = axis(height), axis(width)
    enc = np.concatenate([np.broadcast_to(y[:, None, :], (height, width, feats)),
                          np.broadcast_to(x[None, :, :], (height, width, feats))], axis=-1)
    return jnp.asarray(enc, dtype=dtype)


class LearnedPositionEmbedding(nn.Module):
    """A learned table of positions added to tokens: (B, N, D) -> (B, N, D).

    The parameter `pos_embedding` has shape (1, N, D), as in published ViT checkpoints.
    """

    stddev: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        _, n, d = tokens.shape
        table = self.param("pos_embedding", nn.initializers.normal(self.stddev), (1, n, d), self.param_dtype)
        return tokens + table.astype(tokens.dtype)

