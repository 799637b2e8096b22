"""SAM's mask decoder: output tokens + prompt tokens attend with the image, then masks by hypernetworks.

tokens = [IoU token, 4 mask tokens, sparse prompt tokens]; image = embedding + dense prompt embedding.
After the two-way transformer the image tokens are upscaled 4× by two 2×2 stride-2 transposed convs (D -> D/4 -> D/8, `Upsample2x`),
each mask token goes through its own 3-layer MLP to a (D/8,) vector, and mask k is the dot product of
that vector with every upscaled pixel. The IoU token predicts one quality score per mask.
Mask 0 is the single-mask output; masks 1–3 are the multimask output for ambiguous prompts.

SAM 2 options (fields, all off by default, which is SAM 1 with its parameter tree): an object-score token
placed before the IoU token and its head (`pred_obj_scores`), a sigmoid on the IoU head
(`iou_prediction_use_sigmoid`), the stride-4 and stride-8 backbone features added in the upscaling
(`use_high_res_features`; `project_high_res` holds their 1×1 convs), and the single-mask output replaced by the
best multimask output when it is unstable (`dynamic_multimask_via_stability`, see `select_outputs`).
"""

from __future__ import annotations

from typing import NamedTuple

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


class DecoderTokens(NamedTuple):
    """`MaskDecoder.attend` for N prompt sets and M = 1 + num_multimask_outputs masks."""
    hyper: jnp.ndarray  # (N, M, D/8) hypernetwork outputs
    src: jnp.ndarray  # (N, hw, D) image tokens
    iou: jnp.ndarray  # (N, M) IoU predictions, float32
    mask_tokens: jnp.ndarray  # (N, M, D) the mask tokens after the transformer (SAM 2's object pointers)
    object_score: jnp.ndarray  # (N, 1) object-score logits, float32 (10 without `pred_obj_scores`)


def stability_scores(mask_logits: jnp.ndarray, delta: float) -> jnp.ndarray:
    """(..., H, W) logits -> (...,) area(logits > delta) / area(logits > −delta), 1 where the latter is empty."""
    inner = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
    outer = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(outer > 0, inner / jnp.maximum(outer, 1.0), 1.0)


def dynamic_multimask_via_stability(masks: jnp.ndarray, iou: jnp.ndarray, delta: float = 0.05,
                                    thresh: float = 0.98) -> tuple[jnp.ndarray, jnp.ndarray]:
    """SAM 2's single-mask output: all masks (N, M, H, W) and IoU (N, M), single mask first -> (N, 1, H, W), (N, 1).

    Mask 0 where its stability score (`stability_scores` at ±delta) is at least `thresh`, else the multimask
    output (1…M−1) with the highest predicted IoU, with that IoU.
    """
    best = jnp.argmax(iou[:, 1:], axis=-1) + 1  # (N,)
    best_masks = jnp.take_along_axis(masks, best[:, None, None, None], axis=1)
    best_iou = jnp.take_along_axis(iou, best[:, None], axis=1)
    stable = stability_scores(masks[:, 0], delta) >= thresh  # (N,)
    return (jnp.where(stable[:, None, None, None], masks[:, :1], best_masks),
            jnp.where(stable[:, None], iou[:, :1], best_iou))


