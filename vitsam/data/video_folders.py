"""Video object segmentation datasets on disk as `VideoSource`s: DAVIS 2017, YouTube-VOS and SA-V.

    DavisSource(root)                              DAVIS 2017, or YouTube-VOS (detected from the layout)
        JPEGImages/480p/<seq>/00000.jpg            DAVIS: every frame annotated
        Annotations/480p/<seq>/00000.png
        ImageSets/2017/<split>.txt                 the sequences of a split, one a line
        <split>/JPEGImages/<vid>/00000.jpg         YouTube-VOS: every 5th frame annotated (train)
        <split>/Annotations/<vid>/00000.png

    SavSource(root)                                SA-V (Segment Anything Video) train
        sav_000001.mp4                             24 fps video, or JPEGImages_24fps/sav_000001/00000.jpg, 00004.jpg…
        sav_000001_manual.json                     {"masklet": [[RLE, …one per object], …one per annotated frame],
        sav_000001_auto.json (optional)             "masklet_id": [ids], "masklet_num": K, "video_frame_count", …}

A video's frames are its annotated frames, in order: `read(i, frames=[0, 2])` returns the first and third
of them. DAVIS and YouTube-VOS annotations are indexed-palette PNGs whose pixel values are object ids
(0 background, 255 "void", read as background); the video's objects are the ids that occur in any of its
PNGs, found the first time `info` or `read` needs them (the PNGs are read once, without decoding JPEGs) and
cached. SA-V annotates every 4th frame of its 24 fps videos (6 fps); its masks are COCO RLEs, one per object
on every annotated frame (SA-V's own loaders treat a null entry as "no mask": it reads as an empty mask).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitsam import images
from vitsam.data import rle
from vitsam.data.video_source import VideoInfo

LAYOUTS = ("davis", "youtube_vos")
VOID_ID = 255
SAV_ANNOTATION_STRIDE = 4  # SA-V: masks on video frames 0, 4, 8, … (6 fps of a 24 fps video)
SAV_FRAMES_FOLDER = "JPEGImages_24fps"  # where SAM 2's frame extraction writes <video>/<frame:05d>.jpg


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """An indexed-palette (or greyscale) annotation PNG -> (H, W) uint8 object ids, void (255) set to 0."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: an annotation must be an indexed-palette or greyscale PNG, got mode {im.mode}")
        labels = np.array(im, dtype=np.uint8)
    labels[labels == VOID_ID] = 0
    return labels


def _sorted_stems(folder: Path, suffix: str) -> list[str]:
    """The stems of the files `*<suffix>` of a folder, by the number in their names (by name otherwise)."""
    stems = [p.stem for p in folder.glob(f"*{suffix}")] if folder.is_dir() else []
    try:
        return sorted(stems, key=int)
    except ValueError:
        return sorted(stems)


def _positions(frames: Sequence[int] | None, count: int, name: str) -> list[int]:
    """Positions among a video's `count` annotated frames (None: all), each checked."""
    if frames is None:
        return list(range(count))
    positions = [int(f) for f in np.asarray(frames).reshape(-1)]
    for p in positions:
        if not 0 <= p < count:
            raise ValueError(f"{name}: frame position {p} is out of range for its {count} annotated frames")
    return positions


