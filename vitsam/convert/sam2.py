"""Import official SAM 2 / SAM 2.1 checkpoints (sam2.1_hiera_{t,s,b+,l}.pt, sam2_hiera_*.pt) into `Sam2`.

    model, variables = load_sam2_checkpoint("sam2.1_hiera_tiny.pt")

The variant is recognised from the tensor shapes (the trunk's width and stage depths; heads, windows and
global blocks are not in the shapes, so they come from the named variant that matches), SAM 2.0 from the
absence of the 2.1-only tensors. Every official key must be consumed and every parameter filled.

Key maps follow `vitsam.convert.sam`: lists of (flax path, official keys, transform) entries, one function per
module, each taking the module (for its sizes), the official key prefix and the flax path root.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.convert.sam import (Entry, _attention, _conv_entry, _copy, _dense, _mlp_layers, _norm,
                                mask_decoder_entries, prompt_encoder_entries, state_dict_from_entries,
                                variables_from_entries)
from vitsam.convert.weight_files import read_state_dict


def memory_encoder_key_map(encoder, prefix: str = "memory_encoder", *, root: tuple[str, ...] = ("params",)
                           ) -> list[Entry]:
    """Every parameter of a `vitsam.models.sam2.memory_encoder.MemoryEncoder` with its official key.

    Flax paths start with `root` (("params",) for the module on its own; ("params", "memory_encoder") inside
    a model). Depthwise conv weights (C, 1, k, k) become (k, k, 1, C), which `_conv` already does.
    """
    from vitsam.models.sam2.memory_encoder import downsample_stages

    out: list[Entry] = []
    md, mk = root + ("mask_downsampler",), f"{prefix}.mask_downsampler.encoder"
    stages = downsample_stages(encoder.mask_stride, encoder.mask_total_stride)
    for i in range(stages):  # official Sequential: conv, LayerNorm2d, GELU per stage, then the 1x1 conv
        out += _conv_entry(md + (f"conv_{i}",), f"{mk}.{3 * i}") + _norm(md + (f"norm_{i}",), f"{mk}.{3 * i + 1}")
    out += _conv_entry(md + ("proj",), f"{mk}.{3 * stages}")
    out += _conv_entry(root + ("pix_feat_proj",), f"{prefix}.pix_feat_proj")
    if encoder.fuser_input_projection:
        out += _conv_entry(root + ("fuser", "proj"), f"{prefix}.fuser.proj")
    for i in range(encoder.num_fuser_layers):
        b, k = root + ("fuser", f"layers_{i}"), f"{prefix}.fuser.layers.{i}"
        out += _conv_entry(b + ("dwconv",), f"{k}.dwconv") + _norm(b + ("norm",), f"{k}.norm")
        out += _dense(b + ("pwconv1",), f"{k}.pwconv1") + _dense(b + ("pwconv2",), f"{k}.pwconv2")
        if encoder.layer_scale_init_value > 0:
            out.append((b + ("gamma",), (f"{k}.gamma",), _copy))
    if encoder.out_dim != encoder.in_dim:
        out += _conv_entry(root + ("out_proj",), f"{prefix}.out_proj")
    return out


def neck_key_map(neck, prefix: str = "image_encoder.neck", *, root: tuple[str, ...] = ("params",)) -> list[Entry]:
    """Every parameter of a `vitsam.models.sam2.neck.FpnNeck` with its official key: the lateral 1×1 convs
    `convs_{j}` <- `{prefix}.convs.{j}.conv` (both indexed lowest resolution first). Flax paths start with `root`."""
    out: list[Entry] = []
    for j in range(len(neck.backbone_channel_list)):
        out += _conv_entry(root + (f"convs_{j}",), f"{prefix}.convs.{j}.conv")
    return out


def mask_decoder_key_map(decoder, prefix: str = "sam_mask_decoder", *, root: tuple[str, ...] = ("params",)
                         ) -> list[Entry]:
    """Every parameter of a `vitsam.models.sam.mask_decoder.MaskDecoder` with SAM 2 options, with its official key.

    SAM 1's layout (`vitsam.convert.sam.mask_decoder_entries`) except that SAM 2's two-way blocks name their MLP
    `mlp.layers.0` / `mlp.layers.1`; plus `obj_score_token`, `pred_obj_score_head` (Linear or 3-layer MLP) and
    `conv_s0` / `conv_s1` where the decoder has them. Flax paths start with `root`.
    """
    return mask_decoder_entries(decoder, prefix, root=root, transformer_mlp=("mlp.layers.0", "mlp.layers.1"))


def prompt_encoder_key_map(encoder=None, prefix: str = "sam_prompt_encoder", *, root: tuple[str, ...] = ("params",)
                           ) -> list[Entry]:
    """Every variable of a `vitsam.models.sam.prompt_encoder.PromptEncoder` with its official key: SAM 2's prompt
    encoder has SAM 1's layout (`encoder` is not needed for it). The Gaussian matrix goes to "constants"."""
    return prompt_encoder_entries(prefix, root=root)


