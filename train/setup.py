"""What a training run is built from, before any data flows: the `Task` a trainer describes, the config checks,
the mesh, the optimizer, where every array of the state lives, and the jitted step. A training run (`train.loop`)
and a compile-only plan (`train.plan`) share it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Hashable, Iterable, Iterator

import flax
import jax
import jax.numpy as jnp
import optax

from train.optim import make_optimizer, optimizer_choice
from vitsam import parallel, sharding
from vitsam.bench import DTYPES


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    constants: Any  # fixed, non-trained variables saved with the params ({} when none), e.g. SAM's "constants"


@dataclasses.dataclass
class Task:
    """What a trainer plugs into the loop (`train.loop.run`).

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
    phase(step) -> a hashable value, for a curriculum (e.g. `train.sam2`'s static stage): loss_fn receives the
    value of the step being taken (0 for the first) as a keyword `phase=`, fixed at trace time, and each value
    compiles a step program of its own. None: loss_fn gets no `phase`.
    phase_batch: {phase: global batch} for phases whose steps train on another batch than `cfg.batch_size` (e.g.
    the cheap still steps of `train.sam2` on fewer clips). `train_iterator` then reads batches of the greatest
    common divisor of these and `cfg.batch_size`, and a step concatenates as many as its batch needs, so the data
    stream is read in order and resumes exactly. None: every step trains on `cfg.batch_size`.
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
    phase: Callable[[int], Hashable] | None = None
    phase_batch: dict[Hashable, int] | None = None

    def step_batch(self, global_batch: int, phase: Hashable) -> int:
        """The global batch a step of `phase` trains on (`global_batch`: the config's)."""
        return global_batch if not self.phase_batch else int(self.phase_batch.get(phase, global_batch))

    def read_batch(self, global_batch: int) -> int:
        """The global batch of one `train_iterator` read."""
        return math.gcd(int(global_batch), *map(int, (self.phase_batch or {}).values()))


def _microbatches(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B/n, ...), microbatch j holding rows j, j+n, …: each device keeps its own rows."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(task: Task, tx, schedule, accum_steps: int, base_rng: jax.Array):
    """The step: gradients (averaged over `accum_steps` microbatches), one optimizer update."""
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: dict, phase=None):
        rng = jax.random.fold_in(base_rng, state.step)
        kw = {} if task.constants is None else {"constants": state.constants}
        if task.phase is not None:
            kw["phase"] = phase
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
    optimizer_choice(o)
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
    train_step: Callable      # jitted (state, batch, phase) -> (state, metrics); state donated, phase static
    local_batch: int          # per process: of the eval iterator, and of a step without `Task.phase_batch`
    local_read: int           # per process: of one train_iterator read (`Task.read_batch`)


def setup(cfg, task: Task, devices=None) -> Setup:
    """Mesh, optimizer and shardings for `task` under `cfg`; every config error is raised here, before compute.

    Parameters follow `cfg.sharding_rules`; each optimizer-state leaf that mirrors a parameter (Adam's moments)
    takes that parameter's sharding, the rest (step counts) and the constants are replicated."""
    mesh = make_mesh(cfg, devices)
    local_batch = parallel.check_global_batch(cfg.batch_size, mesh)
    accum = int(cfg.optim.grad_accum_steps)
    for phase, batch in {None: cfg.batch_size, **(task.phase_batch or {})}.items():
        where = "" if phase is None else f" of phase {phase!r}"
        if int(batch) < 1:
            raise ValueError(f"the batch{where} must be at least 1, got {batch}")
        try:
            parallel.check_global_batch(int(batch), mesh)
        except ValueError as e:
            raise ValueError(f"{e}{where}") from None
        per_split = int(batch) // parallel.batch_split(mesh)
        if accum < 1 or per_split % accum:
            raise ValueError(f"grad_accum_steps={accum} must divide the per-device batch{where}, {per_split}")
    local_read = parallel.check_global_batch(task.read_batch(cfg.batch_size), mesh)
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
                         in_shardings=(shardings, batch_sharding), out_shardings=(shardings, rep), donate_argnums=0,
                         static_argnums=2)
    return Setup(mesh, tx, schedule, init, abstract, shardings, batch_sharding, train_step, local_batch,
                 local_read)


def model_overrides(model_cfg) -> dict:
    """A config's `model` section as keyword overrides of a variant: "variant" dropped, None (keep the
    variant's value) dropped, the dtype name resolved, lists made tuples (ml_collections stores tuples as lists)."""
    m = model_cfg.to_dict()
    m.pop("variant")
    if m.get("dtype") not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.get('dtype')!r}")
    m["dtype"] = DTYPES[m["dtype"]]
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.items() if v is not None}
