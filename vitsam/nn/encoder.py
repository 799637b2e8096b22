"""The lecture's pre-norm encoder block and a stack of N of them.

    z'_l = MHA(LN(z_{l-1})) + z_{l-1}
    z_l  = MLP(LN(z'_l)) + z'_l

LayerNorm normalizes each token over its D features (as in ViT and SAM), with learned γ, β.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitsam.nn.attention import MultiHeadAttention
from vitsam.nn.mlp import Mlp


def drop_path(x: jnp.ndarray, rate, rng: jax.Array) -> jnp.ndarray:
    """Stochastic depth: zero a whole residual branch per example with probability `rate`, rescale the rest.

    x: (B, ...); `rate` may be a traced scalar (it varies per layer inside `nn.scan`).
    """
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def residual_branch(module: nn.Module, branch: jnp.ndarray, deterministic: bool, drop_path_rate=0.0,
                    dropout: float = 0.0) -> jnp.ndarray:
    """A block's residual branch before it is added back: dropout, then stochastic depth (`drop_path`).

    Call it inside `module`'s compact method: the dropout layer is its submodule, and the drop-path mask
    draws from its rng "dropout". Both act only when not `deterministic`; a rate of Python 0 draws nothing.
    """
    if dropout:
        branch = nn.Dropout(dropout)(branch, deterministic=deterministic)
    if deterministic or (isinstance(drop_path_rate, (int, float)) and drop_path_rate == 0.0):
        return branch
    return drop_path(branch, drop_path_rate, module.make_rng("dropout"))


class EncoderBlock(nn.Module):
    """One pre-norm block: (B, N, D) -> (B, N, D).

    Parameter names follow big_vision: LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0.
    """

    num_heads: int
    mlp_dim: int
    activation: str | Callable = "relu"
    dropout: float = 0.0
    norm_eps: float = 1e-6
    attention_impl: str = "einsum"
    sow_weights: bool = False
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True, drop_path_rate=0.0,
                 mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """`mask`: optional boolean, broadcastable to (B, heads, N, N), True where a token may attend."""
        if x.ndim != 3:
            raise ValueError(f"EncoderBlock expects tokens (B, N, D), got shape {x.shape}")
        norm = lambda name: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731

        def residual(branch):
            return residual_branch(self, branch, deterministic, drop_path_rate, self.dropout)

        y = MultiHeadAttention(
            self.num_heads, implementation=self.attention_impl, sow_weights=self.sow_weights,
            dtype=self.dtype, param_dtype=self.param_dtype, name="MultiHeadDotProductAttention_0",
        )(norm("LayerNorm_0")(x), mask=mask)
        x = x + residual(y)
        y = Mlp(self.mlp_dim, activation=self.activation, dropout=self.dropout,
                dtype=self.dtype, param_dtype=self.param_dtype, name="MlpBlock_0",
                )(norm("LayerNorm_1")(x), deterministic=deterministic)
        return x + residual(y)


class _ScanBlock(EncoderBlock):
    """EncoderBlock with the (carry, per-layer input) -> (carry, output) signature `nn.scan` wants."""

    def __call__(self, x, drop_path_rate, deterministic, mask=None):  # type: ignore[override]
        return super().__call__(x, deterministic, drop_path_rate, mask), None


class Encoder(nn.Module):
    """N pre-norm blocks and a final LayerNorm: (B, N, D) -> (B, N, D).

    `drop_path` is the stochastic-depth rate of the last block, rising linearly from 0 at the first.
    `scan=True` runs one block under `nn.scan` (parameters stacked on a leading depth axis, the block
    compiled once, so compile time does not grow with depth; parameters under `encoderblock`); otherwise
    blocks are unrolled as `encoderblock_{i}`. `remat=True` recomputes block activations in the backward
    pass to save memory. Both give the same outputs.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str | Callable = "relu"
    dropout: float = 0.0
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    attention_impl: str = "einsum"
    scan: bool = False
    remat: bool = False
    sow_weights: bool = False
    final_norm: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool = True, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """`mask`: optional boolean attention mask, broadcastable to (B, heads, N, N) (e.g. padding keys)."""
        if self.depth < 1:
            raise ValueError(f"Encoder depth must be at least 1, got {self.depth}")
        rates = [self.drop_path * i / max(self.depth - 1, 1) for i in range(self.depth)]
        block_kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                        dropout=self.dropout, norm_eps=self.norm_eps, attention_impl=self.attention_impl,
                        sow_weights=self.sow_weights, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.scan:
            block = _ScanBlock
            if self.remat:
                block = nn.remat(block, prevent_cse=False, static_argnums=(3,))  # 0 = self, 3 = deterministic
            scanned = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast),
                length=self.depth,
            )
            x, _ = scanned(name="encoderblock", **block_kw)(x, jnp.asarray(np.array(rates, np.float32)), deterministic, mask)
        else:
            block = nn.remat(EncoderBlock, static_argnums=(2, 3)) if self.remat else EncoderBlock
            for i in range(self.depth):
                x = block(name=f"encoderblock_{i}", **block_kw)(x, deterministic, rates[i], mask)
        if self.final_norm:
            x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)
        return x
