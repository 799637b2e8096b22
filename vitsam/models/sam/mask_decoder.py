"""SAM's mask decoder: output tokens + prompt tokens attend with the image, then masks by hypernetworks.

tokens = [IoU token, 4 mask tokens, sparse prompt tokens]; image = embedding + dense prompt embedding.
After the two-way transformer the image tokens are upscaled 4× by two 2×2 stride-2 transposed convs (D -> D/4 -> D/8, `Upsample2x`),
each mask token goes through its own 3-layer MLP to a (D/8,) vector, and mask k is the dot product of
that vector with every upscaled pixel. The IoU token predicts one quality score per mask.
Mask 0 is the single-mask output; masks 1–3 are the multimask output for ambiguous prompts.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vitsam.models.sam.transformer import TwoWayTransformer
from vitsam.nn import get_activation


class MLP(nn.Module):
    """`num_layers` dense layers with ReLU between them: (..., D_in) -> (..., out_dim); `layers_{i}`."""

    hidden_dim: int
    out_dim: int
    num_layers: int
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"layers_{i}")(x)
            if not last:
                x = nn.relu(x)
        return x


class Upsample2x(nn.Module):
    """A 2×2 transposed convolution with stride 2: (N, h, w, C) -> (N, 2h, 2w, F).

    Same parameters and numbers as `flax.linen.ConvTranspose(F, (2, 2), strides=(2, 2), padding="VALID")`
    (`kernel` (2, 2, C, F), `bias` (F,)). With stride = kernel size the output windows do not overlap, so
    output pixel (2i + a, 2j + b) is x[i, j] @ kernel[1 - a, 1 - b] (ConvTranspose's kernel is spatially
    flipped against this direct form): one matmul and a depth-to-space reshape, faster than XLA:CPU's
    transposed convolution.
    """

    features: int
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        dtype = self.dtype or x.dtype
        y = jnp.einsum("nhwc,abcf->nhawbf", x.astype(dtype), kernel[::-1, ::-1].astype(dtype))
        return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(dtype)


class MaskDecoder(nn.Module):
    """image (N, h, w, D), image_pe (h, w, D), sparse (N, S, D), dense (N, h, w, D)
    -> all masks (N, 1 + num_multimask_outputs, 4h, 4w) and IoU predictions (N, 1 + num_multimask_outputs).

    `sparse_bias` / `sparse_mask` (N, S) weigh the prompt tokens as attention keys (see `TwoWayTransformer`).
    Use `select` to pick the single or multimask outputs.
    """

    dim: int = 256
    num_multimask_outputs: int = 3
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    attention_impl: str = "einsum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image, image_pe, sparse, dense, sparse_bias=None, sparse_mask=None):
        n, h, w, d = image.shape
        num_masks = self.num_multimask_outputs + 1
        embed_init = nn.initializers.normal(1.0)
        iou_token = self.param("iou_token", embed_init, (1, d), self.param_dtype)
        mask_tokens = self.param("mask_tokens", embed_init, (num_masks, d), self.param_dtype)
        dtype = self.dtype or jnp.float32
        output_tokens = jnp.broadcast_to(jnp.concatenate([iou_token, mask_tokens]).astype(dtype), (n, 1 + num_masks, d))
        tokens = jnp.concatenate([output_tokens, sparse.astype(dtype)], axis=1)
        bias = mask = None
        if sparse_bias is not None:
            bias = jnp.pad(sparse_bias, ((0, 0), (1 + num_masks, 0)))  # the output tokens: no bias
        if sparse_mask is not None:
            mask = jnp.pad(sparse_mask, ((0, 0), (1 + num_masks, 0)), constant_values=True)

        src = (image + dense).astype(dtype)
        hs, src = TwoWayTransformer(
            self.dim, self.depth, self.num_heads, self.mlp_dim, self.attention_downsample_rate,
            attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype, name="transformer",
        )(src, image_pe.astype(dtype), tokens, bias, mask)
        iou_out, mask_out = hs[:, 0], hs[:, 1:1 + num_masks]

        gelu = get_activation("gelu")
        up = lambda f, name: Upsample2x(f, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        x = src.reshape(n, h, w, d)
        x = up(d // 4, "upscale_conv1")(x)
        x = gelu(nn.LayerNorm(1e-6, dtype=self.dtype, param_dtype=self.param_dtype, use_fast_variance=False,
                              name="upscale_norm")(x))
        x = gelu(up(d // 8, "upscale_conv2")(x))  # (N, 4h, 4w, D/8)

        hyper = jnp.stack([
            MLP(d, d // 8, 3, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hypernet_mlps_{i}")(mask_out[:, i])
            for i in range(num_masks)], axis=1)  # (N, M, D/8)
        masks = jnp.einsum("nmc,nyxc->nmyx", hyper, x, preferred_element_type=jnp.float32)
        iou = MLP(self.iou_head_hidden_dim, num_masks, self.iou_head_depth, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="iou_head")(iou_out)
        return masks, iou.astype(jnp.float32)

    @staticmethod
    def select(masks: jnp.ndarray, iou: jnp.ndarray, multimask_output: bool | None):
        """Masks 1… (multimask) or mask 0 (single): (N, C, H, W), (N, C) with C = 3 or 1; None keeps all
        1 + num_multimask_outputs (for training, which needs both kinds from one call)."""
        if multimask_output is None:
            return masks, iou
        if multimask_output:
            return masks[:, 1:], iou[:, 1:]
        return masks[:, :1], iou[:, :1]