def memory_attention_key_map(module, prefix: str = "memory_attention", *, root: tuple[str, ...] = ("params",)
                             ) -> list[Entry]:
    """Every parameter of a `vitsam.models.sam2.memory_attention.MemoryAttention` with its official key.

    Flax paths start with `root`, as in `memory_encoder_key_map`. The official RoPE tables are recomputed, not
    stored, so the state dict holds only the projections, the MLPs and the LayerNorms.
    """
    out: list[Entry] = []
    for i in range(module.num_layers):
        b, k = root + (f"layers_{i}",), f"{prefix}.layers.{i}"
        out += _attention(b + ("self_attn",), f"{k}.self_attn", module.num_heads)
        out += _attention(b + ("cross_attn_image",), f"{k}.cross_attn_image", module.num_heads)
        out += _dense(b + ("mlp", "Dense_0"), f"{k}.linear1") + _dense(b + ("mlp", "Dense_1"), f"{k}.linear2")
        for j in (1, 2, 3):
            out += _norm(b + (f"norm{j}",), f"{k}.norm{j}")
    return out + _norm(root + ("norm",), f"{prefix}.norm")


def _nchw_to_nhwc(a):
    return jnp.transpose(jnp.asarray(a), (0, 2, 3, 1))


_nchw_to_nhwc.inverse = lambda a: a.transpose(0, 3, 1, 2)


def hiera_key_map(trunk, prefix: str = "image_encoder.trunk", *, root: tuple[str, ...] = ("params",)
                  ) -> list[Entry]:
    """Every parameter of a `vitsam.models.sam2.hiera.Hiera` with its official key (under `prefix`).

    Flax paths start with `root` (("params",) for the trunk on its own; ("params", "trunk") inside a model).
    The position tables (1, C, h, w) become (1, h, w, C); the fused qkv Linear stays one Dense.
    """
    out: list[Entry] = []
    out += _conv_entry(root + ("patch_embed",), f"{prefix}.patch_embed.proj")
    out.append((root + ("pos_embed",), (f"{prefix}.pos_embed",), _nchw_to_nhwc))
    out.append((root + ("pos_embed_window",), (f"{prefix}.pos_embed_window",), _nchw_to_nhwc))
    for i, spec in enumerate(trunk.block_specs()):
        b, k = root + (f"blocks_{i}",), f"{prefix}.blocks.{i}"
        out += _norm(b + ("norm1",), f"{k}.norm1") + _norm(b + ("norm2",), f"{k}.norm2")
        out += _dense(b + ("attn", "qkv"), f"{k}.attn.qkv") + _dense(b + ("attn", "proj"), f"{k}.attn.proj")
        out += _dense(b + ("mlp", "Dense_0"), f"{k}.mlp.layers.0") + _dense(b + ("mlp", "Dense_1"), f"{k}.mlp.layers.1")
        if spec.dim != spec.dim_out:
            out += _dense(b + ("proj",), f"{k}.proj")
    return out


def _reshaped(official_shape: tuple[int, ...], ours_shape: tuple[int, ...]):
    """An official tensor of `official_shape` as ours of `ours_shape` (the same values; singleton axes dropped)."""
    def fn(a):
        return jnp.asarray(a).reshape(ours_shape)

    fn.inverse = lambda a: a.reshape(official_shape)
    return fn


