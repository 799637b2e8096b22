"""The composed SAM 2 / SAM 2.1 model: Hiera + FPN neck, SAM's prompt encoder and mask decoder (SAM 2 options),
memory encoder, memory attention, and the tracking step's parts as methods.

    model = sam2_variant("hiera_t")                  # or "hiera_s", "hiera_b+", "hiera_l", "tiny"
    variables = sam2_init(model, jax.random.PRNGKey(0))
    feats = model.apply(variables, images, method=model.encode_image)      # Sam2Features
    out = model.apply(variables, feats.vision + no-memory term, feats.high_res, coords, labels,
                      method=model.sam_heads, multimask_output=True)       # HeadOutput

A frame is tracked in three steps, each a method, so a predictor can jit one program per frame with fixed
shapes (`vitsam.Sam2VideoPredictor` does): `condition` (the frame's features attend to the memory bank: the
encoded masks of conditioning frames and of the last `num_maskmem - 1` frames, and the object pointers of
up to `max_obj_ptrs_in_encoder` frames), `sam_heads` (prompts -> masks, IoU, object score, object pointer),
`encode_memory` (the frame's features and its predicted mask -> a new memory). Memory slots and pointer slots
are padded to fixed counts, with validity masks.

Layouts are NHWC; the official code's (HW, B, C) sequences are (B, HW, C) here. Fields are the official
hyper-parameters of the SAM 2.1 configs; `sam2_1=False` gives SAM 2.0's (no spatial no-object embedding, no
temporal encoding of the object pointers).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam.interpolate import resize_linear, resize_linear_aa
from vitsam.models.sam.mask_decoder import MLP, MaskDecoder
from vitsam.models.sam.processing import PAD
from vitsam.models.sam.prompt_encoder import PromptEncoder
from vitsam.models.sam2.hiera import HIERA_VARIANTS, Hiera
from vitsam.models.sam2.memory_attention import MemoryAttention
from vitsam.models.sam2.memory_encoder import MemoryEncoder
from vitsam.models.sam2.neck import FpnNeck
from vitsam.nn.positional import sine_position_encoding

# The logit of "no object here" (the official NO_OBJ_SCORE).
NO_OBJECT_SCORE = -1024.0
# Mask logits a given mask becomes when it is used as the output: +10 inside, -10 outside.
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0


class Sam2Features(NamedTuple):
    """One frame's image features: vision (B, h, w, D) at stride 16, its position encoding vision_pos (h, w, D),
    and the decoder's projected high-resolution features (B, 4h, 4w, D/8) and (B, 2h, 2w, D/4)."""
    vision: jnp.ndarray
    vision_pos: jnp.ndarray
    high_res: tuple[jnp.ndarray, jnp.ndarray]


class HeadOutput(NamedTuple):
    """`sam_heads` for B objects: all low-res masks (B, M, 4h, 4w) and IoU (B, M) (M = 3 or 1), the chosen mask
    (B, 4h, 4w) (the best by IoU when M = 3), its object pointer (B, D) and the object score logit (B,)."""
    multi_masks: jnp.ndarray
    multi_iou: jnp.ndarray
    masks: jnp.ndarray
    obj_ptr: jnp.ndarray
    object_score: jnp.ndarray


