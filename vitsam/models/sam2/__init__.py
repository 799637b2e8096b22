"""SAM 2 (Ravi et al., 2024): segmentation through time, built from the SAM blocks where they are the same.

Modules, one per concept: hiera (the multi-scale image trunk), neck (the FPN neck and its sine position
encoding), memory_encoder (mask + image features -> a memory), memory_attention (RoPE self- and cross-attention
of the current frame over the memory bank and object pointers), sam2 (the tracking model that wires them with
SAM's prompt encoder and the SAM 2 options of SAM's mask decoder).
"""

from vitsam.models.sam2.memory_bank import MemoryLayout, MemoryPlan, plan_memory
from vitsam.models.sam2.sam2 import SAM2_VARIANTS, HeadOutput, Sam2, Sam2Features, sam2_init, sam2_variant

__all__ = ["HeadOutput", "MemoryLayout", "MemoryPlan", "SAM2_VARIANTS", "Sam2", "Sam2Features", "plan_memory",
           "sam2_init", "sam2_variant"]