def sam2_key_map(model) -> list[Entry]:
    """Every variable of a `vitsam.models.sam2.Sam2` with its official key."""
    parts, p = model.parts(), ("params",)
    d, mem = model.d_model, model.mem_dim
    out = hiera_key_map(parts["trunk"], root=p + ("trunk",))
    out += neck_key_map(parts["neck"], root=p + ("neck",))
    out += prompt_encoder_key_map(root=p + ("prompt_encoder",))
    out += mask_decoder_key_map(parts["mask_decoder"], root=p + ("mask_decoder",))
    out += memory_attention_key_map(parts["memory_attention"], root=p + ("memory_attention",))
    out += memory_encoder_key_map(parts["memory_encoder"], root=p + ("memory_encoder",))
    out += [
        (p + ("maskmem_tpos_enc",), ("maskmem_tpos_enc",),
         _reshaped((model.num_maskmem, 1, 1, mem), (model.num_maskmem, mem))),
        (p + ("no_mem_embed",), ("no_mem_embed",), _reshaped((1, 1, d), (d,))),
        (p + ("no_mem_pos_enc",), ("no_mem_pos_enc",), _reshaped((1, 1, d), (d,))),
        (p + ("no_obj_ptr",), ("no_obj_ptr",), _reshaped((1, d), (d,))),
    ]
    out += _conv_entry(p + ("mask_downsample",), "mask_downsample")
    out += _mlp_layers(p + ("obj_ptr_proj",), "obj_ptr_proj", 3)
    if model.sam2_1:
        out += _dense(p + ("obj_ptr_tpos_proj",), "obj_ptr_tpos_proj")
        out.append((p + ("no_obj_embed_spatial",), ("no_obj_embed_spatial",), _reshaped((1, mem), (mem,))))
    return out


def _shape(state_dict: Mapping, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"not a SAM 2 checkpoint: no {key!r}")
    return tuple(np.shape(state_dict[key]))


def infer_sam2_variant(state_dict: Mapping) -> tuple[str, dict]:
    """Official state dict -> (variant name, field overrides): the trunk's width and stage depths pick the
    variant; SAM 2.0 lacks `no_obj_embed_spatial` and `obj_ptr_tpos_proj`."""
    from vitsam.models.sam2.sam2 import SAM2_VARIANTS

    width = _shape(state_dict, "image_encoder.trunk.patch_embed.proj.weight")[0]
    blocks = sorted({int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks.")})
    starts = [i for i in blocks if f"image_encoder.trunk.blocks.{i}.proj.weight" in state_dict]
    bounds = [0, *starts, len(blocks)]
    stages = tuple(b - a for a, b in zip(bounds, bounds[1:]))
    for name, fields in SAM2_VARIANTS.items():
        if fields.get("embed_dim") == width and tuple(fields.get("stages", ())) == stages:
            return name, dict(sam2_1="no_obj_embed_spatial" in state_dict)
    known = ", ".join(f"{n} ({f['embed_dim']}, {tuple(f['stages'])})" for n, f in SAM2_VARIANTS.items() if n != "tiny")
    raise ValueError(f"unknown SAM 2 trunk: width {width}, stage depths {stages}; known (width, depths): {known}")


def sam2_state_dict_to_variables(state_dict: Mapping, model=None, *, strict: bool = True):
    """Official SAM 2 state dict (name -> array) -> (model, variables); `model` defaults to the inferred one."""
    from vitsam.models.sam2.sam2 import sam2_init, sam2_variant

    if model is None:
        name, overrides = infer_sam2_variant(state_dict)
        model = sam2_variant(name, **overrides)
    expected = jax.eval_shape(lambda r: sam2_init(model, r), jax.random.PRNGKey(0))
    return model, variables_from_entries(state_dict, sam2_key_map(model), expected, strict=strict)


def sam2_variables_to_state_dict(variables: Mapping, model) -> dict[str, np.ndarray]:
    """The inverse: vitsam variables of `model` -> an official SAM 2 state dict (key -> float32 array), for the
    official `SAM2Base.load_state_dict`."""
    return state_dict_from_entries(variables, sam2_key_map(model))


def load_sam2_checkpoint(path, *, strict: bool = True, **overrides):
    """An official SAM 2 / 2.1 .pt -> (model, variables). Needs PyTorch (the [torch] extra); loads tensors only
    (`weights_only=True`). `overrides` replace fields of the inferred model (e.g. `dtype=jnp.bfloat16`)."""
    from vitsam.models.sam2.sam2 import sam2_variant

    state = read_state_dict(path)
    arrays = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}
    name, inferred = infer_sam2_variant(arrays)
    model = sam2_variant(name, **dict(inferred, **overrides))
    return sam2_state_dict_to_variables(arrays, model, strict=strict)


__all__ = ["hiera_key_map", "infer_sam2_variant", "load_sam2_checkpoint", "mask_decoder_key_map",
           "memory_attention_key_map", "memory_encoder_key_map", "neck_key_map", "prompt_encoder_key_map",
           "sam2_key_map", "sam2_state_dict_to_variables", "sam2_variables_to_state_dict"]
