"""SAM 2's memory encoder: a frame's image features and its mask -> the frame's memory.

The mask (at 16x the feature resolution) is downsampled to the feature grid by strided convolutions, added to
the projected image features, mixed by a few ConvNeXt blocks and projected to the memory width (64 in every
released SAM 2). The memory's position encoding is not computed here: it depends only on the grid
(`vitsam.nn.positional.sine_position_encoding`), so the caller computes it once.

LayerNorm2d of the official code normalizes each pixel over its channels: on NHWC that is `nn.LayerNorm` on the
last axis (eps 1e-6, two-pass variance as the official code computes it). GELU is the exact (erf) one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitsam.nn import get_activation


def _layer_norm(name: str, dtype, param_dtype) -> nn.LayerNorm:
    return nn.LayerNorm(1e-6, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


def downsample_stages(stride: int, total_stride: int) -> int:
    """The number of stride-`stride` stages that make `total_stride` (4 for 2 and 16)."""
    n, s = 0, 1
    while stride > 1 and s < total_stride:
        n, s = n + 1, s * stride
    if s != total_stride:
        raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
    return n


class MaskDownSampler(nn.Module):
    """Mask (B, H, W, 1) -> (B, H/s, W/s, embed_dim), s = `total_stride`.

    log_stride(total_stride) stages of conv k x k / stride (padding `padding` on every side), LayerNorm, GELU;
    each stage multiplies the channels by stride² (1 -> 4 -> 16 -> 64 -> 256 for stride 2), then a 1x1 conv
    to `embed_dim`. Parameters: `conv_{i}`, `norm_{i}` per stage, `proj`.
    """

    embed_dim: int = 256
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    total_stride: int = 16
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, masks: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gelu = get_activation("gelu")
        k, p, x, chans = self.kernel_size, self.padding, masks, 1
        for i in range(downsample_stages(self.stride, self.total_stride)):
            chans *= self.stride ** 2
            x = nn.Conv(chans, (k, k), strides=(self.stride, self.stride), padding=((p, p), (p, p)),
                        name=f"conv_{i}", **kw)(x)
            x = gelu(_layer_norm(f"norm_{i}", **kw)(x))
        return nn.Conv(self.embed_dim, (1, 1), name="proj", **kw)(x)


class CXBlock(nn.Module):
    """ConvNeXt block (B, H, W, C) -> (B, H, W, C): x + gamma * pw2(GELU(pw1(LN(dwconv(x))))).

    dwconv is a depthwise k x k conv ('same' size), pw1 / pw2 widen to 4C and back. `gamma` (C,) is the layer
    scale, initialized to `layer_scale_init_value` (none when 0). No stochastic depth (the official SAM 2
    configs use none).
    """

    dim: int = 256
    kernel_size: int = 7
    layer_scale_init_value: float = 1e-6
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        k, p = self.kernel_size, self.kernel_size // 2
        h = nn.Conv(self.dim, (k, k), padding=((p, p), (p, p)), feature_group_count=self.dim, name="dwconv", **kw)(x)
        h = _layer_norm("norm", **kw)(h)
        h = get_activation("gelu")(nn.Dense(4 * self.dim, name="pwconv1", **kw)(h))
        h = nn.Dense(self.dim, name="pwconv2", **kw)(h)
        if self.layer_scale_init_value > 0:
            gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init_value), (self.dim,),
                               self.param_dtype)
            h = h * gamma.astype(h.dtype)
        return x + h


class Fuser(nn.Module):
    """`num_layers` CXBlocks (`layers_{i}`), after an optional 1x1 conv `proj`: (B, H, W, C) -> (B, H, W, C)."""

    dim: int = 256
    num_layers: int = 2
    kernel_size: int = 7
    layer_scale_init_value: float = 1e-6
    input_projection: bool = False
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.input_projection:
            x = nn.Conv(self.dim, (1, 1), name="proj", **kw)(x)
        for i in range(self.num_layers):
            x = CXBlock(self.dim, self.kernel_size, self.layer_scale_init_value, name=f"layers_{i}", **kw)(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features and a mask -> memory features (the official `MemoryEncoder` without its position encoding).

    Parameters: `mask_downsampler` (MaskDownSampler to `in_dim`), `pix_feat_proj` (1x1 conv), `fuser`, and
    `out_proj` (1x1 conv to `out_dim`, only when out_dim != in_dim). Defaults: the SAM 2 / 2.1 configs.
    """

    out_dim: int = 64
    in_dim: int = 256
    num_fuser_layers: int = 2
    fuser_kernel_size: int = 7
    layer_scale_init_value: float = 1e-6
    fuser_input_projection: bool = False
    mask_kernel_size: int = 3
    mask_stride: int = 2
    mask_padding: int = 1
    mask_total_stride: int = 16
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pix_feat: jnp.ndarray, masks: jnp.ndarray, skip_mask_sigmoid: bool = False) -> jnp.ndarray:
        """pix_feat (B, H, W, in_dim), mask logits (B, sH, sW, 1) with s = `mask_total_stride` -> (B, H, W, out_dim).

        The masks go through a sigmoid unless `skip_mask_sigmoid` (static; SAM 2 passes masks it already
        squashed and rescaled).
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks)
        masks = MaskDownSampler(self.in_dim, self.mask_kernel_size, self.mask_stride, self.mask_padding,
                                self.mask_total_stride, name="mask_downsampler", **kw)(masks)
        x = nn.Conv(self.in_dim, (1, 1), name="pix_feat_proj", **kw)(pix_feat) + masks
        x = Fuser(self.in_dim, self.num_fuser_layers, self.fuser_kernel_size, self.layer_scale_init_value,
                  self.fuser_input_projection, name="fuser", **kw)(x)
        if self.out_dim != self.in_dim:
            x = nn.Conv(self.out_dim, (1, 1), name="out_proj", **kw)(x)
        return x
