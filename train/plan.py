"""Compile-only planning: build a trainer's real train step for a target topology and mesh without the hardware,
the data or the weights, and report what each device would hold.

    python -m train.vit --config configs/vit_h14_imagenet_fsdp.py --workdir DIR --compile_for=tpu:v5e:16x16
    -> DIR/compile_plan.json and a printed table

Targets: "tpu:GEN:TOPOLOGY" (GEN v4 / v5e / v5p / v6e, TOPOLOGY "4x4", "2x2x4", …; needs libtpu, the [tpu]
extra, which compiles for TPUs on any host) and "cpu:N" (N CPU devices of this host). The step is lowered from
abstract shapes (`jax.ShapeDtypeStruct`s carrying the shardings of `cfg.mesh` and `cfg.sharding_rules`) and
compiled by XLA for the target; `compiled.memory_analysis()` gives the per-device bytes. `init_from` is not read:
the architecture is `cfg.model`'s (a fine-tuning config's variant must be the checkpoint's).
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import math
import os
import re
import time
from importlib import metadata
from typing import Callable

import jax

from train import loop
from vitsam import bench, sharding

# HBM per chip (bytes) and TensorCores per chip, by the generation names of `get_topology_desc`.
TPU_CHIPS = {"v4": (32 * 2**30, 2), "v5e": (16 * 2**30, 1), "v5p": (95 * 2**30, 2), "v6e": (32 * 2**30, 1)}
_ACCELERATOR_TYPE = {"v4": "v4-{cores}", "v5e": "v5litepod-{chips}", "v5p": "v5p-{cores}", "v6e": "v6e-{chips}"}


def parse_target(target: str) -> tuple[str, str, str]:
    """"tpu:v5e:4x4" -> ("tpu", "v5e", "4x4"); "cpu:8" -> ("cpu", "", "8"); a ValueError naming the flag."""
    parts = str(target).split(":")
    if len(parts) == 3 and parts[0] == "tpu" and parts[1] in TPU_CHIPS and re.fullmatch(r"\d+(x\d+){1,2}", parts[2]):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and parts[0] == "cpu" and parts[1].isdigit() and int(parts[1]) > 0:
        return "cpu", "", parts[1]
    raise ValueError(f"--compile_for={target!r}: expected tpu:GEN:TOPOLOGY (GEN one of {sorted(TPU_CHIPS)}, "
                     f"TOPOLOGY like 4x4 or 2x2x4) or cpu:N")


def prepare_platform(target: str) -> None:
    """What must happen before JAX starts its backends: the CPU device count for "cpu:N"; for TPU targets a check
    that libtpu is installed, and the environment that lets it compile on a host without TPUs."""
    platform, gen, topology = parse_target(target)
    if platform == "cpu":
        try:
            jax.config.update("jax_num_cpu_devices", int(topology))
        except RuntimeError:  # backends already started (e.g. in a test process): devices() is checked later
            pass
        return
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"--compile_for={target} needs libtpu, which compiles for TPUs on this host: "
                         f"pip install 'vitsam[tpu]'")
    chips = math.prod(int(n) for n in topology.split("x"))
    os.environ["TPU_SKIP_MDS_QUERY"] = "1"  # not on a TPU VM: no metadata server to ask
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling needs no chip: never wait for another process's lock
    os.environ.setdefault("TPU_ACCELERATOR_TYPE",
                          _ACCELERATOR_TYPE[gen].format(chips=chips, cores=chips * TPU_CHIPS[gen][1]))
    for var in ("TPU_STDERR_LOG_LEVEL", "TPU_MIN_LOG_LEVEL", "TF_CPP_MIN_LOG_LEVEL"):
        os.environ.setdefault(var, "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host itself computes nothing here


def target_devices(target: str) -> tuple[list, int | None, str]:
    """(devices to compile for, memory per device in bytes, device kind)."""
    platform, gen, topology = parse_target(target)
    if platform == "cpu":
        n = int(topology)
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ValueError(f"--compile_for={target}: this process has {len(devices)} CPU devices; start it with "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return devices[:n], ram // n, devices[0].device_kind
    from jax.experimental import topologies

    try:
        devices = topologies.get_topology_desc(topology_name=f"{gen}:{topology}", platform="tpu").devices
    except Exception as e:  # noqa: BLE001 - libtpu's refusal names the problem
        raise ValueError(f"--compile_for={target}: libtpu does not know this topology: "
                         f"{str(e).splitlines()[0]}") from None
    chips = math.prod(int(n) for n in topology.split("x"))
    return list(devices), TPU_CHIPS[gen][0] * chips // len(devices), devices[0].device_kind


def _abstract_batch(spec: dict, batch_sharding) -> dict:
    return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding) for k, s in spec.items()}


def compile_plan(cfg, workdir, target: str, make_task: Callable, *, model_fields: dict | None = None,
                 status: Callable[[str], None] = print) -> dict:
    """Compile the train step of `make_task(cfg)` for `target`; write WORKDIR/compile_plan.json; return the plan.

    make_task(cfg) -> loop.Task with `batch_spec` (no data, no weights read). Model FLOPs are counted from the
    jaxpr of the step's gradient computation with remat off (`bench.matmul_flops`), so they exclude
    recomputation; `xla_flops` is XLA's own count of what the compiled program runs (recomputation included),
    over all devices.
    """
    workdir = loop.prepare_workdir(workdir)
    devices, device_memory, kind = target_devices(target)
    task = make_task(cfg)
    if task.batch_spec is None:
        raise ValueError("this task cannot describe its batch without data (Task.batch_spec)")
    setup = loop.setup(cfg, task, devices)
    batch = _abstract_batch(task.batch_spec(cfg.batch_size), setup.batch_sharding)
    axes = ", ".join(f"{k} {v}" for k, v in setup.mesh.shape.items())
    status(f"compiling the train step for {target} ({len(devices)} × {kind}, mesh {axes}, "
           f"global batch {cfg.batch_size}) ...")
    t0 = time.perf_counter()
    # A curriculum's (`Task.phase`) program of the last step: the one most of a run takes.
    phase = None if task.phase is None else task.phase(cfg.total_steps - 1)
    lowered = setup.train_step.lower(setup.abstract, batch, phase)
    try:
        compiled = lowered.compile()
        refusal = None
    except Exception as e:  # noqa: BLE001 - XLA refuses programs that exceed the device's memory
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        compiled, refusal = None, " ".join(str(e).split())[:1000]
    seconds = time.perf_counter() - t0

    plain = task
    if "model" in cfg and cfg.model.get("remat"):
        counted = cfg.copy_and_resolve_references()
        counted.model.remat = False
        plain = make_task(counted)
    # The phase (a string) picks the program: bound here, not traced.
    loss_fn = plain.loss_fn if plain.phase is None else functools.partial(plain.loss_fn, phase=phase)
    grad = jax.value_and_grad(loss_fn, has_aux=True)
    rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
    kw = {} if plain.constants is None else {"constants": setup.abstract.constants}
    flops = bench.matmul_flops(grad, setup.abstract.params, task.batch_spec(cfg.batch_size), rng, **kw)

    params = sharding.per_device_bytes(setup.abstract.params)
    optimizer = sharding.per_device_bytes(setup.abstract.opt_state)
    if compiled is not None:
        mem = compiled.memory_analysis()
        sizes = {"arguments": int(mem.argument_size_in_bytes), "temporaries": int(mem.temp_size_in_bytes),
                 "outputs": int(mem.output_size_in_bytes), "aliased": int(mem.alias_size_in_bytes)}
        total = sizes["arguments"] + sizes["outputs"] + sizes["temporaries"] - sizes["aliased"]
        xla = bench.xla_cost(compiled).get("flops")
    else:  # what the refusal says the temporaries would need, e.g. "HLO temporaries (20.51G) exceeds ..."
        found = re.search(r"temporaries \(([\d.]+)([KMGT])\)", refusal)
        temps = None if found is None else int(float(found[1]) * 2 ** (10 * " KMGT".index(found[2])))
        sizes = {"arguments": None, "temporaries": temps, "outputs": None, "aliased": None}
        total, xla = None, None
    plan = {
        "target": target, "device_kind": kind, "num_devices": len(devices), "mesh": dict(setup.mesh.shape),
        "sharding_rules": [list(r) for r in loop.sharding_rules(cfg)],
        "global_batch": int(cfg.batch_size), "per_device_batch": int(cfg.batch_size) // (
            math.prod(setup.mesh.shape[a] for a in setup.batch_sharding.spec[0])),
        "per_device_bytes": {
            "params": params, "optimizer": optimizer,
            "batch": int(sum(sharding.per_device_bytes(x) for x in batch.values())), **sizes, "total": total},
        "device_memory_bytes": device_memory,
        "fits": bool(refusal is None and device_memory is not None and total <= device_memory),
        "compiler_refusal": refusal,
        "flops_per_step": int(flops),
        "xla_flops": None if xla is None else float(xla) * len(devices),
        "compile_seconds": round(seconds, 1),
        "model": model_fields or {},
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "libtpu", "flax", "optax")},
        "date": datetime.date.today().isoformat(),
    }
    (workdir / "compile_plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    status(plan_table(plan))
    status(f"wrote {workdir / 'compile_plan.json'}")
    return plan


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gib(n) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def plan_table(plan: dict) -> str:
    """The plan as a short table for the console."""
    b = plan["per_device_bytes"]
    rows = [("target", f"{plan['target']} ({plan['num_devices']} × {plan['device_kind']})"),
            ("mesh", ", ".join(f"{k} {v}" for k, v in plan["mesh"].items())),
            ("global batch", f"{plan['global_batch']} ({plan['per_device_batch']} per device)"),
            ("params / device", _gib(b["params"])), ("optimizer / device", _gib(b["optimizer"])),
            ("batch / device", _gib(b["batch"])), ("temporaries / device", _gib(b["temporaries"])),
            ("total / device", _gib(b["total"])), ("device memory", _gib(plan["device_memory_bytes"])),
            ("fits", "yes" if plan["fits"] else "NO" + (" (XLA refused: the step exceeds the device memory)"
                                                          if plan["compiler_refusal"] else "")),
            ("model TFLOP / step", f"{plan['flops_per_step'] / 1e12:,.2f}"),
            ("XLA TFLOP / step", "—" if plan["xla_flops"] is None else f"{plan['xla_flops'] / 1e12:,.2f}"),
            ("compile", f"{plan['compile_seconds']} s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
