"""Procedural videos of moving shapes: the embedded video dataset, in pure NumPy.

Each clip is T square RGB frames of 1 … `max_objects` shapes (the classes, backgrounds and colour
contrast of `shapes`) moving over a static background: every object has its own colour, a
velocity of a few pixels a frame (bouncing off walls that keep at least part of it in the frame),
a rotation speed and a smooth change of scale. Objects keep a fixed depth order, later ones in
front, so they occlude earlier ones. Up to 30 % of the objects after the first are occluders:
a circle or square just large enough to cover an earlier object slides onto it, hides it
completely for a few frames while moving with it, and later slides off. About a quarter of the
other objects leave the frame: they move out through one side, bounce off a wall outside the
frame and come back, so their masks are empty on some frames in the middle of the clip. Every
object is clearly visible on frame 0 (at least `MIN_FIRST_FRAME_PIXELS`, scaled with the frame
area), because the first-frame mask is the prompt of a tracker.

The background, noise included, is drawn once per clip and stays still (a fixed camera). Masks
are the *visible* pixels of each object after occlusion, so on every frame they are disjoint and
an object's mask is exactly the pixels painted in its colour.

Rendering is a pure function of (seed, index), like `shapes.render_example`:
`render_clip(index, seed=s)` gives the same frames on every machine.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from vitsam.data.shapes import (CLASS_NAMES, NUM_CLASSES, _CROSS_HALF_WIDTH, _background,
                                _contrasting_color, shape_mask)

RADIUS = (0.12, 0.28)  # circumradius at frame 0, as a fraction of the side
LEAVER_RADIUS = (0.12, 0.20)  # objects that leave are smaller, so they leave at moderate speed
LEAVE_PROBABILITY = 0.25
SPEED = (0.5, 3.0)  # pixels a frame at 64 px, scaled with the side
MAX_ROTATION = 0.2  # radians a frame
SCALE_END = (0.75, 1.3)  # scale at the last frame relative to frame 0
OCCLUDE_PROBABILITY = 0.3  # each object after the first: the chance it is sent over an earlier one
OCCLUDER_MAX_RADIUS = 0.3
MIN_FIRST_FRAME_PIXELS = 30  # at 64 x 64, scaled with the frame area
MIN_OBJECT_COLOR_DISTANCE = 80.0  # Euclidean RGB distance between two objects' colours
_EDGE = 0.5  # objects that stay bounce when their centre is this fraction of their reach from the edge


class ShapesClip(NamedTuple):
    """One rendered clip; K = number of objects, in depth order (later in front), T frames.

    frames: (T, S, S, 3) uint8.
    masks: (K, T, S, S) bool, each object's visible pixels; disjoint on every frame; every
      masks[k, 0] holds at least `MIN_FIRST_FRAME_PIXELS` (scaled) pixels, later ones may be empty.
    object_ids: (K,) int32, 1 … K (the values of `segmentation_map`).
    labels: (K,) int64 class indices into `shapes.CLASS_NAMES`.
    """

    frames: np.ndarray
    masks: np.ndarray
    object_ids: np.ndarray
    labels: np.ndarray


class _Track(NamedTuple):
    """An object's motion: per-frame centre (T, 2) (x, y), circumradius (T,) and angle (T,)."""

    cls: int
    centers: np.ndarray
    radii: np.ndarray
    angles: np.ndarray


