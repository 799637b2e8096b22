"""Counting and inspecting parameter trees."""

from __future__ import annotations

from collections.abc import Mapping

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


def flatten_paths(tree, sep: str | None = None) -> dict:
    """A nested mapping of parameters -> {key path: leaf}, in the tree's order.

    A path is the tuple of keys, or the keys joined by `sep` when given ("a/b/c" with sep="/"). Anything that
    is not a `Mapping` is a leaf; an empty mapping contributes nothing.
    """
    out = {}

    def visit(node, prefix):
        for k, v in node.items():
            if isinstance(v, Mapping):
                visit(v, prefix + (k,))
            else:
                out[prefix + (k,) if sep is None else sep.join(prefix + (k,))] = v

    visit(tree, ())
    return out
