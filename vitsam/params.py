"""Counting and inspecting parameter trees."""

from __future__ import annotations

import jax
import numpy as np


def count_params(tree) -> int:
    """Total number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(tree)))


def abstract_init(model, *inputs, rng=None, **kwargs):
    """The variables' shapes and dtypes, without allocating or computing them (`jax.eval_shape`).

    `inputs` may be arrays or `jax.ShapeDtypeStruct`s.
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return jax.eval_shape(lambda r, *xs: model.init(r, *xs, **kwargs), rng, *inputs)
