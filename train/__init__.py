"""Training programs: `python -m train.vit` (ViT classification) on the shared loop in `train.loop`."""

import os as _os
import sys as _sys

# `python -m train.X` is locating its module: nothing has run yet, so the trainer can re-execute itself with
# huge pages for XLA:CPU's step buffers (train.huge_pages says why and when). The tunable is looked for here
# too so that a process already re-executed does not import the submodule before runpy runs it as __main__.
if _sys.argv[:1] == ["-m"] and "glibc.malloc.hugetlb" not in _os.environ.get("GLIBC_TUNABLES", ""):
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
