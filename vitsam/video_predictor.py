"""SAM 2 video predictor: prompt objects on some frames, then propagate their masks through the video.

    predictor = Sam2VideoPredictor(model, variables)
    state = predictor.init_state("frames/")      # a folder of JPEGs, a video file, or a (T, H, W, 3) uint8 array
    _, obj_ids, logits = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                                         points=[[210, 350]], labels=[1])
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        masks = logits[:, 0] > 0                  # (objects, H, W)

The interface and behaviour of the official `SAM2VideoPredictor` (sam2 1.1.0, `build_sam2_video_predictor`'s
settings): `add_new_points_or_box`, `add_new_mask`, `propagate_in_video` (forward or in reverse, from any
frame), `clear_all_prompts_in_frame`, `remove_object`, `reset_state`. Prompts on a frame an object was not
tracked on make it a conditioning frame of that object; prompts on a tracked frame refine that frame (with the
previous mask logits as a mask prompt). Masks come back as logits (objects, 1, H, W) at the video's size,
-1024 where an object has no output.

Each object has its own memory bank; propagation runs all objects of a frame as one batch. The per-frame work
is jitted with fixed shapes: the memory bank is padded to power-of-two slot counts (`MemoryLayout.for_plans`),
the object batch to a bucket (1 … 4, then powers of two), so a video compiles its tracking step once per
(object bucket, slot counts), not per frame: a few times while its first frames fill the memory bank, then
never again. Memories are kept in bfloat16, as the official predictor keeps them.

`fill_hole_area` (default 8, as the official builder sets): background holes of at most that many low-res
pixels inside a mask are filled (scipy.ndimage). The official package does this only with its CUDA extension
and skips it on a CPU-only install; pass 0 for that behaviour.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam.interpolate import resize_linear, resize_linear_aa
from vitsam.models.sam2.memory_bank import MemoryLayout, plan_memory
from vitsam.models.sam2.sam2 import NO_OBJECT_SCORE

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FrameOutput(NamedTuple):
    """One object's result on one frame: low-res mask logits (4h, 4w) (host), object pointer (D,), object score
    logit, and its memory (h, w, mem_dim) bfloat16 (None until encoded)."""
    masks: np.ndarray
    obj_ptr: jax.Array
    object_score: float
    memory: jax.Array | None


@dataclasses.dataclass
class ObjectTrack:
    """One object's prompts and outputs. points: frame -> (coords (P, 2) in model-input pixels, labels (P,));
    masks: frame -> (S, S) float 0 / 1; outputs / temp: "cond" / "non_cond" -> {frame: FrameOutput} (temp holds
    results of prompts not yet consolidated by a propagation); tracked: frame -> whether it was tracked in
    reverse."""
    points: dict = dataclasses.field(default_factory=dict)
    masks: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=lambda: {"cond": {}, "non_cond": {}})
    temp: dict = dataclasses.field(default_factory=lambda: {"cond": {}, "non_cond": {}})
    tracked: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class VideoState:
    """What `init_state` returns: the frames (T, S, S, 3) uint8 at the model's input size, the video's size,
    the objects by id (in the order they were added), and a small cache of image features."""
    frames: np.ndarray
    video_height: int
    video_width: int
    objects: dict = dataclasses.field(default_factory=dict)
    features: OrderedDict = dataclasses.field(default_factory=OrderedDict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def obj_ids(self) -> list:
        return list(self.objects)


def _resize_frame(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3) with PIL's bicubic resize (the official frame loader's)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder (JPEG / PNG), ordered by the number in their names (by name otherwise)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        return sorted(files, key=lambda p: int(p.stem))
    except ValueError:
        return sorted(files)


def load_video(video, size: int) -> tuple[np.ndarray, int, int]:
    """A folder of frames (JPEG / PNG, ordered by the number in their names), a video file, or an array
    (T, H, W, 3) uint8 -> (frames (T, size, size, 3) uint8, height, width)."""
    from tqdm import tqdm

    if isinstance(video, (str, Path)):
        path = Path(video)
        if path.is_dir():
            files = frame_files(path)
            if not files:
                raise ValueError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)} files)")
            from PIL import Image

            frames, sizes = [], set()
            for p in tqdm(files, desc="loading frames", unit="frame", leave=False):
                with Image.open(p) as im:
                    rgb = np.asarray(im.convert("RGB"))
                sizes.add(rgb.shape[:2])
                if len(sizes) > 1:
                    raise ValueError(f"frames of different sizes in {path}: {sorted(sizes)} ({p.name})")
                frames.append(_resize_frame(rgb, size))
            (height, width), = sizes
            return np.stack(frames), height, width
        if not path.exists():
            raise FileNotFoundError(f"no video or frame folder at {path}")
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path}: expected a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
        video = read_video_file(path)
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"a video array must be uint8 (T, H, W, 3) RGB, got {video.dtype} {video.shape}")
    if len(video) == 0 or 0 in video.shape[1:3]:
        raise ValueError(f"the video is empty: shape {video.shape}")
    frames = np.stack([_resize_frame(f, size) for f in tqdm(video, desc="resizing frames", unit="frame",
                                                              leave=False)])
    return frames, video.shape[1], video.shape[2]


def read_video_file(path) -> np.ndarray:
    """A video file -> (T, H, W, 3) uint8 RGB frames, decoded with PyAV (the [video] extra)."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV: pip install 'vitsam[video]'") from None
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: not a readable video ({e})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames)


