"""SAM 2 (Ravi et al., 2024): segmentation through time, built from the SAM blocks where they are the same.

Modules, one per concept: hiera (the multi-scale image trunk), neck (the FPN neck and its sine position
encoding), memory_encoder (mask + image features -> a memory), memory_attention (RoPE self- and cross-attention
of the current frame over the memory bank and object pointers), sam2 (the tracking model that wires them with
SAM's prompt encoder and the SAM 2 options of SAM's mask decoder).
"""
