"""The COCO instances format: one JSON for a split, images in a folder.

    {"images": [{"id", "file_name", "height", "width"}, ...],
     "annotations": [{"id", "image_id", "category_id", "segmentation", "bbox": [x, y, w, h], "area", "iscrowd"}, ...],
     "categories": [{"id", "name", "supercategory"}, ...]}

A segmentation is a list of polygons [[x0, y0, x1, y1, ...], ...] (iscrowd 0) or an RLE
{"size": [H, W], "counts": [...] or "..."} (iscrowd 1). `CocoInstancesSource` is a random-access source for
`annotations.make_annotation_iterator`; category ids are mapped to contiguous labels 0 … C−1 in the order of
"categories", whose names are `class_names`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def read_instances(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a COCO instances JSON; a clear ValueError when a required part is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no COCO annotation file at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO instances file: no {', '.join(missing)}")
    return data


class CocoInstancesSource:
    """`source[i]` -> {"image": (H, W, 3) uint8, "segmentations": [...], "labels": (K,) int32, "image_id": int}.

    Args:
      annotation_file: instances_*.json.
      image_dir: the folder holding the images' file_name.
      skip_crowd: leave out iscrowd annotations (groups of objects, not instances).
      keep_empty: keep images without (remaining) annotations; by default they are dropped.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, *, skip_crowd: bool = True,
                 keep_empty: bool = False):
        data = read_instances(annotation_file)
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} does not exist")
        self.class_names = [c["name"] for c in data["categories"]]
        label_of = {c["id"]: i for i, c in enumerate(data["categories"])}
        by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            if ann["image_id"] not in by_image:
                raise ValueError(f"annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
            if ann["category_id"] not in label_of:
                raise ValueError(f"annotation {ann.get('id')} has unknown category {ann['category_id']}")
            by_image[ann["image_id"]].append(ann)
        self.images = [img for img in data["images"] if keep_empty or by_image[img["id"]]]
        self.annotations = [by_image[img["id"]] for img in self.images]
        self._label_of = label_of
        if not self.images:
            raise ValueError(f"{annotation_file} has no image with annotations")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from vitsam.data.sa1b import read_image

        info = self.images[index]
        image = read_image(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"{info['file_name']}: the JSON says {info.get('height')}x{info.get('width')}, "
                             f"the image is {h}x{w}")
        anns = self.annotations[index]
        return {"image": image, "segmentations": [a["segmentation"] for a in anns],
                "labels": np.array([self._label_of[a["category_id"]] for a in anns], np.int32),
                "image_id": int(info["id"])}
