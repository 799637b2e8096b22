"""SAM 2's FPN neck: the trunk's stages -> d_model features per level, with a top-down pathway and sine positions.

Each level gets a 1×1 lateral conv to d_model. Going from the lowest resolution up, a level listed in
`fpn_top_down_levels` adds the level below it upsampled ×2 (in float32, as the official code); the others keep
their lateral features alone (SAM 2.1 configs: levels 2, 3, so the two highest-resolution levels skip it).
There is no output conv. Every level gets the normalized 2-D sine position encoding of its grid.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitsam.nn.positional import sine_position_encoding


def upsample2x(x: jnp.ndarray, method: str) -> jnp.ndarray:
    """(B, H, W, C) -> (B, 2H, 2W, C): "nearest" (pixel repeat) or "bilinear" (half-pixel centres, as
    F.interpolate with align_corners=False)."""
    if method == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if method == "bilinear":
        b, h, w, c = x.shape
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), "linear", antialias=False)
    raise ValueError(f"unknown fpn_interp_model {method!r}; valid: 'nearest', 'bilinear'")


class FpnNeck(nn.Module):
    """Trunk outputs [(B, H_i, W_i, C_i)], highest resolution first, each level half the size of the previous
    -> (features [(B, H_i, W_i, d_model)], position encodings [(H_i, W_i, d_model)]), both highest resolution
    first.

    `backbone_channel_list` lists C_i lowest resolution first (the official order, e.g. (768, 384, 192, 96) for
    hiera_t); the lateral convs `convs_{j}` follow that order too (convs_0 is the lowest resolution), as the
    official `convs.{j}`. `fpn_top_down_levels` are indices into the highest-first list (None: all levels).
    A feature level is float32 where it received top-down features (the official promotion); position encodings
    have the dtype of their features. The official encodings are (B, d_model, H, W); the batch copies are left
    out here (they are identical).
    """

    d_model: int
    backbone_channel_list: Sequence[int]
    fpn_top_down_levels: Sequence[int] | None = None
    fpn_interp_model: str = "nearest"
    fuse_type: str = "sum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray]) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
        num_levels = len(self.backbone_channel_list)
        if len(xs) != num_levels:
            raise ValueError(f"FpnNeck: expected {num_levels} trunk levels, got {len(xs)}")
        if self.fuse_type not in ("sum", "avg"):
            raise ValueError(f"unknown fuse_type {self.fuse_type!r}; valid: 'sum', 'avg'")
        top_down = range(num_levels) if self.fpn_top_down_levels is None else tuple(self.fpn_top_down_levels)
        out: list = [None] * num_levels
        pos: list = [None] * num_levels
        prev = None
        n = num_levels - 1
        for i in range(n, -1, -1):  # lowest resolution first
            x = xs[i]
            if x.shape[-1] != self.backbone_channel_list[n - i]:
                raise ValueError(f"FpnNeck: level {i} has {x.shape[-1]} channels, expected "
                                 f"{self.backbone_channel_list[n - i]}")
            lateral = nn.Conv(self.d_model, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                              name=f"convs_{n - i}")(x)
            if i in top_down and prev is not None:
                prev = lateral + upsample2x(prev.astype(jnp.float32), self.fpn_interp_model)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = sine_position_encoding(prev.shape[1], prev.shape[2], self.d_model, dtype=prev.dtype)
        return out, pos
