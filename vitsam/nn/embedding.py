"""Tokens and their embedding E = X U_e: image patches and words.

An image token is a P×P×C patch flattened to a row of X; a word token is a vocabulary index. Both are
embedded by one learned matrix U_e shared by every token.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitsam.nn.positional import sinusoidal_encoding


def patchify(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
    """Cut images into non-overlapping patches: (B, H, W, C) -> (B, H/P, W/P, P·P·C).

    Each patch is flattened in (row, column, channel) order, the order of a (P, P, C, D) conv kernel.
    """
    if images.ndim != 4:
        raise ValueError(f"patchify: expected images of shape (B, H, W, C), got shape {images.shape}")
    b, h, w, c = images.shape
    p = int(patch_size)
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


class PatchEmbedding(nn.Module):
    """Image patches to tokens: (B, H, W, C) -> (B, H/P, W/P, D).

    `formulation="conv"` runs a P-strided P×P convolution; `"dense"` cuts patches with `patchify` and
    multiplies by U_e, the kernel reshaped to (P·P·C, D). Both use the same parameters (`kernel` of shape
    (P, P, C, D) and `bias` (D,), the layout of `flax.linen.Conv`) and give the same numbers.
    """

    patch_size: int
    dim: int
    formulation: str = "conv"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        if images.ndim != 4:
            raise ValueError(f"PatchEmbedding: expected NHWC images (B, H, W, C), got shape {images.shape}")
        p = self.patch_size
        _, h, w, c = images.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
        kernel = self.param("kernel", self.kernel_init, (p, p, c, self.dim), self.param_dtype)
        dtype = self.dtype or (images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32)
        x, kernel = images.astype(dtype), kernel.astype(dtype)
        if self.formulation == "conv":
            y = jax.lax.conv_general_dilated(
                x, kernel, window_strides=(p, p), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        elif self.formulation == "dense":
            y = patchify(x, p) @ kernel.reshape(p * p * c, self.dim)
        else:
            raise ValueError(f"unknown patch embedding formulation {self.formulation!r}; valid: 'conv', 'dense'")
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.dim,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class TokenEmbedding(nn.Module):
    """Word tokens to vectors, e_i = x_i U_e with x_i one-hot: (B, T) int -> (B, T, D).

    The table `embedding` has shape (vocab_size, D). Out-of-range ids are clipped by JAX's gather,
    so callers validate ids where they come from (a tokenizer).
    """

    vocab_size: int
    dim: int
    stddev: float = 0.02
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"TokenEmbedding expects integer token ids, got dtype {ids.dtype}")
        table = self.param("embedding", nn.initializers.normal(self.stddev), (self.vocab_size, self.dim), self.param_dtype)
        out = jnp.take(table, ids, axis=0)
        return out.astype(self.dtype) if self.dtype is not None else out


class SequenceEmbedding(nn.Module):
    """The lecture's final token representation, token embedding + position: (B, T) int -> (B, T, D).

    `positions="sinusoidal"` adds the lecture's fixed encoding (only U_e is learned);
    `positions="learned"` adds a learned (1, max_len, D) table.
    """

    vocab_size: int
    dim: int
    max_len: int
    positions: str = "sinusoidal"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        t = ids.shape[-1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens is longer than max_len={self.max_len}")
        x = TokenEmbedding(self.vocab_size, self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="tokens")(ids)
        if self.positions == "sinusoidal":
            return x + sinusoidal_encoding(t, self.dim, x.dtype)
        if self.positions == "learned":
            table = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.max_len, self.dim), self.param_dtype)
            return x + table[:, :t].astype(x.dtype)
        raise ValueError(f"unknown positions {self.positions!r}; valid: 'sinusoidal', 'learned'")
