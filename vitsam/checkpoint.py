"""Orbax checkpoints of a training state plus the input pipeline's position, safe to resume from.

A checkpoint is written asynchronously into a temporary folder and committed only when complete, so a crash
mid-save leaves no half checkpoint behind under its final name; a checkpoint that still fails to restore
(corrupt, truncated, wrong structure) is skipped with a warning and the previous one is tried.
"""

from __future__ import annotations

import json
import logging
import os
import time
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
                aside = self._move_aside(step)
                warnings.warn(f"skipping unreadable checkpoint at step {step} in {self.directory} "
                              f"({type(e).__name__}: {str(e)[:300]}); moved it to {aside}", stacklevel=2)
                continue
            return step, restored["state"], restored["data"]
        return None

    def _move_aside(self, step: int) -> Path:
        """Move an unreadable step out of the manager's sight (kept, not deleted), so that it can be saved again.
        Process 0 moves it; every process then waits for that and re-reads the steps."""
        aside = self.directory.with_name(self.directory.name + "_unreadable") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"vitsam_move_aside_{step}")
        self.manager.reload()
        return aside

    def read(self, step: int):
        """(state, data) of one step, every array whole on this process's first device, whatever mesh or number
        of processes saved it (the shapes and dtypes come from the checkpoint's metadata)."""
        metadata = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              getattr(metadata, "item_metadata", metadata))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
    Path(workdir, MODEL_SPEC).write_text(json.dumps(spec, indent=1))


def read_model_spec(path) -> dict:
    """model.json as a dict; a ValueError naming the file when it is not a model description."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("fields"), dict) or "kind" not in spec:
        raise ValueError(f"{path} is not a vitsam model description (needs 'kind' and 'fields')")
    return spec


def check_model_spec(workdir, spec: dict, training_fields=()) -> None:
    """Refuse to train in a workdir whose checkpoints belong to another model: a ValueError naming the fields
    that differ from its model.json (fields in `training_fields`, such as dropout, may change on resume).
    Nothing is read or written when the workdir has no checkpoint yet."""
    workdir = Path(workdir)
    ckpts = workdir / "checkpoints"
    path = workdir / MODEL_SPEC
    if not path.exists() or not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        return
    old = read_model_spec(path)
    new = json.loads(json.dumps(spec))  # tuples as lists, as they were saved
    if old["kind"] != new["kind"]:
        raise ValueError(f"{workdir} holds a {old['kind']} run, not a {new['kind']} one; use another workdir")
    differ = [f"{k}: {old['fields'].get(k)!r} in the run, {new['fields'].get(k)!r} now"
              for k in sorted(set(old["fields"]) | set(new["fields"]))
              if k not in training_fields and old["fields"].get(k) != new["fields"].get(k)]
    if differ:
        raise ValueError(f"{workdir} holds checkpoints of another model ({'; '.join(differ)}); resume with the run's "
                         f"own model config or use another workdir (nothing was changed)")


def load_trained(workdir, *, step: int | None = None):
    """(model, variables, spec) from a trainer's workdir: the newest readable checkpoint (or `step`)."""
    from vitsam.models import registry

    workdir = Path(workdir)
    spec_path = workdir / MODEL_SPEC
    if not spec_path.exists():
        raise FileNotFoundError(f"{workdir} is not a vitsam training workdir (no {MODEL_SPEC})")
    spec = read_model_spec(spec_path)
    fields = {k: (jax.numpy.dtype(v["dtype"]) if isinstance(v, dict) and "dtype" in v
                  else tuple(v) if isinstance(v, list) else v)
              for k, v in spec["fields"].items()}
    try:
        kind = registry.get(spec["kind"])
    except ValueError as e:
        raise ValueError(f"{spec_path}: {e}") from None
    try:
        model = kind.module(**fields)
    except TypeError as e:
        raise ValueError(f"{spec_path}: fields that a {spec['kind']} model does not have ({e})") from None
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
