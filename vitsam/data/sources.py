"""TFDS data sources read without TensorFlow: opening, class names, decoding only some features, an in-memory cache.

    src = open_source("vitsam_shapes", split="train", data_dir=DIR)   # prepares the embedded set once
    names = class_names(src)
    small = cache_in_memory(src)                                        # decoded once, then random access

A source is any random-access object (`len`, `source[i]` -> a dict record); the iterators of `pipeline` and
`instances` read them in the order of `order`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

SHAPES_NAME = "vitsam_shapes"
SHAPES_VIDEO_NAME = "vitsam_shapes_video"


def open_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                download: bool = False):
    """A random-access TFDS source (`tfds.data_source`, array_record; no TensorFlow needed).

    name: a TFDS name, optionally with a config ("vitsam_shapes/small"). "vitsam_shapes" and
      "vitsam_shapes_video" are prepared into `data_dir` the first time (a few tens of seconds).
      Other datasets must already be prepared there in array_record format unless `download` is
      True (then TFDS downloads and prepares them, which may take hours for imagenet2012 and needs
      its manual files).
    split: a TFDS split, sub-splits allowed ("train[:90%]").
    data_dir: TFDS data dir; None means TFDS's default (~/tensorflow_datasets).
    """
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    if name.split("/")[0] == SHAPES_NAME:
        from vitsam.data import shapes_builder  # registers the builder with TFDS

        config = name.split("/", 1)[1] if "/" in name else "default"
        builder = shapes_builder.prepare_shapes(data_dir, config)
    elif name.split("/")[0] == SHAPES_VIDEO_NAME:
        from vitsam.data import shapes_video_builder  # registers the builder with TFDS

        config = name.split("/", 1)[1] if "/" in name else "default"
        builder = shapes_video_builder.prepare_shapes_video(data_dir, config)
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
    feature = source_features(source)
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
    """The class count a TFDS dataset's builder declares, without reading or preparing any data.

    key may name a nested feature, as in `class_names` ("objects/label" of vitsam_shapes_video)."""
    if name.split("/")[0] == SHAPES_NAME:
        from vitsam.data import shapes_builder  # noqa: F401 - registers the builder with TFDS
    elif name.split("/")[0] == SHAPES_VIDEO_NAME:
        from vitsam.data import shapes_video_builder  # noqa: F401 - registers the builder with TFDS
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.path.expanduser(os.fspath(data_dir)))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown TFDS dataset {name!r}") from None
    try:
        feature = builder.info.features
        for part in key.split("/"):
            feature = feature[part]
            if isinstance(feature, tfds.features.Sequence):
                feature = feature.feature
        return int(feature.num_classes)
    except (KeyError, AttributeError):
        raise ValueError(f"dataset {name!r} declares no ClassLabel feature {key!r}") from None


def source_features(source) -> tfds.features.FeaturesDict:
    """The TFDS features of `source`; ValueError for a source that is not a TFDS one."""
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


def decode_only(source, keys: Sequence[str]):
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
    light = decode_only(source, list(keys))
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
