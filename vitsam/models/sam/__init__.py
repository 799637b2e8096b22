"""Segment Anything (Kirillov et al. 2023) in Flax Linen, one module per part, as in `segment_anything/modeling`."""

from vitsam.models.sam.image_encoder import ImageEncoder
from vitsam.models.sam.mask_decoder import MaskDecoder
from vitsam.models.sam.prompt_encoder import PromptEncoder, fourier_features
from vitsam.models.sam.sam import SAM_VARIANTS, Sam, padding_weights, sam_init, sam_variant
from vitsam.models.sam.text_encoder import TextEncoder, tokenize
from vitsam.models.sam.transformer import TwoWayTransformer

__all__ = [
    "ImageEncoder", "MaskDecoder", "PromptEncoder", "SAM_VARIANTS", "Sam", "TextEncoder", "TwoWayTransformer",
    "fourier_features", "padding_weights", "sam_init", "sam_variant", "tokenize",
]
