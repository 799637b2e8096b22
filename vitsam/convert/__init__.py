"""Importers for official checkpoints (SAM .pth, SAM 2 .pt, ViT .npz / timm). PyTorch is only imported inside the
loaders."""

from vitsam.convert.sam import (infer_sam_config, load_sam_checkpoint, model_from_state_dict, sam_key_map,
                                sam_state_dict_to_variables, sam_variables_to_state_dict)
from vitsam.convert.export import convert, export, load_model
from vitsam.convert.sam2 import load_sam2_checkpoint, sam2_state_dict_to_variables, sam2_variables_to_state_dict
from vitsam.convert.vit import load_vit_checkpoint, vit_params_from_state_dict
from vitsam.convert.vit_adapt import resample_position_embedding

__all__ = [
    "convert", "export", "infer_sam_config", "load_model", "load_sam2_checkpoint", "load_sam_checkpoint",
    "load_vit_checkpoint", "sam2_state_dict_to_variables", "sam2_variables_to_state_dict",
    "model_from_state_dict", "resample_position_embedding", "sam_key_map", "sam_state_dict_to_variables",
    "sam_variables_to_state_dict", "vit_params_from_state_dict",
]