def _reach(cls: int) -> float:
    """Distance from the centre to the farthest point of a shape of unit circumradius."""
    return float(np.hypot(1.0, _CROSS_HALF_WIDTH)) if CLASS_NAMES[cls] == "cross" else 1.0


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions of a point moving freely along p, bouncing between walls at lo and hi."""
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q <= span, q, 2 * span - q)


def _sample_track(rng: np.random.Generator, size: int, num_frames: int) -> _Track:
    t = np.arange(num_frames, dtype=np.float64)
    # Leaving needs room: a few frames to go out, one or more out, a frame or two back in.
    leaves = num_frames >= 7 and rng.uniform() < LEAVE_PROBABILITY
    cls = int(rng.integers(NUM_CLASSES))
    radius = rng.uniform(*(LEAVER_RADIUS if leaves else RADIUS)) * size
    scale_end = rng.uniform(*SCALE_END)
    # Smooth (cosine-eased) scale from 1 at frame 0 to scale_end at the last frame.
    ease = (1 - np.cos(np.pi * t / max(num_frames - 1, 1))) / 2
    radii = radius * (1 + (scale_end - 1) * ease)
    angles = rng.uniform(0, 2 * np.pi) + rng.uniform(-MAX_ROTATION, MAX_ROTATION) * t
    reach = _reach(cls) * radii.max()
    lo, hi = _EDGE * reach, size - _EDGE * reach
    speed = rng.uniform(*SPEED) * size / 64
    theta = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(lo, hi, size=2)
    centers = np.stack([_fold(start[i] + speed * np.cos(theta - np.pi / 2 * i) * t, lo, hi)
                        for i in range(2)], axis=-1)
    if leaves:
        # Along one axis the object heads for a wall `out` frames' travel beyond the point where
        # it has fully left (centre one reach past the edge), reaches it at frame `turn` and
        # comes back: it is absent on the frames within about `out` of `turn`.
        out = rng.uniform(1.0, min(2.0, (num_frames - 4.5) / 2))
        turn = rng.uniform(out + 2.5, num_frames - 2 - out)
        axis, far_side = int(rng.integers(2)), bool(rng.integers(2))
        enter = size - rng.uniform(0.3, 1.0) * reach  # mostly inside, near the far edge
        velocity = (size + reach - enter) / (turn - out)
        track = _fold(enter + velocity * t, lo, enter + velocity * turn)
        centers[:, axis] = track if far_side else size - track
    return _Track(cls, centers, radii, angles)


def _sample_occluder(rng: np.random.Generator, size: int, num_frames: int,
                     target: _Track) -> _Track | None:
    """A circle or square that slides onto `target`, covers it whole for a few frames, moving with
    it, and slides off again; None when covering it needs more than OCCLUDER_MAX_RADIUS."""
    t = np.arange(num_frames, dtype=np.float64)
    cls = CLASS_NAMES.index(("circle", "square")[int(rng.integers(2))])
    inscribed = 1.0 if CLASS_NAMES[cls] == "circle" else np.sqrt(0.5)  # of a unit circumradius
    margin = rng.uniform(1.0, 3.0) * size / 64
    radius = (_reach(target.cls) * target.radii.max() + margin) / inscribed
    if radius > OCCLUDER_MAX_RADIUS * size:
        return None
    meet = rng.uniform(0.3, 0.5) * (num_frames - 1)
    part = meet + rng.uniform(1.0, 3.0)
    # Frame 0 starts about one contact distance away (the target must show on frame 0).
    distance = rng.uniform(0.8, 1.1) * (radius + _reach(target.cls) * target.radii[0])
    speed_out = rng.uniform(*SPEED) * size / 64
    way_in, way_out = rng.uniform(0, 2 * np.pi, size=2)
    offset = (np.maximum(meet - t, 0)[:, None] / meet * distance * [np.cos(way_in), np.sin(way_in)]
              + np.maximum(t - part, 0)[:, None] * speed_out * [np.cos(way_out), np.sin(way_out)])
    angles = rng.uniform(0, 2 * np.pi) + rng.uniform(-MAX_ROTATION, MAX_ROTATION) * t
    return _Track(cls, target.centers + offset, np.full(num_frames, radius), angles)


def _track_masks(track: _Track, size: int) -> np.ndarray:
    """(T, S, S) bool: the object's full (unoccluded) mask on every frame."""
    name = CLASS_NAMES[track.cls]
    return np.stack([shape_mask(name, tuple(c), r, a, size)
                     for c, r, a in zip(track.centers, track.radii, track.angles)])


def _visible(full: np.ndarray) -> np.ndarray:
    """(K, ...) bool full masks in depth order -> the parts not covered by any later mask."""
    covered = np.zeros_like(full)
    if len(full) > 1:
        # covered[k] = any(full[k + 1:]): a reversed running OR, shifted by one.
        covered[:-1] = np.logical_or.accumulate(full[::-1], axis=0)[::-1][1:]
    return full & ~covered


def _distinct_color(rng: np.random.Generator, a: np.ndarray, b: np.ndarray,
                    others: list[np.ndarray], tries: int = 50) -> np.ndarray:
    """A colour contrasting the background segment [a, b] and far from the other objects'."""
    for _ in range(tries):
        color = _contrasting_color(rng, a, b)
        if all(np.linalg.norm(color - o) >= MIN_OBJECT_COLOR_DISTANCE for o in others):
            break
    return color


