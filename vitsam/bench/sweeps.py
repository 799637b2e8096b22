"""Sweeps: a model spec ("vit:B/16", "sam:vit_h:decoder", "sam:vit_b:amg") and a mode, batch and dtype make one
group of cases (vitsam with each attention kernel, then the PyTorch peers); `run_benchmarks` times every
combination, each group in one process (`harness.run_group`) or each contender in its own
(`processes.run_group_in_processes`)."""

from __future__ import annotations

from typing import Callable, Sequence

import jax

from vitsam.bench.cases import check, sam_amg_case, sam_decoder_case, sam_encoder_case, vit_case
from vitsam.bench.harness import Case, run_group
from vitsam.bench.processes import run_group_in_processes
from vitsam.bench.torch_peers import (SharedSam, timm_vit_case, torch_sam_amg_case, torch_sam_decoder_case,
                                      torch_sam_encoder_case)
from vitsam.models import registry


SAM_PARTS = ("encoder", "decoder", "amg")


def parse_model(spec: str) -> tuple[str, str, str]:
    """"vit:B/16" -> ("vit", "B/16", "model"); "sam:vit_b" or "sam:vit_b:encoder" -> ("sam", "vit_b",
    "encoder"); "sam:vit_b:decoder" -> ("sam", "vit_b", "decoder"); "sam:vit_b:amg" -> ("sam", "vit_b", "amg")
    (the automatic mask generator's `generate` on one image)."""
    family, _, rest = spec.partition(":")
    if family == "vit" and rest:
        registry.get("vit").build(rest)  # validates the name
        return "vit", rest, "model"
    if family == "sam" and rest:
        variant, _, part = rest.partition(":")
        part = part or "encoder"
        if part not in SAM_PARTS:
            raise ValueError(f"unknown SAM part {part!r} in {spec!r}; valid: {', '.join(SAM_PARTS)}")
        registry.get("sam").build(variant)
        return "sam", variant, part
    raise ValueError(f"unknown model {spec!r}; expected vit:VARIANT (e.g. vit:B/16) or "
                     f"sam:VARIANT[:encoder|:decoder|:amg] (e.g. sam:vit_b, sam:vit_h:decoder, sam:vit_b:amg)")


def sweep_cases(spec: str, mode: str, batch: int, dtype: str, kernels: Sequence[str], *, torch: bool = False,
                torch_compile: bool | None = None, image_size: int = 224, overrides: dict | None = None,
                generator_options: dict | None = None) -> list[Case]:
    """The cases of one group: vitsam with each attention kernel, then the PyTorch peers when `torch`:
    timm / segment-anything eager (for the SAM encoder also with SDPA attention), and with `torch_compile`
    the torch.compile (+ SDPA) versions. `torch_compile` None means: on a GPU only.

    "sam:VARIANT:amg" (batch 1, float32): vitsam's automatic mask generator with each kernel and, with `torch`,
    segment-anything's, both with the official defaults on the same image; with `torch` both sides run the
    same weights (segment-anything's random initialisation, converted), without it vitsam's random ones.
    `generator_options` (e.g. {"pred_iou_thresh": 0}) go to both generators.
    """
    family, variant, part = parse_model(spec)
    overrides = overrides or {}
    if torch_compile is None:
        torch_compile = jax.default_backend() == "gpu"
    if family == "vit":
        cases = [vit_case(variant, batch, dtype, k, mode, image_size=image_size, **overrides) for k in kernels]
        if torch:
            cases.append(timm_vit_case(variant, batch, dtype, mode, image_size=image_size, **overrides))
            if torch_compile:
                cases.append(timm_vit_case(variant, batch, dtype, mode, compile=True, image_size=image_size,
                                           **overrides))
        return cases
    if mode != "forward":
        raise ValueError(f"{spec}: SAM benchmarks time the forward pass only (mode 'forward')")
    if part == "amg":
        if batch != 1:
            raise ValueError(f"{spec}: the automatic mask generator runs on one image (batch 1), got batch {batch}")
        shared = SharedSam(variant, **overrides) if torch else None
        weights = shared.variables if torch else None
        cases = [sam_amg_case(variant, dtype, k, variables=weights, generator_options=generator_options, **overrides)
                 for k in kernels]
        if torch:
            cases.append(torch_sam_amg_case(variant, shared=shared, generator_options=generator_options, **overrides))
        return cases
    if part == "encoder":
        cases = [sam_encoder_case(variant, batch, dtype, k, **overrides) for k in kernels]
        if torch:
            cases.append(torch_sam_encoder_case(variant, batch, dtype))
            cases.append(torch_sam_encoder_case(variant, batch, dtype, sdpa=True))
            if torch_compile:
                cases.append(torch_sam_encoder_case(variant, batch, dtype, sdpa=True, compile=True))
        return cases
    cases = [sam_decoder_case(variant, batch, dtype, k, **overrides) for k in kernels]
    if torch:
        cases.append(torch_sam_decoder_case(variant, batch, dtype))
        if torch_compile:
            cases.append(torch_sam_decoder_case(variant, batch, dtype, compile=True))
    return cases


