"""Input pipelines: TFDS data sources read without TensorFlow, fed through grain.

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
import tensorflow_datasets as tfds
import threadpoolctl

from vitsam.data import transforms

SHAPES_NAME = "vitsam_shapes"
# Random-resized-crop area fractions when the caller gives none: Inception's (0.08, 1) in general,
# gentler for the 64 px shapes, where a small crop could cut away the shape that names the label.
DEFAULT_CROP_SCALE = (0.08, 1.0)
DATASET_CROP_SCALE = {SHAPES_NAME: (0.6, 1.0)}


# ----------------------------------------------------------------------------- sources


def open_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                download: bool = False):
    """A random-access TFDS source (`tfds.data_source`, array_record; no TensorFlow needed).

    name: a TFDS name, optionally with a config ("vitsam_shapes/small"). "vitsam_shapes" is
      prepared into `data_dir` the first time (a few tens of seconds). Other datasets must already
      be prepared there in array_record format unless `download` is True (then TFDS downloads and
      prepares them, which may take hours for imagenet2012 and needs its manual files).
    split: a TFDS split, sub-splits allowed ("train[:90%]").
    data_dir: TFDS data dir; None means TFDS's default (~/tensorflow_datasets).
    """
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    if name.split("/")[0] == SHAPES_NAME:
        from vitsam.data import shapes_builder  # registers the builder with TFDS

        config = name.split("/", 1)[1] if "/" in name else "default"
        builder = shapes_builder.prepare_shapes(data_dir, config)
    else:
        try:
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"unknown TFDS dataset {name!r}: neither a registered TFDS builder nor a prepared "
                f"dataset in data_dir={data_dir!r}") from None
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(
                    f"TFDS dataset {name!r} is not prepared in {builder.data_dir!s}. Prepare it "
                    f"there in array_record format (tfds build {name} --file_format=array_record "
                    f"--data_dir=...), or pass download=True to let TFDS download and prepare it.")
            builder.download_and_prepare()
    try:
        return builder.as_data_source(split=split)
    except ValueError as e:  # unknown split; TFDS lists the known ones
        raise ValueError(f"dataset {name!r}: {e}") from None
    except NotImplementedError as e:  # prepared as tfrecord, which has no random access
        raise ValueError(
            f"dataset {name!r} in {builder.data_dir!s} is not stored in a random-access format "
            f"(array_record): {e}") from None


def class_names(source, key: str = "label") -> list[str]:
    """Names of the ClassLabel feature `key` of a TFDS source."""
    feature = _features(source)
    for part in key.split("/"):
        feature = feature[part]
        if isinstance(feature, tfds.features.Sequence):
            feature = feature.feature
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ValueError(f"feature {key!r} is a {type(feature).__name__}, not a ClassLabel")
    return list(feature.names)


def num_classes(source, key: str = "label") -> int:
    return len(class_names(source, key))


def declared_num_classes(name: str, data_dir: str | os.PathLike | None = None, key: str = "label") -> int:
    """The class count a TFDS dataset's builder declares, without reading or preparing any data."""
    if name.split("/")[0] == SHAPES_NAME:
        from vitsam.data import shapes_builder  # noqa: F401 - registers the builder with TFDS
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.path.expanduser(os.fspath(data_dir)))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown TFDS dataset {name!r}") from None
    try:
        return int(builder.info.features[key].num_classes)
    except (KeyError, AttributeError):
        raise ValueError(f"dataset {name!r} declares no ClassLabel feature {key!r}") from None


def _features(source) -> tfds.features.FeaturesDict:
    info = getattr(source, "dataset_info", None)
    if info is None:
        raise ValueError(f"{type(source).__name__} is not a TFDS data source (no dataset_info)")
    return info.features


class _SkipDecoding(tfds.decode.SkipDecoding):
    """SkipDecoding that also works inside a Sequence on the NumPy path (tfds 4.9.10 lacks the
    batch methods there)."""

    def decode_batch_example_np(self, serialized_example):
        return serialized_example

    def decode_ragged_example_np(self, serialized_example):
        return serialized_example


def _skip_all(feature):
    if isinstance(feature, tfds.features.FeaturesDict):
        return {k: _skip_all(v) for k, v in feature.items()}
    if isinstance(feature, tfds.features.Sequence):
        return _skip_all(feature.feature)
    return _SkipDecoding()


def _decode_only(source, keys: Sequence[str]):
    """The same TFDS source, decoding only the top-level features `keys` (e.g. no masks for a
    classifier). Sources that are not TFDS ones, or have their own decoders, are returned as is."""
    info = getattr(source, "dataset_info", None)
    if info is None or not hasattr(source, "decoders") or source.decoders is not None:
        return source
    features = info.features
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"dataset {info.name!r} has no feature {missing}; it has {list(features)}")
    skip = {k: _skip_all(f) for k, f in features.items() if k not in keys}
    return dataclasses.replace(source, decoders=skip) if skip else source


