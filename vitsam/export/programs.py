"""The functions that are exported: pure JAX functions of arrays, the weights closed over as constants.

SAM
  image_encoder(images) -> image_embeddings
    images             (B, H, W, 3) uint8 RGB, any H × W up to `max_side` (resized and normalised inside)
    image_embeddings   (B, h, w, D) float32, (B, 64, 64, 256) for the 1024-px models; all NaN for an image
                       with a side above `max_side` (the StableHLO program refuses it)
  prompt_decoder(image_embeddings, point_coords, point_labels, boxes, has_box, mask_input, has_mask_input,
                 original_size) -> masks, iou_predictions, low_res_masks
    image_embeddings   (1, h, w, D) float32, one image's embedding
    point_coords       (N, P, 2) float32, (x, y) pixels of the original image
    point_labels       (N, P) int32: 1 foreground, 0 background, -1 padding (ignored)
    boxes              (N, 4) float32, x0, y0, x1, y1 pixels of the original image
    has_box            (N,) float32: 1 uses the box of that row, 0 ignores it
    mask_input         (N, m, m) float32 low-res logits (a previous low_res_masks[:, c]), m = 4h
    has_mask_input     (N,) float32: 1 uses the mask input of that row, 0 ignores it
    original_size      (H, W, 0) uint8, an empty array whose shape is the original image's: exported programs
                       have shapes that follow their inputs' shapes, never their values
    masks              (N, 4, H, W) bool, iou_predictions (N, 4) float32, low_res_masks (N, 4, m, m) float32;
                       index 0 is the single-mask output, 1–3 the three masks for ambiguous prompts (SAM's
                       multimask output), as the official mask decoder orders its mask tokens.
ViT
  classifier(images) -> logits
    images (B, S, S, 3) uint8 RGB at the model's resolution (mapped to [-1, 1] inside), logits (B, classes) float32.

A box is two extra prompt points labelled 2 and 3 (its corners), which is how SAM encodes it; has_box = 0 turns
them into padding points. Padding points never change the result (see `vitsam.models.sam.sam`), so a row
without a box, and the fixed number of point slots of the ONNX decoder, give exactly what `SamPredictor` gives.
"""

from __future__ import annotations

import jax.numpy as jnp

from vitsam.export import runtime_sizes
from vitsam.models.sam.processing import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PAD
from vitsam.models.sam.sam import padding_weights


def sam_image_encoder(model, variables, max_side: int):
    """The SAM image encoder on uint8 images of any size (sides up to `max_side`)."""
    taps = runtime_sizes.max_taps(max_side, model.image_size)

    def image_encoder(images):
        x = runtime_sizes.preprocess(images, model.image_size, taps)
        embeddings = model.apply(variables, x, method=model.encode_image).astype(jnp.float32)
        # StableHLO refuses larger images (a shape constraint); ONNX cannot refuse, so its answer is NaN.
        sides = jnp.stack([jnp.asarray(images.shape[1], jnp.int32), jnp.asarray(images.shape[2], jnp.int32)])
        return jnp.where(jnp.all(sides <= max_side), embeddings, jnp.nan)  # run-time values, not trace-time

    return image_encoder


def _decode_all(module, embeddings, coords, labels, mask_input, has_mask_input):
    """`Sam.decode` with the prompt kinds chosen per row by flags: (N, 4, m, m) logits, (N, 4) IoU."""
    n, p = labels.shape
    g = module.embedding_size
    frame = (g * module.patch_size, g * module.patch_size)
    pe = module.prompt_encoder
    # The official not-a-point token; a row with a box masks it out (`padding_weights`).
    coords = jnp.concatenate([coords, jnp.zeros_like(coords[:, :1])], axis=1)
    labels = jnp.concatenate([labels, jnp.full_like(labels[:, :1], PAD)], axis=1)
    sparse = pe.embed_points(coords, labels, frame)
    bias, key_mask = padding_weights(labels)
    use_mask = has_mask_input[:, None, None, None] > 0
    dense = jnp.where(use_mask, pe.embed_masks(mask_input[..., None]), pe.no_mask(n, g, g))
    image = jnp.broadcast_to(embeddings, (n, *embeddings.shape[1:]))
    return module.mask_decoder(image, pe.dense_pe(g, g), sparse, dense, bias, key_mask)


def sam_prompt_decoder(model, variables):
    """The SAM prompt encoder + mask decoder + post-processing to the original image size."""
    size = model.image_size

    def prompt_decoder(image_embeddings, point_coords, point_labels, boxes, has_box, mask_input, has_mask_input,
                       original_size):
        height, width = original_size.shape[0], original_size.shape[1]
        h, w = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
        new_h, new_w = runtime_sizes.resized_size(h, w, size)
        scale = jnp.stack([new_w.astype(jnp.float32) / w.astype(jnp.float32),
                           new_h.astype(jnp.float32) / h.astype(jnp.float32)])  # original -> input frame (x, y)
        corners = boxes.astype(jnp.float32).reshape(-1, 2, 2)
        corner_labels = jnp.where(has_box[:, None] > 0, jnp.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], jnp.int32),
                                  PAD)
        coords = jnp.concatenate([point_coords.astype(jnp.float32), corners], axis=1) * scale
        labels = jnp.concatenate([point_labels.astype(jnp.int32), corner_labels], axis=1)
        low_res, iou = model.apply(variables, image_embeddings.astype(jnp.float32), coords, labels,
                                   mask_input.astype(jnp.float32), has_mask_input.astype(jnp.float32),
                                   method=_decode_all)
        low_res = low_res.astype(jnp.float32)
        logits = runtime_sizes.crop_and_resize_logits(low_res, height, width, size)
        return logits > 0.0, iou.astype(jnp.float32), low_res

    return prompt_decoder


def vit_classifier(model, variables):
    """A ViT on uint8 images at its resolution: (B, S, S, 3) -> logits (B, classes)."""

    def classifier(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        return model.apply(variables, x).astype(jnp.float32)

    return classifier
