"""Reading weight files: .npz, .pth / .pt / .bin (PyTorch) and .safetensors -> a flat {key: numpy array}.

Nothing but arrays is ever unpickled (`np.load(allow_pickle=False)`, `torch.load(weights_only=True)`). Every
way a file can be unreadable — missing, truncated, not a weight file, holding Python objects, or needing a
package that is not installed — is one `ValueError` / `FileNotFoundError` / `ImportError` whose message names
the file and what to do.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np

SUFFIXES = (".npz", ".pth", ".pt", ".bin", ".safetensors")
TORCH_EXTRA = ("pip install 'vitsam[torch]' (on a machine without a GPU, install PyTorch's CPU build first: "
               "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def read_state_dict(path) -> dict[str, np.ndarray]:
    """The flat {key: numpy array} of a weight file. Training scripts' wrappers ({"model": ...},
    {"state_dict": ...}) are unwrapped and a DataParallel "module." prefix is dropped; bfloat16 tensors come
    back as float32 (numpy has no bfloat16)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in (".pth", ".pt", ".bin"):
        return _read_torch(path)
    raise ValueError(f"unknown checkpoint file type {suffix!r} ({path}); expected one of {', '.join(SUFFIXES)}")


def _read_npz(path: Path) -> dict:
    if not zipfile.is_zipfile(path):  # else numpy would try the file as a pickle
        raise ValueError(f"{path}: not a readable .npz archive (not a zip file: truncated, or not a checkpoint)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path}: refused for safety — the archive holds pickled Python objects, and "
                             "unpickling can run code; vitsam reads only plain arrays") from None
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise ValueError(f"{path}: not a readable .npz archive, truncated or not a checkpoint "
                         f"({type(e).__name__}: {e})") from None


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(f"reading {path.name} needs the safetensors package: "
                          "pip install 'vitsam[safetensors]'") from None
    try:
        return load_file(path)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable .safetensors file, truncated or not a checkpoint ({e})") from None
    except TypeError:  # bfloat16 has no numpy dtype in safetensors' numpy API: go through torch
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise ImportError(f"{path.name} holds bfloat16 tensors, which are read through PyTorch: "
                              f"{TORCH_EXTRA}") from None
        return {k: _torch_to_numpy(v) for k, v in load_torch(path).items()}


def torch_state_keys(path) -> list[str]:
    """The tensor names of a PyTorch checkpoint, read without loading the tensors (to tell kinds apart)."""
    return list(_load_torch_state(Path(path), "meta"))


def _read_torch(path: Path) -> dict:
    state = _load_torch_state(path, "cpu")
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def _load_torch_state(path: Path, device: str) -> dict:
    """{name: torch tensor}, unwrapped, with "module." dropped and entries that are not tensors left out."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path.name} needs PyTorch: {TORCH_EXTRA}") from None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({e})") from None
        found = _first_line_with(str(e), "GLOBAL").removeprefix("Trying to load ").rstrip(".") or "not a tensor"
        raise ValueError(
            f"{path}: refused for safety — the pickle holds Python objects besides tensors ({found}), and "
            "unpickling them could run code; vitsam loads only tensors. Re-save just the weights: "
            "torch.save(model.state_dict(), path), or as .safetensors") from None
    except Exception as e:  # torch reports truncation and garbage as RuntimeError, KeyError, EOFError, ...
        reason = (str(e).split(". ")[0] or type(e).__name__).strip()
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({reason})") from None
    for wrapper in ("state_dict", "model"):  # training scripts often nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of tensors (it holds a {type(state).__name__})")
    return {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _torch_to_numpy(t) -> np.ndarray:
    import torch
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _first_line_with(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line and line.strip()), "")


def warn_if_not_finite(variables, source) -> None:
    """Warn (one line) when floating-point weights hold NaN or infinity: such a model's outputs are NaN."""
    import jax

    bad, total, first = 0, 0, None
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating) and a.dtype.name != "bfloat16":
            continue
        n = int(a.size - np.count_nonzero(np.isfinite(a.astype(np.float32))))
        total += a.size
        if n and first is None:
            first = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)
        bad += n
    if bad:
        warnings.warn(f"{source}: {bad:,} of {total:,} weights are NaN or infinite (first in {first}); "
                      "the model's outputs will be NaN", stacklevel=3)
