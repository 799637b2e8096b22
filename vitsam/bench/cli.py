"""The `vitsam bench` command (wired in vitsam/cli.py): its options, and the run that prints the table and
writes the results. Importing this module imports neither JAX nor the models, so that `vitsam --help` and
argument errors stay fast; `run_cli` imports what it runs."""

from __future__ import annotations

import argparse
import os
from typing import Sequence


def _csv(cast=str):
    def parse(text: str) -> list:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]

    parse.__name__ = f"comma-separated {cast.__name__}"  # argparse's "invalid ... value" names it
    return parse


def add_arguments(p) -> None:
    """The options of `vitsam bench`."""
    p.add_argument("--model", action="append", type=_csv(), metavar="SPEC",
                   help="vit:VARIANT (vit:B/16), sam:VARIANT (image encoder), sam:VARIANT:decoder or "
                        "sam:VARIANT:amg (the automatic mask generator on one image); comma-separated or repeated "
                        "(default vit:B/16)")
    p.add_argument("--batch", type=_csv(int), default=[1], help="batch sizes (the decoder: prompts per batch), e.g. 1,8")
    p.add_argument("--dtype", type=_csv(), default=["float32"], help="compute dtypes: float32,bfloat16")
    # Not listed here: the names are vitsam.nn's, which takes seconds to import; a wrong one is an error naming them.
    p.add_argument("--kernel", type=_csv(), default=["einsum"],
                   help="vitsam attention kernels (vitsam.nn.IMPLEMENTATIONS), e.g. einsum,xla,cudnn")
    p.add_argument("--mode", type=_csv(), default=["forward"], help="forward,train (train: ViT only)")
    p.add_argument("--torch", action="store_true", help="also run the PyTorch peers (timm, segment-anything)")
    p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="add torch.compile (+ SDPA for SAM) peers (default: on GPU only)")
    p.add_argument("--same-process", action=argparse.BooleanOptionalAction, default=None,
                   help="time a group's cases in this one process in alternating rounds (--repeats), PyTorch set to "
                        "--threads or the usable cores and the environment's OMP settings applying to both sides; "
                        "--no-same-process: each contender in its own processes also without --torch or on an "
                        "accelerator (default: own processes with --torch on CPU, else one process)")
    p.add_argument("--rounds", type=int,
                   help="own processes: rounds, each a fresh process per contender with its own warm-up, the order "
                        "alternating between rounds (default 3)")
    p.add_argument("--peer-tuned", action="store_true",
                   help="own processes: also time each PyTorch peer at the setting of PyTorch's CPU tuning guide "
                        "(intra-op threads = physical cores), in rows of its own compared in a column apart")
    p.add_argument("--xla-flags", metavar="FLAGS",
                   help="own processes: also time each vitsam case with FLAGS appended to XLA_FLAGS, in rows of its "
                        "own marked +flags (e.g. the CPU settings in benchmarks/README.md)")
    p.add_argument("--threads", type=int,
                   help="PyTorch intra-op threads (default: own processes PyTorch's own default; --same-process the "
                        "usable cores, as XLA uses)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed calls per round")
    p.add_argument("--repeats", type=int,
                   help="--same-process: alternating rounds over the cases of a group (default 1)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="--same-process: hold a group's cases together and alternate them (default: on CPU only; "
                        "off, each case is freed before the next, for big models on one accelerator)")
    p.add_argument("--image-size", type=int, default=224, help="ViT input size")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="model field override for vitsam (and ViT sizes for timm), e.g. --set remat=True")
    p.add_argument("--amg", action="append", default=[], metavar="OPTION=VALUE",
                   help="automatic mask generator option for both generators of the amg cases, e.g. "
                        "--amg pred_iou_thresh=0 (default: the official defaults)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for MFU (default: the device's, from PEAK_TFLOPS)")
    p.add_argument("--matmul-ref", action="store_true",
                   help="measure a large float32 matmul first, to relate each figure to it")
    p.add_argument("--out", help="write results here (.json) and the table beside it (.md)")


def _overrides(items: Sequence[str], flag: str = "--set") -> dict:
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _check_process_flags(args, own: bool) -> None:
    """One-line ValueErrors for counts out of range and for options of the other process mode (`own`: each
    contender in its own processes)."""
    counts = (("--rounds", args.rounds, 1), ("--repeats", args.repeats, 1), ("--iters", args.iters, 1),
              ("--warmup", args.warmup, 0), ("--threads", args.threads, 1))
    for flag, value, least in counts:
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.peer_tuned and not args.torch:
        raise ValueError("--peer-tuned adds rows of the PyTorch peers at a tuned setting: add --torch")
    if own and args.repeats is not None:
        raise ValueError("--repeats counts rounds inside one process (--same-process); in own processes use --rounds")
    if own and args.interleave is not None:
        raise ValueError("--interleave applies to --same-process runs; in own processes each contender runs alone")
    if not own and args.rounds is not None:
        raise ValueError("--rounds counts own-process rounds (the default with --torch on CPU, else "
                         "--no-same-process); in one process use --repeats")
    if not own and args.xla_flags:
        raise ValueError("--xla-flags needs each contender in its own process (XLA reads its flags once per "
                         "process; the default with --torch on CPU, else --no-same-process)")
    if args.xla_flags is not None and not args.xla_flags.strip().startswith("--"):
        raise ValueError("--xla-flags expects XLA flags such as "
                         f"--xla_cpu_enable_concurrency_optimized_scheduler=false, got {args.xla_flags!r}")
    if not own and args.peer_tuned:
        raise ValueError("--peer-tuned needs each contender in its own process (the default with --torch on CPU, "
                         "else --no-same-process)")


