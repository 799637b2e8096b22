"""The timing harness: a `Case` (what to time, as a record and a builder) becomes a `Runner` (a step to call);
`run_group` builds a group of cases and times them, in alternating rounds on CPUs, one after another on
accelerators, and finishes each record with step time, throughput, TFLOP/s and MFU."""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from vitsam.bench.devices import DTYPES, cpu_info, device_peak_bytes, mfu, peak_tflops
from vitsam.bench.flops import executable_bytes, xla_cost


@dataclasses.dataclass
class Runner:
    """A built case: `step()` runs one step and waits for it; `info` adds fields to the record (compile_s,
    flops_xla, memory...); `finish()` may add more after timing (a peak-memory reading).

    `phases`: where a step times parts of itself (the amg case: the image encoder, then the rest), it appends
    each call's seconds under the part's name; the harness drops the warm-up calls' and records the medians of
    the timed calls' as `record["phases_s"]`."""

    step: Callable[[], Any]
    info: dict = dataclasses.field(default_factory=dict)
    finish: Callable[[], dict] | None = None
    phases: dict[str, list[float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Case:
    """One thing to time. `record` describes it (framework, impl, model, mode, batch, dtype, kernel, flops,
    throughput unit); `build()` compiles it and returns a `Runner`. `skip` gives a reason not to run it."""

    record: dict
    build: Callable[[], Runner]
    skip: str | None = None


def compiled_runner(fn, args, donate: tuple[int, ...] = (), carry: bool = False) -> Runner:
    """Lower and compile `fn(*args)` apart, timed; the step runs it and waits. With `carry`, the first
    len(donate) outputs are fed back as the donated arguments of the next call (a train step's state)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    state = list(args)

    def step():
        out = compiled(*state)
        jax.block_until_ready(out)
        if carry:
            state[:len(donate)] = out[:len(donate)]
        return out

    info = dict(compile_s=compile_s, flops_xla=xla_cost(compiled).get("flops"),
                executable_bytes=executable_bytes(compiled))
    return Runner(step, info, finish=lambda: {"process_peak_bytes": device_peak_bytes()})


def _time_calls(step: Callable, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def run_group(cases: Sequence[Case], *, warmup: int = 2, iters: int = 5, repeats: int = 1,
              peak: float | None | str = "device", matmul_tflops_ref: dict[str, float] | None = None,
              interleave: bool | None = None, log: Callable[[str], None] | None = None) -> list[dict]:
    """Build every case, then time them in `repeats` alternating rounds of `iters` calls each.

    `peak`: TFLOP/s for MFU; "device" looks the current device up in `PEAK_TFLOPS` per dtype.
    `matmul_tflops_ref`: measured matmul throughput by dtype (`matmul_tflops`) to relate each case to.
    `interleave=False` runs the cases one after another, each freed before the next is built (big models on
    one accelerator); None: interleave on CPUs (shared machines), not on accelerators.
    Returns one record per case, in order; a case that fails to build or run gets `error` instead of timings.
    """
    if interleave is None:
        interleave = jax.default_backend() == "cpu"
    if not interleave and len(cases) > 1:
        kw = dict(warmup=warmup, iters=iters, repeats=repeats, peak=peak, matmul_tflops_ref=matmul_tflops_ref,
                  interleave=True, log=log)
        return [rec for case in cases for rec in run_group([case], **kw)]
    kind = jax.devices()[0].device_kind
    cpu = cpu_info()
    records, runners = [], []
    for case in cases:
        rec = dict(case.record)
        rec.setdefault("device", kind)
        rec.setdefault("cpu_info", cpu)
        records.append(rec)
        runners.append(None)
        if case.skip:
            rec["skipped"] = case.skip
            continue
        t0 = time.perf_counter()
        try:
            runner = case.build()
            rec.setdefault("compile_s", time.perf_counter() - t0)
            rec.update(runner.info)
            for _ in range(warmup):
                runner.step()
            for times in runner.phases.values():
                times.clear()
            runners[-1] = runner
            rec["times_s"] = []
        except Exception as e:  # an unsupported configuration or out of memory: record and go on
            rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        if log:
            log(_progress(rec, "built"))

    for _ in range(repeats):
        for rec, runner in zip(records, runners):
            if runner is None or "error" in rec:
                continue
            try:
                rec["times_s"].extend(_time_calls(runner.step, iters))
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for rec, runner in zip(records, runners):
        rec["loadavg_after"] = load  # how busy the machine was while this group ran (1, 5, 15 min)
        if runner is not None and runner.finish and "error" not in rec:
            rec.update(runner.finish())
        if rec.get("times_s") and "error" not in rec:
            finalize_record(rec, iters, peak, matmul_tflops_ref)
            if runner.phases:
                rec["phases_s"] = {name: statistics.median(t) for name, t in runner.phases.items() if t}
        if log:
            log(_progress(rec, "done"))
    del runners
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()  # give the peers' cached blocks back before the next group
    return records


def finalize_record(rec: dict, iters: int, peak: float | None | str = "device",
                    matmul_ref: dict[str, float] | None = None) -> None:
    """Add the figures of `rec["times_s"]` (seconds, rounds of `iters` calls one after another) to `rec`:
    `step_s` the median of all calls, `round_medians_s` each round's median, `round_spread_s` [min, max] of
    those, `min_s`, throughput (`batch` / s), TFLOP/s, `peak_tflops` and MFU (`peak` as in `run_group`),
    `frac_of_matmul` against `matmul_ref` (TFLOP/s by dtype)."""
    times = rec["times_s"]
    step = statistics.median(times)
    rounds = [statistics.median(times[i:i + iters]) for i in range(0, len(times), iters)]
    rec.update(step_s=step, round_medians_s=rounds, round_spread_s=[min(rounds), max(rounds)], min_s=min(times))
    rec["throughput_per_s"] = rec["batch"] / step
    flops = rec.get("flops")
    if flops:
        rec["tflops_per_s"] = flops / step / 1e12
        p = peak_tflops(rec["device"], rec["dtype"]) if peak == "device" else peak
        rec["peak_tflops"] = p
        rec["mfu"] = mfu(flops, step, p)
        if matmul_ref and matmul_ref.get(rec["dtype"]):
            rec["frac_of_matmul"] = rec["tflops_per_s"] / matmul_ref[rec["dtype"]]


def _progress(rec: dict, stage: str) -> str:
    head = f"[{stage}] {rec['model']} {rec['mode']} b={rec['batch']} {rec['dtype']} {rec['impl']}"
    if "error" in rec:
        return f"{head}: ERROR {rec['error']}"
    if "skipped" in rec:
        return f"{head}: skipped ({rec['skipped']})"
    if "step_s" in rec:
        return f"{head}: {rec['step_s'] * 1e3:.1f} ms/step, {rec['throughput_per_s']:.2f} {rec['unit']}/s"
    return f"{head}: compiled in {rec.get('compile_s', 0):.1f} s"


def matmul_tflops(dtype: str = "float32", size: int | None = None, iters: int = 5) -> float:
    """Measured TFLOP/s of one large (size × size) @ (size × size) matmul on the default device: what this
    device reaches in practice, a reference for the model figures (on CPUs, which have no peak table).
    `size` defaults to 8192 on accelerators, 2048 on CPUs."""
    size = size or (2048 if jax.default_backend() == "cpu" else 8192)
    dt = DTYPES[dtype]
    a = jnp.ones((size, size), dt)
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    f(a, a).block_until_ready()
    step = statistics.median(_time_calls(lambda: f(a, a).block_until_ready(), iters))
    return 2 * size ** 3 / step / 1e12
