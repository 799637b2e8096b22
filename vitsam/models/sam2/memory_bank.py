"""Which memories and object pointers a SAM 2 frame attends to, as fixed-size slot layouts.

The choice follows the official `SAM2Base._prepare_memory_conditioned_features` at inference (all
conditioning frames; memory stride 1; object pointers of conditioning frames only from the past): the
memories of every conditioning frame (temporal slot 0) and of the `num_maskmem - 1` frames just before the
current one (just after, tracking in reverse), slot t for the frame num_maskmem - t frames away; the pointers
of the conditioning frames (signed distance) and of up to `max_obj_ptrs - 1` frames before the current one
(distance 1, 2, ...). Frames without an output are skipped.

`plan_memory` makes that choice in Python (it depends only on frame indices); `MemoryLayout` pads it to
fixed slot counts, so one compiled tracking step serves every frame of a video once its memory bank is full
(and one per power-of-two slot count before).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """memories: (frame, temporal slot) pairs; pointers: (frame, signed distance) pairs."""
    memories: tuple[tuple[int, int], ...]
    pointers: tuple[tuple[int, int], ...]


def plan_memory(frame_idx: int, cond_frames: Iterable[int], tracked_frames: Iterable[int], num_frames: int,
                num_maskmem: int = 7, max_obj_ptrs: int = 16, reverse: bool = False) -> MemoryPlan:
    """The memories and pointers frame `frame_idx` (not an initial conditioning frame) attends to.

    cond_frames: frames with the user's prompts; tracked_frames: other frames with an output (memory).
    """
    cond = sorted(set(cond_frames))
    tracked = set(tracked_frames) - set(cond)
    step = -1 if reverse else 1
    memories = [(t, 0) for t in cond]
    for slot in range(1, num_maskmem):
        prev = frame_idx - step * (num_maskmem - slot)
        if prev in tracked:
            memories.append((prev, slot))
    max_ptrs = min(num_frames, max_obj_ptrs)
    pointers = [(t, (frame_idx - t) * step) for t in cond if (t >= frame_idx if reverse else t <= frame_idx)]
    for dist in range(1, max_ptrs):
        t = frame_idx - step * dist
        if t < 0 or t >= num_frames:
            break
        if t in tracked:
            pointers.append((t, dist))
    return MemoryPlan(tuple(memories), tuple(pointers))


@dataclasses.dataclass(frozen=True)
class MemoryLayout:
    """Slot counts of a padded memory bank: `cond_slots` conditioning frames, then `recent_slots` recent frames
    (at most `num_maskmem - 1`); pointers: `cond_slots` conditioning frames, then `max_obj_ptrs - 1` recent frames.
    """
    cond_slots: int
    num_maskmem: int = 7
    max_obj_ptrs: int = 16
    recent_slots: int | None = None  # None: num_maskmem - 1

    @property
    def memory_slots(self) -> int:
        return self.cond_slots + self.recent

    @property
    def recent(self) -> int:
        return self.num_maskmem - 1 if self.recent_slots is None else self.recent_slots

    @property
    def pointer_slots(self) -> int:
        return self.cond_slots + self.max_obj_ptrs - 1

    @classmethod
    def for_cond_frames(cls, num_cond: int, **kw) -> "MemoryLayout":
        """The layout with room for `num_cond` conditioning frames, rounded up to a power of two (so a video
        recompiles only when its count of prompted frames passes 1, 2, 4, 8, ...)."""
        return cls(_power_of_two(num_cond), **kw)

    @classmethod
    def for_plans(cls, plans, num_maskmem: int = 7, max_obj_ptrs: int = 16) -> "MemoryLayout":
        """The smallest layout of power-of-two slot counts (recent frames: 0, 1, 2, 4, ... up to num_maskmem - 1)
        that holds every plan: at a video's start, when few frames have memories, the attention runs over fewer
        padded slots, at the price of one compile per slot count."""
        cond = max(sum(1 for _, slot in p.memories if slot == 0) for p in plans)
        recent = max(sum(1 for _, slot in p.memories if slot > 0) for p in plans)
        recent = 0 if recent == 0 else min(_power_of_two(recent), num_maskmem - 1)
        return cls(_power_of_two(cond), num_maskmem, max_obj_ptrs, recent)

    def place(self, plan: MemoryPlan) -> tuple[list, list]:
        """A plan -> (memory slots, pointer slots): per slot (frame, slot or distance), or None where empty."""
        cond_mem = [m for m in plan.memories if m[1] == 0]
        recent_mem = [m for m in plan.memories if m[1] > 0]
        if len(cond_mem) > self.cond_slots or len(recent_mem) > self.recent:
            raise ValueError(f"{len(cond_mem)} conditioning and {len(recent_mem)} recent frames do not fit "
                             f"{self.cond_slots} and {self.recent} slots")
        memories = cond_mem + [None] * (self.cond_slots - len(cond_mem)) + recent_mem
        memories += [None] * (self.memory_slots - len(memories))
        num_cond_ptrs = sum(1 for t, _ in plan.pointers if t in {f for f, _ in cond_mem})
        cond_ptr, recent_ptr = list(plan.pointers[:num_cond_ptrs]), list(plan.pointers[num_cond_ptrs:])
        pointers = cond_ptr + [None] * (self.cond_slots - len(cond_ptr)) + recent_ptr
        pointers += [None] * (self.pointer_slots - len(pointers))
        return memories, pointers


def _power_of_two(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    b = 1
    while b < n:
        b *= 2
    return b
