"""A trainer started as `python -m train.X` re-executes itself with glibc's huge-page tunable (train.huge_pages):
the page faults of touching a fresh 64 MiB block, counted by the kernel, drop from one per 4 KiB page."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.huge_pages import TUNABLE, glibc_version, thp_mode, tuned_environment

ROOT = Path(__file__).resolve().parent.parent


def _faults(tunables: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-m", "train.huge_pages"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return int(out.rsplit(":", 1)[1]), out


@pytest.mark.skipif(glibc_version() is None or glibc_version() < (2, 35) or thp_mode() != "madvise",
                    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_python_m_train_gets_huge_pages_unless_the_tunable_is_set():
    small_pages = (64 << 20) // 4096
    default, out = _faults(None)
    assert f"{TUNABLE}=1" in out
    off, out_off = _faults(f"{TUNABLE}=0")   # the user's own setting is kept: small pages
    assert f"{TUNABLE}=0" in out_off and f"{TUNABLE}=1" not in out_off
    assert off >= 0.9 * small_pages, out_off
    assert default < off / 8, (out, out_off)


def test_the_tunable_is_added_only_where_it_changes_something():
    env = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert tuned_environment(env, (2, 36), "madvise") == {
        "PATH": "/bin", "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}=1"}
    assert tuned_environment({}, (2, 35), "madvise") == {"GLIBC_TUNABLES": f"{TUNABLE}=1"}
    assert tuned_environment({}, (2, 34), "madvise") is None        # glibc before the tunable
    assert tuned_environment({}, None, "madvise") is None           # not glibc (musl)
    assert tuned_environment({}, (2, 36), "always") is None         # huge pages already
    assert tuned_environment({}, (2, 36), "never") is None
    assert tuned_environment({}, (2, 36), None) is None             # no THP file (not Linux, a container)
    assert tuned_environment({"GLIBC_TUNABLES": f"{TUNABLE}=0"}, (2, 36), "madvise") is None