@dataclasses.dataclass(frozen=True)
class InMemorySource:
    """Decoded features held in memory: a random-access source for small datasets (vitsam_shapes
    train: 12,000 x 64 x 64 x 3 uint8 = 147 MB of images), which skips the per-read record parsing
    and PNG decoding. A fixed-shape feature is one stacked NumPy array; a nested one (a Sequence
    such as "objects", a varying number of masks per example) a list with one entry per example.
    Keeps the TFDS `dataset_info` for class names."""

    columns: dict[str, np.ndarray | list]
    dataset_info: Any = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.columns.items()}


def cache_in_memory(source, keys: Sequence[str] = ("image", "label")) -> InMemorySource:
    """Reads and decodes the features `keys` of every example once. Array features must have one
    shape across examples; nested (dict) features, e.g. "objects", are kept per example."""
    light = _decode_only(source, list(keys))
    records = [light[i] for i in range(len(light))]
    columns = {}
    for key in keys:
        if records and isinstance(records[0][key], dict):
            columns[key] = [r[key] for r in records]
            continue
        values = [np.asarray(r[key]) for r in records]
        shapes_seen = {v.shape for v in values}
        if len(shapes_seen) > 1:
            raise ValueError(f"cannot cache {key!r}: examples have several shapes "
                             f"({sorted(shapes_seen)[:3]} ...); read from the source instead")
        columns[key] = np.stack(values)
    return InMemorySource(columns, getattr(source, "dataset_info", None))


# ----------------------------------------------------------------------------- order


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    return process_index, process_count


