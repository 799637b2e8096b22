"""The composed Segment Anything model: image encoder, prompt encoder (+ optional text encoder), mask decoder.

    model = sam_variant("vit_b")                      # or "vit_l", "vit_h", "tiny"
    variables = sam_init(model, jax.random.PRNGKey(0))
    emb = model.apply(variables, images, method=model.encode_image)          # (B, S/16, S/16, 256)
    logits, iou = model.apply(variables, emb, point_coords, point_labels, boxes, mask_input, text_ids,
                              multimask_output, method=model.decode)      # (N, C, 4h, 4w), (N, C)

Prompt semantics (sparse tokens, in this order: points, boxes, text):
- points (N, P, 2) are (x, y) pixels of the input frame (the resized, padded S×S image), labels (N, P):
  1 foreground, 0 background, 2 / 3 box corners, -1 padding.
- a box (N, 4) x0, y0, x1, y1 is the pair of corner points labelled 2 and 3.
- As in the official code, a prompt without a box gets one not-a-point token. Padding points (label -1)
  are that same token: however many there are, they count as one (each gets the attention weight 1/k, k
  the number of padding tokens), and not at all when the prompt has a box. So padding never changes the
  result, and prompts without padding give exactly the official numbers. (The official code lets every
  padding point attend separately, and treats labels 2 / 3 among points as position-only.)
The presence of each prompt kind and `multimask_output` are Python-level (static under jit).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam.image_encoder import ImageEncoder
from vitsam.models.sam.mask_decoder import MaskDecoder
from vitsam.models.sam.processing import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PAD
from vitsam.models.sam.prompt_encoder import PromptEncoder
from vitsam.models.sam.text_encoder import TextEncoder, tokenize

# The label text tokens carry in `padding_weights`: never padding, never a box corner.
POSITIVE_TEXT = 1


class Sam(nn.Module):
    """Segment Anything. Fields are the official hyper-parameters (defaults: vit_b at 1024 px).

    `text=True` adds the (non-official) text prompt encoder; its parameters live under `text_encoder`.
    `attention_query_rows`: the image encoder's global attention one image and head at a time, in chunks of
    this many grid rows of queries (0: all at once; None: on CPU for big grids, where it is faster, the most
    rows whose logits for one head fit 16 MiB (16 at 1024 px), else all at once).
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_dim: int = 256
    mask_in_chans: int = 16
    pe_scale: float = 1.0
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    text: bool = False
    text_vocab_size: int = 4096
    text_max_len: int = 16
    text_dim: int = 256
    text_depth: int = 2
    text_heads: int = 8
    text_mlp_dim: int = 1024
    text_tokens: int = 1
    attention_impl: str = "einsum"
    attention_query_rows: int | None = None
    remat: bool = False
    drop_path: float = 0.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the 1024-px models)."""
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-res mask input and output (4 × the embedding grid: 256 for 1024-px models)."""
        return 4 * self.embedding_size

    def setup(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {self.patch_size}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.image_encoder = ImageEncoder(
            self.image_size, self.patch_size, self.encoder_dim, self.encoder_depth, self.encoder_heads,
            self.encoder_mlp_ratio, self.prompt_dim, self.window_size, tuple(self.global_attn_indexes),
            attention_impl=self.attention_impl, global_query_rows=self.attention_query_rows, remat=self.remat,
            drop_path=self.drop_path, **kw)
        self.prompt_encoder = PromptEncoder(self.prompt_dim, self.mask_in_chans, pe_scale=self.pe_scale, **kw)
        self.mask_decoder = MaskDecoder(
            self.prompt_dim, self.num_multimask_outputs, self.decoder_depth, self.decoder_heads,
            self.decoder_mlp_dim, self.attention_downsample_rate, self.iou_head_depth, self.iou_head_hidden_dim,
            attention_impl=self.attention_impl, **kw)
        if self.text:
            self.text_encoder = TextEncoder(
                self.text_vocab_size, self.text_max_len, self.text_dim, self.text_depth, self.text_heads,
                self.text_mlp_dim, self.prompt_dim, self.text_tokens, **kw)

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> word ids (N, text_max_len) for `decode`'s `text_ids` (pure Python, no variables needed)."""
        return tokenize(texts, self.text_vocab_size, self.text_max_len)

    def encode_image(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Normalized, padded images (B, S, S, 3) -> image embeddings (B, S/16, S/16, prompt_dim).

        train=True applies stochastic depth (`drop_path`; needs the rng "dropout").
        """
        return self.image_encoder(images, deterministic=not train)

    def decode(self, image_embeddings, point_coords=None, point_labels=None, boxes=None, mask_input=None,
               text_ids=None, multimask_output: bool = True):
        """Prompts -> low-res mask logits (N, C, 4h, 4w) and IoU predictions (N, C), C = 3 or 1
        (multimask_output None: all 4, the single-mask output first).

        image_embeddings (N, h, w, D), one per prompt set, or (1, h, w, D) shared by all N (the decoder's
        first image projections then run once, not N times); point_coords (N, P, 2) and point_labels (N, P);
        boxes (N, 4); mask_input (N, 4h, 4w, 1) low-res logits; text_ids (N, L). Each prompt may be None.
        """
        hyper, src, iou = self.decode_tokens(image_embeddings, point_coords, point_labels, boxes, mask_input,
                                             text_ids, multimask_output)
        return self.decode_masks(src, hyper, image_embeddings.shape[1:3]), iou

    def decode_masks(self, src, hyper, size: tuple[int, int]):
        """`decode_tokens`' image tokens (N, hw, D) and hypernetwork outputs (N, C, D/8) (all or a selection)
        -> low-res mask logits (N, C, 4h, 4w); size = (h, w)."""
        return self.mask_decoder.upscale(src, hyper, size)

    def decode_tokens(self, image_embeddings, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      text_ids=None, multimask_output: bool = True):
        """`decode` up to the masks: the same arguments -> hypernetwork outputs (N, C, D/8), image tokens
        (N, hw, D) and IoU predictions (N, C); `decode_masks` finishes. For callers that build only the masks
        whose IoU prediction passes a filter."""
        emb = image_embeddings
        if emb.ndim != 4 or emb.shape[-1] != self.prompt_dim:
            raise ValueError(f"image embeddings must be (N, h, w, {self.prompt_dim}), got shape {emb.shape}")
        prompts = [x for x in (point_coords, boxes, mask_input, text_ids) if x is not None]
        n, h, w, _ = emb.shape
        if emb.shape[0] == 1 and prompts:  # one embedding shared by every prompt set
            n = prompts[0].shape[0]
        frame = (h * self.patch_size, w * self.patch_size)
        pe = self.prompt_encoder

        tokens, labels = [], []
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2 or point_coords.shape[0] != n:
                raise ValueError(f"point_coords must be (N={n}, P, 2), got shape {point_coords.shape}")
            if point_labels.shape != point_coords.shape[:2]:
                raise ValueError(f"point_labels must be {point_coords.shape[:2]}, got shape {point_labels.shape}")
            coords, lab = point_coords.astype(jnp.float32), point_labels.astype(jnp.int32)
            if boxes is None:  # the official padding token
                coords = jnp.concatenate([coords, jnp.zeros((n, 1, 2), jnp.float32)], axis=1)
                lab = jnp.concatenate([lab, jnp.full((n, 1), PAD, jnp.int32)], axis=1)
            tokens.append(pe.embed_points(coords, lab, frame))
            labels.append(lab)
        if boxes is not None:
            if boxes.shape != (n, 4):
                raise ValueError(f"boxes must be (N={n}, 4), got shape {boxes.shape}")
            tokens.append(pe.embed_boxes(boxes.astype(jnp.float32), frame))
            labels.append(jnp.broadcast_to(jnp.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], jnp.int32), (n, 2)))
        if text_ids is not None:
            if not self.text:
                raise ValueError("this model has no text encoder (build it with text=True)")
            if text_ids.ndim != 2 or text_ids.shape[0] != n:
                raise ValueError(f"text_ids must be (N={n}, L), got shape {text_ids.shape}")
            text_tokens = self.text_encoder(text_ids)
            tokens.append(text_tokens.astype(jnp.float32))
            labels.append(jnp.full(text_tokens.shape[:2], POSITIVE_TEXT, jnp.int32))

        sparse = jnp.concatenate(tokens, axis=1) if tokens else jnp.zeros((n, 0, self.prompt_dim), jnp.float32)
        sparse_bias = sparse_mask = None
        if point_coords is not None:
            sparse_bias, sparse_mask = padding_weights(jnp.concatenate(labels, axis=1))

        if mask_input is not None:
            if mask_input.ndim == 3:
                mask_input = mask_input[..., None]
            if mask_input.shape != (n, 4 * h, 4 * w, 1):
                raise ValueError(f"mask_input must be (N={n}, {4 * h}, {4 * w}, 1) low-res logits, "
                                 f"got shape {mask_input.shape}")
            dense = pe.embed_masks(mask_input.astype(self.dtype or jnp.float32))
        else:
            dense = pe.no_mask(emb.shape[0], h, w)

        tokens = self.mask_decoder.attend(emb, pe.dense_pe(h, w), sparse, dense, sparse_bias, sparse_mask)
        hyper, iou = MaskDecoder.select(tokens.hyper, tokens.iou, multimask_output)
        return hyper, tokens.src, iou

    def __call__(self, images, point_coords=None, point_labels=None, boxes=None, mask_input=None, text_ids=None,
                 multimask_output: bool = True):
        """Encode images (B = N) and decode the prompts; at init also touches every prompt-encoder layer."""
        emb = self.encode_image(images)
        if self.is_initializing():
            n, h, w, _ = emb.shape
            self.prompt_encoder(jnp.zeros((n, 1, 2)), jnp.ones((n, 1), jnp.int32), jnp.zeros((n, 4)),
                                jnp.zeros((n, 4 * h, 4 * w, 1)), (h, w), (h * self.patch_size, w * self.patch_size))
        return self.decode(emb, point_coords, point_labels, boxes, mask_input, text_ids, multimask_output)


def padding_weights(labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Labels of the sparse tokens (N, S) -> key bias (N, S) float and key mask (N, S) bool.

    Padding tokens (label -1) are identical, so with k of them each attended with weight 1/k (bias −log k)
    they act as the single official padding token; in a prompt with a box (labels 2 / 3) they are masked.
    """
    is_pad = labels == PAD
    has_box = jnp.any((labels == BOX_TOP_LEFT) | (labels == BOX_BOTTOM_RIGHT), axis=1, keepdims=True)
    k = jnp.maximum(is_pad.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
    bias = jnp.where(is_pad & ~has_box, -jnp.log(k), 0.0)
    mask = ~(is_pad & has_box)
    return bias, mask


SAM_VARIANTS: dict[str, dict] = {
    "vit_b": dict(encoder_dim=768, encoder_depth=12, encoder_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_dim=1024, encoder_depth=24, encoder_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_dim=1280, encoder_depth=32, encoder_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # For fast CPU tests: 256-px input (16×16 grid, padded to 18×18 for 6×6 windows), small decoder, text on.
    "tiny": dict(image_size=256, encoder_dim=64, encoder_depth=2, encoder_heads=2, global_attn_indexes=(1,),
                 window_size=6, prompt_dim=64, decoder_heads=4, decoder_mlp_dim=256, iou_head_hidden_dim=64,
                 text=True, text_vocab_size=1024, text_max_len=16, text_dim=64, text_depth=2, text_heads=4,
                 text_mlp_dim=128),
}


def sam_variant(name: str, **overrides) -> Sam:
    """A SAM by name ("vit_b", "vit_l", "vit_h", "tiny"); `overrides` replace any field of `Sam`."""
    if name not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {name!r}; valid: {', '.join(SAM_VARIANTS)}")
    fields = dict(SAM_VARIANTS[name], **overrides)
    unknown = set(fields) - set(Sam.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise TypeError(f"unknown Sam field(s): {sorted(unknown)}")
    if "global_attn_indexes" in fields:
        fields["global_attn_indexes"] = tuple(fields["global_attn_indexes"])
    return Sam(**fields)


def sam_init(model: Sam, rng: jax.Array) -> dict:
    """Initialize every variable: {"params": ..., "constants": {"prompt_encoder": {"pe_gaussian": (2, D/2)}}}.

    Runs on a 4×4-patch dummy image (shapes do not depend on the input size), so it is cheap even for vit_h;
    wrap in `jax.eval_shape` to get shapes only.
    """
    grid = 4
    side = grid * model.patch_size
    inputs = dict(
        images=jnp.zeros((1, side, side, 3), jnp.float32),
        point_coords=jnp.zeros((1, 1, 2), jnp.float32), point_labels=jnp.ones((1, 1), jnp.int32),
        boxes=jnp.zeros((1, 4), jnp.float32), mask_input=jnp.zeros((1, 4 * grid, 4 * grid, 1), jnp.float32),
        text_ids=jnp.ones((1, model.text_max_len), jnp.int32) if model.text else None,
    )
    return dict(model.init({"params": rng}, **inputs))
