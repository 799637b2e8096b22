"""Each contender in its own process, rounds alternating: `vitsam bench`'s default with `--torch` on CPUs.

A contender is one case of a group (vitsam with one attention kernel, or one PyTorch peer), and with
`peer_tuned` each PyTorch peer once more at the setting PyTorch's CPU tuning guide gives (intra-op threads =
physical cores). Each round starts a fresh worker per contender,

    python -m vitsam.bench.processes SPEC_JSON

which builds its case, warms it up, times `iters` calls and prints its record as one JSON line; the order
alternates between rounds (A B, then B A, then A B...), so neither side always runs right after the other.
The workers run at their own default threading: the parent removes OpenMP's, MKL's and OpenBLAS's thread
settings (`THREAD_ENV_VARS`) from their environment, and sets threads only for a PyTorch peer and only when
asked (`threads`, or the tuned setting).

Why apart: in one process PyTorch's OpenMP threads and XLA's thread pool share the cores, and the setting that
keeps them from spinning against each other (`OMP_WAIT_POLICY=PASSIVE`) slows PyTorch down by itself on some
machines (issue 21: timm ViT-B/16 at batch 8 on a 2-core AMD EPYC VM took 2.14 s at PyTorch's defaults in its
own process, 3.20 s with PASSIVE). `--same-process` keeps the in-process alternation (`harness.run_group`).

A worker imports only what its case needs, with one exception: in the amg group (`sam:VARIANT:amg` with
`--torch`) vitsam's worker builds its weights from segment-anything's initialisation, so it imports PyTorch
to make them (before timing).
"""

from __future__ import annotations

import ast
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax

from vitsam.bench.devices import cpu_info
from vitsam.bench.harness import Case, finalize_record, run_group
from vitsam.bench.report import jsonable

# Thread settings of OpenMP (GNU and Intel), MKL and OpenBLAS: kept out of the workers' environment, so that
# every contender runs at its library's defaults unless threads are asked for.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_DYNAMIC",
                   "GOMP_SPINCOUNT", "GOMP_CPU_AFFINITY", "KMP_AFFINITY", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
                   "OPENBLAS_NUM_THREADS")
RESULT_PREFIX = "vitsam-bench-record "  # the worker's stdout line that carries its record


def round_orders(contenders: int, rounds: int) -> list[list[int]]:
    """The contender indices in the order each round runs them: forward in rounds 1, 3, 5..., backward in
    rounds 2, 4... (2 contenders, 3 rounds: [[0, 1], [1, 0], [0, 1]])."""
    forward = list(range(contenders))
    return [forward if r % 2 == 0 else forward[::-1] for r in range(rounds)]


def worker_env(threads: int | None = None, base: Mapping[str, str] | None = None,
               xla_flags: str | None = None) -> dict[str, str]:
    """The environment of a worker: `base` (default `os.environ`) without `THREAD_ENV_VARS`; with `threads`,
    OMP_NUM_THREADS and MKL_NUM_THREADS set to it; with `xla_flags`, those appended to XLA_FLAGS. PYTHONPATH
    starts with the folder holding this vitsam, so that the worker runs the parent's code."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in THREAD_ENV_VARS}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if xla_flags:
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), xla_flags) if f.strip())
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def tuned_threads(info: dict) -> int:
    """PyTorch's tuning-guide setting for intra-op threads: the physical cores (of those usable), from `cpu_info`."""
    usable = info.get("usable_cores") or os.cpu_count() or 1
    return min(info.get("physical_cores") or usable, usable)


def worker_spec(group: dict, index: int, impl: str, *, warmup: int, iters: int, threads: int | None = None) -> dict:
    """What a worker times, JSON-ready: case `index` (whose impl must be `impl`) of `sweeps.sweep_cases(**group)`,
    `warmup` calls then `iters` timed ones; `threads` sets a PyTorch peer's intra-op threads. The group's
    `overrides` and `generator_options` travel as Python literals (`--set` values may be tuples)."""
    g = dict(group, overrides=repr(dict(group.get("overrides") or {})),
             generator_options=repr(dict(group.get("generator_options") or {})))
    return dict(group=g, index=index, impl=impl, warmup=warmup, iters=iters, threads=threads)