def _check_fills_a_batch(num_examples: int, batch_size: int, process_count: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples < batch_size * process_count:
        raise ValueError(f"{num_examples} examples cannot fill one global batch of {batch_size * process_count} "
                         f"({process_count} processes x {batch_size})")


def _index_dataset(num_examples: int, batch_size: int, *, train: bool, seed: int,
                   num_epochs: int | None, process_index: int,
                   process_count: int) -> grain.MapDataset:
    """MapDataset of (example index, is real) pairs in the order to read. Train: the global stream, the same on
    every process (`_process_batches` takes a process's rows); eval: this process's examples."""
    if train:
        _check_fills_a_batch(num_examples, batch_size, process_count)
        ds = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(num_epochs)  # shuffle uses seed + epoch
        return ds.map(lambda i: (int(i), True))
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples == 0:
        raise ValueError("the eval split is empty")
    # Pad to whole batches on every process; padded slots read a real example, flagged False.
    per_step = batch_size * process_count
    padded = -(-num_examples // per_step) * per_step
    ds = grain.MapDataset.range(padded)[process_index::process_count]
    return ds.map(lambda i: (int(i) % num_examples, int(i) < num_examples))


def _process_batches(ds: grain.MapDataset, batch_size: int, process_index: int,
                     process_count: int) -> grain.MapDataset:
    """This process's batches of the global stream `ds`: element j stacks positions [j B + i b, j B + (i + 1) b)
    (b = batch_size, B = b x process_count, i = process_index); a last partial global batch is dropped."""
    ds = ds.batch(batch_size, drop_remainder=True)  # element m: positions [m b, (m + 1) b)
    return ds[process_index:len(ds) // process_count * process_count:process_count]


def _example_batches(num_examples: int, batch_size: int, example, *, train: bool, seed: int,
                     num_epochs: int | None, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's batches of `example((index, is_real), rng)`. In training the random map runs over the
    global stream, so an example's rng is a function of (seed, its global position) only."""
    ds = _index_dataset(num_examples, batch_size, train=train, seed=seed, num_epochs=num_epochs,
                        process_index=process_index, process_count=process_count)
    ds = ds.random_map(example, seed=_element_seed(seed))
    if train:
        return _process_batches(ds, batch_size, process_index, process_count)
    return ds.batch(batch_size)


def _element_seed(seed: int) -> int:
    """A 32-bit seed for per-example and per-batch randomness. ([seed, 0]: process 0's seed from when each process
    had a stream of its own, so that one process's stream is unchanged.)"""
    return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


def _position_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the example at `position` of the global training stream: Philox keyed by
    `_element_seed(seed)`, counting from the position as grain's random_map does, in a lane of its own."""
    return np.random.Generator(np.random.Philox(_element_seed(seed), counter=[0, 0, 1, position]))


def _finish(ds: grain.MapDataset, *, num_threads: int, prefetch: int, worker_count: int):
    """The iterator over `ds`, a MapDataset of batches. Batched before to_iter_dataset: each element is a whole
    batch, so threads and worker processes split work by batch and the order never depends on their number."""
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # Starting grain workers reads absl flags, which raises unless they were parsed (as
            # absl.app.run does); their defaults are what we want.
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)))
    return iter(iter_ds)


# ----------------------------------------------------------------------------- classification


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


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class _TrainOrder:
    """The global training stream and this process's part of it: position p is example permutation(p // n)[p % n],
    each epoch's permutation of the n examples a function of (seed, epoch). Global batch j is positions
    [j B, (j + 1) B), B = b x process_count; process i reads its rows [i b, (i + 1) b)."""

    num_examples: int
    batch_size: int
    seed: int
    process_index: int
    process_count: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def first_row(self) -> int:
        """This process's first row in a global batch."""
        return self.process_index * self.batch_size

    def num_batches(self, num_epochs: int | None) -> int:
        if num_epochs is None:
            return 2**62 // self.global_batch  # endless in practice
        return num_epochs * self.num_examples // self.global_batch  # a last partial batch is dropped

    def positions(self, batch: int) -> np.ndarray:
        """(b,) the stream positions of this process's rows of global batch `batch`."""
        start = batch * self.global_batch + self.first_row
        return np.arange(start, start + self.batch_size)

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """(b,) the examples at stream `positions`."""
        n = self.num_examples
        epochs, offsets = np.divmod(positions, n)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            indices[rows] = _epoch_permutation(self.seed, int(epoch), n)[offsets[rows]]
        return indices


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """global batch number j, its rng -> this process's rows of global batch j
    {"image" (b, S, S, 3) float32, "label", "mask", "index"}.

    Each example's augmentation (crop box, flip, turn, channel order) comes from one of two rngs. With
    `image_shape`, the (H, W) of every image, known without reading a record: from the global batch's rng (the
    same on every process), drawn row after row from row 0 on, the rows of the processes before this one drawn
    and dropped. Without it (images of varying size): from the example's own `_position_rng`, so that nothing
    depends on another process's records.
    `batched` crops and resizes the whole batch with two matrix products per image (`transforms.resize_batch`;
    sources flipped and turned first, the crop box moved with them), otherwise each image goes through PIL
    (crop + resize, flip, turn). The two agree to within one grey level."""

    source: Any
    order: _TrainOrder
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
            draws = [self._draw(_position_rng(self.order.seed, int(p)), *image.shape[:2])
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
    process_index, process_count = _process(process_index, process_count)
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
        _check_fills_a_batch(len(source), batch_size, process_count)
        order = _TrainOrder(len(source), batch_size, seed, process_index, process_count)
        one_blas_thread()
        source = _decode_only(source, [image_key, label_key])
        make_batch = _TrainBatch(
            source=source, order=order, image_size=image_size, crop_scale=tuple(crop_scale),
            crop_ratio=tuple(crop_ratio), flip=flip, rotate90=rotate90, permute_channels=permute_channels,
            mean=mean, std=std, image_key=image_key, label_key=label_key, batched=bool(batch_augment),
            image_shape=None if shape is None else tuple(shape[:2]))
        ds = grain.MapDataset.range(order.num_batches(num_epochs))  # global batch numbers
        ds = ds.random_map(make_batch, seed=_element_seed(seed))
        return _finish(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
    source = _decode_only(source, [image_key, label_key])
    ds = _index_dataset(len(source), batch_size, train=False, seed=seed, num_epochs=num_epochs,
                        process_index=process_index, process_count=process_count)
    ds = ds.map(_EvalExample(source=source, image_size=image_size, eval_crop_fraction=eval_crop_fraction,
                             mean=mean, std=std, image_key=image_key, label_key=label_key))
    return _finish(ds.batch(batch_size), num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)


# ----------------------------------------------------------------------------- instances (SAM)


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
        size, k = self.image_size, self.max_masks
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

        out_masks = np.zeros((k, size, size), dtype=bool)
        boxes = np.zeros((k, 4), dtype=np.float32)
        out_labels = np.full((k,), -1, dtype=np.int32)
        valid = np.zeros((k,), dtype=bool)
        slot = 0
        for mask, label in zip(masks, labels):
            if slot == k:
                break
            if not mask.any():  # a tiny object can vanish when downscaled
                continue
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            out_masks[slot] = mask
            boxes[slot] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            out_labels[slot] = label
            valid[slot] = True
            slot += 1
        out = {"image": image, "masks": out_masks, "mask_valid": valid, "boxes": boxes,
               "labels": out_labels, "mask": np.bool_(is_real), "index": np.int32(index)}
        if "label" in record:
            out["label"] = np.int32(record["label"])
        return out


def make_instance_iterator(source, batch_size: int, image_size: int, max_masks: int, *,
                           train: bool, seed: int = 0, num_epochs: int | None = None,
                           process_index: int | None = None, process_count: int | None = None,
                           flip: bool = True, num_threads: int = 2, prefetch: int = 4,
                           worker_count: int = 0):
    """Batches of images with instance masks, for promptable segmentation (same order, sharding
    and state as `make_iterator`).

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
    features = _features(source)
    if "objects" not in features or not isinstance(features["objects"], tfds.features.Sequence) \
            or "mask" not in features["objects"].feature:
        raise ValueError(f"dataset {source.dataset_info.name!r} has no objects/mask feature")
    process_index, process_count = _process(process_index, process_count)
    keys = ["image", "objects"] + (["label"] if "label" in features else [])
    source = _decode_only(source, keys)
    example = _InstanceExample(source=source, image_size=image_size, max_masks=max_masks,
                               train=train, flip=flip)
    ds = _example_batches(len(source), batch_size, example, train=train, seed=seed, num_epochs=num_epochs,
                          process_index=process_index, process_count=process_count)
    return _finish(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
