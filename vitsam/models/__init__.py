"""Models built from `vitsam.nn`: the ViT classifier, SAM (`vitsam.models.sam`) and SAM 2 (`vitsam.models.sam2`)."""

from vitsam.models.vit import VARIANTS as VIT_VARIANTS
from vitsam.models.vit import VisionTransformer, decode_variant, vit_variant
from vitsam.models.sam import SAM_VARIANTS, Sam, sam_init, sam_variant
from vitsam.models.sam2 import SAM2_VARIANTS, Sam2, sam2_init, sam2_variant

__all__ = ["SAM2_VARIANTS", "SAM_VARIANTS", "Sam", "Sam2", "VIT_VARIANTS", "VisionTransformer", "decode_variant",
           "sam2_init", "sam2_variant", "sam_init", "sam_variant", "vit_variant"]
