"""The optimizer from config: AdamW with warmup + cosine decay, gradient clipping, selective weight decay;
optionally frozen parameters and per-parameter learning-rate multipliers (layer-wise lr decay)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then cosine decay to `cfg.end_lr`. A run no
    longer than its warmup warms up over its first half and decays over the second (it still ends at end_lr)."""
    warmup = int(cfg.warmup_steps)
    if warmup >= total_steps:
        warmup = total_steps // 2
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.end_lr)


def decay_mask(params):
    """True for the leaves that get weight decay: dense and conv kernels only.

    Biases, LayerNorm scales, position tables, class tokens and token-embedding tables are not decayed.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2, params)


def param_path(path) -> tuple[str, ...]:
    """A pytree key path (from `jax.tree_util.tree_map_with_path`) as a tuple of names."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def scale_by_path(scale: Callable[[tuple[str, ...]], float]) -> optax.GradientTransformation:
    """Multiplies each parameter's update by `scale(path)` (constant per parameter)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * jnp.asarray(scale(param_path(path)), u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, total_steps: int, *, trainable: Callable[[tuple[str, ...]], bool] | None = None,
                   lr_scale: Callable[[tuple[str, ...]], float] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from an `optim` config: lr, end_lr, warmup_steps, weight_decay, b1, b2, clip_norm.

    trainable(path) -> bool: parameters for which it is False get a zero update and no optimizer state
    (`optax.multi_transform` with `optax.set_to_zero`). lr_scale(path) -> float multiplies the update of each
    parameter (the whole AdamW step, decay included), i.e. its learning rate.
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
    if lr_scale is not None:
        chain.append(scale_by_path(lr_scale))
    tx = optax.chain(*chain)
    if trainable is not None:
        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "train" if trainable(param_path(path)) else "frozen", params)

        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
