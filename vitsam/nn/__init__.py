"""The lecture's building blocks as Flax Linen modules and pure functions."""

from vitsam.nn.attention import IMPLEMENTATIONS, MultiHeadAttention, dot_product_attention
from vitsam.nn.embedding import PatchEmbedding, SequenceEmbedding, TokenEmbedding, patchify
from vitsam.nn.encoder import Encoder, EncoderBlock, drop_path
from vitsam.nn.mlp import ACTIVATIONS, Mlp, get_activation
from vitsam.nn.positional import LearnedPositionEmbedding, sinusoidal_encoding, sinusoidal_encoding_2d

__all__ = [
    "ACTIVATIONS", "Encoder", "EncoderBlock", "IMPLEMENTATIONS", "LearnedPositionEmbedding", "Mlp",
    "MultiHeadAttention", "PatchEmbedding", "SequenceEmbedding", "TokenEmbedding", "dot_product_attention",
    "drop_path", "get_activation", "patchify", "sinusoidal_encoding", "sinusoidal_encoding_2d",
]
