"""Benchmarks of vitsam's models beside their PyTorch peers: compile time, step time, throughput, FLOPs,
MFU and memory, as DESIGN.md "Performance: how we measure" asks.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam.sam import Sam, sam_init, sam_variant
from vitsam.models.vit import VisionTransformer, vit_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
KERNELS = ("einsum", "auto", "xla", "cudnn")
MODES = ("forward", "train")

# ---------------------------------------------------------------------------------------------------------
# Device peaks

# Dense (no sparsity) peak TFLOP/s by device kind, matched as a substring of `jax.Device.device_kind`, first
# match wins. float32 on NVIDIA GPUs is the TF32 tensor-core peak: JAX computes float32 matmuls in TF32 there
# by default (and the PyTorch peers are set to do the same).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),   # SXM; "NVIDIA H100 80GB HBM3"
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0}),
    ("TPU v5", {"bfloat16": 459.0}),                    # v5p
    ("TPU v6", {"bfloat16": 918.0}),                    # v6e (Trillium)
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The dense peak TFLOP/s of a device kind for a compute dtype, or None when not in `PEAK_TFLOPS` (CPUs)."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: `flops` done in `seconds` over the `peak` in TFLOP/s (None without a peak)."""
    if not peak or not seconds:
        return None
    return flops / seconds / (peak * 1e12)


# ---------------------------------------------------------------------------------------------------------
# Analytic FLOPs (2 × multiply-accumulates of matmuls and convolutions)


def _attention_block_macs(tokens: int, dim: int, mlp_dim: int) -> int:
    """One pre-norm block over `tokens`: Q, K, V and output projections, QKᵀ and AV, the two MLP layers."""
    return 4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * mlp_dim


def vit_flops(model: VisionTransformer, batch: int = 1, image_size: int | None = None) -> int:
    """Forward FLOPs of a ViT on `batch` square images of `image_size` (default: the model's).

    ViT-B/16 at 224: 35.1 GFLOP per image; L/16 123.1; H/14 334.6.
    """
    size = image_size or model.image_size
    grid = size // model.patch_size
    patches = grid * grid
    tokens = patches + (model.pool == "tok")
    macs = patches * model.patch_size ** 2 * 3 * model.width                  # patch embedding
    macs += model.depth * _attention_block_macs(tokens, model.width, model.mlp_dim)
    head_in = model.width
    if model.representation_size is not None:
        macs += model.width * model.representation_size
        head_in = model.representation_size
    macs += head_in * model.num_classes
    return 2 * batch * macs


