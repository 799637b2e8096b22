"""The training loop shared by the trainers.

config → input iterators → one jitted step over a device mesh (`cfg.mesh`; parameters and optimizer state
placed by `cfg.sharding_rules`, born sharded; the batch split over data × fsdp; state donated) → metrics.jsonl,
progress bar, eval, orbax checkpoints with the data position for exact resume. With several processes every
process runs this same loop on its rows of each batch; process 0 writes the metrics and shows the progress.

A trainer describes its job as a `Task`; `train.setup` builds the mesh, optimizer and step from it; `run` does the
rest. A curriculum (`Task.phase`) has a step program per phase; those of later phases compile in a background
thread while the steps before them run (`compile_ahead`), and the eval program once every step program is
compiled (`compile_eval_ahead`). A full disk stops the run with one `DiskFullError` naming the last good
checkpoint, which the same command resumes from once there is space again.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from train.optim import param_path
from train.setup import Task, TrainState, check_config, make_mesh, param_shardings, setup
from train.setup import model_overrides, sharding_rules  # noqa: F401 - train.vit, train.sam, train.plan use loop.*
from vitsam import parallel, sharding
from vitsam.checkpoint import Checkpointer


class NonFiniteLossError(FloatingPointError):
    pass


def prepare_workdir(workdir) -> Path:
    """Create the workdir and prove it is writable, before any compute."""
    path = Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe of its own per process: processes sharing the workdir (one host, or a shared filesystem) must
        # not remove each other's.
        fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=path)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ValueError(f"workdir {path} is not writable: {e}") from None
    return path


class MetricsLog:
    """`metrics.jsonl`: one JSON object a line. On resume, records after the restored step are dropped (they belonged
    to steps that will run again), by truncating the file: that needs no free space. `guard(what)` wraps every write
    (the loop's turns a full disk into one DiskFullError)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True,
                 guard: Callable[[str], Any] = lambda what: contextlib.nullcontext()):
        self.path, self.enabled, self.guard = path, enabled, guard
        if not enabled:
            return
        keep = 0  # bytes: the records up to the restored step come first, in order
        if path.exists():
            with path.open("rb") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash or a full disk: the last one
                    if not line.endswith(b"\n") or record.get("step", 0) > resume_step:
                        break
                    keep += len(line)
        with guard(f"writing {path}"):
            path.touch()
            os.truncate(path, keep)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.guard(f"writing {self.path}"), self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _encode_state(state) -> dict:
    """Iterator positions as JSON: bytes are base64-encoded."""
    if isinstance(state, bytes):
        return {"bytes": base64.b64encode(state).decode()}
    return {"json": state}


def _decode_state(data: dict):
    return base64.b64decode(data["bytes"]) if "bytes" in data else data["json"]


def _read(train_it, n: int) -> dict:
    """The next `n` batches of `train_it` as one: each array concatenated along its first axis."""
    if n == 1:
        return next(train_it)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *[next(train_it) for _ in range(n)])


def upcoming_phases(task: Task, step: int, total: int) -> list:
    """The phases of steps `step` … `total` − 1 that differ from that of `step`, in the order they first come."""
    if task.phase is None:
        return []
    seen = [task.phase(step)]
    for s in range(step + 1, total):
        phase = task.phase(s)
        if phase not in seen:
            seen.append(phase)
    return seen[1:]


BACKGROUND_COMPILES = ("compile-ahead", "compile-eval-ahead")   # the names of their threads


def compiling_in_background() -> bool:
    """Whether a thread of `compile_ahead` or `compile_eval_ahead` is still compiling: a run that stopped before
    it needed their programs (a signal, an error, a NaN) leaves them running, and XLA cannot stop them."""
    return any(t.is_alive() and t.name in BACKGROUND_COMPILES for t in threading.enumerate())


