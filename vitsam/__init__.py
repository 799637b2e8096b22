"""vitsam: Vision Transformers and SAM-style promptable segmentation in JAX / Flax Linen."""

from vitsam import convert, models, nn
from vitsam.params import count_params
from vitsam.predictor import SamPredictor

__version__ = "0.1.0"
__all__ = ["SamPredictor", "__version__", "convert", "count_params", "models", "nn"]
