"""The optimizer from config: AdamW with warmup + cosine decay, gradient clipping, selective weight decay."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then cosine decay to `cfg.end_lr`."""
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.end_lr)


def decay_mask(params):
    """True for the leaves that get weight decay: dense and conv kernels only.

    Biases, LayerNorm scales, position tables, class tokens and token-embedding tables are not decayed.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from an `optim` config: lr, end_lr, warmup_steps, weight_decay, b1, b2, clip_norm."""
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*chain), schedule