def compile_ahead(train_step, abstract_state, batch: dict, phases: list, global_batch: Callable) -> dict:
    """{phase: Future of its compiled step program}, compiled one after the other in a background thread while
    the steps before them run: a curriculum's later step programs (`train.sam2`'s tracking steps: minutes of
    XLA compile on a CPU) are then ready when their first step comes. `batch` (a batch of global arrays) gives
    the structure, dtypes and sharding of every phase's batch, `global_batch(phase)` its rows. The compiled
    programs are those the jitted step would build for the same arguments, so the run computes the same."""
    futures = {phase: concurrent.futures.Future() for phase in phases}

    def spec(x, rows):
        return jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype, sharding=x.sharding)

    def work():
        for phase in phases:
            future = futures[phase]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                rows = global_batch(phase)
                lowered = train_step.lower(abstract_state, jax.tree.map(lambda x: spec(x, rows), batch), phase)
                future.set_result(lowered.compile())
            except BaseException as e:  # handed to the step that needs the program
                future.set_exception(e)

    if not phases:
        return futures
    # A daemon thread: a run that stops early (a signal, an error) does not wait for a compile it will not use
    # (the trainers then exit through `launch.exit_beside_background_compiles`).
    threading.Thread(target=work, name=BACKGROUND_COMPILES[0], daemon=True).start()
    return futures


def compile_eval_ahead(eval_step, abstract_params, abstract_constants, task: Task, local_batch: int,
                       mesh) -> concurrent.futures.Future:
    """A Future of (the eval program, the shapes of the batch it takes), compiled in a background thread while
    the steps run: on a 2-core CPU the SAM 2 recipe's eval program compiles in ~40 s alone, and beside its
    tracking steps it costs them ~20 s. `evaluate` runs it on the batches of those shapes; the program is the
    one `eval_step` would build for the same arguments, so the eval computes the same."""
    future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()

    def work():
        try:
            batch = parallel.shard_batch(next(iter(task.eval_iterator(local_batch))), mesh)
            spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)
            program = eval_step.lower(abstract_params, spec, abstract_constants).compile()
            future.set_result((program, jax.tree.map(lambda x: x.shape, batch)))
        except BaseException as e:  # `evaluate` then uses the jitted step, which raises any real error itself
            future.set_exception(e)

    threading.Thread(target=work, name=BACKGROUND_COMPILES[1], daemon=True).start()
    return future


def make_eval_step(task: Task):
    """(params, batch) -> (weighted sums, sums of weights) per metric, and the count of real examples."""

    def eval_step(params, batch, constants=None):
        values = task.eval_fn(params, batch, **({} if constants is None else {"constants": constants}))
        some = next(iter(values.values()))
        size = (some[0] if isinstance(some, tuple) else some).shape[0]
        mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones((size,), jnp.float32)
        sums, weights = {}, {}
        for k, v in values.items():
            v, w = v if isinstance(v, tuple) else (v, None)
            w = mask if w is None else mask * w.astype(jnp.float32)
            sums[k], weights[k] = jnp.sum(v * w), jnp.sum(w)
        return sums, weights, jnp.sum(mask)

    return eval_step


