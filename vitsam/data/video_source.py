"""Random-access video sources: the protocol every video dataset of the project follows, and its
implementation over TFDS records (vitsam_shapes_video, or any TFDS set with the same features).

    videos = TfdsVideoSource(open_source("vitsam_shapes_video/small", "test", data_dir))
    videos.info(3)                       # VideoInfo(name="test/00003", num_frames=8, object_ids=(1, 2))
    clip = videos.read(3, frames=[0, 4]) # only frames 0 and 4, every object of the video

A video's objects are those it declares (K of them); `read` returns a mask per object for every
frame asked, empty where the object is absent (out of the frame or hidden).
"""

from __future__ import annotations

import io
from typing import NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from vitsam.data.shapes_video import masks_from_segmentation


class VideoInfo(NamedTuple):
    name: str
    num_frames: int
    object_ids: tuple[int, ...]


@runtime_checkable
class VideoSource(Protocol):
    """A random-access collection of annotated videos."""

    def __len__(self) -> int:
        ...

    def info(self, i: int) -> VideoInfo:
        """Cheap metadata of video i (no frame is decoded)."""
        ...

    def read(self, i: int, frames: Sequence[int] | None = None) -> dict:
        """Video i at the given frame indices (None: every annotated frame), n of them:
        {"frames": (n, H, W, 3) uint8, "masks": (K, n, H, W) bool, "object_ids": (K,) int64,
        "name": str}, K = every object of the video."""
        ...


def _decode_png(data) -> np.ndarray:
    """PNG bytes -> array; an already decoded image (a source with its own decoders) as is."""
    if isinstance(data, bytes):
        return np.asarray(Image.open(io.BytesIO(data)))
    return np.asarray(data)


class TfdsVideoSource:
    """A VideoSource over a random-access TFDS source (`tfds.data_source`, array_record) whose
    records hold "frames" (Sequence of RGB PNG images), "segmentations" (Sequence of one-channel
    PNG id maps, 0 background) and "objects" (Sequence of {"id": int, ...}).

    Records are read with every image left encoded, and only the frames asked for are decoded
    (with PIL), so `info` and short reads of long videos stay cheap. Videos are named
    "<split>/<index:05d>", e.g. "test/00012" (the index within the source, so within a sub-split
    such as "train[:10%]"); `split` replaces the source's split in the names.
    """

    def __init__(self, tfds_source, split: str | None = None):
        from vitsam.data.sources import decode_only, source_features  # TFDS: imported on use

        features = source_features(tfds_source)
        missing = [k for k in ("frames", "segmentations", "objects") if k not in features]
        if missing:
            raise ValueError(f"dataset {tfds_source.dataset_info.name!r} is not a video dataset: "
                             f"it lacks the features {missing} (it has {list(features)})")
        self._source = decode_only(tfds_source, ["objects"])
        self.dataset_info = tfds_source.dataset_info
        self.split = str(split if split is not None else getattr(tfds_source, "split", "video"))

    def __len__(self) -> int:
        return len(self._source)

    def _index(self, i: int) -> int:
        return range(len(self))[i]  # negative indices, and IndexError out of range

    def _name(self, i: int) -> str:
        return f"{self.split}/{i:05d}"

    def info(self, i: int) -> VideoInfo:
        i = self._index(i)
        record = self._source[i]
        ids = tuple(int(x) for x in np.asarray(record["objects"]["id"]).reshape(-1))
        return VideoInfo(self._name(i), len(record["frames"]), ids)

    def read(self, i: int, frames: Sequence[int] | None = None) -> dict:
        i = self._index(i)
        name, record = self._name(i), self._source[i]
        count = len(record["frames"])
        positions = range(count) if frames is None else [int(t) for t in np.asarray(frames).reshape(-1)]
        bad = [t for t in positions if not 0 <= t < count]
        if bad:
            raise ValueError(f"{name}: frame {bad[0]} is out of range for its {count} frames")
        object_ids = np.asarray(record["objects"]["id"], dtype=np.int64).reshape(-1)
        images = [_decode_png(record["frames"][t]) for t in positions]
        height, width = images[0].shape[:2] if images else (0, 0)
        seg = np.zeros((len(positions), height, width), np.int32)  # 8- or 16-bit PNGs
        for n, t in enumerate(positions):
            seg[n] = _decode_png(record["segmentations"][t]).reshape(height, width)
        try:
            masks = masks_from_segmentation(seg, object_ids, frame_numbers=positions)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return {
            "frames": np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8),
            "masks": masks,
            "object_ids": object_ids,
            "name": name,
        }
