"""The SA-1B format: one JPEG and one JSON per image, the masks as COCO RLE strings.

    sa_223750.jpg
    sa_223750.json   {"image": {"image_id", "file_name", "height", "width"},
                      "annotations": [{"id", "segmentation": {"size": [H, W], "counts": "..."}, "bbox": [x, y, w, h],
                                       "area", "predicted_iou", "stability_score", "point_coords", "crop_box"}, ...]}

`SA1BSource(folder)` is a random-access source of the pairs in a folder (sorted by file name) for
`annotations.make_annotation_iterator`. SA-1B masks have no class names: every label is -1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vitsam import images
from vitsam.data import rle


def read_annotation(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one SA-1B JSON file; a clear ValueError when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "annotations" not in data or "image" not in data:
        raise ValueError(f"{path} is not an SA-1B annotation file (needs 'image' and 'annotations')")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise ValueError(f"{path}: annotation {i} has no 'segmentation'")
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 in the stored pixel order: SA-1B and COCO masks are given in it (no EXIF rotation)."""
    return images.read_image(path, upright=False)


class SA1BSource:
    """The (image, annotation) pairs of an SA-1B folder: `source[i]` -> {"image": (H, W, 3) uint8,
    "segmentations": [RLE dicts], "labels": (K,) int32 all -1, "file_name": str}.

    Args:
      root: the folder with sa_*.jpg and sa_*.json files (any stem; an image is a .jpg / .jpeg / .png with
        a .json of the same stem beside it).
      start, stop: keep the pairs [start:stop] of the sorted list (hold out the last N with stop=-N).
    """

    class_names = None

    def __init__(self, root: str | os.PathLike, start: int | None = None, stop: int | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-1B folder {self.root} does not exist")
        pairs = []
        for ann in sorted(self.root.glob("*.json")):
            image = next((ann.with_suffix(s) for s in (".jpg", ".jpeg", ".png", ".JPG") if ann.with_suffix(s).exists()),
                         None)
            if image is not None:
                pairs.append((image, ann))
        self.pairs = pairs[start:stop]
        if not self.pairs:
            raise ValueError(f"no SA-1B image / JSON pairs in {self.root}"
                             + (f" (after slicing [{start}:{stop}])" if start is not None or stop is not None else ""))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, ann_path = self.pairs[index]
        data = read_annotation(ann_path)
        image = read_image(image_path)
        info = data["image"]
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"{ann_path} says {info.get('height')}x{info.get('width')}, the image is {h}x{w}")
        segs = [a["segmentation"] for a in data["annotations"]]
        return {"image": image, "segmentations": segs, "labels": np.full((len(segs),), -1, np.int32),
                "file_name": image_path.name}


def write_annotation(path: str | os.PathLike, image_id: int, file_name: str, masks: np.ndarray) -> None:
    """Write masks (K, H, W) as an SA-1B JSON file (compressed RLE, XYWH boxes, areas): for tests and small
    custom datasets."""
    masks = np.asarray(masks, bool)
    anns = []
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        bbox = [0, 0, 0, 0] if not len(rows) else [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                                                    int(rows[-1] - rows[0] + 1)]
        anns.append({"id": i, "segmentation": rle.encode(m), "bbox": bbox, "area": int(m.sum())})
    data = {"image": {"image_id": image_id, "file_name": file_name, "height": int(masks.shape[1]),
                      "width": int(masks.shape[2])}, "annotations": anns}
    Path(path).write_text(json.dumps(data))
