"""Orbax checkpoints of a training state plus the input pipeline's position, safe to resume from.

A checkpoint is written asynchronously into a temporary folder and committed only when complete, so a crash
mid-save leaves no half checkpoint behind under its final name; a checkpoint that still fails to restore
(corrupt, truncated, wrong structure) is skipped with a warning and the previous one is tried.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save every `every` steps (and on demand), keep the last `keep`; restore the newest readable one.

    Items: "state" (a pytree of jax.Arrays, restored with the shardings of an abstract target) and
    "data" (a JSON-serializable dict, e.g. the input iterator's position).
    """

    def __init__(self, directory, *, every: int, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=max(int(every), 1), max_to_keep=keep, create=True,
                enable_async_checkpointing=async_save),
            item_names=("state", "data"),
        )

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data: dict, *, force: bool = False) -> bool:
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
            force=force)

    def restore_latest(self, abstract_state):
        """(step, state, data) of the newest checkpoint that restores cleanly, or None if there is none.

        `abstract_state`: a pytree of `jax.ShapeDtypeStruct` with shardings, the restore target.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure means "not loadable": fall back
                warnings.warn(f"skipping unreadable checkpoint at step {step} in {self.directory}: "
                              f"{type(e).__name__}: {e}", stacklevel=2)
                continue
            return step, restored["state"], restored["data"]
        return None

    def read(self, step: int):
        """(state, data) of one step, restored without a target (arrays on the default device)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """The restore target for `tree`: shapes, dtypes and shardings without the data."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
