"""vitsam's benchmark cases: the ViT (forward or a train step), SAM's image encoder, SAM's prompt encoder +
mask decoder and the automatic mask generator ("amg": `generate` end to end), each a `Case` on random weights
and the same inputs the PyTorch peers get."""

from __future__ import annotations

import math
import time
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


AMG_MAX_DISTRACTORS = 8


def amg_image(size: int, seed: int = 0) -> np.ndarray:
    """The amg case's picture: (size, size, 3) uint8 RGB from the shapes generator (a background of plain
    colour, gradient or noise, one large shape and up to 8 smaller ones), the same on every machine."""
    from vitsam.data.shapes import render_example

    return render_example(seed, image_size=size, seed=seed, max_distractors=AMG_MAX_DISTRACTORS).image


def amg_flops(model, points_per_side: int = 32, crop_n_layers: int = 0, crop_n_points_downscale_factor: int = 1,
              **_) -> int:
    """Model FLOPs of one `generate`: per crop (4^i crops at layer i) the encoder once and the decoder for
    its points, (points_per_side / factor^i)² single-point prompts. Not counted: the post-processing (the
    upscaling of every candidate's logits to the image, scores, boxes, NMS), which is not the model's."""
    total = 0
    for layer in range(crop_n_layers + 1):
        points = int(points_per_side / crop_n_points_downscale_factor ** layer) ** 2
        total += 4 ** layer * (sam_encoder_flops(model, 1) + sam_decoder_flops(model, points))
    return total


def timed_generate(generator, picture, encoder_method: str, wait: Callable[[], Any]):
    """Instrument a mask generator (vitsam's or segment-anything's) for the amg cases -> (step, phases, finish).

    `step()` runs `generator.generate(picture)`; the predictor's `encoder_method` (the image encoder call) is
    wrapped to time itself up to `wait()`, so each step appends its "encoder" seconds and the "rest";
    `finish()` gives the number of masks the last step returned."""
    phases: dict[str, list[float]] = {"encoder": [], "rest": []}
    encode = getattr(generator.predictor, encoder_method)

    def timed_encode(*args, **kwargs):
        t0 = time.perf_counter()
        encode(*args, **kwargs)
        wait()
        phases["encoder"].append(time.perf_counter() - t0)

    setattr(generator.predictor, encoder_method, timed_encode)
    found = []

    def step():
        t0 = time.perf_counter()
        found[:] = [len(generator.generate(picture))]
        phases["rest"].append(time.perf_counter() - t0 - phases["encoder"][-1])

    return step, phases, lambda: {"masks": found[0]}


def sam_amg_case(variant: str = "vit_b", dtype: str = "float32", kernel: str = "einsum", *,
                 variables: Callable[[], dict] | None = None, seed: int = 0, image: np.ndarray | None = None,
                 generator_options: dict | None = None, **overrides) -> Case:
    """vitsam's `SamAutomaticMaskGenerator.generate` end to end on one image (`amg_image` at the model's
    size unless `image` (H, W, 3) uint8 is given), the image encoder included, as a user calls it.

    `variables()` gives the weights (the amg group passes the PyTorch peer's, converted); default: random
    (`random_variables`). `generator_options`: the generator's arguments (default: the official defaults).
    The build runs `generate` once (compiling every jitted function it uses; that call is `compile_s`).
    `phases_s` splits a call into "encoder" (`set_images`: pre-processing + image encoder, waited for) and
    "rest" (decoding the point batches, filters, NMS, the masks to the host); `masks` is how many it returned.
    Float32 only (the peer is segment-anything's float32 generator).
    """
    check(dtype, kernel, "forward")
    if dtype != "float32":
        raise ValueError(f"the amg case runs in float32 only, got {dtype!r}")
    model = sam_variant(variant, attention_impl=kernel, **{"text": False, **overrides})
    options = dict(generator_options or {})
    record = dict(framework="vitsam", impl=f"vitsam/{kernel}", model=f"sam:{variant}:amg", mode="generate",
                  batch=1, dtype=dtype, kernel=kernel, image_size=model.image_size, unit="images",
                  flops=amg_flops(model, **options), overrides=jsonable(overrides),
                  generator_options=jsonable(options))

    def build() -> Runner:
        from vitsam.mask_generator import SamAutomaticMaskGenerator

        weights = variables() if variables is not None else random_variables(lambda r: sam_init(model, r), seed)
        picture = amg_image(model.image_size, seed) if image is None else image
        generator = SamAutomaticMaskGenerator(model, weights, **options)
        predictor = generator.predictor
        step, phases, finish = timed_generate(
            generator, picture, "set_images",
            wait=lambda: jax.block_until_ready([predictor.get_image_embedding(i) for i in range(predictor.num_images)]))
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
        return Runner(step, dict(compile_s=compile_s), finish=finish, phases=phases)

    return Case(record, build, _kernel_skip(kernel, dtype))


def bench_vit(variant: str = "B/16", batch: int = 8, dtype: str = "float32", kernel: str = "einsum",
              mode: str = "forward", *, warmup: int = 2, iters: int = 5, repeats: int = 1, **kwargs) -> dict:
    """Time one vitsam ViT configuration; returns its record (see `run_group`)."""
    return run_group([vit_case(variant, batch, dtype, kernel, mode, **kwargs)],
                     warmup=warmup, iters=iters, repeats=repeats)[0]
