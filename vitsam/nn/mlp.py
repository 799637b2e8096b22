"""The encoder block's MLP, MLP(z) = act(z W1 + b1) W2 + b2, with the activation a field."""

from __future__ import annotations

from functools import partial
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,                                # the lecture's max(0, ·)
    "gelu": partial(nn.gelu, approximate=False),    # exact erf GELU: timm and SAM checkpoints
    "gelu_tanh": partial(nn.gelu, approximate=True),  # tanh approximation: vit_jax / big_vision checkpoints
}


def get_activation(name_or_fn: str | Callable) -> Callable:
    """An activation by name ("relu", "gelu", "gelu_tanh") or a callable passed through."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return ACTIVATIONS[name_or_fn]
    except KeyError:
        raise ValueError(f"unknown activation {name_or_fn!r}; valid: {sorted(ACTIVATIONS)}") from None


class Mlp(nn.Module):
    """Two dense layers with an activation between: (..., D) -> (..., out_dim or D).

    Parameters `Dense_0` (D, hidden_dim) and `Dense_1` (hidden_dim, out_dim), the names of
    big_vision's and vit_jax's MlpBlock.
    """

    hidden_dim: int
    out_dim: int | None = None
    activation: str | Callable = "relu"
    dropout: float = 0.0
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(1e-6)
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
        dense = partial(nn.Dense, kernel_init=self.kernel_init, bias_init=self.bias_init,
                        dtype=self.dtype, param_dtype=self.param_dtype)
        h = get_activation(self.activation)(dense(self.hidden_dim, name="Dense_0")(x))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return dense(self.out_dim or x.shape[-1], name="Dense_1")(h)