def render_clip(index: int, seed: int = 0, image_size: int = 64, num_frames: int = 12,
                max_objects: int = 3) -> ShapesClip:
    """Renders one clip, fixed by (seed, index) through `np.random.default_rng([seed, index])`.

    Args:
      index: the clip index (non-negative).
      seed: the stream of clips (the dataset builder uses one per split).
      image_size: side S of the square frames in pixels (at least 32).
      num_frames: T (at least 1; objects leave and come back only in clips of 7 frames or more).
      max_objects: the number of objects is uniform in 1 … max_objects (fewer when a crowded
        frame 0 leaves no room to show another object clearly in 20 tries).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if num_frames < 1 or max_objects < 1:
        raise ValueError(f"num_frames and max_objects must be positive, got {num_frames=}, "
                         f"{max_objects=}")
    index = int(index)
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got {index=}, {seed=}")
    rng = np.random.default_rng([seed, index])

    canvas, bg_a, bg_b = _background(rng, image_size)
    min_pixels = MIN_FIRST_FRAME_PIXELS * image_size**2 / 64**2
    tracks: list[_Track] = []
    firsts: list[np.ndarray] = []  # frame-0 full masks of the accepted objects
    num_objects, failures = int(rng.integers(1, max_objects + 1)), 0
    while len(tracks) < num_objects and (failures < 20 or not tracks):
        track = None
        if tracks and num_frames >= 5 and rng.uniform() < OCCLUDE_PROBABILITY:
            track = _sample_occluder(rng, image_size, num_frames,
                                     tracks[int(rng.integers(len(tracks)))])
        if track is None:
            track = _sample_track(rng, image_size, num_frames)
        first = shape_mask(CLASS_NAMES[track.cls], tuple(track.centers[0]), track.radii[0],
                           track.angles[0], image_size)
        # The new object goes in front: it must show enough itself, and leave enough of every
        # object behind it.
        if _visible(np.stack(firsts + [first])).sum(axis=(1, 2)).min() >= min_pixels:
            tracks.append(track)
            firsts.append(first)
            failures = 0
        else:
            failures += 1

    masks = _visible(np.stack([_track_masks(track, image_size) for track in tracks]))
    frames = np.repeat(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)[None], num_frames, axis=0)
    colors: list[np.ndarray] = []
    for mask in masks:  # visible masks are disjoint, so the order of painting does not matter
        colors.append(_distinct_color(rng, bg_a, bg_b, colors))
        frames[mask] = np.rint(colors[-1]).astype(np.uint8)
    return ShapesClip(
        frames=frames,
        masks=masks,
        object_ids=np.arange(1, len(tracks) + 1, dtype=np.int32),
        labels=np.asarray([track.cls for track in tracks], dtype=np.int64),
    )


def segmentation_map(masks: np.ndarray, object_ids: Sequence[int] | None = None) -> np.ndarray:
    """(K, T, S, S) bool disjoint masks -> (T, S, S) uint8: 0 background, else the object's id.

    object_ids: (K,) ids in 1 … 255; None means 1 … K (those of `render_clip`).
    """
    masks = np.asarray(masks, dtype=bool)
    ids = np.arange(1, len(masks) + 1) if object_ids is None else np.asarray(object_ids)
    if ids.shape != (len(masks),):
        raise ValueError(f"{len(masks)} masks but object_ids has shape {ids.shape}")
    if ids.size and (ids.min() < 1 or ids.max() > 255 or len(set(ids.tolist())) < ids.size):
        raise ValueError(f"object ids must be distinct and in 1 … 255, got {ids.tolist()}")
    overlap = masks.sum(axis=0) > 1
    if overlap.any():
        raise ValueError(f"masks overlap on frame {int(np.argwhere(overlap)[0, 0])}; a "
                         f"segmentation map holds one object per pixel")
    seg = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, object_id in zip(masks, ids):
        seg[mask] = object_id
    return seg


def masks_from_segmentation(seg: np.ndarray, object_ids: Sequence[int], *,
                            frame_numbers: Sequence[int] | None = None) -> np.ndarray:
    """(T, S, S) integer id map -> (K, T, S, S) bool, one mask per id of object_ids (K,), in that order.

    An id of object_ids that does not occur gives empty masks (the object is absent); an id in the
    map that object_ids lacks is a ValueError, since the map and the declared objects disagree. It
    names the frame by its index in seg, or by frame_numbers[index] (T,) when given (the frames'
    numbers in their video, when seg holds only some of them).
    """
    seg = np.asarray(seg)
    ids = np.asarray(object_ids).reshape(-1)
    if (ids < 1).any():
        raise ValueError(f"object ids must be positive (0 is the background), got {ids.tolist()}")
    declared = np.isin(seg, ids) | (seg == 0)
    if not declared.all():
        frame = int(np.argwhere(~declared)[0, 0])
        stray = int(seg[frame][~declared[frame]].min())
        number = frame if frame_numbers is None else int(frame_numbers[frame])
        raise ValueError(
            f"frame {number} holds object id {stray}, which the clip does not declare "
            f"(ids {', '.join(str(int(i)) for i in ids) or 'none'})")
    return seg[None] == ids.reshape((-1,) + (1,) * seg.ndim)
