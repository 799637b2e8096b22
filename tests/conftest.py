"""Test-session setup: one persistent XLA compilation cache shared by the test processes (pytest-xdist's workers
inherit it from the process that starts them) and the trainer subprocesses the end-to-end tests start.

The resume tests run the same trainer command up to three times (a reference run, a run killed with SIGKILL,
the resumed run); with the cache the later runs load the compiled steps instead of compiling them again.
The executables are the same, so the losses the tests compare are unchanged. A JAX_COMPILATION_CACHE_DIR set
by the user is used as it is and kept.
"""

import os
import shutil
import tempfile

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="vitsam-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
