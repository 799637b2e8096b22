"""vitsam: Vision Transformers and SAM-style promptable segmentation in JAX / Flax Linen."""

from vitsam import models, nn
from vitsam.params import count_params

__version__ = "0.1.0"
__all__ = ["__version__", "count_params", "models", "nn"]
