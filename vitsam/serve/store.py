"""What the web app remembers between requests: bounded, thread-safe, keyed by random ids.

Every uploaded image gets an `ImageEntry` under a fresh random id: the pixels, the model's state for that image
(a `SamPredictor` holding its embedding, or a ViT's answer), the recent prompt results (their low-res logits,
fed back as the next prompt's mask input) and the masks the user kept. Entries live in an `LRU` of a fixed
number of images, so memory stays flat however many images are uploaded; results live in a smaller LRU per
image. Two tabs working on different images hold different ids and never see each other's state.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def new_id() -> str:
    """A random URL-safe id (96 bits): not guessable, never derived from anything the client sends."""
    return secrets.token_urlsafe(12)


class LRU:
    """A dict of at most `capacity` items; `get` and `put` make an item the most recent, `put` drops the least
    recent beyond the capacity."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"an LRU needs a capacity of at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str):
        """The value, or None for an unknown (or dropped) key."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class ImageEntry:
    """One uploaded image and what the server computed for it.

    image (H, W, 3) uint8; predictor: a `SamPredictor` with this image set (SAM); answer: the JSON-ready
    classification (ViT); results: result id -> (low-res logits (C, m, m), masks (C, H, W) bool, iou (C,));
    kept: masks the user kept ({"mask", "predicted_iou", "point_coords"}); everything: the last "segment
    everything" masks (`SamAutomaticMaskGenerator` records). `lock` serialises the work on one image.
    """

    image: np.ndarray
    name: str = "image"
    predictor: Any = None
    answer: dict | None = None
    results: LRU = field(default_factory=lambda: LRU(16))
    kept: list = field(default_factory=list)
    everything: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
