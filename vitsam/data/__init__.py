"""Data: the embedded shapes dataset, input pipelines and transforms.

`shapes` (the NumPy generator) and `transforms` need only NumPy and Pillow. `shapes_builder` (the
TFDS builder "vitsam_shapes"), `sources` (TFDS sources), `order` (the streams' order and sharding),
`pipeline` (classification batches, and the entry point) and `instances` (instance-mask batches) need
the [data] extra; they are imported on first access, so `import vitsam.data` stays light. Video:
`shapes_video` (moving shapes, NumPy), `shapes_video_builder` (the TFDS builder "vitsam_shapes_video"),
`video_source` (the VideoSource protocol, TFDS video records), `video_folders` (DAVIS / YouTube-VOS, SA-V) and
`video_clips` (fixed-shape clip batches).
"""

import importlib

from vitsam.data import shapes, transforms

_LAZY = ("instances", "order", "pipeline", "shapes_builder", "sources", "shapes_video", "shapes_video_builder",
         "video_source", "video_folders", "video_clips")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"vitsam.data.{name}")
    raise AttributeError(f"module 'vitsam.data' has no attribute {name!r}")


__all__ = ["shapes", "transforms", *_LAZY]