class DavisSource:
    """The annotated videos of a DAVIS 2017 or YouTube-VOS folder (see the module docstring).

    Args:
      root: the dataset folder (the one holding JPEGImages/ for DAVIS, train/ and valid/ for YouTube-VOS).
      split: DAVIS: the list ImageSets/2017/<split>.txt ("train", "val", …); YouTube-VOS: the subfolder.
      resolution: DAVIS only: "480p" or "Full-Resolution".
      sequences: these sequences (names) instead of the split's list (DAVIS) or of every video (YouTube-VOS).
      layout: "davis" or "youtube_vos"; None: "davis" when root/JPEGImages exists, else "youtube_vos" when
        root/<split>/JPEGImages does.

    DAVIS annotates every frame: a JPEG frame without its PNG is an error. YouTube-VOS annotates some frames
    (every 5th in train): a video's frames are those with both a JPEG and a PNG, at least one.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", resolution: str = "480p",
                 sequences: Sequence[str] | None = None, layout: str | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"video dataset folder {self.root} does not exist")
        if layout is None:
            if (self.root / "JPEGImages").is_dir():
                layout = "davis"
            elif (self.root / split / "JPEGImages").is_dir():
                layout = "youtube_vos"
            else:
                raise FileNotFoundError(f"{self.root} is neither a DAVIS folder (no JPEGImages/) nor a YouTube-VOS "
                                        f"folder (no {split}/JPEGImages/)")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout, self.split = layout, split
        if layout == "davis":
            self.image_dir = self.root / "JPEGImages" / resolution
            self.annotation_dir = self.root / "Annotations" / resolution
        else:
            self.image_dir = self.root / split / "JPEGImages"
            self.annotation_dir = self.root / split / "Annotations"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no frame folder {self.image_dir}")
        listed_in = None  # the split list the names come from, for the error messages
        if sequences is None and layout == "davis":
            split_list = self.root / "ImageSets" / "2017" / f"{split}.txt"
            if not split_list.is_file():
                raise FileNotFoundError(f"{self.root}: no list of the {split!r} sequences at {split_list}")
            sequences = [line.strip() for line in split_list.read_text().splitlines() if line.strip()]
            listed_in = str(split_list)
        elif sequences is None:
            sequences = sorted(p.name for p in self.image_dir.iterdir() if p.is_dir())
        self.names = [str(s) for s in sequences]
        for name in self.names:
            if not (self.image_dir / name).is_dir():
                where = f"{listed_in}: " if listed_in else ""
                raise FileNotFoundError(f"{where}sequence {name!r} has no frame folder {self.image_dir / name}")
        if not self.names:
            raise ValueError(f"{listed_in} is empty" if listed_in else f"no videos in {self.image_dir}")
        self._frames: dict[int, list[str]] = {}
        self._object_ids: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def _index(self, i) -> int:
        return range(len(self.names))[i]  # negative indices, and IndexError out of range

    def frame_names(self, i) -> list[str]:
        """The stems ("00000", …) of video i's annotated frames, in order."""
        i = self._index(i)
        if i not in self._frames:
            name = self.names[i]
            jpegs = _sorted_stems(self.image_dir / name, ".jpg")
            if not jpegs:
                raise ValueError(f"{self.image_dir / name} holds no .jpg frames")
            pngs = set(_sorted_stems(self.annotation_dir / name, ".png"))
            if self.layout == "davis":
                missing = [s for s in jpegs if s not in pngs]
                if missing:
                    raise ValueError(f"DAVIS sequence {name}: frame {missing[0]}.jpg has no annotation "
                                     f"{self.annotation_dir / name / (missing[0] + '.png')}")
                frames = jpegs
            else:
                frames = [s for s in jpegs if s in pngs]
                if not frames:
                    raise ValueError(f"YouTube-VOS video {name}: no frame has an annotation in "
                                     f"{self.annotation_dir / name}")
            self._frames[i] = frames
        return self._frames[i]

    def info(self, i) -> VideoInfo:
        """Name, number of annotated frames and object ids (the PNGs are read once; no JPEG is decoded)."""
        i = self._index(i)
        frames = self.frame_names(i)
        if i not in self._object_ids:
            folder = self.annotation_dir / self.names[i]
            present = np.zeros(256, bool)
            for stem in frames:
                present |= np.bincount(read_label_png(folder / f"{stem}.png").ravel(), minlength=256) > 0
            present[0] = False
            self._object_ids[i] = tuple(int(k) for k in np.flatnonzero(present))
        return VideoInfo(self.names[i], len(frames), self._object_ids[i])

    def read(self, i, frames: Sequence[int] | None = None) -> dict[str, Any]:
        """{"frames": (n, H, W, 3) uint8, "masks": (K, n, H, W) bool, "object_ids": (K,) int64, "name": str} for
        the given positions among the annotated frames (None: all); K = every object of the video."""
        name, count, object_ids = self.info(i)
        stems = self.frame_names(i)
        ids = np.asarray(object_ids, np.int64)
        images_, labels = [], []
        for p in _positions(frames, count, name):
            jpg = self.image_dir / name / f"{stems[p]}.jpg"
            png = self.annotation_dir / name / f"{stems[p]}.png"
            image, label = images.read_image(jpg, upright=False), read_label_png(png)
            if label.shape != image.shape[:2]:
                raise ValueError(f"{png}: the annotation is {label.shape[0]}x{label.shape[1]}, its frame {jpg.name} is "
                                 f"{image.shape[0]}x{image.shape[1]}")
            if images_ and image.shape != images_[0].shape:
                raise ValueError(f"{name}: frame {jpg.name} is {image.shape[0]}x{image.shape[1]}, the video's first "
                                 f"read frame is {images_[0].shape[0]}x{images_[0].shape[1]}")
            images_.append(image)
            labels.append(label)
        return _sample(name, images_, [label[None] == ids[:, None, None] for label in labels], ids)


