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
    p.add_argument("--threads", type=int, help="PyTorch intra-op threads (default: the usable cores, as XLA uses)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed calls per round")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds over the cases of a group")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="hold a group's cases together and alternate them (default: on CPU only; off, each case "
                        "is freed before the next, for big models on one accelerator)")
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


def _command_line(args, models: Sequence[str]) -> str:
    """The `vitsam bench` command that reproduces this run (rebuilt from the parsed options)."""
    import shlex

    parts = ["vitsam", "bench", "--model", ",".join(models), "--batch", ",".join(map(str, args.batch)),
             "--dtype", ",".join(args.dtype), "--kernel", ",".join(args.kernel), "--mode", ",".join(args.mode),
             "--warmup", str(args.warmup), "--iters", str(args.iters), "--repeats", str(args.repeats)]
    if any(m.startswith("vit:") for m in models):
        parts += ["--image-size", str(args.image_size)]
    if args.torch:
        parts.append("--torch")
    if args.torch_compile is not None:
        parts.append("--torch-compile" if args.torch_compile else "--no-torch-compile")
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
    from vitsam.bench.harness import matmul_tflops
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
    if args.torch:
        # JAX would otherwise take 75% of a GPU's memory at start and leave PyTorch short (read at JAX's
        # backend start, which nothing before this line triggers).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        require_torch(args.threads)
    env = environment(_command_line(args, models))
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
                             log=lambda line: print(line, flush=True))
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
