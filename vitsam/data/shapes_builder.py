"""The embedded default dataset as a TFDS builder: "vitsam_shapes" (see `shapes.py`).

    from vitsam.data.shapes_builder import prepare_shapes
    builder = prepare_shapes("~/tensorflow_datasets")          # once; a fast no-op afterwards
    source = builder.as_data_source("train")                     # no TensorFlow needed
    # or, after importing this module: tfds.data_source("vitsam_shapes", split="test", data_dir=...)

Configs: "default" (64 px, 12,000 train / 1,000 test) and "small" (64 px, 512 / 128, for tests).
Examples are written in array_record format with PNG bytes encoded by PIL, so neither writing nor
reading needs TensorFlow, and preparing twice gives byte-identical files (the splits use
generator seeds 0 and 1; examples are stored in index order, so `source[i]` is
`shapes.render_example(i, seed=split_seed)`).

Importing this module registers the builder with TFDS (it needs the [data] extra).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vitsam.data import shapes

NAME = "vitsam_shapes"
SPLIT_SEEDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_train: int = 12_000
    num_test: int = 1_000
    max_distractors: int = 3


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class VitsamShapes(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated shapes with class labels, instance masks and boxes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="64 px, 12,000 train / 1,000 test images."),
        ShapesConfig(name="small", num_train=512, num_test=128,
                     description="64 px, 512 train / 128 test images (for tests)."),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        names = list(shapes.CLASS_NAMES)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedurally generated images, each with one main shape (its class is the "
                f"label: {', '.join(names)}) and up to {self.builder_config.max_distractors} "
                "smaller distractor shapes, on a plain, gradient or noise background. "
                "objects holds every shape, the main one first: mask, bbox (tfds BBox, "
                "normalized [ymin, xmin, ymax, xmax]) and class."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=names),
                "objects": tfds.features.Sequence({
                    "mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=names),
                }),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep index order: source[i] is example i of the split
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        return {
            "train": self._generate_examples(SPLIT_SEEDS["train"], config.num_train),
            "test": self._generate_examples(SPLIT_SEEDS["test"], config.num_test),
        }

    def _generate_examples(self, seed: int, num_examples: int):
        config = self.builder_config
        size = config.image_size
        for index in range(num_examples):
            ex = shapes.render_example(index, size, seed=seed,
                                       max_distractors=config.max_distractors)
            x0, y0, x1, y1 = ex.boxes.T
            bbox = np.stack([y0, x0, y1, x1], axis=-1) / size
            yield index, {
                "image": _png(ex.image),
                "label": ex.label,
                "objects": {
                    "mask": [_png(m.astype(np.uint8) * 255) for m in ex.masks],
                    "bbox": bbox.astype(np.float32),
                    "label": ex.labels,
                },
            }


def prepare_shapes(data_dir: str | os.PathLike | None = None,
                   config: str = "default") -> VitsamShapes:
    """Prepares vitsam_shapes/`config` under `data_dir` once and returns its builder.

    A no-op (only reads dataset_info.json) when the dataset is already there. data_dir None
    means TFDS's default (~/tensorflow_datasets). With several hosts, prepare on each host's
    local disk or on one process before the others read: TFDS writes into a temporary folder
    and renames it, but two writers racing on one shared folder are not coordinated.
    """
    return prepare_builder(VitsamShapes, data_dir, config)


def prepare_builder(builder_class, data_dir: str | os.PathLike | None, config: str):
    """`builder_class` (an embedded generator-based builder) for `config` under `data_dir` in array_record,
    prepared unless it already is."""
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    builder = builder_class(data_dir=data_dir, config=config, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))  # stats would need TensorFlow
    return builder
