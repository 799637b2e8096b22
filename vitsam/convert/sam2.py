"""Import official SAM 2 / SAM 2.1 checkpoints (sam2.1_hiera_{t,s,b+,l}.pt) into vitsam's SAM 2 modules.

Key maps follow `vitsam.convert.sam`: lists of (flax path, official keys, transform) entries, one function per
module, each taking the module (for its sizes) and the official key prefix.
"""

from __future__ import annotations

import jax.numpy as jnp  # noqa: F401

from vitsam.convert.sam import Entry, _attention, _conv, _conv_entry, _copy, _dense, _linear, _norm  # noqa: F401


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
    from vitsam.convert.sam import mask_decoder_entries

    return mask_decoder_entries(decoder, prefix, root=root, transformer_mlp=("mlp.layers.0", "mlp.layers.1"))


def prompt_encoder_key_map(encoder=None, prefix: str = "sam_prompt_encoder", *, root: tuple[str, ...] = ("params",)
                           ) -> list[Entry]:
    """Every variable of a `vitsam.models.sam.prompt_encoder.PromptEncoder` with its official key: SAM 2's prompt
    encoder has SAM 1's layout (`encoder` is not needed for it). The Gaussian matrix goes to "constants"."""
    from vitsam.convert.sam import prompt_encoder_entries

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
