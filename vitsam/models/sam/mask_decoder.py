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
    flipped against this direct form): one (C, 4F) matmul and a depth-to-space transpose, faster than XLA:CPU's
    transposed convolution (and than one einsum with the interleaved output, which XLA:CPU runs ~1.5x slower).
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
        kernel = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c, 4 * self.features)  # (C, a·b·F)
        y = jnp.matmul(x.astype(dtype), kernel.astype(dtype)).reshape(n, h, w, 2, 2, self.features)
        return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features) + bias.astype(dtype)


class MaskDecoder(nn.Module):
    """image (N, h, w, D), image_pe (h, w, D), sparse (N, S, D), dense (N, h, w, D)
    -> all masks (N, 1 + num_multimask_outputs, 4h, 4w) and IoU predictions (N, 1 + num_multimask_outputs).
    image and dense may have a batch of 1, shared by the N prompt sets.

    `sparse_bias` / `sparse_mask` (N, S) weigh the prompt tokens as attention keys (see `TwoWayTransformer`).
    Use `select` to pick the single or multimask outputs. The two halves are methods of their own, for callers
    that decide from the IoU predictions which masks to build (the automatic mask generator):
    `attend` (the transformer and the token heads) and `upscale` (the image tokens upscaled, times the
    hypernetwork outputs).
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

    def setup(self):
        d, num_masks = self.dim, self.num_multimask_outputs + 1
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed_init = nn.initializers.normal(1.0)
        self.iou_token = self.param("iou_token", embed_init, (1, d), self.param_dtype)
        self.mask_tokens = self.param("mask_tokens", embed_init, (num_masks, d), self.param_dtype)
        self.transformer = TwoWayTransformer(d, self.depth, self.num_heads, self.mlp_dim,
                                             self.attention_downsample_rate, attention_impl=self.attention_impl, **kw)
        self.upscale_conv1 = Upsample2x(d // 4, **kw)
        self.upscale_norm = nn.LayerNorm(1e-6, use_fast_variance=False, **kw)
        self.upscale_conv2 = Upsample2x(d // 8, **kw)
        self.hypernet_mlps = [MLP(d, d // 8, 3, **kw) for _ in range(num_masks)]  # hypernet_mlps_{i}
        self.iou_head = MLP(self.iou_head_hidden_dim, num_masks, self.iou_head_depth, **kw)

    def __call__(self, image, image_pe, sparse, dense, sparse_bias=None, sparse_mask=None):
        hyper, src, iou = self.attend(image, image_pe, sparse, dense, sparse_bias, sparse_mask)
        return self.upscale(src, hyper, image.shape[1:3]), iou

    def attend(self, image, image_pe, sparse, dense, sparse_bias=None, sparse_mask=None):
        """-> hypernetwork outputs (N, M, D/8), image tokens (N, hw, D), IoU predictions (N, M) float32, for all
        M = 1 + num_multimask_outputs masks."""
        n, d = sparse.shape[0], image.shape[-1]
        num_masks = self.num_multimask_outputs + 1
        dtype = self.dtype or jnp.float32
        output_tokens = jnp.concatenate([self.iou_token, self.mask_tokens]).astype(dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (n, 1 + num_masks, d)), sparse.astype(dtype)],
                                 axis=1)
        bias = mask = None
        if sparse_bias is not None:
            bias = jnp.pad(sparse_bias, ((0, 0), (1 + num_masks, 0)))  # the output tokens: no bias
        if sparse_mask is not None:
            mask = jnp.pad(sparse_mask, ((0, 0), (1 + num_masks, 0)), constant_values=True)

        src = (image + dense).astype(dtype)
        hs, src = self.transformer(src, image_pe.astype(dtype), tokens, bias, mask)
        iou_out, mask_out = hs[:, 0], hs[:, 1:1 + num_masks]
        hyper = jnp.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.hypernet_mlps)], axis=1)
        return hyper, src, self.iou_head(iou_out).astype(jnp.float32)

    def upscale(self, src, hyper, size: tuple[int, int]):
        """Image tokens (N, hw, D) and hypernetwork outputs (N, M, D/8) of any M masks (a selection of `attend`'s)
        -> mask logits (N, M, 4h, 4w) float32; size = (h, w)."""
        gelu = get_activation("gelu")
        x = src.reshape(src.shape[0], *size, src.shape[-1])
        x = gelu(self.upscale_norm(self.upscale_conv1(x)))
        x = gelu(self.upscale_conv2(x))  # (N, 4h, 4w, D/8)
        return jnp.einsum("nmc,nyxc->nmyx", hyper, x, preferred_element_type=jnp.float32)

    @staticmethod
    def select(masks: jnp.ndarray, iou: jnp.ndarray, multimask_output: bool | None):
        """Masks 1… (multimask) or mask 0 (single): (N, C, ...), (N, C) with C = 3 or 1; None keeps all
        1 + num_multimask_outputs (for training, which needs both kinds from one call). The first may be the
        masks or their hypernetwork outputs (N, C, D/8)."""
        if multimask_output is None:
            return masks, iou
        if multimask_output:
            return masks[:, 1:], iou[:, 1:]
        return masks[:, :1], iou[:, :1]
