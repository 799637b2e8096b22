"""Models built from `vitsam.nn`: the ViT classifier (and SAM, see `vitsam.models.sam`)."""

from vitsam.models.vit import VARIANTS as VIT_VARIANTS
from vitsam.models.vit import VisionTransformer, decode_variant, vit_variant

__all__ = ["VIT_VARIANTS", "VisionTransformer", "decode_variant", "vit_variant"]
