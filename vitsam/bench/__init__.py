"""Benchmarks of vitsam's models beside their PyTorch peers: compile time, step time, throughput, FLOPs,
MFU and memory, measured as docs/design.md "Performance: how we measure" states.

    from vitsam import bench
    rec = bench.bench_vit("B/16", batch=8, dtype="bfloat16", kernel="cudnn", mode="train")
    recs = bench.run_group([bench.vit_case("B/16", 8), bench.timm_vit_case("B/16", 8)], repeats=3)
    print(bench.markdown_table(recs))

or from the shell, `vitsam bench --model vit:B/16 --batch 1,8 --torch --out benchmarks/cpu.json`.

How a step is timed: the jitted function is lowered and compiled apart (`compile_s`), run `warmup` times,
then `iters` times per round, each call ended by `block_until_ready`; `step_s` is the median of all timed
calls, `round_spread_s` the lowest and highest of the rounds' medians. A group is the cases of one model,
mode, batch and dtype: vitsam with each attention kernel and the PyTorch peers. With `--torch` on a CPU
(`run_benchmarks(own_process=True)`) each of them runs in its own processes (`processes`): per round a fresh
process each, at its library's default threading, the order alternating between rounds; the ratio of
medians compares them. `--same-process` (`harness.run_group`, the default without `--torch` or off CPUs)
builds a group's cases in one process and alternates rounds there instead (on accelerators it runs them one
after another). Either way a burst of load from elsewhere on a shared machine hits every contender alike.

FLOPs are model FLOPs, 2 × the multiply-accumulates of the matmuls and convolutions the model defines
(softmax, norms and other elementwise work are not counted); a train step counts 3 × the forward, whatever
rematerialization adds. MFU = model FLOPs per second / the device's dense peak for the compute dtype.
`flops_xla` is XLA's own count of the compiled program (it includes the elementwise work, so it is a
little higher). `matmul_flops` counts the matmuls of any JAX function from its jaxpr, a check on the formulas.

Every result is a plain dict (JSON-ready) that names the host CPU (`cpu_info`: model, cores, AVX / AVX-512 /
AMX extensions); `error` or `skipped` is set instead of timings when a case cannot run (e.g. the cuDNN kernel
without an NVIDIA GPU).

The modules, one concern each (a new benchmark case goes in `cases`, or `torch_peers` for a PyTorch one,
and into `sweeps.sweep_cases` to be reachable from `vitsam bench`):

    flops        the FLOP formulas, the jaxpr matmul counter, XLA's cost and memory analysis
    devices      compute dtypes by name, device peaks, MFU, the allocator's high-water mark, the host CPU's
                 model, cores and instruction-set extensions (cpu_info)
    harness      Case / Runner, timing, run_group (a group's cases in one process)
    processes    each contender in its own process: the worker (`python -m vitsam.bench.processes`), the
                 alternating rounds, the merged records
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
    "devices": ("DTYPES", "ISA_FLAGS", "PEAK_TFLOPS", "cpu_info", "cpu_summary", "device_peak_bytes", "mfu",
                "parse_cpuinfo", "peak_tflops"),
    "harness": ("Case", "Runner", "compiled_runner", "finalize_record", "matmul_tflops", "run_group"),
    "processes": ("THREAD_ENV_VARS", "merge_rounds", "round_orders", "run_group_in_processes", "run_spec",
                  "run_worker", "tuned_threads", "worker_env", "worker_spec"),
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