def run_spec(spec: dict) -> dict:
    """In the worker: build and time the case of a `worker_spec`; its record (one round: `times_s`, the
    case's info, `worker_env`: the thread settings it ran with)."""
    from vitsam.bench.sweeps import sweep_cases
    from vitsam.bench.torch_peers import require_torch

    group = dict(spec["group"], overrides=ast.literal_eval(spec["group"]["overrides"]),
                 generator_options=ast.literal_eval(spec["group"]["generator_options"]))
    case = sweep_cases(**group)[spec["index"]]
    if case.record["impl"] != spec["impl"]:
        raise ValueError(f"case {spec['index']} of the group is {case.record['impl']!r}, not {spec['impl']!r}")
    if spec.get("threads") and case.record["framework"] == "torch":
        require_torch(spec["threads"])
    (rec,) = run_group([case], warmup=spec["warmup"], iters=spec["iters"], repeats=1, peak=None, interleave=True)
    rec["worker_env"] = {k: os.environ[k] for k in THREAD_ENV_VARS if k in os.environ}
    return rec


def run_worker(spec: dict, env: dict[str, str]) -> dict:
    """Run one worker (`python -m vitsam.bench.processes`) in `env` and wait: its record, or {"error": ...}
    with the last line it wrote to stderr when it printed none."""
    proc = subprocess.run([sys.executable, "-m", "vitsam.bench.processes", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"error": f"worker exit status {proc.returncode}: {lines[-1] if lines else 'no output'}"[:400]}


def merge_rounds(record: dict, rounds: Sequence[dict], iters: int, *, setting: str = "default",
                 threads: int | None = None, peak: float | None | str = "device",
                 matmul_ref: dict[str, float] | None = None, xla_flags: str | None = None) -> dict:
    """One contender's record from its rounds' worker records (each `iters` timed calls): the last round's
    info, `times_s` all timed calls in round order, `step_s` their median, `round_medians_s` and
    `round_spread_s` [min, max] of the rounds' medians (`harness.finalize_record`), `compile_s` the median of
    the rounds' (each process compiles anew), `phases_s` the median of the rounds' medians. The first failed
    round makes the record an `error`. `setting` "tuned" appends " tuned" to the impl and records `threads`;
    "xla_flags" (vitsam with extra XLA flags) appends " +flags" and records `xla_flags`."""
    rec = dict(record, process="own", rounds=len(rounds), setting=setting)
    if not rounds:
        rec["error"] = "no rounds run"
        return _label(rec, setting, threads, xla_flags)
    for k, r in enumerate(rounds, 1):
        if "error" in r or "skipped" in r or not r.get("times_s"):
            rec["error"] = f"round {k}: {r.get('error') or r.get('skipped') or 'no timed calls'}"
            return _label(rec, setting, threads, xla_flags)
    rec.update(rounds[-1])
    rec["times_s"] = [t for r in rounds for t in r["times_s"]]
    compiles = [r["compile_s"] for r in rounds if r.get("compile_s") is not None]
    if compiles:
        rec.update(compile_s=statistics.median(compiles), compile_s_rounds=compiles)
    if rounds[-1].get("phases_s"):
        rec["phases_s"] = {name: statistics.median(r["phases_s"][name] for r in rounds)
                           for name in rounds[-1]["phases_s"]}
    finalize_record(rec, iters, peak, matmul_ref)
    return _label(rec, setting, threads, xla_flags)


def _label(rec: dict, setting: str, threads: int | None, xla_flags: str | None = None) -> dict:
    rec["setting"] = setting
    if setting == "tuned":
        rec.update(impl=f"{rec['impl']} tuned", tuned_threads=threads)
    if setting == "xla_flags":
        rec.update(impl=f"{rec['impl']} +flags", xla_flags=xla_flags)
    return rec


def run_group_in_processes(group: dict, cases: Sequence[Case], *, warmup: int = 2, iters: int = 5, rounds: int = 3,
                           threads: int | None = None, peer_tuned: bool = False, xla_flags: str | None = None,
                           peak: float | None | str = "device",
                           matmul_tflops_ref: dict[str, float] | None = None, log: Callable[[str], None] | None = None,
                           launch: Callable[[dict, dict], dict] = run_worker) -> list[dict]:
    """Time the `cases` of one group (`sweeps.sweep_cases(**group)`) each in its own processes: `rounds`
    rounds, each a fresh worker per contender (`launch(worker_spec, worker_env)`, default `run_worker`) in the
    order `round_orders` gives; a contender whose round failed runs no further rounds. `threads`: the PyTorch
    peers' intra-op threads (default: theirs);
    `peer_tuned`: each peer also at `tuned_threads`, as a separate record after its default one;
    `xla_flags`: each vitsam case also with these appended to XLA_FLAGS (`worker_env`), a record of its own.
    Returns one record per case (and tuned peer), in order; see `merge_rounds`."""
    info = cpu_info()
    contenders = []  # (case index, setting, threads, extra XLA flags)
    for i, case in enumerate(cases):
        if case.skip:
            continue
        torch_peer = case.record["framework"] == "torch"
        contenders.append((i, "default", threads if torch_peer else None, None))
        if peer_tuned and torch_peer:
            contenders.append((i, "tuned", tuned_threads(info), None))
        if xla_flags and not torch_peer:
            contenders.append((i, "xla_flags", None, xla_flags))
    done: list[list[dict]] = [[] for _ in contenders]
    for r, order in enumerate(round_orders(len(contenders), rounds), 1):
        for c in order:
            if any("error" in x for x in done[c]):
                continue  # failed once (out of memory, a bad option): not again
            i, setting, n, flags = contenders[c]
            t0 = time.perf_counter()
            spec = worker_spec(group, i, cases[i].record["impl"], warmup=warmup, iters=iters, threads=n)
            rec = launch(spec, worker_env(n, xla_flags=flags))
            done[c].append(rec)
            if log:
                what = rec.get("error") or (f"median {statistics.median(rec['times_s']) * 1e3:.1f} ms"
                                            if rec.get("times_s") else rec.get("skipped", "no timed calls"))
                log(f"[round {r}/{rounds}] {_head(cases[i].record)} {setting}: {what} "
                    f"(process of {time.perf_counter() - t0:.1f} s)")
    records = []
    for i, case in enumerate(cases):
        if case.skip:
            records.append(dict(case.record, skipped=case.skip, device=jax.devices()[0].device_kind, cpu_info=info,
                                process="own"))
        for c, (j, setting, n, flags) in enumerate(contenders):
            if j == i:
                records.append(merge_rounds(case.record, done[c], iters, setting=setting, threads=n, peak=peak,
                                            matmul_ref=matmul_tflops_ref, xla_flags=flags))
                if log and "step_s" in records[-1]:
                    r = records[-1]
                    log(f"[done] {_head(r)}: {r['step_s'] * 1e3:.1f} ms median, rounds "
                        f"{r['round_spread_s'][0] * 1e3:.1f}–{r['round_spread_s'][1] * 1e3:.1f} ms")
    return records


def _head(rec: dict) -> str:
    return f"{rec['model']} {rec['mode']} b={rec['batch']} {rec['dtype']} {rec['impl']}"


def main(argv: Sequence[str] | None = None) -> int:
    """The worker: `python -m vitsam.bench.processes SPEC_JSON` (a `worker_spec`) prints its record on one line
    that starts with `RESULT_PREFIX`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: python -m vitsam.bench.processes SPEC_JSON (started by `vitsam bench`)", file=sys.stderr)
        return 2
    rec = run_spec(json.loads(argv[0]))
    print(RESULT_PREFIX + json.dumps(jsonable(rec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