def sam_encoder_flops(model: Sam, batch: int = 1, image_size: int | None = None) -> int:
    """Forward FLOPs of SAM's image encoder on `batch` images of `image_size` (default: the model's).

    Windowed blocks count what is computed: the grid padded to a multiple of the window (64 -> 70), its
    projections and its windows' attention. The decomposed relative-position terms and the neck are counted.
    vit_b at 1024: 0.97 TFLOP per image; vit_l 2.99; vit_h 5.96.
    """
    size = image_size or model.image_size
    grid = size // model.patch_size
    d = model.encoder_dim
    mlp = int(d * model.encoder_mlp_ratio)
    tokens = grid * grid
    macs = tokens * model.patch_size ** 2 * 3 * d                              # patch embedding
    ws = model.window_size
    padded = -(-grid // ws) * ws
    for i in range(model.encoder_depth):
        if i in tuple(model.global_attn_indexes) or ws == 0:
            side, count, n = grid, 1, tokens
        else:
            side, count, n = ws, (padded // ws) ** 2, padded * padded
        t = side * side                                                        # tokens per attention window
        macs += 4 * n * d * d                                                  # qkv, proj
        macs += count * 2 * t * t * d                                          # QKᵀ, AV (all heads)
        macs += count * 2 * t * side * d                                       # q·R_h, q·R_w
        macs += 2 * tokens * d * mlp                                           # MLP
    out = model.prompt_dim
    macs += tokens * d * out + tokens * out * out * 9                          # neck: 1×1 and 3×3 convs
    return 2 * batch * macs


def sam_decoder_flops(model: Sam, num_prompts: int = 1, num_points: int = 1, image_size: int | None = None) -> int:
    """FLOPs of prompt encoding + mask decoding for `num_prompts` prompt sets of `num_points` points each
    (no box, no mask input, as `bench_sam_decoder` runs it), all on one image embedding.

    Counts the two-way transformer, the upscaling transposed convs, the hypernetwork MLPs, the IoU head,
    the mask products and the Fourier features of the points and of the dense positional encoding.
    """
    size = image_size or model.image_size
    grid = size // model.patch_size
    hw = grid * grid
    d, cross, m = model.prompt_dim, model.prompt_dim // model.attention_downsample_rate, model.decoder_mlp_dim
    masks = model.num_multimask_outputs + 1
    sparse = num_points + 1                                                    # + the padding point (no box)
    t = 1 + masks + sparse                                                     # IoU token, mask tokens, prompts

    def cross_attn(nq, nk):  # queries nq tokens, keys / values nk tokens, internal dim `cross`
        return nq * d * cross + 2 * nk * d * cross + 2 * nq * nk * cross + nq * cross * d

    block = (4 * t * d * d + 2 * t * t * d                                     # token self-attention
             + cross_attn(t, hw) + 2 * t * d * m + cross_attn(hw, t))         # token->image, MLP, image->token
    per_prompt = model.decoder_depth * block + cross_attn(t, hw)               # + final token->image attention
    per_prompt += 4 * hw * d * (d // 4) + 16 * hw * (d // 4) * (d // 8)        # two 2×2/2 transposed convs
    per_prompt += masks * (2 * d * d + d * (d // 8))                           # hypernetwork MLPs
    hid = model.iou_head_hidden_dim
    per_prompt += d * hid + (model.iou_head_depth - 2) * hid * hid + hid * masks  # IoU head
    per_prompt += masks * 16 * hw * (d // 8)                                   # masks = hyper · upscaled
    per_prompt += sparse * 2 * (d // 2)                                        # Fourier features of points
    macs = num_prompts * per_prompt + hw * 2 * (d // 2)                        # + dense PE (once)
    return 2 * macs


def train_flops(forward_flops: int) -> int:
    """Model FLOPs of a train step: forward + backward ≈ 3 × forward (activation and weight gradients)."""
    return 3 * forward_flops


# ---------------------------------------------------------------------------------------------------------
# Counting from programs


def _sub_jaxprs(value):
    """Jaxprs held in an equation parameter (a Jaxpr, a ClosedJaxpr, or a tuple of them)."""
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _jaxpr_matmul_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            rhs_free = [s for i, s in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
        elif name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            kernel = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
            taps = math.prod(kernel[i] for i in spec[2:]) * kernel[spec[1]]
            # A transposed conv is a conv over a zero-dilated input: only 1 / prod(dilation) of the taps are real.
            taps //= math.prod(eqn.params.get("lhs_dilation") or (1,))
            total += 2 * math.prod(out) * taps // eqn.params.get("batch_group_count", 1)
        else:
            inner = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
            if name == "cond":  # one branch runs
                total += max((_jaxpr_matmul_flops(j) for j in inner), default=0)
            else:  # scan bodies run `length` times; a while loop's trip count is unknown (counted once)
                total += eqn.params.get("length", 1) * sum(_jaxpr_matmul_flops(j) for j in inner)
    return total


def matmul_flops(fn: Callable, *args, **kwargs) -> int:
    """2 × the multiply-accumulates of every dot_general and convolution in `fn(*args)`, from its jaxpr
    (nothing runs; `args` may be `jax.ShapeDtypeStruct`s). Transposed convolutions count real taps only."""
    return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def xla_cost(compiled) -> dict:
    """XLA's cost analysis of a compiled executable: {"flops": ..., "bytes accessed": ...} (may be empty)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def executable_bytes(compiled) -> int | None:
    """The compiled program's footprint from XLA's memory analysis: arguments + outputs + temporaries
    − donated (aliased) buffers. On GPU this is what the step needs on the device at its peak."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def device_peak_bytes() -> int | None:
    """The device allocator's high-water mark for this process (GPU / TPU; None on CPU). It never goes down,
    so in a sweep it is the largest case so far."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# ---------------------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Runner:
    """A built case: `step()` runs one step and waits for it; `info` adds fields to the record (compile_s,
    flops_xla, memory...); `finish()` may add more after timing (a peak-memory reading)."""

    step: Callable[[], Any]
    info: dict = dataclasses.field(default_factory=dict)
    finish: Callable[[], dict] | None = None


@dataclasses.dataclass
class Case:
    """One thing to time. `record` describes it (framework, impl, model, mode, batch, dtype, kernel, flops,
    throughput unit); `build()` compiles it and returns a `Runner`. `skip` gives a reason not to run it."""

    record: dict
    build: Callable[[], Runner]
    skip: str | None = None


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
    records, runners = [], []
    for case in cases:
        rec = dict(case.record)
        rec.setdefault("device", kind)
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
            _finalize(rec, iters, peak, matmul_tflops_ref)
        if log:
            log(_progress(rec, "done"))
    del runners
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()  # give the peers' cached blocks back before the next group
    return records


def _finalize(rec: dict, iters: int, peak, matmul_ref) -> None:
    times = rec["times_s"]
    step = statistics.median(times)
    rounds = [statistics.median(times[i:i + iters]) for i in range(0, len(times), iters)]
    rec.update(step_s=step, round_medians_s=rounds, min_s=min(times))
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


# ---------------------------------------------------------------------------------------------------------
# vitsam cases


def _check(dtype: str, kernel: str, mode: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def _kernel_skip(kernel: str, dtype: str) -> str | None:
    """Why a kernel cannot run here (cuDNN flash attention: NVIDIA GPUs, half precision), or None."""
    if kernel == "cudnn":
        if jax.default_backend() != "gpu":
            return "the cuDNN attention kernel needs an NVIDIA GPU"
        if dtype == "float32":
            return "the cuDNN attention kernel takes bfloat16 / float16 only"
    return None


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """The benchmark input, NHWC float32, the same for vitsam and the peers (these transpose it)."""
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def random_variables(init: Callable[[jax.Array], Any], seed: int = 0):
    """Variables of the shapes `init(rng)` returns, filled with random numbers on the host.

    A benchmark needs sane values, not the model's exact initializers, and the initializers are slow to run
    here: eagerly they compile hundreds of small programs, jitted one large one (tens of seconds for SAM on a
    loaded CPU). Kernels get N(0, 1/fan-in), LayerNorm scales 1, biases 0, other parameters (embeddings,
    position tables, tokens) N(0, 0.02²), other collections (SAM's Fourier matrix) N(0, 1).
    """
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        collection, name = getattr(path[0], "key", ""), getattr(path[-1], "key", "")
        shape, dtype = leaf.shape, leaf.dtype
        normal = rng.standard_normal(shape, np.float32)
        if collection != "params":
            value = normal
        elif name == "scale":
            value = np.ones(shape, np.float32)
        elif name == "bias":
            value = np.zeros(shape, np.float32)
        elif name == "kernel" and len(shape) >= 2:
            value = normal / np.float32(np.sqrt(math.prod(shape[:-1])))
        else:
            value = np.float32(0.02) * normal
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _cast_params(variables, dtype):
    """Inference in bf16 keeps bf16 weights (as a PyTorch model moved to bf16 does); `params` only."""
    if dtype == jnp.float32:
        return variables
    out = dict(variables)
    out["params"] = jax.tree_util.tree_map(lambda p: p.astype(dtype), variables["params"])
    return out


def _compiled_runner(fn, args, donate: tuple[int, ...] = (), carry: bool = False) -> Runner:
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


def vit_case(variant: str = "B/16", batch: int = 8, dtype: str = "float32", kernel: str = "einsum",
             mode: str = "forward", *, image_size: int = 224, num_classes: int = 1000, seed: int = 0,
             **overrides) -> Case:
    """vitsam's ViT: forward (inference) or a full train step (cross-entropy, AdamW with optax, state
    donated, fp32 master weights with `dtype` compute). `overrides` go to `vit_variant` (e.g. remat, scan)."""
    _check(dtype, kernel, mode)
    dt = DTYPES[dtype]
    model = vit_variant(variant, num_classes=num_classes, image_size=image_size, dtype=dt, attention_impl=kernel,
                        **overrides)
    fwd = vit_flops(model, batch)
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"vit:{variant}", mode=mode, batch=batch,
                  dtype=dtype, kernel=kernel, image_size=image_size, unit="images",
                  flops=fwd if mode == "forward" else train_flops(fwd), overrides=_jsonable(overrides))

    def build() -> Runner:
        images = jnp.asarray(_images(batch, image_size, seed))
        variables = random_variables(lambda r: model.init(r, images[:1]), seed)
        if mode == "forward":
            return _compiled_runner(lambda v, x: model.apply(v, x), (_cast_params(variables, dt), images))
        labels = jnp.asarray(np.random.default_rng(seed).integers(0, num_classes, batch))
        step, opt_state = adamw_train_step(model, variables["params"])
        return _compiled_runner(step, (variables["params"], opt_state, images, labels), donate=(0, 1), carry=True)

    return Case(record, build, _kernel_skip(kernel, dtype))


def adamw_train_step(model, params, lr: float = 1e-4, weight_decay: float = 0.05):
    """A minimal classifier train step, (params, opt_state, images, labels) -> (params, opt_state, loss),
    with softmax cross-entropy and optax AdamW; returns (step, initial opt_state). The trainers' own step
    (train/loop.py) adds clipping, schedules, accumulation and sharding; the FLOPs are the same."""
    import optax

    tx = optax.adamw(lr, weight_decay=weight_decay)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, jax.jit(tx.init)(params)


def sam_encoder_case(variant: str = "vit_b", batch: int = 1, dtype: str = "float32", kernel: str = "einsum",
                     *, seed: int = 0, **overrides) -> Case:
    """vitsam's SAM image encoder, forward, on `batch` normalized 1024-px (the model's size) images."""
    _check(dtype, kernel, "forward")
    dt = DTYPES[dtype]
    model = sam_variant(variant, dtype=dt, attention_impl=kernel, **overrides)
    size = model.image_size
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"sam:{variant}:encoder", mode="forward",
                  batch=batch, dtype=dtype, kernel=kernel, image_size=size, unit="images",
                  flops=sam_encoder_flops(model, batch), overrides=_jsonable(overrides))

    def build() -> Runner:
        variables = _cast_params(random_variables(lambda r: sam_init(model, r), seed), dt)
        images = jnp.asarray(_images(batch, size, seed))
        return _compiled_runner(lambda v, x: model.apply(v, x, method=model.encode_image), (variables, images))

    return Case(record, build, _kernel_skip(kernel, dtype))


def _prompts(num_prompts: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One foreground point per prompt: coords (N, 1, 2) pixels (x, y) of the input frame, labels (N, 1)."""
    coords = np.random.default_rng(seed + 1).uniform(0, size, (num_prompts, 1, 2)).astype(np.float32)
    return coords, np.ones((num_prompts, 1), np.int32)


def _embedding(model_dim: int, grid: int, seed: int = 0) -> np.ndarray:
    """A stand-in image embedding (1, grid, grid, D) (the decoder's cost does not depend on its values)."""
    return np.random.default_rng(seed + 2).standard_normal((1, grid, grid, model_dim), np.float32)


def sam_decoder_case(variant: str = "vit_b", num_prompts: int = 16, dtype: str = "float32",
                     kernel: str = "einsum", *, seed: int = 0, **overrides) -> Case:
    """vitsam's prompt encoder + mask decoder on one image embedding and a batch of `num_prompts` single-point
    prompts, multimask output (as `SamPredictor.predict` with a batch of points)."""
    _check(dtype, kernel, "forward")
    dt = DTYPES[dtype]
    model = sam_variant(variant, dtype=dt, attention_impl=kernel, **overrides)
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"sam:{variant}:decoder", mode="forward",
                  batch=num_prompts, dtype=dtype, kernel=kernel, image_size=model.image_size, unit="prompts",
                  flops=sam_decoder_flops(model, num_prompts), overrides=_jsonable(overrides))

    def build() -> Runner:
        variables = _cast_params(random_variables(lambda r: sam_init(model, r), seed), dt)
        emb = jnp.asarray(_embedding(model.prompt_dim, model.embedding_size, seed))
        coords, labels = map(jnp.asarray, _prompts(num_prompts, model.image_size, seed))

        def decode(v, emb, coords, labels):
            emb = jnp.broadcast_to(emb, (coords.shape[0],) + emb.shape[1:])
            return model.apply(v, emb, coords, labels, multimask_output=True, method=model.decode)

        return _compiled_runner(decode, (variables, emb, coords, labels))

    return Case(record, build, _kernel_skip(kernel, dtype))


def bench_vit(variant: str = "B/16", batch: int = 8, dtype: str = "float32", kernel: str = "einsum",
              mode: str = "forward", *, warmup: int = 2, iters: int = 5, repeats: int = 1, **kwargs) -> dict:
    """Time one vitsam ViT configuration; returns its record (see `run_group`)."""
    return run_group([vit_case(variant, batch, dtype, kernel, mode, **kwargs)],
                     warmup=warmup, iters=iters, repeats=repeats)[0]


def bench_sam_encoder(variant: str = "vit_b", batch: int = 1, dtype: str = "float32", kernel: str = "einsum", *,
                      warmup: int = 1, iters: int = 3, repeats: int = 1, **kwargs) -> dict:
    """Time vitsam's SAM image encoder; returns its record."""
    return run_group([sam_encoder_case(variant, batch, dtype, kernel, **kwargs)],
                     warmup=warmup, iters=iters, repeats=repeats)[0]


def bench_sam_decoder(variant: str = "vit_b", num_prompts: int = 16, dtype: str = "float32", kernel: str = "einsum",
                      *, warmup: int = 2, iters: int = 10, repeats: int = 1, **kwargs) -> dict:
    """Time vitsam's SAM prompt encoder + mask decoder on a batch of prompts; returns its record."""
    return run_group([sam_decoder_case(variant, num_prompts, dtype, kernel, **kwargs)],
                     warmup=warmup, iters=iters, repeats=repeats)[0]


# ---------------------------------------------------------------------------------------------------------
# PyTorch peers (imported only when asked for)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_device():
    """CUDA when both JAX and PyTorch see an NVIDIA GPU, else the CPU."""
    import torch

    return torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")


def _torch_setup(dtype: str):
    """Torch on the benchmark's terms: float32 matmuls in TF32 on GPUs as JAX does by default."""
    import torch

    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return torch, _torch_device(), {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def _cuda_baseline(torch, device) -> int:
    """Call before building a peer on CUDA: resets the peak counter, returns the bytes already allocated
    (other cases' models), so that the peer's own footprint can be told apart."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def _torch_runner(torch, device, fn: Callable[[], Any], baseline: int = 0) -> Runner:
    """The first call is timed as `compile_s` (lazy initialisation; torch.compile's compilation); on CUDA,
    `device_peak_bytes` is the peak allocation of building the model and running that call, less `baseline`."""
    cuda = device.type == "cuda"

    def step():
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    step()
    info = dict(compile_s=time.perf_counter() - t0, torch_threads=torch.get_num_threads(), torch_device=str(device))
    if cuda:
        info["device_peak_bytes"] = int(torch.cuda.max_memory_allocated()) - baseline
    return Runner(step, info)


def _torch_impl(base: str, sdpa: bool = False, compile: bool = False) -> str:
    return base + ("+sdpa" if sdpa else "") + ("+compile" if compile else "")


def timm_vit_case(variant: str = "B/16", batch: int = 8, dtype: str = "float32", mode: str = "forward", *,
                  compile: bool = False, image_size: int = 224, num_classes: int = 1000, seed: int = 0,
                  **overrides) -> Case:
    """timm's VisionTransformer of the same size with random weights, on the same images.

    `overrides` are `vit_variant` fields; the size fields (patch_size, width, depth, mlp_dim, num_heads)
    are mirrored, others (remat, scan, dtype...) only concern vitsam and are ignored.

    timm attends with `F.scaled_dot_product_attention` (its default when PyTorch has it). Forward in bf16
    moves the model to bf16; the train step uses fp32 weights under bf16 autocast (vitsam's mixed precision),
    cross-entropy and AdamW (fused on CUDA). `compile` wraps the model in `torch.compile`.
    """
    _check(dtype, "einsum", mode)
    ref = vit_variant(variant, num_classes=num_classes, image_size=image_size, **overrides)
    fwd = vit_flops(ref, batch)
    record = dict(framework="torch", impl=_torch_impl("timm", compile=compile), model=f"vit:{variant}", mode=mode,
                  batch=batch, dtype=dtype, kernel=None, image_size=image_size, unit="images",
                  flops=fwd if mode == "forward" else train_flops(fwd))

    def build() -> Runner:
        torch, device, tdt = _torch_setup(dtype)
        baseline = _cuda_baseline(torch, device)
        import timm
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        torch.manual_seed(seed)
        net = TimmViT(img_size=image_size, patch_size=ref.patch_size, embed_dim=ref.width, depth=ref.depth,
                      num_heads=ref.num_heads, mlp_ratio=ref.mlp_dim / ref.width, num_classes=num_classes).to(device)
        x = torch.from_numpy(_images(batch, image_size, seed)).permute(0, 3, 1, 2).contiguous().to(device)
        extra = dict(timm_version=timm.__version__, timm_fused_attn=bool(net.blocks[0].attn.fused_attn))
        if mode == "forward":
            net = net.eval().to(tdt)
            x = x.to(tdt)
            model = torch.compile(net) if compile else net

            def fn():
                with torch.inference_mode():
                    return model(x)
        else:
            net = net.train()
            model = torch.compile(net) if compile else net
            y = torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, batch)).to(device)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")

            def fn():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=tdt, enabled=tdt != torch.float32):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                return loss

        runner = _torch_runner(torch, device, fn, baseline)
        runner.info.update(extra)
        return runner

    return Case(record, build)


_SAM_BUILDERS = {"vit_b": "build_sam_vit_b", "vit_l": "build_sam_vit_l", "vit_h": "build_sam_vit_h"}


def _official_sam(variant: str, image_size: int | None = None):
    """segment-anything's model with random weights: the named builders for vit_b/l/h, and for other
    variants (e.g. "tiny", for tests) the same classes at vitsam's hyper-parameters."""
    import segment_anything
    import torch
    from functools import partial

    if variant in _SAM_BUILDERS and image_size in (None, 1024):
        return getattr(segment_anything, _SAM_BUILDERS[variant])()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling import Sam as TorchSam

    m = sam_variant(variant, **({"image_size": image_size} if image_size else {}))
    grid = m.embedding_size
    return TorchSam(
        image_encoder=ImageEncoderViT(
            img_size=m.image_size, patch_size=m.patch_size, embed_dim=m.encoder_dim, depth=m.encoder_depth,
            num_heads=m.encoder_heads, mlp_ratio=m.encoder_mlp_ratio, out_chans=m.prompt_dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=m.window_size,
            global_attn_indexes=tuple(m.global_attn_indexes)),
        prompt_encoder=PromptEncoder(embed_dim=m.prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(m.image_size, m.image_size), mask_in_chans=m.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=m.num_multimask_outputs, transformer_dim=m.prompt_dim,
            transformer=TwoWayTransformer(depth=m.decoder_depth, embedding_dim=m.prompt_dim,
                                          mlp_dim=m.decoder_mlp_dim, num_heads=m.decoder_heads),
            iou_head_depth=m.iou_head_depth, iou_head_hidden_dim=m.iou_head_hidden_dim),
    )


def _sdpa_attention_forward(self, x):
    """segment-anything's encoder attention computed by `F.scaled_dot_product_attention`, the relative-position
    terms passed as its additive mask (what segment-anything-fast does). x (B, h, w, C) -> (B, h, w, C)."""
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, T, Dh)
    bias = None
    if self.use_rel_pos:
        r_h = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)  # (h, h, Dh)
        r_w = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        grid_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnyxc,ykc->bnyxk", grid_q, r_h)
        rel_w = torch.einsum("bnyxc,xkc->bnyxk", grid_q, r_w)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def use_sdpa_attention(image_encoder) -> None:
    """Switch every attention of an official `ImageEncoderViT` to `_sdpa_attention_forward`, in place."""
    import types

    for block in image_encoder.blocks:
        block.attn.forward = types.MethodType(_sdpa_attention_forward, block.attn)


def torch_sam_encoder_case(variant: str = "vit_b", batch: int = 1, dtype: str = "float32", *, sdpa: bool = False,
                           compile: bool = False, seed: int = 0) -> Case:
    """segment-anything's image encoder with random weights on the same images (moved to `dtype`);
    `sdpa` swaps its attention for `F.scaled_dot_product_attention`, `compile` adds `torch.compile`."""
    _check(dtype, "einsum", "forward")
    ref = sam_variant(variant)
    size = ref.image_size
    record = dict(framework="torch", impl=_torch_impl("segment-anything", sdpa, compile),
                  model=f"sam:{variant}:encoder", mode="forward", batch=batch, dtype=dtype, kernel=None,
                  image_size=size, unit="images", flops=sam_encoder_flops(ref, batch))

    def build() -> Runner:
        torch, device, tdt = _torch_setup(dtype)
        baseline = _cuda_baseline(torch, device)
        torch.manual_seed(seed)
        encoder = _official_sam(variant, size).image_encoder.eval().to(device=device, dtype=tdt)
        if sdpa:
            use_sdpa_attention(encoder)
        model = torch.compile(encoder) if compile else encoder
        x = torch.from_numpy(_images(batch, size, seed)).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=tdt)

        def fn():
            with torch.inference_mode():
                return model(x)

        return _torch_runner(torch, device, fn, baseline)

    return Case(record, build)


def torch_sam_decoder_case(variant: str = "vit_b", num_prompts: int = 16, dtype: str = "float32", *,
                           compile: bool = False, seed: int = 0) -> Case:
    """segment-anything's prompt encoder + mask decoder on the same embedding and prompts (bf16 by autocast:
    its prompt encoder keeps float32 coordinates)."""
    _check(dtype, "einsum", "forward")
    ref = sam_variant(variant)
    record = dict(framework="torch", impl=_torch_impl("segment-anything", compile=compile),
                  model=f"sam:{variant}:decoder", mode="forward", batch=num_prompts, dtype=dtype, kernel=None,
                  image_size=ref.image_size, unit="prompts", flops=sam_decoder_flops(ref, num_prompts))

    def build() -> Runner:
        torch, device, tdt = _torch_setup(dtype)
        baseline = _cuda_baseline(torch, device)
        torch.manual_seed(seed)
        sam = _official_sam(variant, ref.image_size).eval().to(device)
        prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
        decoder = torch.compile(decoder) if compile else decoder
        emb = torch.from_numpy(_embedding(ref.prompt_dim, ref.embedding_size, seed)).permute(0, 3, 1, 2)
        emb = emb.contiguous().to(device)
        coords, labels = (torch.from_numpy(a).to(device) for a in _prompts(num_prompts, ref.image_size, seed))

        def fn():
            with torch.inference_mode(), torch.autocast(device.type, dtype=tdt, enabled=tdt != torch.float32):
                sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                return decoder(image_embeddings=emb, image_pe=prompt_encoder.get_dense_pe(),
                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                               multimask_output=True)

        return _torch_runner(torch, device, fn, baseline)

    return Case(record, build)


# ---------------------------------------------------------------------------------------------------------
# Sweeps, environment, reports


def parse_model(spec: str) -> tuple[str, str, str]:
    """"vit:B/16" -> ("vit", "B/16", "model"); "sam:vit_b" or "sam:vit_b:encoder" -> ("sam", "vit_b",
    "encoder"); "sam:vit_b:decoder" -> ("sam", "vit_b", "decoder")."""
    family, _, rest = spec.partition(":")
    if family == "vit" and rest:
        vit_variant(rest)  # validates the name
        return "vit", rest, "model"
    if family == "sam" and rest:
        variant, _, part = rest.partition(":")
        part = part or "encoder"
        if part not in ("encoder", "decoder"):
            raise ValueError(f"unknown SAM part {part!r} in {spec!r}; valid: encoder, decoder")
        sam_variant(variant)
        return "sam", variant, part
    raise ValueError(f"unknown model {spec!r}; expected vit:VARIANT (e.g. vit:B/16) or sam:VARIANT[:encoder|:decoder]"
                     f" (e.g. sam:vit_b, sam:vit_h:decoder)")


def sweep_cases(spec: str, mode: str, batch: int, dtype: str, kernels: Sequence[str], *, torch: bool = False,
                torch_compile: bool | None = None, image_size: int = 224, overrides: dict | None = None) -> list[Case]:
    """The cases of one group: vitsam with each attention kernel, then the PyTorch peers when `torch`:
    timm / segment-anything eager (for the SAM encoder also with SDPA attention), and with `torch_compile`
    the torch.compile (+ SDPA) versions. `torch_compile` None means: on a GPU only.
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
                   image_size: int = 224, overrides: dict | None = None, peak: float | None | str = "device",
                   matmul_tflops_ref: dict[str, float] | None = None, interleave: bool | None = None,
                   log: Callable[[str], None] | None = print) -> list[dict]:
    """Every combination, group by group (see `sweep_cases`); SAM models skip the train mode."""
    for spec in models:
        parse_model(spec)
    for k in kernels:
        _check("float32", k, "forward")
    for d in dtypes:
        _check(d, "einsum", "forward")
    for m in modes:
        _check("float32", "einsum", m)
    records = []
    for spec in models:
        for mode in modes:
            if mode != "forward" and spec.startswith("sam:"):
                continue
            for batch in batches:
                for dtype in dtypes:
                    cases = sweep_cases(spec, mode, batch, dtype, kernels, torch=torch, torch_compile=torch_compile,
                                        image_size=image_size, overrides=overrides)
                    records += run_group(cases, warmup=warmup, iters=iters, repeats=repeats, peak=peak,
                                         matmul_tflops_ref=matmul_tflops_ref, interleave=interleave, log=log)
    return records


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(command: str | None = None) -> dict:
    """Where and how the figures were taken: device, versions, threads, load, XLA flags, the command."""
    dev = jax.devices()[0]
    env = dict(
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=command if command is not None else " ".join(sys.argv),
        git_commit=_git("rev-parse", "--short", "HEAD"),
        git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
        cpu=_cpu_model(), cpu_count=os.cpu_count(),
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
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    return env


def _jsonable(value):
    """Overrides and results as JSON: dtypes and other objects by their names."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return getattr(value, "__name__", None) or str(value)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def markdown_table(records: Sequence[dict]) -> str:
    """One table: a row per record; "vs torch" is the fastest PyTorch peer's step time over this row's in the
    same group (model, mode, batch, dtype): above 1 this row is faster. Memory: for vitsam the compiled
    step's footprint (XLA memory analysis), for a peer on CUDA its own peak allocation."""
    fastest: dict[tuple, tuple[float, str]] = {}
    for r in records:
        if r.get("framework") == "torch" and r.get("step_s"):
            key = (r["model"], r["mode"], r["batch"], r["dtype"])
            if key not in fastest or r["step_s"] < fastest[key][0]:
                fastest[key] = (r["step_s"], r["impl"])
    head = ("| model | mode | batch | dtype | impl | compile s | step ms | items/s | TFLOP/s | MFU | memory MiB "
            "| vs torch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        key = (r["model"], r["mode"], r["batch"], r["dtype"])
        if "step_s" not in r:
            note = r.get("error") or r.get("skipped") or "not run"
            lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['dtype']} | {r['impl']} | "
                         f"{note.replace('|', '/')} |||||||")
            continue
        ratio = "—"
        if key in fastest:
            ratio = f"{fastest[key][0] / r['step_s']:.2f}× ({fastest[key][1]})"
        mem = r.get("executable_bytes") or r.get("device_peak_bytes")
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['dtype']} | {r['impl']}"
            f" | {_fmt(r.get('compile_s'), '.1f')}"
            f" | {_fmt(r['step_s'], '.2f', 1e3)} | {_fmt(r['throughput_per_s'], '.2f')} {r['unit']}"
            f" | {_fmt(r.get('tflops_per_s'), '.3f')} | {_fmt(r.get('mfu'), '.1%')} | {_fmt(mem, '.1f', 2 ** -20)}"
            f" | {ratio} |")
    return "\n".join(lines)


def environment_markdown(env: dict) -> str:
    """A few lines naming the device, versions, threads, load and command under a results table."""
    v = {k: x for k, x in env.get("versions", {}).items() if x}
    parts = [f"- device: {env.get('device_kind')} ({env.get('backend')}), CPU {env.get('cpu')}, "
             f"{env.get('cpus_usable')} usable cores",
             "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
             f"- threads: XLA default (all usable cores), torch {env.get('torch_threads', '—')}; "
             f"XLA_FLAGS={env.get('xla_flags') or '(none)'}"
             + "".join(f", {k}={x}" for k, x in env.get("env_vars", {}).items()),
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
    path.write_text(json.dumps({"environment": _jsonable(env), "results": _jsonable(list(records))}, indent=1) + "\n")
    md = path.with_suffix(".md")
    md.write_text(f"# Benchmark: {path.stem}\n\n{markdown_table(records)}\n\n{environment_markdown(env)}\n")
    return path, md


# ---------------------------------------------------------------------------------------------------------
# The `vitsam bench` command (wired in vitsam/cli.py)


def _csv(cast=str):
    return lambda text: [cast(x.strip()) for x in text.split(",") if x.strip()]


def add_arguments(p) -> None:
    """The options of `vitsam bench`."""
    p.add_argument("--model", action="append", type=_csv(), metavar="SPEC",
                   help="vit:VARIANT (vit:B/16), sam:VARIANT (image encoder) or sam:VARIANT:decoder; "
                        "comma-separated or repeated (default vit:B/16)")
    p.add_argument("--batch", type=_csv(int), default=[1], help="batch sizes (the decoder: prompts per batch), e.g. 1,8")
    p.add_argument("--dtype", type=_csv(), default=["float32"], help="compute dtypes: float32,bfloat16")
    p.add_argument("--kernel", type=_csv(), default=["einsum"], help=f"vitsam attention kernels: {','.join(KERNELS)}")
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
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for MFU (default: the device's, from PEAK_TFLOPS)")
    p.add_argument("--matmul-ref", action="store_true",
                   help="measure a large float32 matmul first, to relate each figure to it")
    p.add_argument("--out", help="write results here (.json) and the table beside it (.md)")


def _overrides(items: Sequence[str]) -> dict:
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
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
    if args.matmul_ref:
        parts.append("--matmul-ref")
    return " ".join(shlex.quote(p) for p in parts)


def run_cli(args) -> int:
    """`vitsam bench`: run the sweep, print the table, write JSON + markdown when --out is given."""
    models = [m for group in (args.model or [["vit:B/16"]]) for m in group]
    for spec in models:
        parse_model(spec)
    if args.torch:
        # JAX would otherwise take 75% of a GPU's memory at start and leave PyTorch short (read at JAX's
        # backend start, which nothing before this line triggers).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if not torch_available():
            raise ValueError("--torch needs PyTorch and the peers: pip install -e '.[parity]'")
        import torch

        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    env = environment(_command_line(args, models))
    matmul_ref = None
    if args.matmul_ref:
        matmul_ref = {dtype: matmul_tflops(dtype) for dtype in args.dtype}
        env["matmul_tflops"] = matmul_ref
    peak = args.peak_tflops if args.peak_tflops is not None else "device"
    records = run_benchmarks(models, args.batch, args.dtype, args.kernel, args.mode, torch=args.torch,
                             torch_compile=args.torch_compile, warmup=args.warmup, iters=args.iters,
                             repeats=args.repeats, image_size=args.image_size, overrides=_overrides(args.set),
                             peak=peak, matmul_tflops_ref=matmul_ref, interleave=args.interleave,
                             log=lambda line: print(line, flush=True))
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print()
    print(markdown_table(records))
    print()
    print(environment_markdown(env))
    if args.out:
        for path in write_results(args.out, records, env):
            print(f"wrote {path}")
    return 0