def run_benchmarks(models: Sequence[str], batches: Sequence[int] = (1,), dtypes: Sequence[str] = ("float32",),
                   kernels: Sequence[str] = ("einsum",), modes: Sequence[str] = ("forward",), *, torch: bool = False,
                   torch_compile: bool | None = None, warmup: int = 2, iters: int = 5, repeats: int = 1,
                   image_size: int = 224, overrides: dict | None = None, generator_options: dict | None = None,
                   peak: float | None | str = "device",
                   matmul_tflops_ref: dict[str, float] | None = None, interleave: bool | None = None,
                   own_process: bool = False, rounds: int = 3, threads: int | None = None, peer_tuned: bool = False,
                   xla_flags: str | None = None, log: Callable[[str], None] | None = print) -> list[dict]:
    """Every combination, group by group (see `sweep_cases`); SAM models skip the train mode.

    In one process (`own_process` False) each group is timed by `harness.run_group` (`repeats` alternating
    rounds, `interleave`). With `own_process`, by `processes.run_group_in_processes`: each contender in its own
    fresh process per round, `rounds` rounds alternating the order, PyTorch at its default threads unless
    `threads`, with `peer_tuned` each peer also at the tuned setting, with `xla_flags` each vitsam case also
    with those XLA flags (`repeats` and `interleave` unused)."""
    for spec in models:
        if parse_model(spec)[2] == "amg" and (list(batches) != [1] or list(dtypes) != ["float32"]):
            raise ValueError(f"{spec}: the automatic mask generator runs on one image in float32 (--batch 1 "
                             f"--dtype float32), got batch {','.join(map(str, batches))}, dtype {','.join(dtypes)}")
    for k in kernels:
        check("float32", k, "forward")
    for d in dtypes:
        check(d, "einsum", "forward")
    for m in modes:
        check("float32", "einsum", m)
    records = []
    for spec in models:
        for mode in modes:
            if mode != "forward" and spec.startswith("sam:"):
                continue
            for batch in batches:
                for dtype in dtypes:
                    group = dict(spec=spec, mode=mode, batch=batch, dtype=dtype, kernels=list(kernels), torch=torch,
                                 torch_compile=torch_compile, image_size=image_size, overrides=overrides or {},
                                 generator_options=generator_options or {})
                    cases = sweep_cases(**group)
                    if own_process:
                        records += run_group_in_processes(
                            group, cases, warmup=warmup, iters=iters, rounds=rounds, threads=threads,
                            peer_tuned=peer_tuned, xla_flags=xla_flags, peak=peak,
                            matmul_tflops_ref=matmul_tflops_ref, log=log)
                    else:
                        records += run_group(cases, warmup=warmup, iters=iters, repeats=repeats, peak=peak,
                                             matmul_tflops_ref=matmul_tflops_ref, interleave=interleave, log=log)
    return records