def _command_line(args, models: Sequence[str]) -> str:
    """The `vitsam bench` command that reproduces this run (rebuilt from the parsed options)."""
    import shlex

    parts = ["vitsam", "bench", "--model", ",".join(models), "--batch", ",".join(map(str, args.batch)),
             "--dtype", ",".join(args.dtype), "--kernel", ",".join(args.kernel), "--mode", ",".join(args.mode),
             "--warmup", str(args.warmup), "--iters", str(args.iters)]
    for flag, value in (("--rounds", args.rounds), ("--repeats", args.repeats)):
        if value is not None:
            parts += [flag, str(value)]
    if any(m.startswith("vit:") for m in models):
        parts += ["--image-size", str(args.image_size)]
    if args.torch:
        parts.append("--torch")
    if args.torch_compile is not None:
        parts.append("--torch-compile" if args.torch_compile else "--no-torch-compile")
    if args.same_process is not None:
        parts.append("--same-process" if args.same_process else "--no-same-process")
    if args.peer_tuned:
        parts.append("--peer-tuned")
    if args.xla_flags:
        parts += ["--xla-flags", args.xla_flags]
    if args.interleave is not None:
        parts.append("--interleave" if args.interleave else "--no-interleave")
    for flag, value in (("--threads", args.threads), ("--peak-tflops", args.peak_tflops), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [x for item in args.set for x in ("--set", item)]
    parts += [x for item in args.amg for x in ("--amg", item)]
    if args.matmul_ref:
        parts.append("--matmul-ref")
    return " ".join(shlex.quote(p) for p in parts)


def run_cli(args) -> int:
    """`vitsam bench`: run the sweep, print the table, write JSON + markdown when --out is given."""
    import jax

    from vitsam.bench.harness import matmul_tflops
    from vitsam.bench.processes import THREAD_ENV_VARS
    from vitsam.bench.report import environment, environment_markdown, markdown_table, phase_table, write_results
    from vitsam.bench.sweeps import parse_model, run_benchmarks
    from vitsam.bench.torch_peers import require_torch

    models = [m for group in (args.model or [["vit:B/16"]]) for m in group]
    for spec in models:
        parse_model(spec)
    generator_options = _overrides(args.amg, "--amg")
    if generator_options:
        from vitsam.mask_generator import check_options

        try:
            check_options(**generator_options)
        except TypeError as e:
            raise ValueError(f"--amg: {e}") from None
    if args.torch or args.same_process is False:
        # JAX would otherwise take 75% of a GPU's memory at start and leave PyTorch (or the workers) short
        # (read at JAX's backend start, which nothing before this line triggers).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    own = args.same_process is False or (args.same_process is None and args.torch and jax.default_backend() == "cpu")
    _check_process_flags(args, own)
    if own:
        args.rounds = 3 if args.rounds is None else args.rounds
    else:
        args.repeats = 1 if args.repeats is None else args.repeats
    if args.torch:
        require_torch(args.threads, configure=not own)
    env = environment(_command_line(args, models))
    env["processes"] = "own" if own else "same"
    if args.xla_flags:
        env["xla_flags_extra"] = args.xla_flags
    if own:
        removed = [k for k in THREAD_ENV_VARS if k in os.environ]
        env.update(rounds=args.rounds, threads=args.threads, thread_env_removed=removed)
        if removed:
            print(f"note: each contender runs in its own process at its defaults, without "
                  f"{', '.join(f'{k}={os.environ[k]}' for k in removed)} (--same-process keeps the environment)",
                  flush=True)
    matmul_ref = None
    if args.matmul_ref:
        matmul_ref = {dtype: matmul_tflops(dtype) for dtype in args.dtype}
        env["matmul_tflops"] = matmul_ref
    peak = args.peak_tflops if args.peak_tflops is not None else "device"
    records = run_benchmarks(models, args.batch, args.dtype, args.kernel, args.mode, torch=args.torch,
                             torch_compile=args.torch_compile, warmup=args.warmup, iters=args.iters,
                             repeats=args.repeats, image_size=args.image_size, overrides=_overrides(args.set),
                             generator_options=generator_options,
                             peak=peak, matmul_tflops_ref=matmul_ref, interleave=args.interleave,
                             own_process=own, rounds=args.rounds, threads=args.threads, peer_tuned=args.peer_tuned,
                             xla_flags=args.xla_flags,
                             log=lambda line: print(line, flush=True))
    peer_threads = [r["torch_threads"] for r in records
                    if r.get("framework") == "torch" and r.get("setting") == "default" and "torch_threads" in r]
    if own and peer_threads:
        env["torch_threads"] = peer_threads[0]
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print()
    print(markdown_table(records))
    print()
    if phase_table(records):
        print(phase_table(records))
        print()
    print(environment_markdown(env))
    if args.out:
        for path in write_results(args.out, records, env):
            print(f"wrote {path}")
    return 0