def evaluate(eval_step, params, task: Task, local_batch: int, mesh, constants=None, ahead=None) -> dict:
    """The eval metrics of `params` over the eval split. `ahead`: (a compiled eval program, the shapes of the
    batch it takes) from `compile_eval_ahead`, run on the batches of those shapes (`eval_step` on the others)."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    count = 0.0
    for batch in task.eval_iterator(local_batch):
        batch = parallel.shard_batch(batch, mesh)
        step = eval_step
        if ahead is not None and jax.tree.map(lambda x: x.shape, batch) == ahead[1]:
            step = ahead[0]
        sums, w, n = jax.device_get(step(params, batch, constants))
        for k in sums:
            totals[k] = totals.get(k, 0.0) + float(sums[k])
            weights[k] = weights.get(k, 0.0) + float(w[k])
        count += float(n)
    if not count:
        raise ValueError("the eval split yielded no examples")
    # A metric whose weights were all zero (e.g. no example had a text prompt) is NaN, not an error.
    return {k: totals[k] / weights[k] if weights[k] else float("nan") for k in totals} | {"examples": int(count)}


def evaluate_only(cfg, task: Task) -> dict:
    """Evaluate `task.initial_params` (a checkpoint to fine-tune from) on the eval split, without training."""
    if task.initial_params is None or task.eval_fn is None:
        raise ValueError("evaluating without training needs initial parameters (init_from) and an eval split")
    mesh = make_mesh(cfg)
    local_batch = parallel.check_global_batch(cfg.batch_size, mesh)
    host = task.initial_params()
    params = sharding.shard_host_tree(host, param_shardings(cfg, mesh, host))
    constants = None if task.constants is None else jax.device_put(task.constants, parallel.replicated(mesh))
    return evaluate(jax.jit(make_eval_step(task)), params, task, local_batch, mesh, constants)


def run(cfg, workdir, task: Task, *, status: Callable[[str], None] = print) -> dict:
    """Train `task` for `cfg.total_steps` steps, resuming from the newest good checkpoint in `workdir`.

    Config fields used: batch_size (global), total_steps, log_every, eval_every, checkpoint_every,
    keep_checkpoints, seed, optim.* (see train.optim) and optim.grad_accum_steps. Returns the last eval metrics.
    """
    workdir = prepare_workdir(workdir)
    check_config(cfg)
    is_main = jax.process_index() == 0
    say = status if is_main else (lambda message: None)
    setup_ = setup(cfg, task)
    mesh, shardings, local_batch = setup_.mesh, setup_.shardings, setup_.local_batch
    read_batch = task.read_batch(cfg.batch_size)
    total = int(cfg.total_steps)
    init_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))[0]

    ckpt = Checkpointer(workdir / "checkpoints", every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    train_it = task.train_iterator(setup_.local_read)
    restored = ckpt.restore_latest(setup_.abstract)
    if restored is not None:
        step, state, data = restored
        train_it.set_state(_decode_state(data["iterator"]))
        say(f"resumed from step {step} ({ckpt.directory})")
    else:
        step = 0
        if task.initial_params is None:
            state = jax.jit(setup_.init, out_shardings=shardings)(init_rng)
        else:  # each device receives only its slice of the host checkpoint
            params = sharding.shard_host_tree(task.initial_params(), shardings.params)
            consts = sharding.shard_host_tree(task.constants or {}, shardings.constants)
            tx = setup_.tx
            state = jax.jit(lambda p, c: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), c),
                            out_shardings=shardings)(params, consts)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        frozen = ""
        if task.trainable is not None:
            n_train = sum(x.size for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
                          if task.trainable(param_path(path)))
            frozen = f" ({n_train:,} trainable)"
        axes = ", ".join(f"{k} {v}" for k, v in mesh.shape.items())
        say(f"initialised {n_params:,} parameters{frozen} on {mesh.size} device(s) (mesh {axes}), "
            f"{jax.process_count()} process(es); {sharding.per_device_bytes(setup_.abstract.params) / 2**20:,.1f} "
            f"MiB of parameters per device")
    log = MetricsLog(workdir / "metrics.jsonl", step, enabled=is_main, guard=ckpt.stop_on_disk_full)

    train_step = setup_.train_step
    eval_step = jax.jit(make_eval_step(task)) if task.eval_fn is not None else None

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))

    def check_finite(pending: list, upto: int) -> list:
        fetched = jax.device_get(pending)
        for offset, m in enumerate(fetched):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                ckpt.wait()
                good = ckpt.manager.latest_step()
                raise NonFiniteLossError(
                    f"loss is {loss} at step {upto - len(pending) + offset + 1}; stopping. "
                    + (f"The last good checkpoint (step {good}) in {ckpt.directory} is intact."
                       if good is not None else "No checkpoint had been written yet."))
        return fetched

    last_eval: dict = {}
    pending: list = []
    compiled: set = set()   # the phases whose step program has run (`Task.phase`)
    programs: dict = {}     # phase -> its step program compiled ahead (`compile_ahead`), called without `phase`
    ahead: dict | None = None
    eval_ahead = None       # Future of the eval program (`compile_eval_ahead`), once every step program is compiled
    window_start, window_examples = time.perf_counter(), 0
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not is_main, dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr)
    try:
        while step < total:
            if stop["signal"] is not None:
                ckpt.wait()
                if step in ckpt.manager.all_steps():  # saved just now (a periodic save), or the restored step
                    say(f"signal {stop['signal']} received: step {step} is checkpointed; stopping")
                else:
                    say(f"signal {stop['signal']} received: checkpointing step {step} and stopping")
                    ckpt.save(step, state, {"iterator": _encode_state(train_it.get_state())}, force=True)
                break
            phase = None if task.phase is None else task.phase(step)
            step_batch = task.step_batch(cfg.batch_size, phase)
            batch = parallel.shard_batch(_read(train_it, step_batch // read_batch), mesh)
            if ahead is None:
                ahead = compile_ahead(train_step, setup_.abstract, batch, upcoming_phases(task, step, total),
                                      lambda p: task.step_batch(cfg.batch_size, p))
            if phase not in compiled:
                t0 = time.perf_counter()
                if phase in ahead:
                    programs[phase] = ahead.pop(phase).result()
                    state, metrics = programs[phase](state, batch)
                    how = "ran the first step of phase {!r} (compiled beside the steps before it)"
                else:
                    state, metrics = train_step(state, batch, phase)
                    how = "compiled and ran the first step" + ("" if phase is None else " of phase {!r}")
                jax.block_until_ready(metrics)
                say(f"{how.format(phase)} in {time.perf_counter() - t0:.1f}s")
                compiled.add(phase)
                if eval_step is not None and eval_ahead is None and not upcoming_phases(task, step, total):
                    eval_ahead = compile_eval_ahead(
                        eval_step, setup_.abstract.params,
                        None if task.constants is None else setup_.abstract.constants, task, local_batch, mesh)
                window_start, window_examples = time.perf_counter(), 0
            elif phase in programs:
                state, metrics = programs[phase](state, batch)
            else:
                state, metrics = train_step(state, batch, phase)
            step += 1
            window_examples += step_batch
            pending.append(metrics)
            bar.update(1)

            log_now = step % cfg.log_every == 0 or step == total
            eval_now = eval_step is not None and (step % cfg.eval_every == 0 or step == total)
            save_now = ckpt.should_save(step) or step == total
            if log_now or eval_now or save_now:
                fetched = check_finite(pending, step)
                pending = []
                if log_now:
                    dt = time.perf_counter() - window_start
                    record = {"step": step, "split": "train",
                              **{k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]},
                              "images_per_s": window_examples / max(dt, 1e-9)}
                    record["lr"] = float(fetched[-1]["lr"])
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    img_s=f"{record['images_per_s']:.0f}")
                    window_start, window_examples = time.perf_counter(), 0
            if eval_now:
                # exception() waits for the compile; where it failed, the jitted step runs the eval.
                failed = eval_ahead is None or eval_ahead.exception() is not None
                program = None if failed else eval_ahead.result()
                last_eval = evaluate(eval_step, state.params, task, local_batch, mesh,
                                     None if task.constants is None else state.constants, program)
                log.write({"step": step, "split": "eval", **last_eval})
                if is_main:
                    bar.write(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                window_start, window_examples = time.perf_counter(), 0
            if save_now:
                ckpt.save(step, state, {"iterator": _encode_state(train_it.get_state())}, force=step == total)
    finally:
        for future in (ahead or {}).values():
            future.cancel()
        bar.close()
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
    return last_eval

