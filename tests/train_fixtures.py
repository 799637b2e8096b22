"""A tiny synthetic classification task for the training-loop tests (no dataset needed).

Also runnable as a program, so tests can kill it and start it again; like the trainers, it ends an expected
failure (a NaN loss, a full disk) with one line on stderr:
    python tests/train_fixtures.py WORKDIR TOTAL_STEPS [ACCUM] [NAN_AT_STEP]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train import launch, loop  # noqa: E402
from vitsam.models import vit_variant  # noqa: E402

IMAGE, CLASSES = 16, 4


def config(total_steps=20, accum=1, batch_size=16, checkpoint_every=5, keep=3):
    return ml_collections.ConfigDict(dict(
        seed=0, batch_size=batch_size, total_steps=total_steps, log_every=1, eval_every=10,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep,
        optim=dict(lr=1e-3, end_lr=0.0, warmup_steps=2, weight_decay=0.05, b1=0.9, b2=0.999, clip_norm=1.0,
                   label_smoothing=0.0, grad_accum_steps=accum)))


class SyntheticIterator:
    """Batch i is a pure function of i; its position is its state. `nan_at` poisons one batch."""

    def __init__(self, batch_size: int, nan_at: int | None = None):
        self.i, self.batch_size, self.nan_at = 0, batch_size, nan_at

    def __next__(self):
        rng = np.random.default_rng(self.i)
        labels = rng.integers(0, CLASSES, self.batch_size).astype(np.int32)
        images = rng.normal(size=(self.batch_size, IMAGE, IMAGE, 3)).astype(np.float32)
        images[:, :4, :4, :] += labels[:, None, None, None]  # learnable signal
        if self.nan_at is not None and self.i == self.nan_at:
            images[:] = np.nan
        self.i += 1
        return {"image": images, "label": labels}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def task(dropout: float = 0.0, nan_at: int | None = None) -> loop.Task:
    model = vit_variant("Ti/16", num_classes=CLASSES, image_size=IMAGE, patch_size=4, width=32, depth=2,
                        mlp_dim=64, num_heads=2, dropout=dropout)

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}

    def eval_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        return {"accuracy": (logits.argmax(-1) == batch["label"]).astype(jnp.float32)}

    def eval_iterator(batch_size):
        it = SyntheticIterator(batch_size)
        it.i = 10_000
        for _ in range(2):
            batch = next(it)
            batch["mask"] = np.arange(batch_size) < batch_size - 3  # the last 3 rows are padding
            yield batch

    return loop.Task(
        init_params=lambda rng: model.init(rng, jnp.zeros((1, IMAGE, IMAGE, 3)))["params"],
        loss_fn=loss_fn, train_iterator=lambda b: SyntheticIterator(b, nan_at),
        eval_iterator=eval_iterator, eval_fn=eval_fn)


if __name__ == "__main__":
    workdir, total = sys.argv[1], int(sys.argv[2])
    accum = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    nan_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    with launch.exit_beside_background_compiles(), launch.errors_in_one_line("train_fixtures"):
        loop.run(config(total, accum), workdir, task(dropout=0.1, nan_at=nan_at))
