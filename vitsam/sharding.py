"""Parameter sharding from rules written as config data (big_vision's `sharding_rules`, its `fsdp` tactic).

    rules = (("pos_embed", "replicate"),            # first match wins
             (r"/kernel$", (None, "fsdp")),         # a PartitionSpec written as a tuple
             (".*", "fsdp"))                        # the default tactic for the rest
    specs = param_specs(params, rules, mesh)        # a tree of PartitionSpec, one per parameter

A parameter's path is its keys joined by "/" ("image_encoder/blocks_0/attn/qkv/kernel"); the first rule whose
regex `re.search`es it gives its spec; a parameter no rule matches is replicated. A spec is
  "fsdp"       shard the largest dimension (the last of equal ones) that divides by the `fsdp` axis size over
               `fsdp`, when the parameter has at least `min_size` elements and such a dimension exists;
               replicate otherwise;
  "replicate"  (or None, or ()) every device holds all of it;
  a tuple      one entry per leading dimension: None, a mesh axis name, or a tuple of names (a dimension split
               over several axes); dimensions past the tuple are not split.
The optimizer state follows its parameter (`train.setup`); the batch is split over `BATCH_AXES`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

FSDP_AXIS = "fsdp"
DEFAULT_RULES = ((".*", "fsdp"),)
# Below this many elements a parameter stays replicated under "fsdp": biases and norms are cheap to hold whole,
# and gathering them would cost a collective each for nothing.
DEFAULT_MIN_SIZE = 2**14


def path_name(path) -> str:
    """A pytree key path as "a/b/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _as_rules(rules) -> list[tuple[str, Any]]:
    try:
        pairs = [tuple(r) for r in rules]
    except TypeError:
        raise ValueError(f"sharding_rules must be a sequence of (regex, spec) pairs, got {rules!r}") from None
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"sharding_rules[{i}] must be a (regex, spec) pair, got {pair!r}")
        try:
            re.compile(pair[0])
        except re.error as e:
            raise ValueError(f"sharding_rules[{i}]: bad regex {pair[0]!r}: {e}") from None
    return pairs


def _spec_axes(spec) -> list[str]:
    """The axis names a tuple spec uses."""
    names = []
    for entry in spec:
        entries = entry if isinstance(entry, (tuple, list)) else (entry,)
        names.extend(e for e in entries if e is not None)
    return names


def check_rules(rules, mesh_axes: Sequence[str]) -> list[tuple[str, Any]]:
    """The rules as (regex, spec) pairs; a ValueError naming the rule for a bad regex, an unknown spec word or a
    mesh axis the mesh does not have."""
    pairs = _as_rules(rules)
    for i, (regex, spec) in enumerate(pairs):
        if spec is None or spec in ("replicate", "fsdp"):
            if spec == "fsdp" and FSDP_AXIS not in mesh_axes:
                raise ValueError(f"sharding_rules[{i}] ({regex!r}, 'fsdp') needs a mesh axis 'fsdp'; "
                                 f"the mesh has {tuple(mesh_axes)}")
            continue
        if isinstance(spec, str) or not isinstance(spec, (tuple, list)):
            raise ValueError(f"sharding_rules[{i}] ({regex!r}): spec must be 'fsdp', 'replicate' or a tuple of "
                             f"axis names / None per dimension, got {spec!r}")
        unknown = [a for a in _spec_axes(spec) if a not in mesh_axes]
        if unknown:
            raise ValueError(f"sharding_rules[{i}] ({regex!r}, {tuple(spec)!r}) names mesh axis {unknown[0]!r}; "
                             f"the mesh has {tuple(mesh_axes)}")
    return pairs


def fsdp_spec(shape: Sequence[int], axis_size: int, min_size: int = DEFAULT_MIN_SIZE) -> P:
    """The "fsdp" tactic for one array: its largest dimension divisible by `axis_size` (the last of equal ones)
    over "fsdp"; replicated when it is small or no dimension divides."""
    if axis_size == 1 or math.prod(shape) < min_size:
        return P()
    for dim in np.argsort(shape, kind="stable")[::-1]:
        if shape[dim] % axis_size == 0:
            return P(*([None] * dim + [FSDP_AXIS]))
    return P()


def _axis_product(mesh: Mesh, entry) -> int:
    entries = entry if isinstance(entry, (tuple, list)) else (entry,)
    return math.prod(mesh.shape[a] for a in entries if a is not None)


def leaf_spec(name: str, shape: Sequence[int], pairs, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE) -> P:
    """The PartitionSpec of the array `name` of `shape` under checked rules `pairs`; a ValueError naming the
    parameter and the rule when the spec does not fit its rank or a dimension does not divide."""
    for i, (regex, spec) in enumerate(pairs):
        if not re.search(regex, name):
            continue
        if spec is None or spec == "replicate":
            return P()
        if spec == "fsdp":
            return fsdp_spec(shape, mesh.shape[FSDP_AXIS], min_size)
        spec = tuple(tuple(e) if isinstance(e, list) else e for e in spec)
        if len(spec) > len(shape):
            raise ValueError(f"sharding_rules[{i}] ({regex!r}, {spec!r}) has {len(spec)} entries but parameter "
                             f"{name} has rank {len(shape)} (shape {tuple(shape)})")
        for dim, entry in enumerate(spec):
            n = _axis_product(mesh, entry)
            if shape[dim] % n:
                raise ValueError(f"sharding_rules[{i}] ({regex!r}, {spec!r}) splits dimension {dim} of parameter "
                                 f"{name} (shape {tuple(shape)}) over {entry!r} = {n} devices, which does not "
                                 f"divide {shape[dim]}")
        return P(*spec)
    return P()


def param_specs(params, rules, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE):
    """A tree of PartitionSpec like `params` (arrays or ShapeDtypeStructs), from the rules."""
    pairs = check_rules(rules, mesh.axis_names)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: leaf_spec(path_name(path), x.shape, pairs, mesh, min_size), params)


def named(mesh: Mesh, specs):
    """PartitionSpec tree -> NamedSharding tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _keys(path) -> tuple[str, ...]:
    return tuple(path_name((k,)) for k in path)


def follow_params(tree, params, param_shardings, default):
    """Shardings for `tree` (e.g. an optimizer state): a leaf whose key path ends with a parameter's path and has
    that parameter's shape (Adam's moments, however deeply the optimizer nests them) takes the parameter's
    sharding; every other leaf (step counts, scalars) takes `default`."""
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_shardings = jax.tree.leaves(param_shardings)
    by_path = {_keys(path): (tuple(x.shape), sh) for (path, x), sh in zip(flat_params, flat_shardings)}
    lengths = sorted({len(k) for k in by_path}, reverse=True)

    def pick(path, leaf):
        keys = _keys(path)
        for n in lengths:
            hit = by_path.get(keys[-n:]) if n <= len(keys) else None
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, tree)


def shard_host_tree(tree, shardings):
    """Host (numpy) arrays -> global jax.Arrays with those shardings; each device receives only its slice (every
    process must hold the same host values, e.g. a checkpoint each one read)."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def per_device_bytes(abstract) -> int:
    """Bytes one device holds of a tree of arrays / ShapeDtypeStructs with shardings (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total
