"""Batches of images with instance masks from annotation files (SA-1B, COCO) for promptable segmentation.

A source here is any random-access object (`len`, `source[i]`) whose records are
    {"image": (H, W, 3) uint8, "segmentations": [K COCO / SA-1B segmentations], "labels": (K,) int32}
(labels are class ids, -1 where unknown), with an optional `class_names` attribute. `sa1b.SA1BSource` and
`coco.CocoInstancesSource` are such sources. Masks stay encoded in the record; only the ones a batch uses are
decoded.

`make_annotation_iterator` follows `instances.make_instance_iterator` (same keys, order, sharding, state) but
keeps the aspect ratio as SAM does: the longest side is resized to S (round half up) and the image is padded
at the bottom / right with zeros; "input_size" (b, 2) gives the (height, width) of the image inside the S × S
frame.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vitsam.data import rle, transforms
from vitsam.data.instances import fill_instance_slots
from vitsam.data.order import example_batches, resolve_process, to_iterator
from vitsam.models.sam.processing import resized_shape


@dataclasses.dataclass(frozen=True)
class _AnnotatedExample:
    source: Any
    image_size: int
    max_masks: int
    train: bool
    flip: bool
    min_area: int

    def __call__(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, is_real = element
        record = self.source[index]
        image = transforms.to_rgb(record["image"])
        height, width = image.shape[:2]
        segmentations = record["segmentations"]
        labels = np.asarray(record.get("labels", np.full(len(segmentations), -1)), np.int32).reshape(-1)
        if len(labels) != len(segmentations):
            raise ValueError(f"example {index}: {len(segmentations)} segmentations but {len(labels)} labels")
        size = self.image_size
        new_h, new_w = resized_shape(height, width, size)
        flip = self.train and self.flip and rng.random() < 0.5

        out_image = np.zeros((size, size, 3), np.uint8)
        resized = transforms.resize(image, (new_h, new_w))
        out_image[:new_h, :new_w] = transforms.horizontal_flip(resized) if flip else resized
        order = rng.permutation(len(segmentations)) if self.train else np.arange(len(segmentations))

        def objects():  # decoded one at a time, as long as slots are left
            for j in order:
                mask = rle.decode_segmentation(segmentations[j], height, width)
                if mask.sum() < self.min_area:
                    continue
                mask = transforms.resize(mask, (new_h, new_w), nearest=True)
                yield (transforms.horizontal_flip(mask) if flip else mask), labels[j]

        return {"image": out_image, **fill_instance_slots(objects(), self.max_masks, size),
                "input_size": np.array([new_h, new_w], np.int32), "mask": np.bool_(is_real),
                "index": np.int32(index)}


def make_annotation_iterator(source, batch_size: int, image_size: int, max_masks: int, *, train: bool,
                             seed: int = 0, num_epochs: int | None = None, process_index: int | None = None,
                             process_count: int | None = None, flip: bool = True, min_area: int = 0,
                             num_threads: int = 2, prefetch: int = 4, worker_count: int = 0):
    """Batches from an annotation source (see the module docstring), b = batch_size per process:

      "image": (b, S, S, 3) uint8, resized (longest side S) and zero-padded bottom / right,
      "input_size": (b, 2) int32 (height, width) of the image inside the frame,
      "masks": (b, max_masks, S, S) bool, "mask_valid": (b, max_masks) bool,
      "boxes": (b, max_masks, 4) float32 x0, y0, x1, y1 (x1, y1 exclusive) in frame pixels,
      "labels": (b, max_masks) int32 class ids (-1: unknown or padding), "mask": (b,) bool, "index": (b,) int32.

    Training draws up to max_masks masks per image at random (a new draw every epoch) and flips horizontally
    at random; evaluation keeps the first max_masks in stored order. Masks smaller than `min_area` pixels in
    the original image are skipped. Order, sharding and get_state / set_state as `pipeline.make_iterator`.
    """
    if max_masks <= 0:
        raise ValueError(f"max_masks must be positive, got {max_masks}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    process_index, process_count = resolve_process(process_index, process_count)
    example = _AnnotatedExample(source=source, image_size=image_size, max_masks=max_masks, train=train,
                                flip=flip, min_area=min_area)
    ds = example_batches(len(source), batch_size, example, train=train, seed=seed, num_epochs=num_epochs,
                         process_index=process_index, process_count=process_count)
    return to_iterator(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