def fill_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """Mask logits (..., H, W) -> the same with background regions (logits <= 0, 8-connected) of at most
    `max_area` pixels set to 0.1 (foreground), as the official `fill_holes_in_mask_scores`."""
    from scipy import ndimage

    out = np.array(logits, np.float32, copy=True)
    flat = out.reshape(-1, *out.shape[-2:])
    for m in flat:
        labels, n = ndimage.label(m <= 0, structure=np.ones((3, 3)))
        if n:
            areas = np.bincount(labels.ravel())
            small = (areas <= max_area) & (np.arange(n + 1) > 0)
            m[small[labels]] = 0.1
    return out


def _bucket(n: int) -> int:
    """Object batches: exact up to 4 (each object costs a full memory attention), then powers of two."""
    if n <= 4:
        return max(n, 1)
    b = 8
    while b < n:
        b *= 2
    return b


class Sam2VideoPredictor:
    """SAM 2 on videos (see the module docstring). `model` is a `vitsam.models.sam2.Sam2`."""

    def __init__(self, model, variables: dict, *, fill_hole_area: int = 8, non_overlap_masks: bool = False,
                 feature_cache: int = 2):
        self.model, self.variables = model, variables
        self.fill_hole_area = int(fill_hole_area)
        self.non_overlap_masks = non_overlap_masks
        self.feature_cache = max(int(feature_cache), 1)
        self.image_size = model.image_size
        self._encode = jax.jit(partial(_apply, model, "encode_image"))
        self._track = jax.jit(partial(_apply, model, "track"),
                              static_argnames=("max_ptr_offset", "multimask_output", "binarize", "encode"))
        self._mask_as_output = jax.jit(partial(_apply, model, "mask_as_output"))
        self._encode_memory = jax.jit(partial(_encode_memory, model), static_argnames=("binarize",))
        self._to_video = jax.jit(_to_video_size, static_argnames=("height", "width"))

    # -- state ---------------------------------------------------------------------------------------------------
    def init_state(self, video) -> VideoState:
        """A video: a folder of frames (JPEG / PNG named by frame number), a video file (.mp4 ...), or a uint8
        (T, H, W, 3) array. Frames are resized to the model's S×S input once, here."""
        frames, height, width = load_video(video, self.image_size)
        return VideoState(frames, height, width)

    def reset_state(self, state: VideoState) -> None:
        """Forget every object, prompt and result (the frames and their cached features stay)."""
        self._check_state(state)
        state.objects.clear()

    def _check_state(self, state) -> None:
        if not isinstance(state, VideoState):
            raise TypeError(f"expected the state from init_state(video), got {type(state).__name__}: "
                            "call predictor.init_state(video) first")

    def _check_frame(self, state: VideoState, frame_idx) -> int:
        if not isinstance(frame_idx, (int, np.integer)) or not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx!r} is out of range: the video has {state.num_frames} frames "
                             f"(0 … {state.num_frames - 1})")
        return int(frame_idx)

    def _object(self, state: VideoState, obj_id, create: bool) -> ObjectTrack:
        if obj_id not in state.objects:
            if not create:
                raise KeyError(f"unknown object id {obj_id!r}; the objects are {state.obj_ids}")
            state.objects[obj_id] = ObjectTrack()
        return state.objects[obj_id]

    def _features(self, state: VideoState, frame_idx: int):
        cache = state.features
        if frame_idx in cache:
            cache.move_to_end(frame_idx)
            return cache[frame_idx]
        x = (state.frames[frame_idx].astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        feats = self._encode(self.variables, jnp.asarray(x[None]))
        cache[frame_idx] = feats
        while len(cache) > self.feature_cache:
            cache.popitem(last=False)
        return feats

    # -- prompts ---------------------------------------------------------------------------------------------------
    def add_new_points_or_box(self, state: VideoState, frame_idx: int, obj_id, points=None, labels=None,
                              clear_old_points: bool = True, normalize_coords: bool = True, box=None):
        """Clicks (points (P, 2) x, y and labels (P,): 1 positive, 0 negative) and / or a box (x0, y0, x1, y1) for
        object `obj_id` (a new id adds an object) on one frame, in the video's pixels (normalize_coords=False: as
        fractions of the width and height, as the official). -> (frame_idx, obj_ids, mask logits (objects, 1, H, W))
        of that frame.
        """
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points and labels, or a box, or both")
        coords = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32)
        labs = np.zeros((0,), np.int32) if labels is None else np.asarray(labels)
        if coords.ndim != 2 or coords.shape[-1] != 2:
            raise ValueError(f"points must be (P, 2) x, y, got shape {coords.shape}")
        if labs.shape != coords.shape[:1]:
            raise ValueError(f"labels must be ({len(coords)},), one per point, got shape {labs.shape}")
        if not np.isin(labs, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (object) or 0 (background), got {sorted(set(labs.tolist()))}")
        if not np.isfinite(coords).all():
            raise ValueError("points must be finite")
        labs = labs.astype(np.int32)
        if box is not None:
            if not clear_old_points:
                raise ValueError("a box replaces the frame's earlier points: use clear_old_points=True")
            box = np.asarray(box, np.float32)
            if box.shape != (4,) or not np.isfinite(box).all():
                raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got {box.tolist()}")
            coords = np.concatenate([box.reshape(2, 2), coords])
            labs = np.concatenate([np.array([2, 3], np.int32), labs])
        if normalize_coords:
            coords = coords / np.array([state.video_width, state.video_height], np.float32)
        coords = (coords * self.image_size).astype(np.float32)

        obj = self._object(state, obj_id, create=True)
        if not clear_old_points and frame_idx in obj.points:
            old_c, old_l = obj.points[frame_idx]
            coords, labs = np.concatenate([old_c, coords]), np.concatenate([old_l, labs])
        obj.points[frame_idx] = (coords, labs)
        obj.masks.pop(frame_idx, None)
        return self._prompt(state, obj, frame_idx)

    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id, mask):
        """A mask (H, W) (bool or 0 / 1, any size; resized to S×S) for object `obj_id` on one frame; it is taken
        as that frame's result. -> (frame_idx, obj_ids, mask logits (objects, 1, H, W))."""
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        mask = np.asarray(mask)
        if mask.ndim != 2 or 0 in mask.shape:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        m = mask.astype(np.float32)
        if m.shape != (self.image_size, self.image_size):
            m = resize_linear_aa(resize_linear_aa(jnp.asarray(m), self.image_size, 0), self.image_size, 1)
            m = (np.asarray(m) >= 0.5).astype(np.float32)
        obj = self._object(state, obj_id, create=True)
        obj.masks[frame_idx] = m
        obj.points.pop(frame_idx, None)
        return self._prompt(state, obj, frame_idx)

    def _prompt(self, state: VideoState, obj: ObjectTrack, frame_idx: int):
        """Run the object's prompts of one frame (without a new memory) and store the result as temporary."""
        init_cond = frame_idx not in obj.tracked
        reverse = False if init_cond else obj.tracked[frame_idx]
        key = "cond" if init_cond else "non_cond"
        feats = self._features(state, frame_idx)
        if frame_idx in obj.masks:
            heads = self._mask_as_output(self.variables, feats.vision, feats.high_res,
                                         jnp.asarray(obj.masks[frame_idx][None]))
        else:
            coords, labels = obj.points[frame_idx]
            prev = obj.temp[key].get(frame_idx) or obj.outputs["cond"].get(frame_idx) \
                or obj.outputs["non_cond"].get(frame_idx)
            mask_input = None if prev is None else jnp.asarray(np.clip(prev.masks, -32.0, 32.0)[None])
            bank = {} if init_cond else self._bank(state, [obj], frame_idx, reverse)
            heads, _ = self._track(self.variables, feats.vision, feats.vision_pos, feats.high_res, **bank,
                                   point_coords=jnp.asarray(coords[None]), point_labels=jnp.asarray(labels[None]),
                                   mask_input=mask_input,
                                   multimask_output=self.model.multimask_for(len(labels), init_cond),
                                   encode=False, **self._bank_static(state, bank))
        obj.temp[key][frame_idx] = self._output(heads, 0, None)
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, key)

    def clear_all_prompts_in_frame(self, state: VideoState, frame_idx: int, obj_id, need_output: bool = True):
        """Remove object `obj_id`'s prompts (and their result) on one frame; -> that frame's masks, as
        `add_new_points_or_box`, unless need_output=False."""
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        obj = self._object(state, obj_id, create=False)
        obj.points.pop(frame_idx, None)
        obj.masks.pop(frame_idx, None)
        obj.temp["cond"].pop(frame_idx, None)
        obj.temp["non_cond"].pop(frame_idx, None)
        out = obj.outputs["cond"].pop(frame_idx, None)
        if out is not None:  # a tracked result stays, as an ordinary frame's
            obj.outputs["non_cond"][frame_idx] = out
            obj.tracked.pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.temp["cond"] for o in state.objects.values())
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, "cond" if is_cond else "non_cond")

    def remove_object(self, state: VideoState, obj_id, strict: bool = False, need_output: bool = True):
        """Remove an object; -> (obj_ids, [(frame_idx, masks)] for the frames it had prompts on). An unknown id
        is ignored, or raises with strict=True."""
        self._check_state(state)
        if obj_id not in state.objects:
            if strict:
                raise KeyError(f"cannot remove object id {obj_id!r}: the objects are {state.obj_ids}")
            return state.obj_ids, []
        obj = state.objects.pop(obj_id)
        updated = []
        if need_output and state.objects:
            for frame_idx in sorted(set(obj.points) | set(obj.masks)):
                is_cond = any(frame_idx in o.temp["cond"] for o in state.objects.values())
                updated.append((frame_idx, self._frame_masks(state, frame_idx, "cond" if is_cond else "non_cond")))
        return state.obj_ids, updated

    # -- propagation -------------------------------------------------------------------------------------------
    def propagate_in_video(self, state: VideoState, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False,
                           progress: bool = True) -> Iterator[tuple[int, list, np.ndarray]]:
        """Track every object from `start_frame_idx` (default: the first prompted frame) forward, or backward with
        reverse=True, over at most `max_frame_num_to_track` frames after the start; yields (frame_idx, obj_ids,
        mask logits (objects, 1, H, W)) per frame."""
        self._check_state(state)
        self._consolidate(state)
        n = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for o in state.objects.values() for t in o.outputs["cond"])
        start = self._check_frame(state, start_frame_idx)
        count = n if max_frame_num_to_track is None else int(max_frame_num_to_track)
        if count < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        if reverse:
            order = range(start, max(start - count, 0) - 1, -1) if start > 0 else range(0)
        else:
            order = range(start, min(start + count, n - 1) + 1)
        if progress:
            from tqdm import tqdm

            order = tqdm(order, desc="propagating", unit="frame")
        objects = list(state.objects.values())
        for frame_idx in order:
            todo = [o for o in objects if frame_idx not in o.outputs["cond"]]
            if todo:
                self._track_frame(state, todo, frame_idx, reverse)
            for o in objects:
                o.tracked[frame_idx] = reverse
            yield frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, None)

    def _consolidate(self, state: VideoState) -> None:
        """Before tracking: encode the memories of the prompted frames' results and move them to the outputs
        (the official `propagate_in_video_preflight`)."""
        if not state.objects:
            raise ValueError("no object has prompts: add points, a box or a mask first")
        for obj_id, obj in state.objects.items():
            for key in ("non_cond", "cond"):
                for frame_idx, out in obj.temp[key].items():
                    if out.memory is None:
                        feats = self._features(state, frame_idx)
                        mem = self._encode_memory(self.variables, feats.vision, jnp.asarray(out.masks[None]),
                                                  jnp.asarray([out.object_score], jnp.float32), binarize=True)
                        out = out._replace(memory=mem[0].astype(jnp.bfloat16))
                    obj.outputs[key][frame_idx] = out
                obj.temp[key].clear()
            if not obj.outputs["cond"]:
                raise ValueError(f"object {obj_id!r} has no prompts on any frame: add points, a box or a mask")
            for frame_idx in obj.outputs["cond"]:
                obj.outputs["non_cond"].pop(frame_idx, None)

    def _track_frame(self, state: VideoState, objects: list, frame_idx: int, reverse: bool) -> None:
        """Track `objects` (none prompted on this frame) on one frame from their memories, as one batch."""
        feats = self._features(state, frame_idx)
        rows = _bucket(len(objects))
        batch = objects + objects[:1] * (rows - len(objects))  # padded with copies, dropped below
        bank = self._bank(state, batch, frame_idx, reverse)
        heads, memory = self._track(
            self.variables, jnp.broadcast_to(feats.vision, (rows, *feats.vision.shape[1:])), feats.vision_pos,
            tuple(jnp.broadcast_to(h, (rows, *h.shape[1:])) for h in feats.high_res), **bank,
            multimask_output=self.model.multimask_for(0), encode=True, **self._bank_static(state, bank))
        memory = memory.astype(jnp.bfloat16)
        for i, obj in enumerate(objects):
            obj.outputs["non_cond"][frame_idx] = self._output(heads, i, memory[i])

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _output(self, heads, i: int, memory) -> FrameOutput:
        masks = np.asarray(heads.masks[i], np.float32)
        if self.fill_hole_area > 0:
            masks = fill_holes(masks, self.fill_hole_area)
        return FrameOutput(masks, heads.obj_ptr[i], float(heads.object_score[i]), memory)

    def _bank(self, state: VideoState, objects: list, frame_idx: int, reverse: bool) -> dict:
        """The padded memory banks of `objects` for one frame (arguments of `Sam2.track`)."""
        model = self.model
        plans = [plan_memory(frame_idx, o.outputs["cond"], o.outputs["non_cond"], state.num_frames,
                             model.num_maskmem, model.max_obj_ptrs_in_encoder, reverse) for o in objects]
        layout = MemoryLayout.for_plans(plans, model.num_maskmem, model.max_obj_ptrs_in_encoder)
        h = model.embedding_size
        empty_mem = jnp.zeros((h, h, model.mem_dim), jnp.bfloat16)
        empty_ptr = jnp.zeros((model.d_model,), jnp.float32)
        mems, tpos, valid, ptrs, offsets, ptr_valid = [], [], [], [], [], []
        for obj, plan in zip(objects, plans):
            mem_slots, ptr_slots = layout.place(plan)
            find = lambda t: obj.outputs["cond"].get(t) or obj.outputs["non_cond"][t]  # noqa: E731
            mems.append(jnp.stack([find(s[0]).memory if s else empty_mem for s in mem_slots]))
            tpos.append([s[1] if s else 0 for s in mem_slots])
            valid.append([s is not None for s in mem_slots])
            ptrs.append(jnp.stack([find(s[0]).obj_ptr if s else empty_ptr for s in ptr_slots]))
            offsets.append([s[1] if s else 0 for s in ptr_slots])
            ptr_valid.append([s is not None for s in ptr_slots])
        return dict(memories=jnp.stack(mems).astype(jnp.float32), memory_tpos=jnp.asarray(tpos, jnp.int32),
                    memory_valid=jnp.asarray(valid), obj_ptrs=jnp.stack(ptrs),
                    ptr_offsets=jnp.asarray(offsets, jnp.float32), ptr_valid=jnp.asarray(ptr_valid))

    def _bank_static(self, state: VideoState, bank: dict) -> dict:
        if not bank:
            return {}
        return dict(max_ptr_offset=min(state.num_frames, self.model.max_obj_ptrs_in_encoder) - 1)

    def _frame_masks(self, state: VideoState, frame_idx: int, temp_key: str | None) -> np.ndarray:
        """Every object's low-res logits on a frame (its temporary result under `temp_key` first, then its
        outputs; -1024 where it has none) -> (objects, 1, H, W) at the video's size."""
        side = self.model.mask_input_size
        low = np.full((len(state.objects), side, side), NO_OBJECT_SCORE, np.float32)
        for i, obj in enumerate(state.objects.values()):
            out = (obj.temp[temp_key].get(frame_idx) if temp_key else None) or obj.outputs["cond"].get(frame_idx) \
                or obj.outputs["non_cond"].get(frame_idx)
            if out is not None:
                low[i] = out.masks
        if not len(low):
            return np.zeros((0, 1, state.video_height, state.video_width), np.float32)
        rows = _bucket(len(low))
        padded = np.concatenate([low, np.repeat(low[:1], rows - len(low), 0)])
        video = np.asarray(self._to_video(jnp.asarray(padded), height=state.video_height, width=state.video_width))
        video = video[:len(low)]
        if self.non_overlap_masks and len(video) > 1:
            best = video.argmax(0)[None]
            video = np.where(best == np.arange(len(video))[:, None, None], video, np.minimum(video, -10.0))
        return video[:, None]


def _apply(model, method: str, variables, *args, **kwargs):
    return model.apply(variables, *args, method=getattr(model, method), **kwargs)


def _encode_memory(model, variables, vision, low_res, object_score, binarize: bool):
    def run(m, vision, low_res, object_score):
        return m.encode_memory(vision, m.upscale_masks(low_res), object_score, binarize)
    return model.apply(variables, vision, low_res, object_score, method=run)


def _to_video_size(low_res, height: int, width: int):
    return resize_linear(resize_linear(low_res, height, axis=1, fused=False), width, axis=2, fused=False)
