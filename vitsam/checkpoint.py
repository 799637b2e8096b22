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


# ----------------------------------------------------------------------------- trained models

MODEL_SPEC = "model.json"


def model_spec(kind: str, model, **extra) -> dict:
    """A JSON description of a Linen model (its constructor fields) that `load_trained` rebuilds it from."""
    fields = {}
    for name in model.__dataclass_fields__:
        if name in ("parent", "name"):
            continue
        value = getattr(model, name)
        if value is None or isinstance(value, (bool, int, float, str, list, tuple)):
            fields[name] = value
        elif hasattr(value, "dtype") or isinstance(value, type):  # a dtype such as jnp.bfloat16
            fields[name] = {"dtype": jax.numpy.dtype(value).name}
        # callables (initialisers, activations given as functions) are left at their defaults
    return {"kind": kind, "fields": fields, **extra}


def write_model_spec(workdir, spec: dict) -> None:
    import json

    Path(workdir, MODEL_SPEC).write_text(json.dumps(spec, indent=1))


def load_trained(workdir, *, step: int | None = None):
    """(model, variables, spec) from a trainer's workdir: the newest readable checkpoint (or `step`)."""
    import json

    from vitsam.models import registry

    workdir = Path(workdir)
    spec_path = workdir / MODEL_SPEC
    if not spec_path.exists():
        raise FileNotFoundError(f"{workdir} is not a vitsam training workdir (no {MODEL_SPEC})")
    spec = json.loads(spec_path.read_text())
    fields = {k: (jax.numpy.dtype(v["dtype"]) if isinstance(v, dict) and "dtype" in v
                  else tuple(v) if isinstance(v, list) else v)
              for k, v in spec["fields"].items()}
    try:
        kind = registry.get(spec["kind"])
    except ValueError as e:
        raise ValueError(f"{spec_path}: {e}") from None
    model = kind.module(**fields)
    ckpt = Checkpointer(workdir / "checkpoints", every=1, async_save=False)
    steps = sorted(ckpt.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    for s in steps:
        try:
            state, _ = ckpt.read(s)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping unreadable checkpoint at step {s}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        variables = {name: state[name] for name in ("params", "constants") if name in state}  # not opt_state
        return model, variables, spec | {"step": s}
    raise FileNotFoundError(f"no readable checkpoint in {workdir / 'checkpoints'}")
