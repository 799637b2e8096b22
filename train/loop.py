"""The training loop shared by the trainers.

config → input iterators → one jitted step over a device mesh (`cfg.mesh`; parameters and optimizer state
placed by `cfg.sharding_rules`, born sharded; the batch split over data × fsdp; state donated) → metrics.jsonl,
progress bar, eval, orbax checkpoints with the data position for exact resume. With several processes every
process runs this same loop on its rows of each batch; process 0 writes the metrics and shows the progress.

A trainer describes its job as a `Task`; `run` does the rest.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from train.optim import make_optimizer, param_path
from vitsam import parallel, sharding
from vitsam.bench import DTYPES
from vitsam.checkpoint import Checkpointer


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    constants: Any  # fixed, non-trained variables saved with the params ({} when none), e.g. SAM's "constants"


@dataclasses.dataclass
class Task:
    """What a trainer plugs into the loop.

    init_params(rng) -> params.
    loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics); `batch` is a dict of global arrays.
    train_iterator(per_process_batch) -> an endless iterator of numpy batch dicts with get_state()/set_state().
    eval_iterator(per_process_batch) -> one pass of numpy batch dicts (an optional bool "mask" (b,) marks padding).
    eval_fn(params, batch) -> dict of per-example values (B,), averaged over the eval set.
      An eval value may also be a pair (values (B,), weights (B,)): it is then averaged with those weights
      (e.g. a per-image mean over a varying number of masks, weighted by that number, averages over masks).
    initial_params() -> host (numpy) params to start from instead of `init_params` (fine-tuning); they are
    placed on the mesh directly rather than baked into a jitted init as constants.
    constants: host arrays that are not trained but belong with the params (SAM's fixed Fourier matrix); they
    are saved in every checkpoint as `constants` (so `vitsam.checkpoint.load_trained` returns them as a
    variable collection). When given, loss_fn and eval_fn receive the state's copy as a keyword `constants=`:
    after a resume the restored ones, never values drawn again.
    trainable(path) -> bool: which parameters the optimizer updates (path: tuple of key names); others are frozen
    (zero update, no optimizer state, no weight decay). None: all.
    lr_scale(path) -> float: a per-parameter learning-rate multiplier (e.g. layer-wise lr decay). None: 1.
    batch_spec(global_batch) -> {key: jax.ShapeDtypeStruct} of the training batch keys `loss_fn` reads: lets
    `train.plan` compile the step without data.
    """

    init_params: Callable[[jax.Array], Any]
    loss_fn: Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
    train_iterator: Callable[[int], Iterator]
    eval_iterator: Callable[[int], Iterable] | None = None
    eval_fn: Callable[[Any, dict], dict] | None = None
    initial_params: Callable[[], Any] | None = None
    constants: Any = None
    trainable: Callable[[tuple[str, ...]], bool] | None = None
    lr_scale: Callable[[tuple[str, ...]], float] | None = None
    batch_spec: Callable[[int], dict] | None = None


class NonFiniteLossError(FloatingPointError):
    pass


def prepare_workdir(workdir) -> Path:
    """Create the workdir and prove it is writable, before any compute."""
    path = Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"workdir {path} is not writable: {e}") from None
    return path


class MetricsLog:
    """`metrics.jsonl`: one JSON object a line. On resume, records after the restored step are dropped
    (they belonged to steps that will run again)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _encode_state(state) -> dict:
    """Iterator positions as JSON: bytes are base64-encoded."""
    if isinstance(state, bytes):
        return {"bytes": base64.b64encode(state).decode()}
    return {"json": state}


def _decode_state(data: dict):
    return base64.b64decode(data["bytes"]) if "bytes" in data else data["json"]


def _microbatches(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B/n, ...), microbatch j holding rows j, j+n, …: each device keeps its own rows."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(task: Task, tx, schedule, accum_steps: int, base_rng: jax.Array):
    """The step: gradients (averaged over `accum_steps` microbatches), one optimizer update."""
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_rng, state.step)
        kw = {} if task.constants is None else {"constants": state.constants}
        if accum_steps == 1:
            (loss, aux), grads = grad_fn(state.params, batch, rng, **kw)
        else:
            def body(carry, xs):
                i, micro = xs
                (l, a), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), **kw)
                return jax.tree.map(jnp.add, carry, (l, a, g)), None

            first = jax.tree.map(lambda x: x[0], _microbatches(batch, accum_steps))
            (l0, a0), g0 = jax.eval_shape(lambda p, b, r: grad_fn(p, b, r, **kw), state.params, first, rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, a0, g0))
            (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), _microbatches(batch, accum_steps)))
            loss, aux, grads = jax.tree.map(lambda x: x / accum_steps, (loss, aux, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, constants=state.constants), metrics

    return step_fn


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


def evaluate(eval_step, params, task: Task, local_batch: int, mesh, constants=None) -> dict:
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    count = 0.0
    for batch in task.eval_iterator(local_batch):
        sums, w, n = jax.device_get(eval_step(params, parallel.shard_batch(batch, mesh), constants))
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


# ----------------------------------------------------------------------------- mesh and shardings


def make_mesh(cfg, devices=None):
    """The mesh of `cfg.mesh` ({axis: size}, -1 fills; default all devices on "data") over `devices` (default:
    every device of every process)."""
    axes = cfg.get("mesh")
    return parallel.make_mesh(None if axes is None else dict(axes), devices)


def sharding_rules(cfg):
    rules = cfg.get("sharding_rules")
    return sharding.DEFAULT_RULES if rules is None else rules


def param_shardings(cfg, mesh, params):
    """NamedSharding per parameter from `cfg.sharding_rules` (first match wins; default: the fsdp tactic for
    parameters of at least `cfg.sharding_min_size` elements)."""
    min_size = cfg.get("sharding_min_size") or sharding.DEFAULT_MIN_SIZE
    return sharding.named(mesh, sharding.param_specs(params, sharding_rules(cfg), mesh, min_size))


def check_config(cfg) -> None:
    """The loop's fields, the mesh, the rules' axes and the batch split checked against the devices: cheap, for a
    trainer to call before it reads any data (rules that do not fit a parameter are found by `setup`)."""
    for name in ("batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(cfg[name]) < 1:
            why = " (0 would delete every checkpoint, the final one too)" if name == "keep_checkpoints" else ""
            raise ValueError(f"{name} must be at least 1, got {cfg[name]}{why}")
    o = cfg.optim
    for name in ("lr", "end_lr", "warmup_steps", "weight_decay", "clip_norm"):
        if name in o and o[name] is not None and float(o[name]) < 0:
            raise ValueError(f"optim.{name} must not be negative, got {o[name]}")
    if not o.lr > 0:
        raise ValueError(f"optim.lr must be positive, got {o.lr}")
    if int(o.grad_accum_steps) < 1:
        raise ValueError(f"optim.grad_accum_steps must be at least 1, got {o.grad_accum_steps}")
    mesh = make_mesh(cfg)
    sharding.check_rules(sharding_rules(cfg), mesh.axis_names)
    parallel.check_global_batch(cfg.batch_size, mesh)


@dataclasses.dataclass
class Setup:
    """What a training run and a compile-only plan share: the mesh, the optimizer, where every array of the
    state lives, and the jitted step."""

    mesh: Any
    tx: Any
    schedule: Any
    init: Callable            # rng -> TrainState (unsharded function; jit it with `shardings`)
    abstract: Any             # TrainState of ShapeDtypeStructs carrying their shardings
    shardings: Any            # TrainState of NamedShardings
    batch_sharding: Any
    train_step: Callable      # jitted (state, batch) -> (state, metrics); state donated
    local_batch: int


def setup(cfg, task: Task, devices=None) -> Setup:
    """Mesh, optimizer and shardings for `task` under `cfg`; every config error is raised here, before compute.

    Parameters follow `cfg.sharding_rules`; each optimizer-state leaf that mirrors a parameter (Adam's moments)
    takes that parameter's sharding, the rest (step counts) and the constants are replicated."""
    mesh = make_mesh(cfg, devices)
    local_batch = parallel.check_global_batch(cfg.batch_size, mesh)
    accum = int(cfg.optim.grad_accum_steps)
    per_split = cfg.batch_size // parallel.batch_split(mesh)
    if accum < 1 or per_split % accum:
        raise ValueError(f"grad_accum_steps={accum} must divide the per-device batch {per_split}")
    tx, schedule = make_optimizer(cfg.optim, int(cfg.total_steps), trainable=task.trainable,
                                  lr_scale=task.lr_scale)
    constants = {} if task.constants is None else task.constants

    def init(rng):
        params = task.init_params(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          constants=jax.tree.map(jnp.asarray, constants))

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    rep = parallel.replicated(mesh)
    params = param_shardings(cfg, mesh, abstract.params)
    opt_state = sharding.follow_params(abstract.opt_state, abstract.params, params, rep)
    shardings = TrainState(step=rep, params=params, opt_state=opt_state,
                           constants=jax.tree.map(lambda _: rep, abstract.constants))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)
    step_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]
    batch_sharding = parallel.batch_sharded(mesh)
    train_step = jax.jit(make_train_step(task, tx, schedule, accum, step_rng),
                         in_shardings=(shardings, batch_sharding), out_shardings=(shardings, rep), donate_argnums=0)
    return Setup(mesh, tx, schedule, init, abstract, shardings, batch_sharding, train_step, local_batch)


