"""The lecture's building blocks as Flax Linen modules and pure functions."""

from vitsam.nn.attention import (CHUNK_LOGITS_BYTES, IMPLEMENTATIONS, MultiHeadAttention, chunked_attention,
                                 dot_product_attention, query_chunk_size)
from vitsam.nn.embedding import PatchEmbedding, SequenceEmbedding, TokenEmbedding, patchify
from vitsam.nn.encoder import Encoder, EncoderBlock, drop_path
from vitsam.nn.mlp import ACTIVATIONS, Mlp, get_activation
from vitsam.nn.positional import LearnedPositionEmbedding, sinusoidal_encoding, sinusoidal_encoding_2d

__all__ = [
    "ACTIVATIONS", "CHUNK_LOGITS_BYTES", "Encoder", "EncoderBlock", "IMPLEMENTATIONS", "LearnedPositionEmbedding",
    "Mlp", "MultiHeadAttention", "PatchEmbedding", "SequenceEmbedding", "TokenEmbedding", "chunked_attention",
    "dot_product_attention", "drop_path", "get_activation", "patchify", "query_chunk_size", "sinusoidal_encoding",
    "sinusoidal_encoding_2d",
]