class MaskDecoder(nn.Module):
    """image (N, h, w, D), image_pe (h, w, D), sparse (N, S, D), dense (N, h, w, D)
    -> all masks (N, 1 + num_multimask_outputs, 4h, 4w) and IoU predictions (N, 1 + num_multimask_outputs).
    image and dense may have a batch of 1, shared by the N prompt sets.

    `sparse_bias` / `sparse_mask` (N, S) weigh the prompt tokens as attention keys (see `TwoWayTransformer`).
    Use `select` to pick the single or multimask outputs. The two halves are methods of their own, for callers
    that decide from the IoU predictions which masks to build (the automatic mask generator):
    `attend` (the transformer and the token heads) and `upscale` (the image tokens upscaled, times the
    hypernetwork outputs).

    SAM 2 options (the official `MaskDecoder` arguments of the same names): `pred_obj_scores` adds
    `obj_score_token` (1, D) and `obj_score_head` (Dense, or with `pred_obj_scores_mlp` a 3-layer MLP);
    `use_high_res_features` adds `conv_s0` (D -> D/8) and `conv_s1` (D -> D/4), 1×1, applied by the caller
    through `project_high_res`, whose outputs `upscale` then takes; `iou_prediction_use_sigmoid`,
    `dynamic_multimask_via_stability` (+ delta, thresh) and `use_multimask_token_for_obj_ptr` act in
    `attend` / `select_outputs`.
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
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    iou_prediction_use_sigmoid: bool = False
    use_high_res_features: bool = False
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    use_multimask_token_for_obj_ptr: bool = False
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
        if self.pred_obj_scores:
            self.obj_score_token = self.param("obj_score_token", embed_init, (1, d), self.param_dtype)
            self.obj_score_head = MLP(d, 1, 3, **kw) if self.pred_obj_scores_mlp else nn.Dense(1, **kw)
        if self.use_high_res_features:
            self.conv_s0 = nn.Conv(d // 8, (1, 1), **kw)
            self.conv_s1 = nn.Conv(d // 4, (1, 1), **kw)

    def __call__(self, image, image_pe, sparse, dense, sparse_bias=None, sparse_mask=None, high_res=None):
        """-> all masks (N, M, 4h, 4w) and IoU (N, M); `high_res` as for `upscale`."""
        if self.use_high_res_features and self.is_initializing():
            zeros = jnp.zeros((1, 1, 1, self.dim), image.dtype)
            self.project_high_res(zeros, zeros)
        tokens = self.attend(image, image_pe, sparse, dense, sparse_bias, sparse_mask)
        return self.upscale(tokens.src, tokens.hyper, image.shape[1:3], high_res), tokens.iou

    def attend(self, image, image_pe, sparse, dense, sparse_bias=None, sparse_mask=None) -> DecoderTokens:
        """-> `DecoderTokens` for all M = 1 + num_multimask_outputs masks."""
        n, d = sparse.shape[0], image.shape[-1]
        num_masks = self.num_multimask_outputs + 1
        dtype = self.dtype or jnp.float32
        first = [self.obj_score_token] if self.pred_obj_scores else []
        output_tokens = jnp.concatenate(first + [self.iou_token, self.mask_tokens]).astype(dtype)
        num_out = output_tokens.shape[0]
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (n, num_out, d)), sparse.astype(dtype)], axis=1)
        bias = mask = None
        if sparse_bias is not None:
            bias = jnp.pad(sparse_bias, ((0, 0), (num_out, 0)))  # the output tokens: no bias
        if sparse_mask is not None:
            mask = jnp.pad(sparse_mask, ((0, 0), (num_out, 0)), constant_values=True)

        src = (image + dense).astype(dtype)
        hs, src = self.transformer(src, image_pe.astype(dtype), tokens, bias, mask)
        s = len(first)
        iou_out, mask_out = hs[:, s], hs[:, s + 1:s + 1 + num_masks]
        hyper = jnp.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.hypernet_mlps)], axis=1)
        iou = self.iou_head(iou_out).astype(jnp.float32)
        if self.iou_prediction_use_sigmoid:
            iou = nn.sigmoid(iou)
        if self.pred_obj_scores:
            object_score = self.obj_score_head(hs[:, 0]).astype(jnp.float32)
        else:  # the official default: the object is taken as present (sigmoid(10) ≈ 1)
            object_score = jnp.full_like(iou[:, :1], 10.0)
        return DecoderTokens(hyper, src, iou, mask_out, object_score)

    def project_high_res(self, feat_s0, feat_s1):
        """The neck's stride-4 (B, 4h, 4w, D) and stride-8 (B, 2h, 2w, D) features -> `upscale`'s `high_res`:
        (B, 4h, 4w, D/8) and (B, 2h, 2w, D/4) (the official SAM 2 applies `conv_s0` / `conv_s1` once per image)."""
        if not self.use_high_res_features:
            raise ValueError("this mask decoder has no high-res convs (build it with use_high_res_features=True)")
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def upscale(self, src, hyper, size: tuple[int, int], high_res=None):
        """Image tokens (N, hw, D) and hypernetwork outputs (N, M, D/8) of any M masks (a selection of `attend`'s)
        -> mask logits (N, M, 4h, 4w) float32; size = (h, w).

        `high_res` (needed with `use_high_res_features`): `project_high_res`'s (N, 4h, 4w, D/8) and
        (N, 2h, 2w, D/4) (a batch of 1 is shared), added after the first and the second transposed conv.
        """
        if self.use_high_res_features != (high_res is not None):
            raise ValueError("upscale: high_res features are needed with use_high_res_features and only then")
        gelu = get_activation("gelu")
        x = src.reshape(src.shape[0], *size, src.shape[-1])
        x = self.upscale_conv1(x)
        if high_res is not None:
            x = x + high_res[1].astype(x.dtype)
        x = gelu(self.upscale_norm(x))
        x = self.upscale_conv2(x)
        if high_res is not None:
            x = x + high_res[0].astype(x.dtype)
        x = gelu(x)  # (N, 4h, 4w, D/8)
        return jnp.einsum("nmc,nyxc->nmyx", hyper, x, preferred_element_type=jnp.float32)

    def select_outputs(self, masks, iou, mask_tokens, multimask_output: bool, train: bool = False):
        """The official SAM 2 decoder's choice from all M outputs: masks (N, M, ...) (or hypernetwork outputs),
        IoU (N, M), mask tokens (N, M, D) -> masks (N, C, ...), IoU (N, C), SAM tokens (N, T, D).

        multimask_output: C = M − 1 (masks 1…), else C = 1: mask 0, or with `dynamic_multimask_via_stability`
        (not in training) the stability fallback, which needs mask logits (N, M, H, W). The SAM tokens, for the
        object pointer, are tokens 1… (T = M − 1) with multimask_output and `use_multimask_token_for_obj_ptr`,
        else token 0 (T = 1), whichever mask was chosen.
        """
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not train:
            masks, iou = dynamic_multimask_via_stability(masks, iou, self.dynamic_multimask_stability_delta,
                                                         self.dynamic_multimask_stability_thresh)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            return masks, iou, mask_tokens[:, 1:]
        return masks, iou, mask_tokens[:, :1]

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
