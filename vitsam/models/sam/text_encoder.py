"""Text prompts: a word-level tokenizer and a small pre-norm transformer that turns a phrase into prompt tokens.

Not part of the official SAM release (the paper's text prompts used CLIP); ours is trained from scratch.
Words are lowercased, split on non-alphanumeric characters and mapped to ids by a stable hash (BLAKE2b, so
ids do not depend on the process or Python's hash seed) into a fixed vocabulary; id 0 is padding.
The encoder is the lecture's: E = X U_e plus the sinusoidal encoding p_t, N pre-norm blocks
(`vitsam.nn.Encoder`, padding words masked out as keys), then the non-padding words are mean-pooled and
projected to the prompt dimension. Padding words therefore never change the result.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vitsam.nn import Encoder, SequenceEmbedding

PAD_ID = 0
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def word_id(word: str, vocab_size: int) -> int:
    """A word's id in 1 … vocab_size − 1 by a stable hash (collisions are possible and accepted)."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (vocab_size - 1)


def split_words(text: str) -> list[str]:
    """Lowercased words of `text` (runs of letters and digits)."""
    return _WORD.findall(text.lower())


def tokenize(texts: str | Sequence[str], vocab_size: int, max_len: int) -> np.ndarray:
    """Texts -> word ids (N, max_len) int32, right-padded with 0; words beyond max_len are dropped."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 (id 0 is padding), got {vocab_size}")
    if isinstance(texts, str):
        texts = [texts]
    ids = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects strings, got {type(text).__name__}")
        words = split_words(text)[:max_len]
        ids[i, :len(words)] = [word_id(w, vocab_size) for w in words]
    return ids


class TextEncoder(nn.Module):
    """Word ids (N, L) int, 0 = padding -> prompt tokens (N, num_tokens, out_dim).

    `num_tokens` learned query offsets are added to the pooled phrase vector, so a phrase can contribute
    several prompt tokens while the shape stays fixed (1 by default).
    """

    vocab_size: int = 4096
    max_len: int = 16
    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 1024
    out_dim: int = 256
    num_tokens: int = 1
    activation: str = "gelu"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        if ids.ndim != 2:
            raise ValueError(f"TextEncoder expects word ids (N, L), got shape {ids.shape}")
        valid = ids != PAD_ID  # (N, L)
        x = SequenceEmbedding(self.vocab_size, self.dim, self.max_len, positions="sinusoidal", dtype=self.dtype,
                              param_dtype=self.param_dtype, name="embedding")(ids)
        x = Encoder(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="encoder",
                    )(x, mask=valid[:, None, None, :])
        weights = valid.astype(jnp.float32)[..., None]
        pooled = (x.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # (N, D)
        offsets = self.param("token_offsets", nn.initializers.normal(0.02), (self.num_tokens, self.dim),
                             self.param_dtype)
        tokens = pooled[:, None, :] + offsets.astype(jnp.float32)
        return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(tokens)
