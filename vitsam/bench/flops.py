"""Model FLOPs: the analytic formulas (2 × the multiply-accumulates of the matmuls and convolutions a model
defines), the same count taken from any program's jaxpr, and XLA's own cost and memory analysis of a
compiled program. The formulas and their figures are in docs/design.md, "Performance: how we measure"."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import jax

if TYPE_CHECKING:
    from vitsam.models.sam.sam import Sam
    from vitsam.models.vit import VisionTransformer


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
    (no box, no mask input, as `sam_decoder_case` runs it), all on one image embedding.

    Counts the two-way transformer, the upscaling transposed convs, the hypernetwork MLPs, the IoU head,
    the products of the multimask outputs (the masks returned; the single-mask output is not built) and the
    Fourier features of the points and of the dense positional encoding.
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
    per_prompt += model.num_multimask_outputs * 16 * hw * (d // 8)              # masks = hyper · upscaled
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
