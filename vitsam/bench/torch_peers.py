"""The PyTorch peers: timm's ViT and segment-anything's SAM on the same problems as vitsam's cases, an official
SAM built from vitsam's model fields (also what the parity tests compare against), segment-anything's
encoder attention computed by SDPA, and segment-anything's automatic mask generator on the same weights as
vitsam's (`SharedSam`). The only module of vitsam's benchmarks that imports torch, and only inside its
functions: importing it needs no torch."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import numpy as np

from vitsam.bench.cases import amg_flops, amg_image, check, embedding, images, prompts, timed_generate
from vitsam.bench.flops import sam_decoder_flops, sam_encoder_flops, train_flops, vit_flops
from vitsam.bench.harness import Case, Runner
from vitsam.models.sam.sam import sam_variant
from vitsam.models.vit import vit_variant


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def require_torch(threads: int | None = None, *, configure: bool = True) -> None:
    """`vitsam bench --torch`: a ValueError naming the extra when the peers cannot run, else PyTorch set to
    `threads` intra-op threads (default: the usable cores, as XLA uses). `configure=False` only checks that
    PyTorch is installed, without importing it (each peer in its own process keeps its own defaults)."""
    import importlib.util

    if not (torch_available() if configure else importlib.util.find_spec("torch") is not None):
        raise ValueError("--torch needs PyTorch and the peers: pip install -e '.[parity]'")
    if not configure:
        return
    import torch

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


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
    check(dtype, "einsum", mode)
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
        x = torch.from_numpy(images(batch, image_size, seed)).permute(0, 3, 1, 2).contiguous().to(device)
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


def official_sam(variant: str = "vit_b", **overrides):
    """segment-anything's `Sam` with its default (random) initialisation, in eval mode, at the size of
    `sam_variant(variant, **overrides)`: the official builder for vit_b / l / h without overrides, else the
    official classes at vitsam's hyper-parameters (e.g. "tiny", or vit_b with a small encoder for tests).

    Only the architecture fields matter (image and patch size, encoder, prompt and decoder sizes); vitsam's
    own fields (dtype, attention_impl, text...) are accepted and ignored.
    """
    from functools import partial

    import segment_anything
    import torch

    if variant in _SAM_BUILDERS and not overrides:
        return getattr(segment_anything, _SAM_BUILDERS[variant])().eval()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling import Sam as TorchSam

    m = sam_variant(variant, **overrides)
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
                                          mlp_dim=m.decoder_mlp_dim, num_heads=m.decoder_heads,
                                          attention_downsample_rate=m.attention_downsample_rate),
            iou_head_depth=m.iou_head_depth, iou_head_hidden_dim=m.iou_head_hidden_dim),
    ).eval()


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
    check(dtype, "einsum", "forward")
    ref = sam_variant(variant)
    size = ref.image_size
    record = dict(framework="torch", impl=_torch_impl("segment-anything", sdpa, compile),
                  model=f"sam:{variant}:encoder", mode="forward", batch=batch, dtype=dtype, kernel=None,
                  image_size=size, unit="images", flops=sam_encoder_flops(ref, batch))

    def build() -> Runner:
        torch, device, tdt = _torch_setup(dtype)
        baseline = _cuda_baseline(torch, device)
        torch.manual_seed(seed)
        encoder = official_sam(variant).image_encoder.to(device=device, dtype=tdt)
        if sdpa:
            use_sdpa_attention(encoder)
        model = torch.compile(encoder) if compile else encoder
        x = torch.from_numpy(images(batch, size, seed)).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=tdt)

        def fn():
            with torch.inference_mode():
                return model(x)

        return _torch_runner(torch, device, fn, baseline)

    return Case(record, build)


def torch_sam_decoder_case(variant: str = "vit_b", num_prompts: int = 16, dtype: str = "float32", *,
                           compile: bool = False, seed: int = 0) -> Case:
    """segment-anything's prompt encoder + mask decoder on the same embedding and prompts (bf16 by autocast:
    its prompt encoder keeps float32 coordinates)."""
    check(dtype, "einsum", "forward")
    ref = sam_variant(variant)
    record = dict(framework="torch", impl=_torch_impl("segment-anything", compile=compile),
                  model=f"sam:{variant}:decoder", mode="forward", batch=num_prompts, dtype=dtype, kernel=None,
                  image_size=ref.image_size, unit="prompts", flops=sam_decoder_flops(ref, num_prompts))

    def build() -> Runner:
        torch, device, tdt = _torch_setup(dtype)
        baseline = _cuda_baseline(torch, device)
        torch.manual_seed(seed)
        sam = official_sam(variant).to(device)
        prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
        decoder = torch.compile(decoder) if compile else decoder
        emb = torch.from_numpy(embedding(ref.prompt_dim, ref.embedding_size, seed)).permute(0, 3, 1, 2)
        emb = emb.contiguous().to(device)
        coords, labels = (torch.from_numpy(a).to(device) for a in prompts(num_prompts, ref.image_size, seed))

        def fn():
            with torch.inference_mode(), torch.autocast(device.type, dtype=tdt, enabled=tdt != torch.float32):
                sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                return decoder(image_embeddings=emb, image_pe=prompt_encoder.get_dense_pe(),
                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                               multimask_output=True)

        return _torch_runner(torch, device, fn, baseline)

    return Case(record, build)


# --- segment-anything's automatic mask generator ----------------------------------------------------------

class SharedSam:
    """One SAM for both sides of the amg group: segment-anything's model with its default random
    initialisation after `torch.manual_seed(seed)` (built on first use), and the same weights converted for
    vitsam (`vitsam.convert.sam_state_dict_to_variables`)."""

    def __init__(self, variant: str = "vit_b", seed: int = 0, **overrides):
        self.variant, self.seed, self.overrides = variant, seed, overrides
        self._torch = None

    def torch_model(self):
        if self._torch is None:
            import torch

            torch.manual_seed(self.seed)
            self._torch = official_sam(self.variant, **self.overrides)
        return self._torch

    def variables(self) -> dict:
        from vitsam.convert import sam_state_dict_to_variables

        state = {k: v.detach().cpu().numpy() for k, v in self.torch_model().state_dict().items()}
        model = sam_variant(self.variant, **{"text": False, **self.overrides})
        return sam_state_dict_to_variables(state, model)[1]


def torch_sam_amg_case(variant: str = "vit_b", *, shared: SharedSam | None = None, seed: int = 0,
                       image: np.ndarray | None = None, generator_options: dict | None = None, **overrides) -> Case:
    """segment-anything's `SamAutomaticMaskGenerator.generate` on the same image as `cases.sam_amg_case`, with
    the model of `shared` (default: a fresh `SharedSam(variant, seed)`), float32. The build's first call is
    `compile_s`; `phases_s` splits a call into "encoder" (`predictor.set_image`: resize, normalisation, image
    encoder) and "rest"; `masks` is how many it returned. segment-anything's NMS and resize are torchvision's
    (the `[parity]` extra installs the build for the pinned PyTorch)."""
    ref = sam_variant(variant, **overrides)
    options = dict(generator_options or {})
    record = dict(framework="torch", impl="segment-anything", model=f"sam:{variant}:amg", mode="generate",
                  batch=1, dtype="float32", kernel=None, image_size=ref.image_size, unit="images",
                  flops=amg_flops(ref, **options), generator_options=options)
    shared = shared or SharedSam(variant, seed, **overrides)

    def build() -> Runner:
        torch, device, _ = _torch_setup("float32")
        import segment_anything

        picture = amg_image(ref.image_size, seed) if image is None else image
        generator = segment_anything.SamAutomaticMaskGenerator(shared.torch_model().to(device), **options)
        fn, phases, finish = timed_generate(
            generator, picture, "set_image", wait=torch.cuda.synchronize if device.type == "cuda" else lambda: None)
        runner = _torch_runner(torch, device, fn)
        runner.phases, runner.finish = phases, finish
        return runner

    return Case(record, build)
