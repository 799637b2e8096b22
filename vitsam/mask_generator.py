"""SAM's automatic mask generator ("segment everything"), segment-anything's `SamAutomaticMaskGenerator` algorithm.

    generator = SamAutomaticMaskGenerator(model, variables)           # the official defaults
    annotations = generator.generate(image)                           # uint8 (H, W, 3) RGB
    # [{"segmentation": (H, W) bool, "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
    #   "point_coords": [[x, y]], "stability_score": float, "crop_box": [x, y, w, h]}, ...]

The algorithm (as the official one):
1. Crops: the whole image, then for layer i = 1 … crop_n_layers a 2^i × 2^i grid of overlapping crops
   (`generate_crop_boxes`). Each layer prompts with a regular grid of points (`build_point_grid`), n × n with
   n = points_per_side / crop_n_points_downscale_factor^i, scaled to the crop.
2. Per crop: the image encoder runs once on the crop; every grid point is a single foreground click with three
   output masks (multimask). A candidate mask survives if its predicted IoU > pred_iou_thresh, its stability
   score (IoU of the logits thresholded at +offset and -offset) >= stability_score_thresh (a threshold of 0
   turns each filter off), and its box does not touch an edge of the crop that is not an edge of the image
   (within 20 px). Box NMS within the crop (IoU > box_nms_thresh suppresses, higher predicted IoU first).
3. Across crops: box NMS with crop_nms_thresh preferring masks of smaller crops (score 1 / crop area).
4. min_mask_region_area > 0: fill holes, then remove islands, smaller than it (8-connected regions,
   `scipy.ndimage.label`); NMS again (max of both thresholds), preferring the masks this did not change.
Boxes are XYXY with inclusive pixel indices (the official `batched_mask_to_box`); "bbox" is their XYWH, so a
one-pixel mask has width 0, as in the official output. NMS is torchvision's `batched_nms` for one class:
greedy in descending score order (stable for ties), IoU = intersection / union of the box areas
(x1 - x0) · (y1 - y0).

How it runs (fixed shapes; nothing is compiled per call once an image size has been seen):
- The image encoder: `SamPredictor.set_images` on all crops (its jitted pre-processing, compiled per crop size,
  and encoder, batches of up to 4 crops).
- The points go in batches of points_per_batch B (the last batch padded; padding rows are dropped), through
  three jitted programs (compiled per model, crop size (h, w) and B; crop position, image size and the
  thresholds are traced arguments):
  `_attend_points`: prompt encoder + the decoder's transformer and heads -> hypernetwork outputs, image tokens
  and the predicted IoU of the 3B candidates. The IoU comes to the host; only the prompts with a candidate
  above pred_iou_thresh go on (all when it is 0), in a run padded to B, B/2 or B/4 prompts (3 programs):
  `_masks_of`: their low-res logits (the upscaling convolutions and hypernetwork products), and
  `_filter_candidates`: logits upscaled to the crop (3K, h, w) (`upscale_logits`: the official bilinear
  post-processing as a product and row taps) -> stability scores, threshold masks, boxes, the filters
  -> bit-packed masks (3K, h, ceil(w / 8)) uint8 that stay on the device, boxes (3K, 4), predicted IoU,
  stability (3K,), keep flags (3K,). The masks of candidates that fail the IoU filter are never built, as
  the official generator's would be dropped; everything else is computed for every candidate.
- `nms` (jitted, compiled per candidate count N, padded to a power of two): a fixed-size greedy NMS on the device, a `fori_loop` over
  the candidates sorted by score with a validity mask (O(N) memory, no N × N matrix).
- Only the small per-candidate arrays and then the kept masks (gathered on the device, bucketed to powers
  of two) are copied to the host.
The cross-crop NMS and the small-region NMS use `nms` too.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitsam import mask_ops
from vitsam.models.sam import processing
from vitsam.models.sam.interpolate import linear_taps
from vitsam.predictor import SamPredictor, _check_image, bucket

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


# ----------------------------------------------------------------------------- the generator

class SamAutomaticMaskGenerator:
    """Masks for everything in an image: a grid of single-point prompts, filtered and de-duplicated.

    Args (segment-anything's names and defaults):
      model, variables: a `vitsam.models.Sam` and its variables.
      points_per_side: points along one side of the grid (points_per_side² prompts on the whole image); None
        when `point_grids` is given.
      points_per_batch: prompts decoded together (memory: 3 × this many masks at the crop size).
      pred_iou_thresh: keep masks with predicted IoU > this (0: no filter).
      stability_score_thresh: keep masks with stability score >= this (0: no filter).
      stability_score_offset: the logit offset of the stability score.
      box_nms_thresh: box IoU above which NMS within a crop drops the lower predicted IoU.
      crop_n_layers: layers of crops (layer i: 2^i × 2^i crops) besides the whole image.
      crop_nms_thresh: box IoU above which NMS across crops drops the mask of the larger crop.
      crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the short image side at layer 1.
      crop_n_points_downscale_factor: layer i uses points_per_side / factor^i points a side.
      point_grids: explicit grids in [0, 1]², one (n_i, 2) array (x, y) per layer (crop_n_layers + 1 of them).
      min_mask_region_area: fill holes and remove islands below this many pixels (0: off; needs scipy).
      output_mode: "binary_mask" (bool (H, W)), "uncompressed_rle" ({"size", "counts": list}) or
        "coco_rle" ({"size", "counts": str}).
    """

    def __init__(self, model, variables: dict, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: Sequence[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask"):
        check_options(points_per_side=points_per_side, points_per_batch=points_per_batch,
                      pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                      stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
                      crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
                      crop_overlap_ratio=crop_overlap_ratio,
                      crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
                      min_mask_region_area=min_mask_region_area, output_mode=output_mode)
        if point_grids is None:
            self.point_grids = mask_ops.build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                           crop_n_points_downscale_factor)
        else:
            self.point_grids = [np.asarray(g, np.float64) for g in point_grids]
        # On the device once (numpy variables would be copied to it on every call of the jitted functions).
        self.predictor = SamPredictor(model, jax.tree.map(jnp.asarray, variables))
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode

    def generate(self, image) -> list[dict[str, Any]]:
        """uint8 RGB image (H, W, 3) -> one dict per mask (keys in the module docstring), in the order the NMS
        kept them (within one crop: descending predicted IoU)."""
        image = _check_image(image)
        h, w = image.shape[:2]
        crop_boxes, layers = mask_ops.generate_crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        # An image side shorter than a layer's crop count gives empty crop boxes there: nothing to segment.
        kept = [i for i, (x0, y0, x1, y1) in enumerate(crop_boxes) if x1 > x0 and y1 > y0]
        crop_boxes, layers = [crop_boxes[i] for i in kept], [layers[i] for i in kept]
        # All crops through the encoder at once (batches of the predictor's encode_batch), then each crop's points.
        self.predictor.set_images([image[y0:y1, x0:x1] for x0, y0, x1, y1 in crop_boxes])
        crops = [self._process_crop(i, box, layer, (h, w)) for i, (box, layer) in enumerate(zip(crop_boxes, layers))]
        self.predictor.reset_image()

        # Every kept mask of every crop: (crop index, row in that crop's arrays).
        which = np.concatenate([np.full(len(c["iou"]), i) for i, c in enumerate(crops)]).astype(np.int64)
        row = np.concatenate([np.arange(len(c["iou"])) for c in crops]).astype(np.int64)
        boxes = np.concatenate([c["boxes"] for c in crops]).reshape(-1, 4)
        if len(crops) > 1:  # duplicates across crops: the mask of the smaller crop wins
            areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in crop_boxes], np.float32)
            scores = (np.float32(1.0) / areas)[which]
            keep = mask_ops.nms_indices(boxes, scores, self.crop_nms_thresh)
            which, row, boxes = which[keep], row[keep], boxes[keep]

        masks = [_uncrop_mask(crops[c]["masks"][r], crop_boxes[c], (h, w)) for c, r in zip(which, row)]
        if self.min_mask_region_area > 0 and masks:
            keep, new, changed = mask_ops.postprocess_small_regions(
                masks, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
            for i in keep:
                if changed[i]:
                    masks[i], boxes[i] = new[i], mask_ops.mask_to_box_np(new[i])
            which, row, boxes = which[keep], row[keep], boxes[keep]
            masks = [masks[i] for i in keep]

        annotations = []
        for mask, c, r, box in zip(masks, which, row, boxes):
            x0, y0, x1, y1 = (int(v) for v in box)
            cx0, cy0, cx1, cy1 = crop_boxes[c]
            annotations.append({
                "segmentation": _encode_mask(mask, self.output_mode),
                "area": int(mask.sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(crops[c]["iou"][r]),
                "point_coords": [[float(v) for v in crops[c]["points"][r]]],
                "stability_score": float(crops[c]["stability"][r]),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        return annotations

    def _process_crop(self, index: int, crop_box: list[int], layer: int, orig_size: tuple[int, int]) -> dict:
        """Crop `index` of the predictor's images -> its masks that survive the filters and the in-crop NMS, best
        first: masks (K, h, w) bool (crop frame), boxes (K, 4) (image frame), iou (K,), stability (K,), points
        (K, 2) (image frame)."""
        x0, y0, x1, y1 = crop_box
        crop_h, crop_w = y1 - y0, x1 - x0
        predictor = self.predictor
        model = predictor.model
        input_size = predictor.input_sizes[index]
        embedding = predictor.get_image_embedding(index)
        scale = np.array([input_size[1] / crop_w, input_size[0] / crop_h], np.float32)  # crop px -> input frame
        points = self.point_grids[layer] * np.array([crop_w, crop_h], np.float64)  # (n, 2) crop pixels
        n, per_batch = len(points), self.points_per_batch
        args = dict(crop_box=np.array(crop_box, np.int32),
                    orig_box=np.array([0, 0, orig_size[1], orig_size[0]], np.int32),
                    iou_thresh=np.float32(self.pred_iou_thresh),
                    stability_thresh=np.float32(self.stability_score_thresh),
                    offset=np.float32(self.stability_score_offset))

        runs = []  # per masks run: (packed, boxes, iou, stability, keep) on the device, prompt index per row
        for start in range(0, n, per_batch):
            chunk = points[start:start + per_batch]
            valid = np.arange(per_batch) < len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], per_batch - len(chunk), axis=0)])
            hyper, src, iou = _attend_points(model, predictor.variables, embedding, scale, chunk.astype(np.float32))
            # Only prompts with a mask that can pass the IoU filter get their masks built (upscaling and the
            # full-size work are most of the time); their rows go in a run of per_batch, 1/2 or 1/4 of it.
            wanted = valid.copy()
            if self.pred_iou_thresh > 0:
                wanted &= (np.asarray(iou) > np.float32(self.pred_iou_thresh)).any(axis=1)
            rows = np.flatnonzero(wanted)
            if not len(rows):
                continue
            size = next(k for k in _run_sizes(per_batch) if k >= len(rows))
            index = np.concatenate([rows, np.repeat(rows[:1], size - len(rows))]).astype(np.int32)
            low, run_iou = _masks_of(model, predictor.variables, src, hyper, iou, index, grid=embedding.shape[:2])
            runs.append((_filter_candidates(low, run_iou, np.arange(size) < len(rows), **args,
                                            crop_size=(crop_h, crop_w), input_size=input_size,
                                            image_size=model.image_size),
                         start + np.repeat(index, 3)))
        if not runs:
            return {"masks": np.zeros((0, crop_h, crop_w), bool), "boxes": np.zeros((0, 4), np.int64),
                    "iou": np.zeros(0, np.float32), "stability": np.zeros(0, np.float32),
                    "points": np.zeros((0, 2))}
        packed, boxes, iou, stability, keep = (list(x) for x in zip(*(r for r, _ in runs)))
        prompt = np.concatenate([p for _, p in runs])  # candidate -> its prompt's index in `points`
        total = len(prompt)
        pad = bucket(total) - total  # NMS programs shared by candidate counts within a power of two
        cat = lambda xs, value=0: jnp.pad(jnp.concatenate(xs), [(0, pad)] + [(0, 0)] * (xs[0].ndim - 1),  # noqa: E731
                                          constant_values=value)
        order, kept = mask_ops.nms(cat(boxes), cat(iou), cat(keep, False), mask_ops.float32_below(self.box_nms_thresh))
        order, kept = np.asarray(order), np.asarray(kept)
        index = order[kept]  # candidate indices (the runs' rows in order), best first
        boxes, iou, stability = (np.asarray(jnp.concatenate(x))[index] for x in (boxes, iou, stability))

        # Copy only the kept masks: gather each run's rows on the device (row counts bucketed), then unpack.
        starts = np.cumsum([0] + [len(x) for x in packed])
        masks = np.zeros((len(index), crop_h, crop_w), bool)
        for r, run_packed in enumerate(packed):
            mine = np.flatnonzero((index >= starts[r]) & (index < starts[r + 1]))
            if not len(mine):
                continue
            local = index[mine] - starts[r]
            taken = np.asarray(_take_rows(run_packed, np.pad(local, (0, bucket(len(local)) - len(local)))))
            masks[mine] = np.unpackbits(taken[:len(local)], axis=-1, count=crop_w).astype(bool)

        offset = np.array([x0, y0], np.float64)
        return {"masks": masks, "boxes": boxes.astype(np.int64) + np.array([x0, y0, x0, y0]), "iou": iou,
                "stability": stability, "points": points[prompt[index]] + offset}


def _run_sizes(per_batch: int) -> tuple[int, ...]:
    """The prompt counts a masks run is padded to: per_batch / 4, per_batch / 2 and per_batch (3 programs)."""
    return tuple(sorted({max(per_batch // 4, 1), max(per_batch // 2, 1), per_batch}))


@partial(jax.jit, static_argnames=("model",))
def _attend_points(model, variables, embedding, scale, points):
    """Single foreground clicks (B, 2) crop px on one crop's embedding (h, w, D), scale (2,) crop px -> input
    frame -> the decoder up to its masks: hypernetwork outputs (B, 3, D/8), image tokens (B, hw, D) and
    predicted IoU (B, 3) float32 of the three multimask outputs."""
    b = points.shape[0]
    return model.apply(variables, embedding[None], points[:, None, :] * scale, jnp.ones((b, 1), jnp.int32),
                       multimask_output=True, method=model.decode_tokens)


@partial(jax.jit, static_argnames=("model", "grid"))
def _masks_of(model, variables, src, hyper, iou, index, *, grid):
    """Rows `index` (K,) of `_attend_points`' outputs -> their low-res logits (3K, m, m), prompt-major, and
    predicted IoU (3K,); grid = the embedding's (h, w)."""
    low = model.apply(variables, src[index], hyper[index], grid, method=model.decode_masks)
    return low.reshape(-1, *low.shape[2:]), iou[index].reshape(-1)


@partial(jax.jit, static_argnames=("crop_size", "input_size", "image_size"))
def _filter_candidates(low, iou, valid, crop_box, orig_box, iou_thresh, stability_thresh, offset, *, crop_size,
                       input_size, image_size):
    """Low-res logits (3K, m, m), predicted IoU (3K,) and valid (K,) of K prompts on a crop; crop_box (4,) XYXY
    and orig_box (4,) [0, 0, W, H] in image px; scalar thresholds; crop_size (h, w), input_size (the crop
    resized) and the model's image_size static.
    -> packed masks (3K, h, ceil(w / 8)) uint8 (np.unpackbits(..., axis=-1, count=w)), boxes (3K, 4) int32 XYXY
    inclusive in the crop frame, predicted IoU (3K,), stability (3K,), keep (3K,) bool (valid and passes the
    IoU, stability and crop-edge filters).

    Apart from `_masks_of`: XLA:CPU fused the decoder's last products into the full-size mask work and ran the
    whole about twice as slowly as the two parts."""
    logits = upscale_logits(low, input_size, crop_size, image_size)  # (3K, h, w)
    stability = mask_ops.stability_score(logits, processing.MASK_THRESHOLD, offset)
    masks = logits > processing.MASK_THRESHOLD
    boxes = mask_ops.masks_to_boxes(masks)
    keep = jnp.repeat(valid, low.shape[0] // valid.shape[0])
    keep &= (iou_thresh <= 0) | (iou > iou_thresh)
    keep &= (stability_thresh <= 0) | (stability >= stability_thresh)
    keep &= ~mask_ops.box_near_crop_edge(boxes, crop_box, orig_box)
    return jnp.packbits(masks, axis=-1), boxes, iou, stability, keep


def upscale_logits(low_res, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int):
    """Low-res logits (N, m, m) -> logits at the original size (N, H, W) float32: `processing.postprocess_logits`
    (bilinear to (S, S), crop the resized image's `input_size`, bilinear to `original_size`, PyTorch's taps) as
    one composed linear map per axis, equal up to float rounding (~1e-6).

    The columns: a product with the (W, m) interpolation matrix. The rows: each output row mixes at most a
    few low-res rows (2 for an upscale), so whole-row gathers with their weights, about 5x fewer operations
    than a second product (XLA:CPU gathers along the last axis are slow; whole rows are copies)."""
    cols, row_index, row_weight = _interpolation_maps(low_res.shape[-1], input_size, original_size, image_size)
    x = jnp.einsum("nkl,wl->nkw", low_res.astype(jnp.float32), cols, precision=jax.lax.Precision.HIGHEST)
    return sum(jnp.take(x, row_index[:, t], axis=1) * row_weight[:, t][None, :, None]
               for t in range(row_index.shape[1]))


@lru_cache(maxsize=64)
def _interpolation_maps(m: int, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The composed per-axis maps low-res (m) -> S -> the first input_size entries -> original size: the columns'
    as a float32 matrix (W, m); the rows' as taps, source rows (H, T) int32 and weights (H, T) float32 (T: the
    most low-res rows any output row mixes; unused taps read row 0 with weight 0)."""
    def resize(in_size, out_size):  # (out, in) float64, `F.interpolate(..., align_corners=False)`'s two taps
        i0, i1, frac = linear_taps(in_size, out_size, fused=False)
        r = np.zeros((out_size, in_size))
        np.add.at(r, (np.arange(out_size), i0), 1 - frac.astype(np.float64))
        np.add.at(r, (np.arange(out_size), i1), frac.astype(np.float64))
        return r

    rows, cols = ((resize(kept, out) @ resize(m, image_size)[:kept]).astype(np.float32)
                  for kept, out in zip(input_size, original_size))
    taps = max(int((rows != 0).sum(1).max()), 1)
    index = np.zeros((len(rows), taps), np.int32)
    weight = np.zeros((len(rows), taps), np.float32)
    for o, row in enumerate(rows):
        nz = np.flatnonzero(row)
        index[o, :len(nz)], weight[o, :len(nz)] = nz, row[nz]
    return cols, index, weight


@jax.jit
def _take_rows(x, index):
    """x (N, ...), index (K,) -> x[index] (K, ...)."""
    return x[index]


def _uncrop_mask(mask: np.ndarray, crop_box: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """A crop's mask (h, w) -> the image's (H, W), False outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, size[1], size[0]):
        return mask
    full = np.zeros(size, bool)
    full[y0:y1, x0:x1] = mask
    return full


def _encode_mask(mask: np.ndarray, output_mode: str):
    from vitsam.data import rle

    if output_mode == "binary_mask":
        return mask
    return rle.encode(mask, compressed=output_mode == "coco_rle")


# ----------------------------------------------------------------------------- options

def check_options(*, points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88, stability_score_thresh=0.95,
                  stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7,
                  crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, point_grids=None,
                  min_mask_region_area=0, output_mode="binary_mask") -> None:
    """A one-line ValueError for the first bad `SamAutomaticMaskGenerator` option (needs no model)."""
    def whole(name, value, least):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")

    def unit(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")

    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids (set points_per_side=None "
                         "with point_grids)")
    if points_per_side is not None:
        whole("points_per_side", points_per_side, 1)
    whole("points_per_batch", points_per_batch, 1)
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh),
                        ("box_nms_thresh", box_nms_thresh), ("crop_nms_thresh", crop_nms_thresh)):
        unit(name, value)
    if isinstance(stability_score_offset, bool) or not isinstance(stability_score_offset, (int, float, np.number)) \
            or not math.isfinite(stability_score_offset) or stability_score_offset < 0:
        raise ValueError(f"stability_score_offset must be a finite number >= 0, got {stability_score_offset!r}")
    whole("crop_n_layers", crop_n_layers, 0)
    if isinstance(crop_overlap_ratio, bool) or not isinstance(crop_overlap_ratio, (int, float, np.number)) \
            or not 0 <= crop_overlap_ratio < 1:
        raise ValueError(f"crop_overlap_ratio must be a number in [0, 1), got {crop_overlap_ratio!r}")
    whole("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
    whole("min_mask_region_area", min_mask_region_area, 0)
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"unknown output_mode {output_mode!r}; valid: {', '.join(OUTPUT_MODES)}")
    if points_per_side is not None:
        for layer in range(crop_n_layers + 1):
            if int(points_per_side / crop_n_points_downscale_factor ** layer) < 1:
                raise ValueError(f"points_per_side {points_per_side} / crop_n_points_downscale_factor "
                                 f"{crop_n_points_downscale_factor}^{layer} leaves no points in crop layer {layer}")
    else:
        grids = list(point_grids)
        if len(grids) != crop_n_layers + 1:
            raise ValueError(f"point_grids must hold crop_n_layers + 1 = {crop_n_layers + 1} grids, got {len(grids)}")
        for i, g in enumerate(grids):
            g = np.asarray(g, np.float64)
            if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
                raise ValueError(f"point_grids[{i}] must be a non-empty (n, 2) array of (x, y), got shape {g.shape}")
            if not np.all((g >= 0) & (g <= 1)):
                raise ValueError(f"point_grids[{i}] must lie in [0, 1] (fractions of the crop's width and height)")