def _sample(name: str, frames: list[np.ndarray], masks: list[np.ndarray], ids: np.ndarray) -> dict[str, Any]:
    """Per-frame images (H, W, 3) and masks (K, H, W) -> the `VideoSource.read` dict (also for 0 frames)."""
    if frames:
        video, stacked = np.stack(frames), np.stack(masks, axis=1)
    else:
        video, stacked = np.zeros((0, 0, 0, 3), np.uint8), np.zeros((len(ids), 0, 0, 0), bool)
    return {"frames": video, "masks": stacked, "object_ids": ids, "name": name}


class SavSource:
    """The videos of an SA-V training folder (see the module docstring), one per `<video>_<annotations>.json`.

    Args:
      root: the folder with the JSON files (and, as released, the .mp4 videos).
      annotations: "manual" (every SA-V video has them) or "auto" (SAM 2's automatic masklets; most videos).
      frames_root: where a video without an .mp4 beside its JSON has its frames extracted as JPEGs, the way SAM
        2's training code reads SA-V: `<frames_root>/<video>/<video frame:05d>.jpg` for the annotated video
        frames 0, 4, 8, …; default root/JPEGImages_24fps.

    The annotated frame t is video frame 4t. Reading an .mp4 decodes it (PyAV) from the start up to the last
    frame asked for, converting only the frames asked for.
    """

    def __init__(self, root: str | os.PathLike, annotations: str = "manual",
                 frames_root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-V folder {self.root} does not exist")
        if annotations not in ("manual", "auto"):
            raise ValueError(f"annotations must be 'manual' or 'auto', got {annotations!r}")
        self.annotations = annotations
        self.frames_root = self.root / SAV_FRAMES_FOLDER if frames_root is None else Path(frames_root).expanduser()
        suffix = f"_{annotations}.json"
        self.names = sorted(p.name[:-len(suffix)] for p in self.root.glob(f"*{suffix}"))
        if not self.names:
            raise ValueError(f"no SA-V annotation files (*{suffix}) in {self.root}")
        for name in self.names:
            if not (self.root / f"{name}.mp4").is_file() and not (self.frames_root / name).is_dir():
                raise FileNotFoundError(f"SA-V video {name}: neither {self.root / (name + '.mp4')} nor a frame folder "
                                        f"{self.frames_root / name}")
        self._infos: dict[int, VideoInfo] = {}

    def __len__(self) -> int:
        return len(self.names)

    def _index(self, i) -> int:
        return range(len(self.names))[i]

    def annotation_path(self, i) -> Path:
        return self.root / f"{self.names[self._index(i)]}_{self.annotations}.json"

    def _load(self, i) -> tuple[VideoInfo, list]:
        """Parse and check video i's JSON -> (its VideoInfo, the masklet: per annotated frame, per object RLEs)."""
        name, path = self.names[i], self.annotation_path(i)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("masklet"), list):
            raise ValueError(f"{path} is not an SA-V annotation file (needs a 'masklet' list)")
        masklet = data["masklet"]
        ids = data.get("masklet_id")
        num = data.get("masklet_num", len(ids) if ids is not None else len(masklet[0]) if masklet else 0)
        if ids is None:
            ids = list(range(num))
        if len(ids) != num:
            raise ValueError(f"{name}: masklet_id lists {len(ids)} ids, the video declares {num} masklets")
        for t, objects in enumerate(masklet):
            if not isinstance(objects, list) or len(objects) != num:
                listed = len(objects) if isinstance(objects, list) else type(objects).__name__
                raise ValueError(f"{name}: annotated frame {t} lists {listed} masklets, the video declares {num}")
        return VideoInfo(name, len(masklet), tuple(int(k) for k in ids)), masklet

    def info(self, i) -> VideoInfo:
        """Name, number of annotated frames and masklet ids (from the JSON; cached)."""
        i = self._index(i)
        if i not in self._infos:
            self._infos[i] = self._load(i)[0]
        return self._infos[i]

    def read(self, i, frames: Sequence[int] | None = None) -> dict[str, Any]:
        """{"frames": (n, H, W, 3) uint8, "masks": (K, n, H, W) bool, "object_ids": (K,) int64, "name": str} for
        the given positions among the annotated frames (None: all); K = every masklet of the video."""
        i = self._index(i)
        info, masklet = self._load(i)
        self._infos[i] = info
        positions = _positions(frames, info.num_frames, info.name)
        video = self._read_frames(i, [SAV_ANNOTATION_STRIDE * t for t in positions])
        masks = []
        for t, image in zip(positions, video):
            h, w = image.shape[:2]
            per_object = []
            for k, segmentation in enumerate(masklet[t]):
                if segmentation is None:
                    per_object.append(np.zeros((h, w), bool))
                    continue
                mask = rle.decode(segmentation)
                if mask.shape != (h, w):
                    raise ValueError(f"{info.name}: annotated frame {t}, masklet {k}: an RLE of {mask.shape[0]}x"
                                     f"{mask.shape[1]} for a {h}x{w} frame")
                per_object.append(mask)
            masks.append(np.stack(per_object) if per_object else np.zeros((0, h, w), bool))
        return _sample(info.name, video, masks, np.asarray(info.object_ids, np.int64))

    def _read_frames(self, i, indices: list[int]) -> list[np.ndarray]:
        """Video frames (24 fps indices) -> (H, W, 3) uint8 each, from the .mp4 or the JPEG folder."""
        name = self.names[i]
        path = self.root / f"{name}.mp4"
        if not path.is_file():
            folder = self.frames_root / name
            out = []
            for index in indices:
                jpg = folder / f"{index:05d}.jpg"
                if not jpg.is_file():
                    raise FileNotFoundError(f"SA-V video {name}: annotated frame {index // SAV_ANNOTATION_STRIDE} "
                                            f"needs {jpg}")
                out.append(images.read_image(jpg, upright=False))
            return out
        return read_video_frames(path, indices)


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> list[np.ndarray]:
    """Some frames of a video file (0-based indices in presentation order, any order, repeats allowed) ->
    (H, W, 3) uint8 RGB each, decoding with PyAV from the start up to the last one."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV: pip install 'vitsam[video]'") from None
    wanted = {int(k) for k in indices}
    if not wanted:
        return []
    last, found, count = max(wanted), {}, 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for count, frame in enumerate(container.decode(stream), start=1):
                if count - 1 in wanted:
                    found[count - 1] = frame.to_ndarray(format="rgb24")
                if count > last:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: not a readable video ({e})") from None
    if last not in found:
        raise ValueError(f"{path}: frame {last} was asked for, the video has {count} frames")
    return [found[int(k)] for k in indices]
