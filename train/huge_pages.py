"""Transparent huge pages for XLA:CPU's step buffers: a trainer started as `python -m train.X` re-executes itself
once with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` where that changes something (Linux, glibc 2.35 or newer,
transparent huge pages in "madvise" mode, the tunable not already set).

Why: XLA:CPU allocates a step's temporaries as one block from a worker thread's malloc arena (hundreds of MB for
the SAM 2 tracking step). A thread arena cannot hold a block over 64 MiB, so glibc maps it fresh with mmap at every
step and unmaps it after: every 4 KiB page of it faults and is zeroed again, every step. With the tunable, glibc
asks for huge pages on such blocks (madvise), and a 2 MiB page faults once where 512 small ones did.

Measured 2026-12-06 on a 2-core AMD EPYC (x86 family 25 model 1, Zen 3, AVX2), jax 0.10.2, the SAM 2 recipe's
gradient steps (configs/sam2_shapes_video.py; medians of 8 steps, each setting in its own process, alone): the still
step 0.82 s → 0.73 s (page faults a step 39k → ~450), the tracking step of 4 clips × 8 frames 3.29 s → 3.04 s (262k
→ ~700 faults, kernel time 0.87 s → 0.25 s a step). Keeping the block instead (one malloc arena, mmap off) ends the
faults too but makes a step slower (4-frame clips: 1.61 s against 1.28 s): every thread then contends for one arena.
The whole recipe of then, 700 still steps (`python -m train.sam2 --workdir DIR`, the same VM, alone; the run before
on 2026-12-06, the run with it 2026-12-07, not side by side): 35 min 48 s → 28 min 38 s, the same J&F to the last
digit; minor page faults 84.0 M → 2.6 M, kernel time 331 s → 131 s (`/usr/bin/time -v`).

`GLIBC_TUNABLES` is read when a process starts, hence the re-execution; it happens before the trainer imports
JAX. A `GLIBC_TUNABLES` that names `glibc.malloc.hugetlb` is left as it is (`glibc.malloc.hugetlb=0` keeps
small pages).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return None
    m = re.fullmatch(r"glibc (\d+)\.(\d+).*", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), None where it cannot be read."""
    try:
        m = re.search(r"\[(\w+)\]", path.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


def tuned_environment(environ, glibc: tuple[int, int] | None, mode: str | None) -> dict[str, str] | None:
    """The environment to re-execute with (`environ` with the tunable added to GLIBC_TUNABLES), or None where the
    tunable would change nothing: not glibc ≥ 2.35 (the first with it), huge pages not in "madvise" mode ("always"
    backs the blocks with huge pages already, "never" not at all), or GLIBC_TUNABLES already names it."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if glibc is None or glibc < (2, 35) or mode != "madvise" or TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)}


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set, where `tuned_environment` says so; else
    return. Call it first thing in a `python -m` entry point (nothing has run that would be lost)."""
    if sys.platform != "linux" or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    env = tuned_environment(os.environ, glibc_version(), thp_mode())
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)


def touch_faults(size: int = 64 << 20) -> int:
    """Page faults taken when touching a fresh `size`-byte block from malloc, every byte written once: ~size / 4 KiB
    with small pages, ~size / 2 MiB with huge pages."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(size)
    if not block:
        raise MemoryError(f"malloc({size}) failed")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
    return faults


if __name__ == "__main__":
    # `python -m train.huge_pages`: what a trainer started the same way gets.
    print(f"glibc {glibc_version()}, transparent huge pages {thp_mode()!r}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; "
          f"page faults touching a fresh 64 MiB block: {touch_faults()}")
