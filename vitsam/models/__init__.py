"""Models built from `vitsam.nn`: the ViT classifier (and SAM, see `vitsam.models.sam`)."""

from vitsam.models.vit import VARIANTS as VIT_VARIANTS
from vitsam.models.vit import VisionTransformer, decode_variant, vit_variant
from vitsam.models.sam import SAM_VARIANTS, Sam, sam_init, sam_variant

__all__ = ["SAM_VARIANTS", "Sam", "VIT_VARIANTS", "VisionTransformer", "decode_variant", "sam_init", "sam_variant",
           "vit_variant"]
