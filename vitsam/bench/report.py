"""Reports: where and how the figures were taken (`environment`), records as JSON, the markdown table, and the
pair of files `vitsam bench --out` writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from vitsam.bench.devices import cpu_info, cpu_summary


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(command: str | None = None) -> dict:
    """Where and how the figures were taken: device, CPU (`cpu`: its model, `cpu_info`: `devices.cpu_info`),
    versions, threads, load, XLA flags, the command."""
    dev = jax.devices()[0]
    cpu = cpu_info()
    env = dict(
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=command if command is not None else " ".join(sys.argv),
        git_commit=_git("rev-parse", "--short", "HEAD"),
        git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
        cpu=cpu["model"], cpu_info=cpu, cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        python=platform.python_version(),
        versions={d: _version(d) for d in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "timm",
                                           "segment-anything")},
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        env_vars={k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                              "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")
                  if k in os.environ},
        loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )
    if "torch" in sys.modules:  # the peers ran: record their thread count (never imports torch itself)
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return env


def jsonable(value):
    """Overrides and results as JSON: dtypes and other objects by their names."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return getattr(value, "__name__", None) or str(value)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def markdown_table(records: Sequence[dict]) -> str:
    """One table: a row per record. "step ms" is the median of all timed calls, "rounds ms" the lowest and
    highest of the rounds' medians (the spread; "—" with one round). "vs torch" is the ratio of medians: the
    fastest PyTorch peer's step time at its default setting over this row's, in the same group (model, mode,
    batch, dtype); above 1 this row is faster. Peers at the tuned setting (`vitsam bench --peer-tuned`) are
    kept out of it and compared apart, in a "vs torch tuned" column (only when there are any). Memory: for
    vitsam the compiled step's footprint (XLA memory analysis), for a peer on CUDA its own peak allocation."""
    fastest: dict[str, dict[tuple, tuple[float, str]]] = {"default": {}, "tuned": {}}
    for r in records:
        if r.get("framework") == "torch" and r.get("step_s"):
            key = (r["model"], r["mode"], r["batch"], r["dtype"])
            best = fastest["tuned" if r.get("setting") == "tuned" else "default"]
            if key not in best or r["step_s"] < best[key][0]:
                best[key] = (r["step_s"], r["impl"])
    against = [fastest["default"]] + ([fastest["tuned"]] if fastest["tuned"] else [])
    columns = ["model", "mode", "batch", "dtype", "impl", "compile s", "step ms", "rounds ms", "items/s", "TFLOP/s",
               "MFU", "memory MiB", "vs torch"] + (["vs torch tuned"] if fastest["tuned"] else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        key = (r["model"], r["mode"], r["batch"], r["dtype"])
        head = f"| {r['model']} | {r['mode']} | {r['batch']} | {r['dtype']} | {r['impl']}"
        if "step_s" not in r:
            note = r.get("error") or r.get("skipped") or "not run"
            lines.append(f"{head} | {note.replace('|', '/')} |" + "|" * (len(columns) - 6))
            continue
        ratios = [f"{best[key][0] / r['step_s']:.2f}× ({best[key][1]})" if key in best else "—" for best in against]
        spread = r.get("round_spread_s")
        rounds = f"{spread[0] * 1e3:.2f}–{spread[1] * 1e3:.2f}" if spread and len(r["round_medians_s"]) > 1 else "—"
        mem = r.get("executable_bytes") or r.get("device_peak_bytes")
        lines.append(
            f"{head} | {_fmt(r.get('compile_s'), '.1f')}"
            f" | {_fmt(r['step_s'], '.2f', 1e3)} | {rounds} | {_fmt(r['throughput_per_s'], '.2f')} {r['unit']}"
            f" | {_fmt(r.get('tflops_per_s'), '.3f')} | {_fmt(r.get('mfu'), '.1%')} | {_fmt(mem, '.1f', 2 ** -20)}"
            f" | {' | '.join(ratios)} |")
    return "\n".join(lines)


def phase_table(records: Sequence[dict]) -> str:
    """The records that timed parts of their step (`phases_s`: the amg case's encoder and the rest) and counted
    their masks: one row each, in seconds; "" when there are none."""
    timed = [r for r in records if r.get("phases_s")]
    if not timed:
        return ""
    names = list(dict.fromkeys(name for r in timed for name in r["phases_s"]))
    head = "| model | impl | step s | " + " | ".join(f"{n} s" for n in names) + " | masks returned |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in timed:
        parts = " | ".join(_fmt(r["phases_s"].get(n), ".2f") for n in names)
        lines.append(f"| {r['model']} | {r['impl']} | {r['step_s']:.2f} | {parts} | {r.get('masks', '—')} |")
    return "\n".join(lines)


def environment_markdown(env: dict) -> str:
    """A few lines naming the device and CPU, versions, processes and threads, load and command under a results
    table."""
    v = {k: x for k, x in env.get("versions", {}).items() if x}
    cpu = (cpu_summary(env["cpu_info"]) if env.get("cpu_info")
           else f"{env.get('cpu')}, {env.get('cpus_usable')} usable cores")
    flags = f"XLA_FLAGS={env.get('xla_flags') or '(none)'}"
    if env.get("xla_flags_extra"):
        flags += f"; rows marked +flags also `{env['xla_flags_extra']}`"
    if env.get("processes") == "own":
        removed = ", ".join(env.get("thread_env_removed") or []) or "none was set"
        torch = ""
        if "torch_threads" in env:
            torch = f", torch {env['torch_threads']}" + (" (--threads)" if env.get("threads") else " (its default)")
        threads = (f"- processes: each contender in its own process, {env.get('rounds')} rounds alternating the "
                   f"order, each a fresh process with its own warm-up; threads: XLA default{torch}; thread "
                   f"settings removed from the workers' environment: {removed}; {flags}")
    else:
        threads = (f"- threads: XLA default (all usable cores), torch {env.get('torch_threads', '—')}; {flags}"
                   + "".join(f", {k}={x}" for k, x in env.get("env_vars", {}).items()))
    parts = [f"- device: {env.get('device_kind')} ({env.get('backend')}); CPU: {cpu}",
             "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
             threads,
             f"- load average (1, 5, 15 min) at start {env.get('loadavg')}, at end {env.get('loadavg_end')}",
             f"- command: `{env.get('command')}` at {env.get('time_utc')}, commit {env.get('git_commit')}"
             + (" with uncommitted changes" if env.get("git_dirty") else "")]
    for dtype, tflops in (env.get("matmul_tflops") or {}).items():
        parts.append(f"- a large {dtype} matmul reaches {tflops:.3f} TFLOP/s here")
    return "\n".join(parts)


def write_results(path: str | Path, records: Sequence[dict], env: dict) -> tuple[Path, Path]:
    """`path` (.json: {"environment", "results"}) and the same name with .md (the table and environment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": jsonable(env), "results": jsonable(list(records))}, indent=1) + "\n")
    md = path.with_suffix(".md")
    phases = phase_table(records)
    cpu = f"CPU: {cpu_summary(env['cpu_info'])}\n\n" if env.get("cpu_info") else ""
    md.write_text(f"# Benchmark: {path.stem}\n\n{cpu}{markdown_table(records)}\n\n"
                  + (f"{phases}\n\n" if phases else "") + f"{environment_markdown(env)}\n")
    return path, md
