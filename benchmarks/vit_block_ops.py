"""The ops of one ViT-B/16 encoder block at batch 8 (float32), each timed alone: where a CPU spends the step.

    python benchmarks/vit_block_ops.py jax      # XLA:CPU (XLA_FLAGS as set in the environment)
    python benchmarks/vit_block_ops.py torch    # PyTorch eager at its default threading

Run each side in its own process, alternating, on an otherwise idle machine. Each op is one jitted function (or
one torch call) on fixed random inputs: 3 warm-up calls, then the median of 15. The last line sums the block's
ops (exact GELU) times 12 blocks; XLA fuses a whole block differently, so the sum is a guide, not the model's time.
Shapes: tokens (8, 197, 768), heads (8, 12, 197, 64), attention logits (8, 12, 197, 197), MLP (8, 197, 3072).
"""

import statistics
import sys
import time

import numpy as np

B, T, D, H, F = 8, 197, 768, 12, 3072


def median_time(call, sync, warmup=3, iters=15):
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs():
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=1.0: (rng.standard_normal(shape, dtype=np.float32) * scale)
    return dict(x=normal(B, T, D), w_qkv=normal(D, 3 * D, scale=0.02), w_out=normal(D, D, scale=0.02),
                w_fc1=normal(D, F, scale=0.02), w_fc2=normal(F, D, scale=0.02), heads=normal(B, H, T, D // H),
                logits=normal(B, H, T, T), hidden=normal(B, T, F))


def jax_ops(a):
    import jax
    import jax.numpy as jnp

    a = {k: jnp.asarray(v) for k, v in a.items()}

    def layernorm(v):
        centred = v - v.mean(-1, keepdims=True)
        return centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + 1e-6)

    matmul = jax.jit(jnp.matmul)
    ops = {
        "layernorm": (jax.jit(layernorm), a["x"]),
        "qkv": (matmul, a["x"], a["w_qkv"]),
        "q @ k^T": (jax.jit(lambda q: jnp.einsum("bhqd,bhkd->bhqk", q, q)), a["heads"]),
        "softmax": (jax.jit(lambda s: jax.nn.softmax(s, axis=-1)), a["logits"]),
        "weights @ v": (jax.jit(lambda s, v: jnp.einsum("bhqk,bhkd->bhqd", s, v)), a["logits"], a["heads"]),
        "out projection": (matmul, a["x"], a["w_out"]),
        "fc1": (matmul, a["x"], a["w_fc1"]),
        "gelu (erf)": (jax.jit(lambda h: jax.nn.gelu(h, approximate=False)), a["hidden"]),
        "fc2": (matmul, a["hidden"], a["w_fc2"]),
    }
    return {name: (lambda f=f, args=args: f(*args)) for name, (f, *args) in ops.items()}, \
        lambda r: r.block_until_ready()


def torch_ops(a):
    import torch

    torch.set_grad_enabled(False)
    a = {k: torch.from_numpy(v) for k, v in a.items()}
    norm = torch.nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
    q = a["heads"]
    ops = {
        "layernorm": lambda: norm(a["x"]),
        "qkv": lambda: a["x"] @ a["w_qkv"],
        "q @ k^T": lambda: q @ q.transpose(-1, -2),
        "softmax": lambda: torch.softmax(a["logits"], dim=-1),
        "weights @ v": lambda: a["logits"] @ q,
        "out projection": lambda: a["x"] @ a["w_out"],
        "fc1": lambda: a["x"] @ a["w_fc1"],
        "gelu (erf)": lambda: torch.nn.functional.gelu(a["hidden"]),
        "fc2": lambda: a["hidden"] @ a["w_fc2"],
    }
    return ops, lambda r: r


def main(side):
    if side not in ("jax", "torch"):
        raise SystemExit(f"usage: python benchmarks/vit_block_ops.py jax|torch (got {side!r})")
    ops, sync = (jax_ops if side == "jax" else torch_ops)(inputs())
    total = 0.0
    for name, call in ops.items():
        seconds = median_time(call, sync)
        total += seconds
        extra = ""
        if name == "fc1":
            extra = f"  ({2 * B * T * D * F / seconds / 1e12:.3f} TFLOP/s)"
        print(f"{side:5s} {name:15s} {seconds * 1e3:8.2f} ms{extra}")
    print(f"{side:5s} {'sum x 12 blocks':15s} {total * 12 * 1e3:8.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