# ----------------------------------------------------------------------------- output: SA-1B records, pictures

def sa1b_record(annotations: Sequence[dict], image_id: int, file_name: str, height: int, width: int) -> dict:
    """`generate`'s output (any output_mode) -> an SA-1B annotation file's dict, masks as COCO RLE strings
    ({"image": {...}, "annotations": [{"id", "segmentation", "bbox", "area", "predicted_iou",
    "stability_score", "point_coords", "crop_box"}]}); non-finite scores become None (strict JSON)."""
    from vitsam.data import rle

    def finite(x):
        return float(x) if math.isfinite(x) else None

    anns = []
    for i, ann in enumerate(annotations):
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            counts = seg["counts"]
            counts = counts if isinstance(counts, str) else rle.encode_counts(counts)
            seg = {"size": list(seg["size"]), "counts": counts}
        else:
            seg = rle.encode(np.asarray(seg, bool))
        anns.append({"id": i, "segmentation": seg, "bbox": list(ann["bbox"]), "area": int(ann["area"]),
                     "predicted_iou": finite(ann["predicted_iou"]), "stability_score": finite(ann["stability_score"]),
                     "point_coords": ann["point_coords"], "crop_box": list(ann["crop_box"])})
    return {"image": {"image_id": int(image_id), "width": int(width), "height": int(height), "file_name": file_name},
            "annotations": anns}


def mask_color(k: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for mask k (hues spaced by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((k * 0.6180339887) % 1.0, 0.75, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def overlay_masks(image: np.ndarray, masks, alpha: float = 0.5) -> np.ndarray:
    """Image (H, W, 3) uint8 + masks (K, H, W) bool -> (H, W, 3) uint8: mask k blended in `mask_color(k)`, the
    largest first (small masks stay visible on top), then every mask outlined in its colour."""
    from vitsam.overlay import mask_boundary

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay_masks expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    masks = np.asarray(masks, bool).reshape(-1, h, w)
    order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
    out = image.astype(np.float32)
    for k in order:
        out[masks[k]] = (1 - alpha) * out[masks[k]] + alpha * np.array(mask_color(int(k)), np.float32)
    for k in order:
        out[mask_boundary(masks[k])] = mask_color(int(k))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
