"""What a device can do: the compute dtypes by name, dense peak TFLOP/s by device kind, MFU, and the device
allocator's high-water mark."""

from __future__ import annotations

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
