"""The embedded video dataset as a TFDS builder: "vitsam_shapes_video" (see `shapes_video.py`).

    from vitsam.data.shapes_video_builder import prepare_shapes_video
    from vitsam.data.video_source import TfdsVideoSource
    builder = prepare_shapes_video("~/tensorflow_datasets")    # once; a fast no-op afterwards
    videos = TfdsVideoSource(builder.as_data_source("test"))   # no TensorFlow needed
    clip = videos.read(0)                                        # frames, masks, object_ids, name

Configs: "default" (64 px, 12 frames, 2,000 train / 100 test clips, up to 3 objects; preparing it
took 14-18 s on two busy CPU cores and writes 86 MB) and "small" (64 px, 8 frames, 48 / 16 clips,
for tests; under a second). A
record stores the clip as DAVIS does: "frames" (T PNG RGB frames), "segmentations" (T PNG id
maps, 0 background, else the object id) and "objects" (id and class of every object, also those
absent on some frames). Records are array_record with PNG bytes encoded by PIL, so neither
writing nor reading needs TensorFlow, and preparing twice gives byte-identical files (the splits
use generator seeds 0 and 1; clips are stored in index order, so record i of a split is
`shapes_video.render_clip(i, seed=split_seed, ...)` with the config's sizes).

Importing this module registers the builder with TFDS (it needs the [data] extra).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from vitsam.data import shapes, shapes_video
from vitsam.data.shapes_builder import _png, prepare_builder

NAME = "vitsam_shapes_video"
SPLIT_SEEDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class ShapesVideoConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    num_frames: int = 12
    num_train: int = 2_000
    num_test: int = 100
    max_objects: int = 3


class VitsamShapesVideo(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated videos of moving, occluding shapes with per-frame id maps."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesVideoConfig(name="default",
                          description="64 px, 12 frames, 2,000 train / 100 test clips."),
        ShapesVideoConfig(name="small", num_frames=8, num_train=48, num_test=16,
                          description="64 px, 8 frames, 48 train / 16 test clips (for tests)."),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Procedurally generated clips of {config.num_frames} frames with 1 to "
                f"{config.max_objects} moving shapes ({', '.join(shapes.CLASS_NAMES)}) on a "
                "static plain, gradient or noise background. Shapes move, rotate and scale, "
                "occlude each other in a fixed depth order, and some leave the frame and come "
                "back. segmentations holds one id map per frame (0 background, else the id of "
                "the object visible there, as in DAVIS); objects holds every object's id and "
                "class. Every object is visible on frame 0."),
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Sequence(
                    tfds.features.Image(shape=(size, size, 3), encoding_format="png")),
                "segmentations": tfds.features.Sequence(
                    tfds.features.Image(shape=(size, size, 1), encoding_format="png")),
                "objects": tfds.features.Sequence({
                    "id": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "label": tfds.features.ClassLabel(names=list(shapes.CLASS_NAMES)),
                }),
            }),
            disable_shuffling=True,  # keep index order: record i is clip i of the split
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        return {
            "train": self._generate_examples(SPLIT_SEEDS["train"], config.num_train),
            "test": self._generate_examples(SPLIT_SEEDS["test"], config.num_test),
        }

    def _generate_examples(self, seed: int, num_clips: int):
        config = self.builder_config
        for index in range(num_clips):
            clip = shapes_video.render_clip(index, seed=seed, image_size=config.image_size,
                                            num_frames=config.num_frames,
                                            max_objects=config.max_objects)
            seg = shapes_video.segmentation_map(clip.masks, clip.object_ids)
            yield index, {
                "frames": [_png(frame) for frame in clip.frames],
                "segmentations": [_png(s) for s in seg],  # grey PNGs: (S, S, 1) when read
                "objects": {"id": clip.object_ids, "label": clip.labels},
            }


def prepare_shapes_video(data_dir: str | os.PathLike | None = None,
                         config: str = "default") -> VitsamShapesVideo:
    """Prepares vitsam_shapes_video/`config` under `data_dir` once and returns its builder.

    A no-op (only reads dataset_info.json) when the dataset is already there. data_dir None
    means TFDS's default (~/tensorflow_datasets). As for `shapes_builder.prepare_shapes`, prepare
    on one process (or on each host's local disk) before the others read.
    """
    return prepare_builder(VitsamShapesVideo, data_dir, config)
