"""`vitsam track`: follow objects through a video with SAM 2, from point / box / mask prompts on any frames.

    prompts = parse_prompts(points=["2,30,20", "2,50,10,0"], boxes=["0,5,5,40,30,2"])  # {frame: {obj_id: ...}}
    summary = track("sam2_hiera_tiny.pt", "clip.mp4", prompts, "out/")

Prompts are in video pixels: `--point F,x,y[,label][,obj]` (label 1 foreground, the default, or 0 background;
object id 1 by default), `--box F,x0,y0,x1,y1[,obj]` and `--mask F,path[,obj]`; several frames and several
objects are allowed (one box per object and frame). A mask is a single-channel PNG of the video's size: without
obj its values are object ids, 0 (and DAVIS's void 255) the background (a DAVIS / YouTube-VOS annotation:
semi-supervised tracking from a first-frame mask); with obj its nonzero pixels are that object's mask (a 0 / 255
PNG as written below). A mask is taken as its frame's result, so it cannot be combined with clicks or a box of
the same object and frame.
Every object is tracked forward from the earliest prompted frame to the last frame and, when that frame is not
frame 0, backward from it to frame 0, so every frame gets a mask of every object (the official predictor's
`propagate_in_video` both ways, as its web demo does). Prompts on later frames are conditioning frames of their
objects: the tracking passes through them and uses them as given.

Writes OUT/masks/<obj_id>/<frame:05d>.png (255 inside the mask, 0 outside, at the video's size) and
OUT/overlay.mp4: every frame with each object's mask in its own colour and outline (objects in the order of
their ids, `vitsam.overlay.PALETTE`) and the prompts drawn on the frames they were given on; with `gif=True`
also OUT/overlay.gif, the same frames as an animated GIF that loops (Pillow; held in memory, so meant for
short clips such as the README's).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from vitsam.cli import _numbers

POINT_FORM = "F,x,y[,label][,obj]"
BOX_FORM = "F,x0,y0,x1,y1[,obj]"
MASK_FORM = "F,path[,obj]"
DEFAULT_FPS = 30  # the overlay's frame rate for a folder of frames
PYAV_HINT = "pip install 'vitsam[video]'"


@dataclasses.dataclass
class FramePrompt:
    """One object's prompts on one frame: points [(x, y)], their labels (1 / 0) and at most one box; or a mask
    (H, W) bool alone."""
    points: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    box: tuple | None = None
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False)


# -- prompts -------------------------------------------------------------------------------------------------------

def _index(value: float, flag: str, what: str, text: str) -> int:
    if value != int(value) or value < 0:
        raise ValueError(f"{flag} {text!r}: the {what} must be a whole number >= 0, got {value:g}")
    return int(value)


def parse_prompts(points=(), boxes=(), masks=()) -> dict[int, dict[int, FramePrompt]]:
    """--point / --box / --mask texts -> {frame: {obj_id: FramePrompt}}, frames and objects in increasing order
    (mask files are read here); a one-line ValueError for a malformed prompt or none at all."""
    prompts: dict[int, dict[int, FramePrompt]] = {}

    def entry(frame: int, obj_id: int) -> FramePrompt:
        return prompts.setdefault(frame, {}).setdefault(obj_id, FramePrompt())

    for text in points:
        v = _numbers(text, "--point", (3, 4, 5), POINT_FORM)
        frame = _index(v[0], "--point", "frame index", text)
        label = v[3] if len(v) > 3 else 1
        if label not in (0, 1):
            raise ValueError(f"--point {text!r}: the label must be 1 (foreground) or 0 (background), got {label:g}")
        obj_id = _index(v[4], "--point", "object id", text) if len(v) > 4 else 1
        prompt = entry(frame, obj_id)
        prompt.points.append((v[1], v[2]))
        prompt.labels.append(int(label))
    for text in boxes:
        v = _numbers(text, "--box", (5, 6), BOX_FORM)
        frame = _index(v[0], "--box", "frame index", text)
        obj_id = _index(v[5], "--box", "object id", text) if len(v) > 5 else 1
        x0, y0, x1, y1 = v[1:5]
        if x0 > x1 or y0 > y1:
            raise ValueError(f"--box {text!r}: expected x0 <= x1 and y0 <= y1")
        prompt = entry(frame, obj_id)
        if prompt.box is not None:
            raise ValueError(f"--box: object {obj_id} has two boxes on frame {frame}: give one box per object and frame")
        prompt.box = (x0, y0, x1, y1)
    for text in masks:
        frame, path, obj_id = _mask_flag(text)
        for oid, mask in _read_mask_prompt(path, obj_id, text).items():
            if entry(frame, oid).mask is not None:
                raise ValueError(f"--mask {text!r}: object {oid} already has a mask on frame {frame}")
            entry(frame, oid).mask = mask
    for frame, objs in prompts.items():
        for oid, p in objs.items():
            if p.mask is not None and (p.points or p.box is not None):
                raise ValueError(f"object {oid} on frame {frame} has a --mask and clicks or a box: a mask is taken as "
                                 f"the frame's result, so give one or the other")
    if not prompts:
        raise ValueError(f"no prompt: give --point {POINT_FORM}, --box {BOX_FORM} or --mask {MASK_FORM} "
                         f"(repeatable)")
    return {frame: dict(sorted(objs.items())) for frame, objs in sorted(prompts.items())}


def _mask_flag(text: str) -> tuple[int, Path, int | None]:
    """"F,path[,obj]" -> (frame, path, obj or None); a path may hold commas, an obj is a whole number."""
    parts = text.split(",")
    if len(parts) < 2 or not parts[0].strip() or not parts[-1].strip():
        raise ValueError(f"--mask expects {MASK_FORM}, got {text!r}")
    try:
        frame = float(parts[0])
    except ValueError:
        raise ValueError(f"--mask expects {MASK_FORM}, got {text!r}") from None
    frame = _index(frame, "--mask", "frame index", text)
    obj_id = None
    if len(parts) > 2 and parts[-1].strip().isdigit():
        obj_id, parts = int(parts[-1]), parts[:-1]
    return frame, Path(",".join(parts[1:]).strip()), obj_id


def _read_mask_prompt(path: Path, obj_id: int | None, text: str) -> dict[int, np.ndarray]:
    """A mask PNG -> {obj_id: (H, W) bool}: an annotation's object ids (obj_id None; DAVIS's void 255 is
    background, as `read_label_png` reads it) or its nonzero pixels as obj_id."""
    from PIL import Image, UnidentifiedImageError

    from vitsam.data.video_folders import read_label_png

    if not path.is_file():
        raise ValueError(f"--mask {text!r}: no file at {path}")
    try:
        if obj_id is None:
            values = read_label_png(path)
        else:
            with Image.open(path) as im:
                if im.mode not in ("1", "L", "P", "I", "I;16"):
                    raise ValueError(f"{path} is a {im.mode} image; expected a single-channel (indexed or "
                                     f"grayscale) PNG")
                values = np.asarray(im)
    except UnidentifiedImageError:
        raise ValueError(f"--mask {text!r}: {path} is not an image") from None
    except ValueError as e:
        raise ValueError(f"--mask {text!r}: {e}") from None
    if not values.any():
        raise ValueError(f"--mask {text!r}: {path} is empty (no nonzero pixel)")
    if obj_id is not None:
        return {obj_id: values != 0}
    return {int(v): values == v for v in np.unique(values) if v != 0}


def check_prompts_fit(prompts: dict, num_frames: int, height: int, width: int) -> None:
    """A one-line ValueError for a prompt on a frame the video does not have, or outside the frame."""
    for frame, objs in prompts.items():
        if frame >= num_frames:
            raise ValueError(f"a prompt is on frame {frame}, but the video has {num_frames} frames "
                             f"(0 … {num_frames - 1})")
        for p in objs.values():
            if p.mask is not None and p.mask.shape != (height, width):
                raise ValueError(f"--mask on frame {frame} is {p.mask.shape[1]}x{p.mask.shape[0]} (width x height), "
                                 f"but the video is {width}x{height}")
            for x, y in p.points:
                if not (0 <= x <= width and 0 <= y <= height):
                    raise ValueError(f"--point ({x:g}, {y:g}) on frame {frame} lies outside the {width}x{height} "
                                     f"(width x height) video")
            if p.box is not None and (p.box[2] > width or p.box[3] > height or min(p.box) < 0):
                raise ValueError(f"--box {[f'{c:g}' for c in p.box]} on frame {frame} lies outside the "
                                 f"{width}x{height} (width x height) video")


# -- video files ---------------------------------------------------------------------------------------------------

def _import_av(what: str):
    try:
        import av
    except ImportError:
        raise ImportError(f"{what} needs PyAV: {PYAV_HINT}") from None
    return av


def write_video(frames, path, fps=DEFAULT_FPS) -> int:
    """Frames (an iterable of (H, W, 3) uint8 RGB, all one size) -> a video file at `path` with PyAV: H.264
    (libx264) if this FFmpeg has it, else MPEG-4 part 2; yuv420p, so an odd width or height is padded by one
    edge pixel. Returns the number of frames written."""
    av = _import_av("writing video files")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if not rate > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}")
    size = np.asarray(first).shape
    if len(size) != 3 or size[-1] != 3:
        raise ValueError(f"video frames must be (H, W, 3) RGB, got shape {size}")
    h, w = size[:2]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width, stream.pix_fmt = h + h % 2, w + w % 2, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}  # visually near-lossless
        else:
            stream.bit_rate = max(int(stream.width * stream.height * rate / 4), 400_000)
        for frame in itertools.chain([first], frames):
            frame = np.asarray(frame)
            if frame.shape != size or frame.dtype != np.uint8:
                raise ValueError(f"video frames must all be uint8 {size}: frame {count} is {frame.dtype} {frame.shape}")
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            count += 1
        container.mux(stream.encode())  # flush the encoder
    return count


def video_fps(path) -> Fraction:
    """The frame rate of a video file (PyAV), or DEFAULT_FPS for a folder of frames."""
    path = Path(path)
    if path.is_dir():
        return Fraction(DEFAULT_FPS)
    av = _import_av("reading video files")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: not a readable video ({e or 'no video stream'})") from None


def iter_frames(video):
    """The frames of a folder (ordered as `Sam2VideoPredictor` orders them) or a video file, one at a time, as
    (H, W, 3) uint8 RGB."""
    from PIL import Image

    from vitsam.video_predictor import frame_files

    path = Path(video)
    if path.is_dir():
        for p in frame_files(path):
            with Image.open(p) as im:
                yield np.asarray(im.convert("RGB"))
        return
    av = _import_av("reading video files")
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


# -- tracking ------------------------------------------------------------------------------------------------------

def load_sam2(checkpoint):
    """(model, variables) of a SAM 2 checkpoint (an official .pt or a converted folder); a one-line ValueError
    for any other kind."""
    from vitsam.convert import load_model

    model, variables, kind = load_model(checkpoint)
    if kind != "sam2":
        what = {"sam": "a SAM 1 model", "vit": "a ViT"}.get(kind, f"a {kind} model")
        raise ValueError(f"{checkpoint} holds {what}, not a SAM 2: tracking needs a SAM 2 checkpoint "
                         f"(an official sam2*_hiera_*.pt or its `vitsam convert` folder)")
    return model, variables


def track(checkpoint, video, prompts: dict, out, *, write_overlay: bool = True, fps=None, gif: bool = False) -> str:
    """Track the objects of `prompts` (`parse_prompts`) through `video` (a video file or a folder of frames)
    with the SAM 2 in `checkpoint`; write the mask PNGs (and overlay.mp4, and overlay.gif with `gif`) under
    `out` (see the module docstring). Returns a one-line summary."""
    from tqdm import tqdm

    from vitsam.overlay import mask_image, overlay
    from vitsam.video_predictor import Sam2VideoPredictor

    video, out = Path(video), Path(out)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps must be a positive number, got {fps}")
    if not video.exists():
        raise FileNotFoundError(f"no video file or frame folder at {video}")
    if not video.is_dir():
        _import_av("reading video files")
    if write_overlay:
        _import_av("writing overlay.mp4")  # before the slow work
    if write_overlay or gif:
        fps = video_fps(video) if fps is None else fps

    predictor = Sam2VideoPredictor(*load_sam2(checkpoint))
    state = predictor.init_state(video)
    check_prompts_fit(prompts, state.num_frames, state.video_height, state.video_width)
    for frame, objs in prompts.items():
        for obj_id, p in objs.items():
            if p.mask is not None:
                predictor.add_new_mask(state, frame, obj_id, p.mask)
            else:
                predictor.add_new_points_or_box(state, frame, obj_id, points=p.points or None,
                                                labels=p.labels or None, box=p.box)

    obj_ids = sorted(state.obj_ids)
    masks_dir = out / "masks"
    for obj_id in obj_ids:
        (masks_dir / str(obj_id)).mkdir(parents=True, exist_ok=True)
    start = min(prompts)
    runs = [predictor.propagate_in_video(state, start_frame_idx=start)]
    if start > 0:
        runs.append(predictor.propagate_in_video(state, start_frame_idx=start, reverse=True))
    for run in runs:
        for frame, ids, logits in run:
            for obj_id, logit in zip(ids, logits):
                mask_image(logit[0] > 0).save(masks_dir / str(obj_id) / f"{frame:05d}.png")

    directions = f"forward from frame {start}" + (" and backward to frame 0" if start > 0 else "")
    written = f"{masks_dir}/<obj_id>/<frame>.png"
    if write_overlay or gif:
        def pictures():
            for frame, image in enumerate(iter_frames(video)):
                masks = [_read_mask(masks_dir / str(i) / f"{frame:05d}.png") for i in obj_ids]
                objs = prompts.get(frame, {}).values()
                points = [xy for p in objs for xy in p.points]
                boxes = [p.box for p in objs if p.box is not None]
                yield overlay(image, np.stack(masks), points=points or None,
                              labels=[label for p in objs for label in p.labels] or None, boxes=boxes or None)

        names = " and ".join(name for name, wanted in (("overlay.mp4", write_overlay), ("overlay.gif", gif)) if wanted)
        frames = tqdm(pictures(), total=state.num_frames, desc=f"writing {names}", unit="frame")
        if gif:
            frames = list(frames)  # both files take them
        if write_overlay:
            write_video(frames, out / "overlay.mp4", fps)
            written += f" and {out / 'overlay.mp4'}"
        if gif:
            write_gif(frames, out / "overlay.gif", fps)
            written += f" and {out / 'overlay.gif'}"
    return (f"tracked {len(obj_ids)} object{'s' * (len(obj_ids) != 1)} (ids {', '.join(map(str, obj_ids))}) "
            f"through {state.num_frames} frames of {state.video_width}x{state.video_height}, {directions}: "
            f"{written}")


def write_gif(frames, path, fps=DEFAULT_FPS) -> int:
    """Frames ((H, W, 3) uint8 RGB) -> an animated GIF at `path` that loops, each frame shown 1 / fps s (GIF
    keeps hundredths of a second). Returns the number of frames written."""
    from PIL import Image

    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    if not images:
        raise ValueError(f"no frames to write to {path}")
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / float(fps)), loop=0)
    return len(images)


def _read_mask(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im) > 127
