"""Batches of images with instance masks from a TFDS source (vitsam_shapes), for promptable segmentation.

`fill_instance_slots` puts an example's masks, boxes and labels into the fixed `max_masks` slots a batch
needs; `annotations` uses it too, for sources of encoded masks (SA-1B, COCO).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds

from vitsam.data import transforms
from vitsam.data.order import example_batches, resolve_process, to_iterator
from vitsam.data.sources import decode_only, source_features


def fill_instance_slots(objects: Iterable[tuple[np.ndarray, int]], max_masks: int, size: int) -> dict[str, np.ndarray]:
    """The first `max_masks` (>= 1) non-empty masks of `objects`, (mask (h, w) bool, label) pairs, in fixed slots:

      "masks": (max_masks, S, S) bool, each mask at the top left of the S x S frame (S = `size` >= h, w),
      "mask_valid": (max_masks,) bool,
      "boxes": (max_masks, 4) float32 x0, y0, x1, y1, the mask's tight box (x1, y1 exclusive); zeros if not valid,
      "labels": (max_masks,) int32, -1 if not valid.

    Empty masks (a tiny object can vanish when downscaled) are skipped; `objects` is read no further than the
    last mask kept, so a generator decodes only what is used.
    """
    masks = np.zeros((max_masks, size, size), dtype=bool)
    boxes = np.zeros((max_masks, 4), dtype=np.float32)
    labels = np.full((max_masks,), -1, dtype=np.int32)
    valid = np.zeros((max_masks,), dtype=bool)
    slot = 0
    for mask, label in objects:
        if not mask.any():
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        masks[slot, :mask.shape[0], :mask.shape[1]] = mask
        boxes[slot] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        labels[slot] = label
        valid[slot] = True
        slot += 1
        if slot == max_masks:
            break
    return {"masks": masks, "mask_valid": valid, "boxes": boxes, "labels": labels}


@dataclasses.dataclass(frozen=True)
class _InstanceExample:
    """(index, is_real), rng -> fixed-shape image, instance masks, boxes and labels."""

    source: Any
    image_size: int
    max_masks: int
    train: bool
    flip: bool

    def __call__(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, is_real = element
        record = self.source[index]
        size = self.image_size
        image = transforms.to_rgb(record["image"])
        objects = record["objects"]
        masks = [np.asarray(m).reshape(m.shape[:2]) != 0 for m in objects["mask"]]
        labels = np.asarray(objects["label"], dtype=np.int32).reshape(-1)
        if image.shape[:2] != (size, size):
            image = transforms.resize(image, (size, size))
            masks = [transforms.resize(m, (size, size), nearest=True) for m in masks]
        if self.train and self.flip and rng.random() < 0.5:
            image = transforms.horizontal_flip(image)
            masks = [transforms.horizontal_flip(m) for m in masks]
        out = {"image": image, **fill_instance_slots(zip(masks, labels), self.max_masks, size),
               "mask": np.bool_(is_real), "index": np.int32(index)}
        if "label" in record:
            out["label"] = np.int32(record["label"])
        return out


def make_instance_iterator(source, batch_size: int, image_size: int, max_masks: int, *,
                           train: bool, seed: int = 0, num_epochs: int | None = None,
                           process_index: int | None = None, process_count: int | None = None,
                           flip: bool = True, num_threads: int = 2, prefetch: int = 4,
                           worker_count: int = 0):
    """Batches of images with instance masks, for promptable segmentation (same order, sharding
    and state as `pipeline.make_iterator`).

    The source needs "image" and "objects" with "mask" and "label" (as vitsam_shapes has). Yields
      "image": (b, S, S, 3) uint8 (the model normalizes),
      "masks": (b, max_masks, S, S) bool, "mask_valid": (b, max_masks) bool,
      "boxes": (b, max_masks, 4) float32 [x0, y0, x1, y1] pixels of the S x S image, the tight box
        of the mask (x1, y1 exclusive: last column / row + 1); zeros where not valid,
      "labels": (b, max_masks) int32 object classes, -1 where not valid,
      "label": (b,) int32 image label when the source has one, "mask": (b,) bool real example,
      "index": (b,) int32 position in the split.
    Objects keep their stored order (vitsam_shapes: the main shape first) and the first max_masks
    are kept. Images are resized to S x S (bilinear; masks nearest) and, in training, flipped
    horizontally at random; boxes are computed from the final masks.
    """
    if max_masks <= 0:
        raise ValueError(f"max_masks must be positive, got {max_masks}")
    features = source_features(source)
    if "objects" not in features or not isinstance(features["objects"], tfds.features.Sequence) \
            or "mask" not in features["objects"].feature:
        raise ValueError(f"dataset {source.dataset_info.name!r} has no objects/mask feature")
    process_index, process_count = resolve_process(process_index, process_count)
    keys = ["image", "objects"] + (["label"] if "label" in features else [])
    source = decode_only(source, keys)
    example = _InstanceExample(source=source, image_size=image_size, max_masks=max_masks,
                               train=train, flip=flip)
    ds = example_batches(len(source), batch_size, example, train=train, seed=seed, num_epochs=num_epochs,
                         process_index=process_index, process_count=process_count)
    return to_iterator(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
