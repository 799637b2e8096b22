"""Which install extra brings a missing package: turns a ModuleNotFoundError into one line saying what to install."""

from __future__ import annotations

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "tensorflow_datasets": "data", "grain": "data", "array_record": "data", "threadpoolctl": "data",
    "importlib_resources": "data", "matplotlib": "viz", "safetensors": "safetensors", "torch": "torch",
    "libtpu": "tpu", "segment_anything": "parity", "timm": "parity", "torchvision": "parity",
    "starlette": "serve", "uvicorn": "serve", "httpx": "serve",
}


def missing_package_message(error: ModuleNotFoundError) -> str | None:
    """"… needs the package X: pip install 'vitsam[EXTRA]'" for a package of an extra, else None."""
    top = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return f"this needs the package {top!r}, which is not installed: pip install 'vitsam[{extra}]'"
