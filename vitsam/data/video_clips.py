"""Fixed-shape batches of video clips with per-object masks, for training and evaluating SAM 2.

    it = make_clip_iterator(source, batch_size=4, image_size=128, num_frames=8, max_objects=3, train=True)
    batch = next(it)     # "frames" (b, T, S, S, 3) uint8, "masks" (b, O, T, S, S) bool, "object_valid" (b, O)

`source` is any `vitsam.data.video_source.VideoSource` (the embedded shapes videos, DAVIS / YouTube-VOS
folders, SA-V). A clip is `num_frames` consecutive annotated frames (`frame_stride` apart): in training it
starts at a random frame on which at least one object is visible, in evaluation at the video's first frame.
Its objects are those visible on the clip's first frame (the frame that is prompted), at most `max_objects`
(a random choice in training, the lowest ids in evaluation), in fixed slots with `object_valid`. Frames are
resized to S x S with PIL's bicubic filter (as `Sam2VideoPredictor` loads frames; the aspect ratio is not
kept, as SAM 2's), masks with nearest neighbours; training flips clips horizontally at random.

Batches follow the order, sharding and resumable state of `order.example_batches` (as every iterator of
`vitsam.data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from vitsam.data.order import example_batches, resolve_process, to_iterator


def clip_starts(num_frames: int, clip_frames: int, stride: int = 1) -> int:
    """How many clips of `clip_frames` frames, `stride` apart, a video of `num_frames` frames holds."""
    return max(0, num_frames - (clip_frames - 1) * stride)


def check_lengths(source, clip_frames: int, stride: int = 1) -> None:
    """A one-line ValueError naming the first video too short for one clip (reads only `source.info`)."""
    need = (clip_frames - 1) * stride + 1
    for i in range(len(source)):
        info = source.info(i)
        if info.num_frames < need:
            raise ValueError(f"video {info.name!r} has {info.num_frames} annotated frames; a clip of {clip_frames} "
                             f"frames {stride} apart needs {need} (shorten data.num_frames or drop the video)")
        if not info.object_ids:
            raise ValueError(f"video {info.name!r} has no annotated object")


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(K, T, H, W) bool -> (K, T, S, S) bool, nearest neighbour (pixel centres, as PIL's NEAREST)."""
    h, w = masks.shape[-2:]
    if (h, w) == (size, size):
        return masks
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return masks[..., rows[:, None], cols[None, :]]


@dataclasses.dataclass(frozen=True)
class _ClipExample:
    """(index, is_real), rng -> one fixed-shape clip."""

    source: Any
    image_size: int
    num_frames: int
    max_objects: int
    stride: int
    train: bool
    flip: bool

    def __call__(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, is_real = element
        info = self.source.info(index)
        starts = clip_starts(info.num_frames, self.num_frames, self.stride)
        if starts < 1:
            check_lengths(self.source, self.num_frames, self.stride)  # names the video
        span = (self.num_frames - 1) * self.stride
        if self.train:
            start = int(rng.integers(starts))
            first = self.source.read(index, [start])["masks"][:, 0]
            # A start frame without any visible object cannot be prompted: try others in random order.
            if not first.any():
                for s in rng.permutation(starts):
                    first = self.source.read(index, [int(s)])["masks"][:, 0]
                    if first.any():
                        start = int(s)
                        break
        else:
            start = 0
        record = self.source.read(index, list(range(start, start + span + 1, self.stride)))
        masks = np.asarray(record["masks"], bool)  # (K, T, H, W)
        visible = np.flatnonzero(masks[:, 0].any(axis=(-2, -1)))
        if visible.size > self.max_objects:
            visible = np.sort(rng.choice(visible, self.max_objects, replace=False)) if self.train \
                else visible[:self.max_objects]
        frames = _resize_frames(np.asarray(record["frames"], np.uint8), self.image_size)
        chosen = _resize_masks(masks[visible], self.image_size)
        if self.train and self.flip and rng.random() < 0.5:
            frames, chosen = frames[:, :, ::-1], chosen[..., ::-1]
        s, t, o = self.image_size, self.num_frames, self.max_objects
        out_masks = np.zeros((o, t, s, s), bool)
        out_masks[:len(visible)] = chosen
        ids = np.zeros((o,), np.int32)
        ids[:len(visible)] = np.asarray(record["object_ids"])[visible]
        return {"frames": np.ascontiguousarray(frames), "masks": out_masks,
                "object_valid": np.arange(o) < len(visible), "object_ids": ids,
                "start": np.int32(start), "mask": np.bool_(is_real and len(visible) > 0), "index": np.int32(index)}


def make_clip_iterator(source, batch_size: int, image_size: int, num_frames: int, max_objects: int, *,
                       train: bool, seed: int = 0, stride: int = 1, flip: bool = True, num_epochs: int | None = None,
                       process_index: int | None = None, process_count: int | None = None, num_threads: int = 2,
                       prefetch: int = 4, worker_count: int = 0):
    """Batches of clips from a video source. Yields
      "frames": (b, T, S, S, 3) uint8 RGB,
      "masks": (b, O, T, S, S) bool, each object's mask on each frame (empty where it is absent),
      "object_valid": (b, O) bool, "object_ids": (b, O) int32 (0 where not valid),
      "start": (b,) int32 the clip's first frame among the video's annotated frames,
      "mask": (b,) bool a real example (eval padding is False), "index": (b,) int32 the video.
    Every video must hold one clip (`check_lengths` is run first: a one-line error names a short video).
    """
    for name, value in (("num_frames", num_frames), ("max_objects", max_objects), ("stride", stride),
                        ("image_size", image_size)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if len(source) == 0:
        raise ValueError("the video source is empty")
    check_lengths(source, num_frames, stride)
    process_index, process_count = resolve_process(process_index, process_count)
    example = _ClipExample(source=source, image_size=image_size, num_frames=num_frames, max_objects=max_objects,
                           stride=stride, train=train, flip=flip)
    ds = example_batches(len(source), batch_size, example, train=train, seed=seed, num_epochs=num_epochs,
                         process_index=process_index, process_count=process_count)
    return to_iterator(ds, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)
