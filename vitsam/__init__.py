"""vitsam: Vision Transformers and SAM-style promptable segmentation in JAX / Flax Linen.

The attributes below load on first use (`vitsam.nn`, `vitsam.SamPredictor`, ...), so that importing a light
submodule (the `vitsam` command's parser, vitsam/cli.py) does not import JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# attribute -> (module, name in it; None: the module itself)
_LAZY = {
    "SamAutomaticMaskGenerator": ("vitsam.mask_generator", "SamAutomaticMaskGenerator"),
    "SamPredictor": ("vitsam.predictor", "SamPredictor"),
    "Sam2ImagePredictor": ("vitsam.sam2_predictor", "Sam2ImagePredictor"),
    "Sam2VideoPredictor": ("vitsam.video_predictor", "Sam2VideoPredictor"),
    "count_params": ("vitsam.params", "count_params"),
    "checkpoint": ("vitsam.checkpoint", None),
    "mask_generator": ("vitsam.mask_generator", None),
    "convert": ("vitsam.convert", None),
    "export": ("vitsam.export", None),
    "models": ("vitsam.models", None),
    "nn": ("vitsam.nn", None),
    "params": ("vitsam.params", None),
    "predictor": ("vitsam.predictor", None),
}
__all__ = ["Sam2ImagePredictor", "Sam2VideoPredictor", "SamAutomaticMaskGenerator", "SamPredictor", "__version__",
           "convert", "count_params", "models", "nn"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