def sine_1d(positions: jnp.ndarray, dim: int, temperature: float = 10000.0) -> jnp.ndarray:
    """Positions (...,) -> (..., dim): [sin(p / t^(2⌊k/2⌋/(dim/2))), cos(...)] for k < dim/2, sines first
    (the official `get_1d_sine_pe`, used for the object pointers' temporal distance)."""
    half = dim // 2
    k = np.arange(half)
    freqs = jnp.asarray(temperature ** (2 * (k // 2) / half), jnp.float32)
    angles = positions[..., None].astype(jnp.float32) / freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Sam2(nn.Module):
    """SAM 2. Defaults: hiera_t (SAM 2.1) at 1024 px."""

    image_size: int = 1024
    embed_dim: int = 96
    num_heads: int = 1
    stages: Sequence[int] = (1, 2, 7, 2)
    global_att_blocks: Sequence[int] = (5, 7, 9)
    window_pos_embed_bkg_spatial_size: Sequence[int] = (7, 7)
    window_spec: Sequence[int] = (8, 4, 14, 7)
    d_model: int = 256
    fpn_top_down_levels: Sequence[int] = (2, 3)
    mem_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_mlp_dim: int = 2048
    memory_fuser_layers: int = 2
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    sam2_1: bool = True
    multimask_output_for_tracking: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    backbone_stride = 16

    @property
    def embedding_size(self) -> int:
        """Side of the stride-16 feature grid (64 at 1024 px)."""
        return self.image_size // self.backbone_stride

    @property
    def mask_input_size(self) -> int:
        """Side of the low-res masks (256 at 1024 px)."""
        return 4 * self.embedding_size

    @nn.nowrap
    def parts(self) -> dict[str, nn.Module]:
        """The sub-modules, unbound, by attribute name (the converter reads their sizes)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.d_model
        channels = tuple(self.embed_dim * 2 ** i for i in reversed(range(len(self.stages))))
        return dict(
            trunk=Hiera(self.embed_dim, self.num_heads, tuple(self.stages), tuple(self.global_att_blocks),
                        tuple(self.window_pos_embed_bkg_spatial_size), tuple(self.window_spec), **kw),
            neck=FpnNeck(d, channels, tuple(self.fpn_top_down_levels), **kw),
            prompt_encoder=PromptEncoder(d, 16, **kw),
            mask_decoder=MaskDecoder(
                d, 3, self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, 2, 3, d, pred_obj_scores=True,
                pred_obj_scores_mlp=True, iou_prediction_use_sigmoid=True, use_high_res_features=True,
                dynamic_multimask_via_stability=True, use_multimask_token_for_obj_ptr=True, **kw),
            memory_attention=MemoryAttention(d, self.mem_dim, self.memory_attention_layers,
                                             num_heads=self.memory_attention_heads,
                                             mlp_dim=self.memory_attention_mlp_dim, **kw),
            memory_encoder=MemoryEncoder(self.mem_dim, d, num_fuser_layers=self.memory_fuser_layers, **kw),
        )

    def setup(self):
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.d_model
        parts = self.parts()
        self.trunk, self.neck = parts["trunk"], parts["neck"]
        self.prompt_encoder, self.mask_decoder = parts["prompt_encoder"], parts["mask_decoder"]
        self.memory_attention, self.memory_encoder = parts["memory_attention"], parts["memory_encoder"]
        init = nn.initializers.truncated_normal(0.02)
        self.maskmem_tpos_enc = self.param("maskmem_tpos_enc", init, (self.num_maskmem, self.mem_dim),
                                           self.param_dtype)
        self.no_mem_embed = self.param("no_mem_embed", init, (d,), self.param_dtype)
        self.no_mem_pos_enc = self.param("no_mem_pos_enc", init, (d,), self.param_dtype)
        self.no_obj_ptr = self.param("no_obj_ptr", init, (d,), self.param_dtype)
        self.mask_downsample = nn.Conv(1, (4, 4), strides=(4, 4), padding="VALID", **kw)
        self.obj_ptr_proj = MLP(d, d, 3, **kw)
        if self.sam2_1:
            self.obj_ptr_tpos_proj = nn.Dense(self.mem_dim, **kw)
            self.no_obj_embed_spatial = self.param("no_obj_embed_spatial", init, (self.mem_dim,), self.param_dtype)

    @nn.nowrap
    def multimask_for(self, num_points: int, init_cond: bool = False) -> bool:
        """Whether a frame prompted with `num_points` points (box corners count; 0 while tracking) takes the
        best of three masks: at most one point, as the SAM 2 configs' multimask_{min,max}_pt_num = 0, 1, and, on a
        frame that is not an initial conditioning frame, only with `multimask_output_for_tracking` (the official
        option of that name; True in the SAM 2.1 configs)."""
        return num_points <= 1 and (init_cond or self.multimask_output_for_tracking)

    # -- image -------------------------------------------------------------------------------------------------
    def encode_image(self, images: jnp.ndarray, backbone_gradient: bool = True) -> Sam2Features:
        """Normalized images (B, S, S, 3) -> `Sam2Features` (the lowest-resolution neck level is dropped, as the
        official image encoder's `scalp=1`). `backbone_gradient=False` stops gradients at the image encoder's
        output (a frozen encoder; the decoder's projections of the high-resolution features still train)."""
        feats, pos = self.neck(self.trunk(images))
        if not backbone_gradient:
            feats = [jax.lax.stop_gradient(f) for f in feats]
        feats, pos = feats[:3], pos[:3]  # highest resolution first
        s0, s1 = self.mask_decoder.project_high_res(feats[0], feats[1])
        return Sam2Features(feats[2], pos[2], (s0, s1))

    def no_memory(self, vision: jnp.ndarray) -> jnp.ndarray:
        """The features of a frame tracked without memory (an image, or a first conditioning frame)."""
        return vision + self.no_mem_embed.astype(vision.dtype)

    # -- prompts -> masks --------------------------------------------------------------------------------------
    def decode(self, pix_feat, high_res, point_coords=None, point_labels=None, mask_input=None,
               multimask_output: bool = True):
        """Prompts -> masks (B, C, 4h, 4w), IoU (B, C), SAM tokens (B, T, D), object score logits (B,), as the
        official SAM 2 decoder (`SAM2ImagePredictor._predict` up to the low-res masks).

        pix_feat (B, h, w, D) (or (1, h, w, D) shared); point_coords (B, P, 2) pixels of the S×S input and
        point_labels (B, P): 1 / 0 clicks, 2 / 3 box corners, -1 padding (padding does not change the result:
        the prompt counts as the official one of its real points plus one padding token, or two with no real
        point); no points: no prompt tokens. mask_input (B, 4h, 4w) low-res logits. `multimask_output` is
        static: C = 3, else C = 1 (the stability fallback of the official decoder); None: all 4 outputs and all
        4 SAM tokens, as in training (`sam_heads_train`).
        """
        h, w, d = pix_feat.shape[1:]
        b = max(pix_feat.shape[0], *(x.shape[0] for x in (point_coords, mask_input) if x is not None))
        pe = self.prompt_encoder
        bias = None
        if point_coords is not None:
            coords = jnp.concatenate([point_coords.astype(jnp.float32), jnp.zeros((b, 1, 2), jnp.float32)], axis=1)
            labels = jnp.concatenate([point_labels.astype(jnp.int32), jnp.full((b, 1), PAD, jnp.int32)], axis=1)
            sparse = pe.embed_points(coords, labels, (self.image_size, self.image_size))
            # Identical padding tokens, weighed as attention keys to the official count.
            is_pad = labels == PAD
            num_pad = is_pad.sum(axis=1, keepdims=True).astype(jnp.float32)
            official = jnp.where(jnp.all(is_pad, axis=1, keepdims=True), 2.0, 1.0)
            bias = jnp.where(is_pad, jnp.log(official) - jnp.log(num_pad), 0.0)
        else:
            sparse = jnp.zeros((b, 0, d), jnp.float32)
        if mask_input is not None:
            dense = pe.embed_masks(mask_input[..., None].astype(self.dtype or jnp.float32))
        else:
            dense = pe.no_mask(1, h, w)
        dec = self.mask_decoder
        tokens = dec.attend(pix_feat, pe.dense_pe(h, w), sparse, dense, bias, None)
        masks = dec.upscale(tokens.src, tokens.hyper, (h, w), high_res)  # (B, 4, 4h, 4w)
        if multimask_output is None:
            return masks, tokens.iou, tokens.mask_tokens, tokens.object_score[:, 0]
        masks, iou, sam_tokens = dec.select_outputs(masks, tokens.iou, tokens.mask_tokens, multimask_output)
        return masks, iou, sam_tokens, tokens.object_score[:, 0]

    def sam_heads(self, pix_feat, high_res, point_coords=None, point_labels=None, mask_input=None,
                  multimask_output: bool = False) -> HeadOutput:
        """The tracking step's heads, as the official `_forward_sam_heads`: `decode` (a prompt without points is
        the official single padding point), masks of frames without the object set to NO_OBJECT_SCORE, the best
        mask by IoU, and its object pointer (the no-object pointer where the object is absent)."""
        b = pix_feat.shape[0]
        if point_coords is None:
            point_coords = jnp.zeros((b, 1, 2), jnp.float32)
            point_labels = jnp.full((b, 1), PAD, jnp.int32)
        masks, iou, sam_tokens, score = self.decode(pix_feat, high_res, point_coords, point_labels, mask_input,
                                                    multimask_output)
        appearing = score > 0
        masks = jnp.where(appearing[:, None, None, None], masks, NO_OBJECT_SCORE).astype(jnp.float32)
        best = jnp.argmax(iou, axis=-1) if multimask_output else jnp.zeros((b,), jnp.int32)
        chosen = jnp.take_along_axis(masks, best[:, None, None, None], axis=1)[:, 0]
        token = sam_tokens[:, 0] if sam_tokens.shape[1] == 1 else \
            jnp.take_along_axis(sam_tokens, best[:, None, None], axis=1)[:, 0]
        obj_ptr = self.obj_ptr_proj(token)
        lam = appearing[:, None].astype(obj_ptr.dtype)
        obj_ptr = lam * obj_ptr + (1 - lam) * self.no_obj_ptr.astype(obj_ptr.dtype)
        return HeadOutput(masks, iou, chosen, obj_ptr, score)

    def sam_heads_train(self, pix_feat, high_res, point_coords, point_labels, mask_input,
                        multimask: jnp.ndarray) -> HeadOutput:
        """`sam_heads` as the official model trains (`SAM2Train`): multimask_output per row, a (B,) bool array,
        and no stability fallback. multi_masks (B, 4, 4h, 4w) and multi_iou (B, 4) are every output (mask 0 the
        single-mask one, masks 1-3 the multimask ones); the chosen mask, passed on to the next click and to the
        memory, is mask 0 or, with `multimask`, the one of masks 1-3 with the highest predicted IoU."""
        masks, iou, sam_tokens, score = self.decode(pix_feat, high_res, point_coords, point_labels, mask_input,
                                                    None)
        appearing = score > 0
        masks = jnp.where(appearing[:, None, None, None], masks, NO_OBJECT_SCORE).astype(jnp.float32)
        multi_only = jnp.arange(masks.shape[1]) > 0
        best = jnp.where(multimask, jnp.argmax(jnp.where(multi_only, iou, -jnp.inf), axis=-1), 0)
        chosen = jnp.take_along_axis(masks, best[:, None, None, None], axis=1)[:, 0]
        obj_ptr = self.obj_ptr_proj(jnp.take_along_axis(sam_tokens, best[:, None, None], axis=1)[:, 0])
        lam = appearing[:, None].astype(obj_ptr.dtype)
        obj_ptr = lam * obj_ptr + (1 - lam) * self.no_obj_ptr.astype(obj_ptr.dtype)
        return HeadOutput(masks, iou, chosen, obj_ptr, score)

    def mask_as_output(self, pix_feat, high_res, masks: jnp.ndarray) -> HeadOutput:
        """A given mask (B, S, S) (bool or 0 / 1) used as the frame's output, as the official
        `_use_mask_as_output`: logits ±10, IoU 1, the object pointer from the decoder run on the mask."""
        m = masks.astype(jnp.float32)
        high = m * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low = resize_linear_aa(resize_linear_aa(high, self.mask_input_size, axis=1), self.mask_input_size, axis=2)
        down = self.mask_downsample(m[..., None])[..., 0]
        ptr = self.sam_heads(pix_feat, high_res, mask_input=down).obj_ptr
        appearing = jnp.any(m > 0, axis=(1, 2))
        lam = appearing[:, None].astype(ptr.dtype)
        ptr = lam * ptr + (1 - lam) * self.no_obj_ptr.astype(ptr.dtype)
        score = jnp.where(appearing, MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS, MASK_AS_OUTPUT_BIAS)
        iou = jnp.ones((m.shape[0], 1), jnp.float32)
        return HeadOutput(low[:, None], iou, low, ptr, score)

    def upscale_masks(self, low_res: jnp.ndarray) -> jnp.ndarray:
        """Low-res logits (B, 4h, 4w) -> (B, S, S), bilinear (half-pixel centres, as F.interpolate)."""
        x = resize_linear(low_res, self.image_size, axis=1, fused=False)
        return resize_linear(x, self.image_size, axis=2, fused=False)

    # -- memory --------------------------------------------------------------------------------------------------
    def memory_position(self) -> jnp.ndarray:
        """The memories' spatial position encoding (h, w, mem_dim)."""
        return sine_position_encoding(self.embedding_size, self.embedding_size, self.mem_dim)

    def encode_memory(self, vision, high_res_masks, object_score, binarize: bool) -> jnp.ndarray:
        """A frame's features vision (B, h, w, D), its mask logits (B, S, S) and object score (B,) -> the memory
        (B, h, w, mem_dim), as the official `_encode_new_memory`. `binarize`: the mask came from clicks and the
        predictor binarizes such masks (a static bool, or a (B,) bool array: per row, as in training)."""
        logits = high_res_masks.astype(jnp.float32)
        if isinstance(binarize, (bool, np.bool_)):
            mask = (logits > 0).astype(jnp.float32) if binarize else jax.nn.sigmoid(logits)
        else:
            mask = jnp.where(binarize[:, None, None], (logits > 0).astype(jnp.float32), jax.nn.sigmoid(logits))
        mask = mask * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc
        mem = self.memory_encoder(vision, mask[..., None], skip_mask_sigmoid=True)
        if self.sam2_1:
            absent = (object_score <= 0).astype(mem.dtype)[:, None, None, None]
            mem = mem + absent * self.no_obj_embed_spatial.astype(mem.dtype)
        return mem

    def condition(self, vision, vision_pos, memories, memory_tpos, memory_valid, obj_ptrs, ptr_offsets,
                  ptr_valid, max_ptr_offset: int) -> jnp.ndarray:
        """The frame's features attend to the memory bank, as the official `_prepare_memory_conditioned_features`
        for a frame that is not an initial conditioning frame.

        vision (B, h, w, D), vision_pos (h, w, D); memories (B, M, h, w, mem_dim) with their temporal slots
        memory_tpos (B, M) int (0 for conditioning frames, else 1 … num_maskmem - 1, the latest highest) and
        memory_valid (B, M) bool; obj_ptrs (B, P, D) with their signed frame offsets ptr_offsets (B, P) and
        ptr_valid (B, P); max_ptr_offset (static): the offset that normalizes pointer positions
        (min(num_frames, max_obj_ptrs_in_encoder) - 1). -> (B, h, w, D).
        """
        b, h, w, d = vision.shape
        m = memories.shape[1]
        pos = self.memory_position().reshape(1, 1, h * w, self.mem_dim)
        tpos = jnp.take(self.maskmem_tpos_enc, self.num_maskmem - memory_tpos - 1, axis=0)  # (B, M, mem_dim)
        memory = memories.reshape(b, m * h * w, self.mem_dim)
        memory_pos = (pos + tpos[:, :, None]).reshape(b, m * h * w, self.mem_dim)
        memory_mask = jnp.repeat(memory_valid, h * w, axis=1)

        split = d // self.mem_dim
        p = obj_ptrs.shape[1]
        if self.sam2_1:
            ptr_pos = self.obj_ptr_tpos_proj(sine_1d(ptr_offsets / max(max_ptr_offset, 1), d))
        else:
            ptr_pos = jnp.zeros((b, p, self.mem_dim), jnp.float32)
        ptr_tokens = obj_ptrs.reshape(b, p * split, self.mem_dim)  # each pointer as `split` tokens
        ptr_pos = jnp.repeat(ptr_pos, split, axis=1)
        memory = jnp.concatenate([memory, ptr_tokens.astype(memory.dtype)], axis=1)
        memory_pos = jnp.concatenate([memory_pos, ptr_pos.astype(memory_pos.dtype)], axis=1)
        memory_mask = jnp.concatenate([memory_mask, jnp.repeat(ptr_valid, split, axis=1)], axis=1)

        out = self.memory_attention(vision.reshape(b, h * w, d),
                                    jnp.broadcast_to(vision_pos.reshape(1, h * w, d), (b, h * w, d)),
                                    memory, memory_pos, num_obj_ptr_tokens=p * split, memory_mask=memory_mask,
                                    grid=(h, w))
        return out.reshape(b, h, w, d)

    def track(self, vision, vision_pos, high_res, memories=None, memory_tpos=None, memory_valid=None,
              obj_ptrs=None, ptr_offsets=None, ptr_valid=None, point_coords=None, point_labels=None,
              mask_input=None, *, max_ptr_offset: int = 1, multimask_output: bool = False, binarize: bool = False,
              encode: bool = True) -> tuple[HeadOutput, jnp.ndarray | None]:
        """One tracking step for B objects on one frame, as the official `track_step` (prompts through SAM's
        heads; a given mask goes through `mask_as_output` instead): -> (`HeadOutput`, the new memory (B, h, w,
        mem_dim), or None without `encode`). Without memories (None) the frame is an initial conditioning frame.
        Shapes as in `condition` and `sam_heads`; the keyword arguments are static."""
        if memories is None:
            pix = self.no_memory(vision)
        else:
            pix = self.condition(vision, vision_pos, memories, memory_tpos, memory_valid, obj_ptrs, ptr_offsets,
                                 ptr_valid, max_ptr_offset)
        heads = self.sam_heads(pix, high_res, point_coords, point_labels, mask_input, multimask_output)
        memory = self.encode_memory(vision, self.upscale_masks(heads.masks), heads.object_score,
                                    binarize) if encode else None
        return heads, memory

    def __call__(self, images, point_coords, point_labels, masks):
        """Touches every parameter (for `sam2_init`): one frame through every part."""
        feats = self.encode_image(images)
        b = images.shape[0]
        pix = self.no_memory(feats.vision)
        heads = self.sam_heads(pix, feats.high_res, point_coords, point_labels, multimask_output=True)
        given = self.mask_as_output(pix, feats.high_res, masks)
        mem = self.encode_memory(feats.vision, self.upscale_masks(heads.masks), heads.object_score, False)
        cond = self.condition(feats.vision, feats.vision_pos, mem[:, None], jnp.zeros((b, 1), jnp.int32),
                              jnp.ones((b, 1), bool), heads.obj_ptr[:, None], jnp.ones((b, 1)),
                              jnp.ones((b, 1), bool), 1)
        return heads, given, cond


SAM2_VARIANTS: dict[str, dict] = {
    **{f"hiera_{name}": dict(fields) for name, fields in HIERA_VARIANTS.items()},
    # For fast CPU tests: 256-px input (16×16 stride-16 grid), a two-stage-deep trunk, narrow heads.
    "tiny": dict(image_size=256, embed_dim=32, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                 window_spec=(8, 4, 8, 4), d_model=64, mem_dim=16, memory_attention_layers=1,
                 memory_attention_mlp_dim=128, memory_fuser_layers=1, decoder_heads=4, decoder_mlp_dim=256),
}


def sam2_variant(name: str, **overrides) -> Sam2:
    """A SAM 2.1 model by name ("hiera_t", "hiera_s", "hiera_b+", "hiera_l", "tiny"); `overrides` replace any
    field of `Sam2` (`sam2_1=False`: SAM 2.0)."""
    if name not in SAM2_VARIANTS:
        raise ValueError(f"unknown SAM 2 variant {name!r}; valid: {', '.join(SAM2_VARIANTS)}")
    fields = dict(SAM2_VARIANTS[name], **overrides)
    unknown = set(fields) - set(Sam2.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise TypeError(f"unknown Sam2 field(s): {sorted(unknown)}")
    for key in ("stages", "global_att_blocks", "window_pos_embed_bkg_spatial_size", "window_spec",
                "fpn_top_down_levels"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Sam2(**fields)


def sam2_init(model: Sam2, rng: jax.Array) -> dict:
    """Initialize every variable ({"params": ..., "constants": ...}) on a small dummy frame (parameter shapes do
    not depend on the input size); wrap in `jax.eval_shape` for shapes only."""
    side = 128
    small = model.clone(image_size=side)
    variables = small.init({"params": rng}, jnp.zeros((1, side, side, 3), jnp.float32),
                           jnp.zeros((1, 1, 2), jnp.float32), jnp.ones((1, 1), jnp.int32),
                           jnp.zeros((1, side, side), jnp.float32))
    return dict(variables)
