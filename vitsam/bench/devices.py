"""What a device can do: the compute dtypes by name, dense peak TFLOP/s by device kind, MFU, the device
allocator's high-water mark, and the host CPU (model, cores, instruction-set extensions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp

# The compute dtypes by the names that records, peak tables, the `vitsam bench` options and the trainers'
# configs (`model.dtype`) use.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

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


def device_peak_bytes() -> int | None:
    """The device allocator's high-water mark for this process (GPU / TPU; None on CPU). It never goes down,
    so in a sweep it is the largest case so far."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# The x86 extensions that decide CPU matmul speed, by their /proc/cpuinfo flag names: 256-bit vectors (avx, avx2,
# fma), 512-bit ones (avx512f) with bf16 / int8 dot products, and the AMX tile units (Sapphire Rapids and later).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def parse_cpuinfo(text: str) -> dict:
    """The text of Linux's /proc/cpuinfo -> {"model": str | None, "family": str | None, "model_id": str | None,
    "logical_cores": int, "physical_cores": int | None, "isa": {flag: bool for ISA_FLAGS}}. "family" and
    "model_id" are x86's "cpu family" and "model" numbers (a VM's model name may say only "AMD EPYC": family 25
    is Zen 3 / Zen 4, 26 Zen 5); `isa` is {} when the text lists no x86 "flags" (e.g. on ARM).

    Logical cores are the processor blocks; physical cores the distinct (physical id, core id) pairs, else
    "cpu cores" per distinct physical id, else None."""
    blocks = []
    for chunk in text.split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        if "processor" in fields:
            blocks.append(fields)
    first = blocks[0] if blocks else {}
    pairs = {(b["physical id"], b["core id"]) for b in blocks if "physical id" in b and "core id" in b}
    per_socket = {b["physical id"]: int(b["cpu cores"]) for b in blocks if "physical id" in b and "cpu cores" in b}
    flags = first.get("flags")
    return dict(model=first.get("model name"), family=first.get("cpu family"), model_id=first.get("model"),
                logical_cores=len(blocks),
                physical_cores=len(pairs) or sum(per_socket.values()) or None,
                isa={f: f in flags.split() for f in ISA_FLAGS} if flags is not None else {})


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict:
    """The host CPU, as `parse_cpuinfo` gives it (read from `path`), plus "machine" (x86_64, arm64...) and
    "usable_cores" (those this process may run on). Without /proc/cpuinfo (macOS, Windows): the model from
    `platform`, the logical cores from `os.cpu_count()`, physical cores None and `isa` {} (unknown)."""
    try:
        info = parse_cpuinfo(Path(path).read_text())
    except OSError:
        info = dict(model=None, family=None, model_id=None, logical_cores=os.cpu_count(), physical_cores=None, isa={})
    info["model"] = info["model"] or platform.processor() or None
    info["logical_cores"] = info["logical_cores"] or os.cpu_count()
    info["machine"] = platform.machine()
    info["usable_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return info


def cpu_summary(info: dict) -> str:
    """One line for reports: "AMD EPYC (family 25 model 1), 2 physical / 2 logical cores (2 usable); avx avx2
    fma, no avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16" (an `isa` of {} reads "extensions unknown")."""
    name = info.get("model") or "unknown CPU"
    if info.get("family"):
        name += f" (family {info['family']} model {info.get('model_id')})"
    line = (f"{name}, {info.get('physical_cores') or '?'} physical / {info.get('logical_cores')} logical cores "
            f"({info.get('usable_cores')} usable)")
    isa = info.get("isa") or {}
    if not isa:
        return line + "; extensions unknown"
    have = [f for f, present in isa.items() if present]
    lack = [f for f, present in isa.items() if not present]
    if not have:
        return line + "; none of " + " ".join(lack)
    return line + "; " + " ".join(have) + (", no " + " ".join(lack) if lack else "")
