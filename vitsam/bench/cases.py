"""vitsam's benchmark cases: the ViT (forward or a train step), SAM's image encoder and SAM's prompt encoder +
mask decoder, each a `Case` on random weights and the same random inputs the PyTorch peers get."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.bench.devices import DTYPES
from vitsam.bench.flops import sam_decoder_flops, sam_encoder_flops, train_flops, vit_flops
from vitsam.bench.harness import Case, Runner, compiled_runner, run_group
from vitsam.bench.report import jsonable
from vitsam.models.sam.sam import sam_init, sam_variant
from vitsam.models.vit import vit_variant
from vitsam.nn.attention import IMPLEMENTATIONS

KERNELS = IMPLEMENTATIONS  # vitsam's attention kernels, each a case
MODES = ("forward", "train")


def check(dtype: str, kernel: str, mode: str) -> None:
    """A ValueError naming the valid choices when `dtype`, `kernel` or `mode` is unknown."""
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


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """The benchmark input, NHWC float32, the same for vitsam and the peers (these transpose it)."""
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def prompts(num_prompts: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One foreground point per prompt: coords (N, 1, 2) pixels (x, y) of the input frame, labels (N, 1)."""
    coords = np.random.default_rng(seed + 1).uniform(0, size, (num_prompts, 1, 2)).astype(np.float32)
    return coords, np.ones((num_prompts, 1), np.int32)


def embedding(model_dim: int, grid: int, seed: int = 0) -> np.ndarray:
    """A stand-in image embedding (1, grid, grid, D) (the decoder's cost does not depend on its values)."""
    return np.random.default_rng(seed + 2).standard_normal((1, grid, grid, model_dim), np.float32)


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


def vit_case(variant: str = "B/16", batch: int = 8, dtype: str = "float32", kernel: str = "einsum",
             mode: str = "forward", *, image_size: int = 224, num_classes: int = 1000, seed: int = 0,
             **overrides) -> Case:
    """vitsam's ViT: forward (inference) or a full train step (cross-entropy, AdamW with optax, state
    donated, fp32 master weights with `dtype` compute). `overrides` go to `vit_variant` (e.g. remat, scan)."""
    check(dtype, kernel, mode)
    dt = DTYPES[dtype]
    model = vit_variant(variant, num_classes=num_classes, image_size=image_size, dtype=dt, attention_impl=kernel,
                        **overrides)
    fwd = vit_flops(model, batch)
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"vit:{variant}", mode=mode, batch=batch,
                  dtype=dtype, kernel=kernel, image_size=image_size, unit="images",
                  flops=fwd if mode == "forward" else train_flops(fwd), overrides=jsonable(overrides))

    def build() -> Runner:
        x = jnp.asarray(images(batch, image_size, seed))
        variables = random_variables(lambda r: model.init(r, x[:1]), seed)
        if mode == "forward":
            return compiled_runner(lambda v, x: model.apply(v, x), (_cast_params(variables, dt), x))
        labels = jnp.asarray(np.random.default_rng(seed).integers(0, num_classes, batch))
        step, opt_state = adamw_train_step(model, variables["params"])
        return compiled_runner(step, (variables["params"], opt_state, x, labels), donate=(0, 1), carry=True)

    return Case(record, build, _kernel_skip(kernel, dtype))


def adamw_train_step(model, params, lr: float = 1e-4, weight_decay: float = 0.05):
    """A minimal classifier train step, (params, opt_state, images, labels) -> (params, opt_state, loss),
    with softmax cross-entropy and optax AdamW; returns (step, initial opt_state).

    Not `train/optim.py`'s optimizer: the library never imports `train/`, and the step to match is the timm
    peer's plain AdamW (no clipping, schedule or decay mask; those cost no model FLOPs).
    """
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
    check(dtype, kernel, "forward")
    dt = DTYPES[dtype]
    model = sam_variant(variant, dtype=dt, attention_impl=kernel, **overrides)
    size = model.image_size
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"sam:{variant}:encoder", mode="forward",
                  batch=batch, dtype=dtype, kernel=kernel, image_size=size, unit="images",
                  flops=sam_encoder_flops(model, batch), overrides=jsonable(overrides))

    def build() -> Runner:
        variables = _cast_params(random_variables(lambda r: sam_init(model, r), seed), dt)
        x = jnp.asarray(images(batch, size, seed))
        return compiled_runner(lambda v, x: model.apply(v, x, method=model.encode_image), (variables, x))

    return Case(record, build, _kernel_skip(kernel, dtype))


def sam_decoder_case(variant: str = "vit_b", num_prompts: int = 16, dtype: str = "float32",
                     kernel: str = "einsum", *, seed: int = 0, **overrides) -> Case:
    """vitsam's prompt encoder + mask decoder on one image embedding and a batch of `num_prompts` single-point
    prompts, multimask output (as `SamPredictor.predict` with a batch of points)."""
    check(dtype, kernel, "forward")
    dt = DTYPES[dtype]
    model = sam_variant(variant, dtype=dt, attention_impl=kernel, **overrides)
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"sam:{variant}:decoder", mode="forward",
                  batch=num_prompts, dtype=dtype, kernel=kernel, image_size=model.image_size, unit="prompts",
                  flops=sam_decoder_flops(model, num_prompts), overrides=jsonable(overrides))

    def build() -> Runner:
        variables = _cast_params(random_variables(lambda r: sam_init(model, r), seed), dt)
        emb = jnp.asarray(embedding(model.prompt_dim, model.embedding_size, seed))
        coords, labels = map(jnp.asarray, prompts(num_prompts, model.image_size, seed))

        def decode(v, emb, coords, labels):
            emb = jnp.broadcast_to(emb, (coords.shape[0],) + emb.shape[1:])
            return model.apply(v, emb, coords, labels, multimask_output=True, method=model.decode)

        return compiled_runner(decode, (variables, emb, coords, labels))

    return Case(record, build, _kernel_skip(kernel, dtype))


def bench_vit(variant: str = "B/16", batch: int = 8, dtype: str = "float32", kernel: str = "einsum",
              mode: str = "forward", *, warmup: int = 2, iters: int = 5, repeats: int = 1, **kwargs) -> dict:
    """Time one vitsam ViT configuration; returns its record (see `run_group`)."""
    return run_group([vit_case(variant, batch, dtype, kernel, mode, **kwargs)],
                     warmup=warmup, iters=iters, repeats=repeats)[0]