def model_overrides(model_cfg) -> dict:
    """A config's `model` section as keyword overrides of a variant: "variant" dropped, None (keep the
    variant's value) dropped, the dtype name resolved, lists made tuples (ml_collections stores tuples as lists)."""
    m = model_cfg.to_dict()
    m.pop("variant")
    if m.get("dtype") not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.get('dtype')!r}")
    m["dtype"] = DTYPES[m["dtype"]]
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.items() if v is not None}


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
    total = int(cfg.total_steps)
    init_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))[0]

    ckpt = Checkpointer(workdir / "checkpoints", every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    train_it = task.train_iterator(local_batch)
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
    start_step = step
    log = MetricsLog(workdir / "metrics.jsonl", step, enabled=is_main)

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
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not is_main, dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr)
    try:
        while step < total:
            if stop["signal"] is not None:
                say(f"signal {stop['signal']} received: checkpointing step {step} and stopping")
                ckpt.save(step, state, {"iterator": _encode_state(train_it.get_state())}, force=True)
                break
            batch = parallel.shard_batch(next(train_it), mesh)
            if step == start_step:
                t0 = time.perf_counter()
                state, metrics = train_step(state, batch)
                jax.block_until_ready(metrics)
                say(f"compiled and ran the first step in {time.perf_counter() - t0:.1f}s")
                window_start, window_steps = time.perf_counter(), 0
            else:
                state, metrics = train_step(state, batch)
            step += 1
            window_steps += 1
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
                              "images_per_s": window_steps * cfg.batch_size / max(dt, 1e-9)}
                    record["lr"] = float(fetched[-1]["lr"])
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    img_s=f"{record['images_per_s']:.0f}")
                    window_start, window_steps = time.perf_counter(), 0
            if eval_now:
                last_eval = evaluate(eval_step, state.params, task, local_batch, mesh,
                                     None if task.constants is None else state.constants)
                log.write({"step": step, "split": "eval", **last_eval})
                if is_main:
                    bar.write(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                window_start, window_steps = time.perf_counter(), 0
            if save_now:
                ckpt.save(step, state, {"iterator": _encode_state(train_it.get_state())}, force=step == total)
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
    return last_eval

