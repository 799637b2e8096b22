"""Benchmarks of vitsam's models beside their PyTorch peers: compile time, step time, throughput, FLOPs,
MFU and memory, measured as docs/design.md "Performance: how we measure" states.

    from vitsam import bench
    rec = bench.bench_vit("B/16", batch=8, dtype="bfloat16", kernel="cudnn", mode="train")
    recs = bench.run_group([bench.vit_case("B/16", 8), bench.timm_vit_case("B/16", 8)], repeats=3)
    print(bench.markdown_table(recs))

or from the shell, `vitsam bench --model vit:B/16 --batch 1,8 --torch --out benchmarks/cpu.json`.

How a step is timed: the jitted function is lowered and compiled apart (`compile_s`), run `warmup` times,
then `iters` times per round, each call ended by `block_until_ready`; `step_s` is the median of all timed
calls. On CPUs the cases of one group (the same model, mode, batch and dtype: vitsam's attention kernels
and the PyTorch peers) are built once and then timed in alternating rounds, so that on a shared machine a
burst of load from elsewhere hits every contender alike; on accelerators they run one after another.

FLOPs are model FLOPs, 2 × the multiply-accumulates of the matmuls and convolutions the model defines
(softmax, norms and other elementwise work are not counted); a train step counts 3 × the forward, whatever
rematerialization adds. MFU = model FLOPs per second / the device's dense peak for the compute dtype.
`flops_xla` is XLA's own count of the compiled program (it includes the elementwise work, so it is a
little higher). `matmul_flops` counts the matmuls of any JAX function from its jaxpr, a check on the formulas.

Every result is a plain dict (JSON-ready); `error` or `skipped` is set instead of timings when a case
cannot run (e.g. the cuDNN kernel without an NVIDIA GPU).

The modules, one concern each (a new benchmark case goes in `cases`, or `torch_peers` for a PyTorch one,
and into `sweeps.sweep_cases` to be reachable from `vitsam bench`):

    flops        the FLOP formulas, the jaxpr matmul counter, XLA's cost and memory analysis
    devices      compute dtypes by name, device peaks, MFU, the allocator's high-water mark
    harness      Case / Runner, timing, run_group
    cases        vitsam's cases: ViT forward and train step, SAM image encoder, SAM prompt encoder + decoder,
                 the automatic mask generator (amg)
    torch_peers  timm and segment-anything peers, the official SAM from vitsam's fields, segment-anything's
                 mask generator on the same weights (imports torch lazily)
    sweeps       model specs, the groups of cases, run_benchmarks
    report       environment, JSON, the markdown table, result files
    cli          the `vitsam bench` options and run

This package re-exports their public names lazily: `vitsam --help` builds `cli`'s options without JAX,
and `bench.matmul_flops` loads `flops` alone.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "flops": ("executable_bytes", "matmul_flops", "sam_decoder_flops", "sam_encoder_flops", "train_flops",
              "vit_flops", "xla_cost"),
    "devices": ("DTYPES", "PEAK_TFLOPS", "device_peak_bytes", "mfu", "peak_tflops"),
    "harness": ("Case", "Runner", "compiled_runner", "matmul_tflops", "run_group"),
    "cases": ("KERNELS", "MODES", "adamw_train_step", "amg_flops", "amg_image", "bench_vit", "random_variables",
              "sam_amg_case", "sam_decoder_case", "sam_encoder_case", "vit_case"),
    "torch_peers": ("SharedSam", "official_sam", "require_torch", "timm_vit_case", "torch_available",
                    "torch_sam_amg_case", "torch_sam_decoder_case", "torch_sam_encoder_case", "use_sdpa_attention"),
    "sweeps": ("SAM_PARTS", "parse_model", "run_benchmarks", "sweep_cases"),
    "report": ("environment", "environment_markdown", "jsonable", "markdown_table", "phase_table", "write_results"),
    "cli": ("add_arguments", "run_cli"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
