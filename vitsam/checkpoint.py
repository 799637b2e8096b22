"""Orbax checkpoints of a training state plus the input pipeline's position, safe to resume from.

A checkpoint is written asynchronously into a temporary folder and committed only when complete, so a crash
mid-save leaves no half checkpoint behind under its final name; a checkpoint that still fails to restore
(corrupt, truncated, wrong structure) is skipped with a warning and the previous one is tried. A save that finds
the disk full (or the quota spent) raises one `DiskFullError` naming the last good checkpoint; the earlier ones are
kept and the half-written step is not one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write of a training run found the disk full (ENOSPC) or the quota spent (EDQUOT). Its text is the whole
    message, one line: what failed, the last good checkpoint, what to do."""

    def __str__(self) -> str:
        return self.strerror


def disk_full_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when `error`, or an error it was raised from, is a full disk or a spent quota: an OSError,
    or what tensorstore raises under orbax, a ValueError whose text ends "No space left on device
    [os_error_code='28']"."""
    for _ in range(32):  # the chain of causes; bounded in case it loops
        if error is None:
            return None
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno
        text = str(error)
        for code in DISK_FULL:
            if os.strerror(code) in text or f"os_error_code='{code}'" in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(code: int, what: str, checkpoints: Path, good: int | None) -> DiskFullError:
    """The one-line error that stops a run: `what` failed for want of space; `good`, the last good checkpoint."""
    kept = (f"the last good checkpoint, step {good}, is intact in {checkpoints}" if good is not None
            else f"no checkpoint had been saved in {checkpoints} yet")
    again = f"it resumes from step {good}" if good is not None else "it starts from the beginning"
    return DiskFullError(code, f"{os.strerror(code)} {what}; {kept}. Free some space and run the same command "
                               f"again: {again}.")


class _Echoes(logging.Filter):
    """Drops what orbax and asyncio log about a save that failed on a full disk (it is raised once, in the main
    thread, as a DiskFullError): orbax logs it with its traceback from each of its background threads, asyncio logs
    the futures nobody awaits any more. Once a DiskFullError was raised, orbax's threads that still run may stumble
    on the process's exit; their errors are echoes too."""

    failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and disk_full_errno(record.exc_info[1]):
            return False
        return not (_Echoes.failed and f"{os.sep}orbax{os.sep}" in record.pathname)


_quiet = False


def _quiet_failed_saves() -> None:
    """Keep the echoes of a save that failed on a full disk off the console (see `_Echoes`); tensorstore's late
    callbacks into the event loops orbax has closed end as unraisable "Event loop is closed" errors, dropped too.
    Anything else passes untouched. Once per process."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_Echoes())
    previous = sys.unraisablehook

    def hook(unraisable, previous=previous, errno_of=disk_full_errno):
        error = unraisable.exc_value
        if errno_of(error) is None and not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    # The same failed save can leave orbax's write coroutines unawaited when its event loop closes; Python warns
    # about each at exit ("coroutine ... was never awaited"). Dropped only after a save failed on a full disk.
    show = warnings.showwarning

    def showwarning(message, category, *args, show=show, echoes=_Echoes, **kwargs):
        if echoes.failed and issubclass(category, RuntimeWarning) and "was never awaited" in str(message):
            return
        show(message, category, *args, **kwargs)

    warnings.showwarning = showwarning


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
        self._in_flight: int | None = None  # the step of the last asynchronous save until it is known complete
        _quiet_failed_saves()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data: dict, *, force: bool = False) -> bool:
        self.wait()  # orbax waits for the previous save anyway; here its failure is reported with its own step
        with self.stop_on_disk_full(f"saving the checkpoint of step {step}"):
            saved = self.manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
                force=force)
        if saved:
            self._in_flight = step
        return saved

    @contextlib.contextmanager
    def stop_on_disk_full(self, what: str):
        """A full disk or spent quota met inside (`what` failed) is raised as one DiskFullError that names the last
        good checkpoint; other errors pass unchanged."""
        try:
            yield
        except DiskFullError:
            raise
        except Exception as e:
            code = disk_full_errno(e)
            if code is None:
                raise
            _Echoes.failed = True
            self.manager.reload()  # the failed step may still be listed; what is committed on disk counts
            raise disk_full_error(code, what, self.directory, self.manager.latest_step()) from None

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
        """Until the asynchronous save is complete; its failure is raised here (a full disk as DiskFullError)."""
        step, self._in_flight = self._in_flight, None
        with self.stop_on_disk_full("saving a checkpoint" if step is None else f"saving the checkpoint of step {step}"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
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
    """Write model.json whole or not at all: on a full disk the previous one stays, and a DiskFullError says so."""
    path = Path(workdir, MODEL_SPEC)
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(json.dumps(spec, indent=1))
        os.replace(part, path)
    except OSError as e:
        part.unlink(missing_ok=True)
        code = disk_full_errno(e)
        if code is None:
            raise
        ckpts = Path(workdir, "checkpoints")
        steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
        raise disk_full_error(code, f"writing {path}", ckpts, max(steps, default=None)) from None


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
