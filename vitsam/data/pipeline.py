"""Input pipelines: TFDS data sources read without TensorFlow, fed through grain; here, classification batches.

The parts live in modules of their own: `sources` (open_source, class_names, cache_in_memory, ...), `order`
(the streams' order, sharding and seeds), `instances` (images with instance masks, `make_instance_iterator`)
and `annotations` (SA-1B / COCO annotation files). The names used from outside are importable from here.

    src = open_source("vitsam_shapes", split="train", data_dir=DIR)   # prepares the embedded set once
    it = make_iterator(src, batch_size=128, image_size=64, train=True, seed=0,
                       process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)        # {"image": (b, S, S, 3) float32, "label": (b,) int32, "mask": (b,) bool,
                            #  "index": (b,) int32}
    state = it.get_state()  # a small JSON-serializable dict; it.set_state(state) resumes exactly

Conventions:
  * `batch_size` is the per-process batch b (the trainer passes global_batch // process_count);
    B = b x process_count is the global batch.
  * Train: one stream for all processes, whatever their number. Each epoch is a permutation of all n
    examples, a function of (seed, epoch); global batch j is the stream positions [j B, (j + 1) B)
    and process i yields its rows [i b, (i + 1) b) of it. An example's augmentation depends on the
    seed and its place in the stream, never on the process (images of one declared shape: drawn
    row after row from its global batch's rng; others: from an rng of its own position), so global
    batch j is a function of (seed, j) only: one process with batch B yields the row-wise
    concatenation of what P processes with batch B / P yield. Needs n >= B. Infinite unless
    num_epochs is given; a last partial global batch of a finite run is dropped.
  * State: `get_state()` counts the global batches read (plus prefetch-worker bookkeeping), the
    same on every process, so a state saved by any process resumes the stream under any process
    count with the same global batch B.
  * Eval: one pass in index order, process i reading examples i, i + P, ... (P = process_count).
    Every process yields the same number of batches (needed by a multi-host jitted step); the slots
    past the end of the data repeat real examples with "mask" False, so `sum(correct * mask)`
    counts each example exactly once.
  * "mask" (b,) bool is present in both modes (all True in training); "index" (b,) int32 is the
    example's position in the split (for debugging and tests; a jitted step can ignore it).
  * Prefetch: `num_threads` threads fill a buffer of `prefetch` batches; `worker_count` > 0 adds
    that many worker processes (grain mp_prefetch), each with its own threads. The order of the
    batches does not depend on any of these three numbers. Worker processes are spawned, so a
    script using them needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Any, Sequence

import grain
import numpy as np
import threadpoolctl

from vitsam.data import transforms
from vitsam.data.instances import make_instance_iterator
from vitsam.data.order import (TrainOrder, check_fills_a_batch, element_seed, index_dataset, position_rng,
                               resolve_process, to_iterator)
from vitsam.data.sources import (SHAPES_NAME, InMemorySource, cache_in_memory, class_names, declared_num_classes,
                                 decode_only, num_classes, open_source)

__all__ = ["DATASET_CROP_SCALE", "DEFAULT_CROP_SCALE", "InMemorySource", "SHAPES_NAME", "cache_in_memory",
           "class_names", "declared_num_classes", "make_instance_iterator", "make_iterator", "num_classes",
           "one_blas_thread", "open_source"]

# Random-resized-crop area fractions when the caller gives none: Inception's (0.08, 1) in general,
# gentler for the 64 px shapes, where a small crop could cut away the shape that names the label.
DEFAULT_CROP_SCALE = (0.08, 1.0)
DATASET_CROP_SCALE = {SHAPES_NAME: (0.6, 1.0)}


@dataclasses.dataclass(frozen=True)
class _EvalExample:
    """(index, is_real) -> {"image" (S, S, 3) float32, "label" int32, "mask" bool, "index" int32}."""

    source: Any
    image_size: int
    eval_crop_fraction: float
    mean: Any
    std: Any
    image_key: str
    label_key: str

    def __call__(self, element) -> dict[str, np.ndarray]:
        index, is_real = element
        record = self.source[index]
        image = transforms.resize_center_crop(transforms.to_rgb(record[self.image_key]), self.image_size,
                                              self.eval_crop_fraction)
        return {"image": transforms.normalize(image, self.mean, self.std), "label": np.int32(record[self.label_key]),
                "mask": np.bool_(is_real), "index": np.int32(index)}


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """global batch number j, its rng -> this process's rows of global batch j
    {"image" (b, S, S, 3) float32, "label", "mask", "index"}.

    Each example's augmentation (crop box, flip, turn, channel order) comes from one of two rngs. With
    `image_shape`, the (H, W) of every image, known without reading a record: from the global batch's rng (the
    same on every process), drawn row after row from row 0 on, the rows of the processes before this one drawn
    and dropped. Without it (images of varying size): from the example's own `order.position_rng`, so that nothing
    depends on another process's records.
    `batched` crops and resizes the whole batch with two matrix products per image (`transforms.resize_batch`;
    sources flipped and turned first, the crop box moved with them), otherwise each image goes through PIL
    (crop + resize, flip, turn). The two agree to within one grey level."""

    source: Any
    order: TrainOrder
    image_size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip: bool
    rotate90: bool
    permute_channels: bool
    mean: Any
    std: Any
    image_key: str
    label_key: str
    batched: bool
    image_shape: tuple[int, int] | None

    def _draw(self, rng: np.random.Generator, h: int, w: int) -> tuple[transforms.Box, bool, int, np.ndarray]:
        """One example's augmentation of an h x w image: crop box, flip, quarter turns, channel order (3,)."""
        box = transforms.sample_crop_box(rng, h, w, self.crop_scale, self.crop_ratio)
        flip = bool(self.flip and rng.random() < 0.5)
        k = int(rng.integers(4)) if self.rotate90 else 0
        perm = rng.permutation(3) if self.permute_channels else np.arange(3)
        return box, flip, k, perm

    def __call__(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        positions = self.order.positions(batch)
        indices = self.order.indices(positions)
        records = [self.source[int(i)] for i in indices]
        sources = [transforms.to_rgb(record[self.image_key]) for record in records]
        if self.image_shape is not None:
            first = self.order.first_row
            draws = [self._draw(rng, *self.image_shape) for _ in range(first + len(records))][first:]
            for image, index in zip(sources, indices):
                if image.shape[:2] != self.image_shape:
                    raise ValueError(f"example {index}: image of {image.shape[:2]}, not the declared "
                                     f"{self.image_shape}")
        else:
            draws = [self._draw(position_rng(self.order.seed, int(p)), *image.shape[:2])
                     for p, image in zip(positions, sources)]
        size = (self.image_size, self.image_size)
        images, boxes, perms = [], [], []
        for image, (box, flip, k, perm) in zip(sources, draws):
            perms.append(perm)
            if self.batched:  # views here; one copy when stacked
                images.append(np.rot90(image[:, ::-1] if flip else image, k=k))
                boxes.append(transforms.flip_rotate_box(box, *image.shape[:2], flip, k))
            else:
                image = transforms.resize(image, size, box=box)
                images.append(np.rot90(transforms.horizontal_flip(image) if flip else image, k=k))
        one_blas_thread()  # in worker processes: their first batch sets it
        images = _permute_channels(np.stack(images), np.stack(perms))
        if self.batched:
            images = transforms.resize_batch(images, np.array(boxes, np.float32), self.image_size)
        else:
            images = images.astype(np.float32)
        images -= np.asarray(self.mean, np.float32)
        images *= 1.0 / np.asarray(self.std, np.float32)
        return {"image": images, "label": np.array([r[self.label_key] for r in records], np.int32),
                "mask": np.ones(len(records), bool), "index": indices.astype(np.int32)}


def _permute_channels(images: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) with (B, 3) channel orders: a strided copy per distinct order, no per-pixel gather."""
    if (perms == np.arange(3)).all():
        return images
    out = np.empty_like(images)
    for perm in itertools.permutations(range(3)):
        rows = (perms == perm).all(axis=1)
        if rows.any():
            out[rows] = images[rows][..., list(perm)]
    return out


@functools.cache
def _one_blas_thread(pid: int) -> None:
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def one_blas_thread() -> None:
    """Run numpy's BLAS on one thread for the rest of this process (done once per process; not undone).

    Why: (1) numpy's OpenBLAS pool would fight the accelerator's host threads (on a 2-core CPU ~25% fewer
    training images/s); (2) the batched crop-and-resize products' last bits depend on the BLAS thread count, so
    batches are reproducible only at a fixed count. The count is process-wide and threadpoolctl obeys only the
    first thread that sets it while that thread lives (grain's prefetch threads come and go), so a limit per
    batch, set and restored in those threads, left some batches computed at the other count.
    """
    _one_blas_thread(os.getpid())


def _fixed_image_shape(source, key: str) -> tuple[int, ...] | None:
    """The one shape of every image of `source`, if the source declares it (a stacked in-memory column, a
    TFDS Image feature of fixed shape); None when images may differ in size (ImageNet) or it is unknown."""
    columns = getattr(source, "columns", None)
    if isinstance(columns, dict) and isinstance(columns.get(key), np.ndarray):
        return columns[key].shape[1:]
    info = getattr(source, "dataset_info", None)
    try:
        shape = tuple(info.features[key].shape)
    except (AttributeError, KeyError, TypeError):
        return None
    return shape if shape and None not in shape else None


def make_iterator(source, batch_size: int, image_size: int, *, train: bool, seed: int = 0,
                  num_epochs: int | None = None, process_index: int | None = None,
                  process_count: int | None = None,
                  crop_scale: tuple[float, float] | None = None,
                  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                  rotate90: bool = False, permute_channels: bool = False,
                  eval_crop_fraction: float = 1.0,
                  mean: float | Sequence[float] = 127.5, std: float | Sequence[float] = 127.5,
                  num_threads: int = 2, prefetch: int = 4, worker_count: int = 0,
                  image_key: str = "image", label_key: str = "label", batch_augment: bool | None = None):
    """Batches for image classification (see the module docstring for order and sharding).

    Yields {"image": (b, S, S, 3) float32 (x - mean) / std, "label": (b,) int32, "mask": (b,) bool,
    "index": (b,) int32} with b = batch_size (per process) and S = image_size. Train: random resized crop (area
    fraction `crop_scale`, default DATASET_CROP_SCALE or (0.08, 1); aspect `crop_ratio`) and a
    random horizontal flip; optionally (for data whose labels do not depend on orientation or colour, like the
    shapes) a random multiple of 90° rotation (`rotate90`) and a random order of the RGB channels
    (`permute_channels`). Eval: the central square of side eval_crop_fraction x shorter side,
    resized to S (0.875 is the usual ImageNet 256 -> 224 crop). Grayscale images become RGB.
    process_index / process_count default to jax.process_index() / jax.process_count().
    batch_augment: crop and resize a whole training batch with two matrix products per image instead of one PIL
    call per image; None uses it when all images of the source have one declared shape (vitsam_shapes,
    CIFAR-10). Both give the same batches, to within one grey level of PIL's rounding.
    The iterator has get_state() -> dict (JSON-serializable) and set_state(dict).
    A training iterator sets numpy's BLAS to one thread for the rest of the process (`one_blas_thread`).
    """
    process_index, process_count = resolve_process(process_index, process_count)
    if crop_scale is None:
        name = getattr(getattr(source, "dataset_info", None), "name", None)
        crop_scale = DATASET_CROP_SCALE.get(name, DEFAULT_CROP_SCALE)
    shape = _fixed_image_shape(source, image_key)
    if batch_augment is None:
        batch_augment = shape is not None and len(shape) == 3 and shape[-1] == 3
    elif batch_augment and shape is None:
        raise ValueError("batch_augment needs images of one declared shape; this source's images may differ")
    if train and batch_augment and rotate90 and shape[0] != shape[1]:
        raise ValueError(f"batch_augment with rotate90 needs square images, got {shape[0]}x{shape[1]}")
    if train:
        check_fills_a_batch(len(source), batch_size, process_count)
        order = TrainOrder(len(source), batch_size, seed, process_index, process_count)
        one_blas_thread()
        source = decode_only(source, [image_key, label_key])
        make_batch = _TrainBatch(
            source=source, order=order, image_size=image_size, crop_scale=tuple(crop_scale),
            crop_ratio=tuple(crop_ratio), flip=flip, rotate90=rotate90, permute_channels=permute_channels,
            mean=mean, std=std, image_key=image_key, label_key=label_key, batched=bool(batch_augment),
            image_shape=None if shape is None else tuple(shape[:2]))
        ds = grain.MapDataset.range(order.num_batches(num_epochs))  # global batch numbers
        ds = ds.random_map(make_batch, seed=element_seed(seed))
        return to_iterator(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
    source = decode_only(source, [image_key, label_key])
    ds = index_dataset(len(source), batch_size, train=False, seed=seed, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count)
    ds = ds.map(_EvalExample(source=source, image_size=image_size, eval_crop_fraction=eval_crop_fraction,
                             mean=mean, std=std, image_key=image_key, label_key=label_key))
    return to_iterator(ds.batch(batch_size), num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
