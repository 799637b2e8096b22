"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Each block (post-norm, LayerNorm eps 1e-5):
  1. tokens self-attention (the first block skips the positional term and the residual, as in SAM),
  2. tokens -> image cross-attention,  3. MLP on tokens (ReLU),  4. image -> tokens cross-attention.
A final tokens -> image attention and LayerNorm follow the blocks. The tokens' own initial embedding serves
as their positional term ("query_pe"); the image tokens get the dense positional encoding.
Cross-attentions project to `dim / attention_downsample_rate` (128 in SAM) before splitting heads.

`token_bias` / `token_mask` (N, T) weigh tokens when they are attended to (keys): the mask decoder uses
them so that padding points count once or not at all (see `mask_decoder.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vitsam.nn import Mlp, MultiHeadAttention


class TwoWayBlock(nn.Module):
    """One two-way block: tokens (N, T, D), image (N, HW, D) -> updated (tokens, image)."""

    dim: int
    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    norm_eps: float = 1e-5
    attention_impl: str = "einsum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe, token_bias=None, token_mask=None):
        attn = lambda features, name: MultiHeadAttention(  # noqa: E731
            self.num_heads, qkv_features=features, implementation=self.attention_impl,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        norm = lambda name: nn.LayerNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                         use_fast_variance=False, name=name)
        cross = self.dim // self.downsample_rate
        # token keys: (N, T) -> broadcast over heads and queries
        kb = None if token_bias is None else token_bias[:, None, None, :]
        km = None if token_mask is None else token_mask[:, None, None, :]

        if self.skip_first_layer_pe:
            queries = attn(self.dim, "self_attn")(queries, bias=kb, mask=km)
        else:
            q = queries + query_pe
            queries = queries + attn(self.dim, "self_attn")(q, q, inputs_v=queries, bias=kb, mask=km)
        queries = norm("norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = norm("norm2")(queries + attn(cross, "cross_attn_token_to_image")(q, k, inputs_v=keys))

        mlp = Mlp(self.mlp_dim, activation="relu", dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
        queries = norm("norm3")(queries + mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = norm("norm4")(keys + attn(cross, "cross_attn_image_to_token")(k, q, inputs_v=queries, bias=kb, mask=km))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image (N, h, w, D), image_pe (h, w, D) or (N, h, w, D), tokens (N, T, D) -> (tokens (N, T, D), image (N, hw, D)).

    An image with a batch of 1 is shared by the N token sets: the first block's image projections run once."""

    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    downsample_rate: int = 2
    norm_eps: float = 1e-5
    attention_impl: str = "einsum"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image, image_pe, tokens, token_bias=None, token_mask=None):
        n, h, w, d = image.shape
        keys = image.reshape(n, h * w, d)
        key_pe = jnp.broadcast_to(image_pe, (n, h, w, d)).reshape(n, h * w, d)  # n = 1: broadcast in attention
        queries = tokens
        for i in range(self.depth):
            queries, keys = TwoWayBlock(
                self.dim, self.num_heads, self.mlp_dim, self.downsample_rate, skip_first_layer_pe=(i == 0),
                norm_eps=self.norm_eps, attention_impl=self.attention_impl, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"layers_{i}",
            )(queries, keys, tokens, key_pe, token_bias, token_mask)
        q, k = queries + tokens, keys + key_pe
        out = MultiHeadAttention(
            self.num_heads, qkv_features=self.dim // self.downsample_rate, implementation=self.attention_impl,
            dtype=self.dtype, param_dtype=self.param_dtype, name="final_attn_token_to_image")(q, k, inputs_v=keys)
        queries = nn.LayerNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                               use_fast_variance=False, name="norm_final_attn")(queries + out)
        return queries, keys
