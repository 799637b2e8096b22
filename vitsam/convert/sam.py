"""Import official segment-anything checkpoints (sam_vit_b / sam_vit_l / sam_vit_h .pth) into `vitsam.models.Sam`.

    model, variables = load_sam_checkpoint("sam_vit_b_01ec64.pth")

The variant is inferred from the tensor shapes (width, depth, heads from the relative-position tables,
global blocks from which tables span the whole grid). Every official key must be consumed and every
parameter filled; a missing key or a shape mismatch raises an error naming the key and both shapes.

Layout changes (PyTorch -> Flax): Linear weight (out, in) -> kernel (in, out); Conv2d (out, in, kh, kw) ->
(kh, kw, in, out); ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out) flipped in space (Flax's
ConvTranspose does not flip the kernel, PyTorch's transposed convolution does); the decoder's q/k/v
projections split their output into (heads, head_dim); the four point embeddings (1, D) stack into (4, D).

The transforms are jax.numpy ops, so `jax.eval_shape` of `sam_state_dict_to_variables` checks a whole
mapping on shapes alone (the tests do that for vit_l and vit_h without allocating them).
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.convert.weight_files import read_state_dict
from vitsam.models.sam import SAM_VARIANTS, Sam, sam_init
from vitsam.models.sam.mask_decoder import MaskDecoder
from vitsam.params import flatten_paths

# (flax path in the variables tree, official keys, transform of the official arrays)
Entry = tuple[tuple[str, ...], tuple[str, ...], Callable]


# Each transform maps official arrays to ours; its `inverse` maps ours back (`sam_variables_to_state_dict`).
def _copy(a):
    return jnp.asarray(a)


def _linear(w):
    return jnp.asarray(w).T


def _conv(w):
    return jnp.transpose(jnp.asarray(w), (2, 3, 1, 0))


def _conv_transpose(w):
    return jnp.flip(jnp.transpose(jnp.asarray(w), (2, 3, 0, 1)), axis=(0, 1))


def _row(w):
    return jnp.asarray(w).reshape(-1)


def _stack_rows(*ws):
    return jnp.concatenate([jnp.asarray(w).reshape(1, -1) for w in ws], axis=0)


_copy.inverse = lambda a: a
_linear.inverse = lambda k: k.T
_conv.inverse = lambda k: k.transpose(3, 2, 0, 1)
_conv_transpose.inverse = lambda k: np.flip(k, (0, 1)).transpose(2, 3, 0, 1)
_row.inverse = lambda v: v.reshape(1, -1)
_stack_rows.inverse = lambda m: [row[None] for row in m]  # one array per official key


def _heads_in(num_heads):
    """Linear (H·Dh, D) -> DenseGeneral kernel (D, H, Dh); bias (H·Dh,) -> (H, Dh)."""
    def kernel(w):
        w = jnp.asarray(w)
        return w.T.reshape(w.shape[1], num_heads, w.shape[0] // num_heads)

    def bias(b):
        return jnp.asarray(b).reshape(num_heads, -1)

    kernel.inverse = lambda k: k.reshape(k.shape[0], -1).T
    bias.inverse = lambda b: b.reshape(-1)
    return kernel, bias


def _heads_out(num_heads):
    """Linear (D, H·Dh) -> DenseGeneral kernel (H, Dh, D)."""
    def kernel(w):
        w = jnp.asarray(w)
        return w.T.reshape(num_heads, w.shape[1] // num_heads, w.shape[0])

    kernel.inverse = lambda k: k.reshape(-1, k.shape[-1]).T
    return kernel


def _dense(path, key) -> list[Entry]:
    return [(path + ("kernel",), (key + ".weight",), _linear), (path + ("bias",), (key + ".bias",), _copy)]


def _norm(path, key) -> list[Entry]:
    return [(path + ("scale",), (key + ".weight",), _copy), (path + ("bias",), (key + ".bias",), _copy)]


def _conv_entry(path, key, bias=True, fn=_conv) -> list[Entry]:
    out = [(path + ("kernel",), (key + ".weight",), fn)]
    return out + ([(path + ("bias",), (key + ".bias",), _copy)] if bias else [])


def _attention(path, key, num_heads) -> list[Entry]:
    kin, bin_ = _heads_in(num_heads)
    out = []
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out += [(path + (ours, "kernel"), (f"{key}.{theirs}.weight",), kin),
                (path + (ours, "bias"), (f"{key}.{theirs}.bias",), bin_)]
    out += [(path + ("out", "kernel"), (f"{key}.out_proj.weight",), _heads_out(num_heads)),
            (path + ("out", "bias"), (f"{key}.out_proj.bias",), _copy)]
    return out


def _mlp_layers(path, key, num_layers) -> list[Entry]:
    return [e for i in range(num_layers) for e in _dense(path + (f"layers_{i}",), f"{key}.layers.{i}")]


def sam_key_map(model: Sam) -> list[Entry]:
    """Every parameter of `model` (text encoder excluded) and the constant, with its official key(s)."""
    P = ("params",)
    out: list[Entry] = []
    enc, ie = P + ("image_encoder",), "image_encoder"
    out += _conv_entry(enc + ("patch_embed",), f"{ie}.patch_embed.proj")
    out.append((enc + ("pos_embed",), (f"{ie}.pos_embed",), _copy))
    for i in range(model.encoder_depth):
        b, k = enc + (f"blocks_{i}",), f"{ie}.blocks.{i}"
        out += _norm(b + ("norm1",), f"{k}.norm1") + _norm(b + ("norm2",), f"{k}.norm2")
        out += _dense(b + ("attn", "qkv"), f"{k}.attn.qkv") + _dense(b + ("attn", "proj"), f"{k}.attn.proj")
        out += [(b + ("attn", "rel_pos_h"), (f"{k}.attn.rel_pos_h",), _copy),
                (b + ("attn", "rel_pos_w"), (f"{k}.attn.rel_pos_w",), _copy)]
        out += _dense(b + ("mlp", "Dense_0"), f"{k}.mlp.lin1") + _dense(b + ("mlp", "Dense_1"), f"{k}.mlp.lin2")
    out += _conv_entry(enc + ("neck_conv1",), f"{ie}.neck.0", bias=False) + _norm(enc + ("neck_norm1",), f"{ie}.neck.1")
    out += _conv_entry(enc + ("neck_conv2",), f"{ie}.neck.2", bias=False) + _norm(enc + ("neck_norm2",), f"{ie}.neck.3")

    out += prompt_encoder_entries("prompt_encoder", root=P + ("prompt_encoder",))
    decoder = MaskDecoder(model.prompt_dim, model.num_multimask_outputs, model.decoder_depth, model.decoder_heads,
                          model.decoder_mlp_dim, model.attention_downsample_rate, model.iou_head_depth,
                          model.iou_head_hidden_dim)
    out += mask_decoder_entries(decoder, "mask_decoder", root=P + ("mask_decoder",))
    return out


def prompt_encoder_entries(prefix: str = "prompt_encoder", *, root: tuple[str, ...] = ("params",)) -> list[Entry]:
    """A `PromptEncoder`'s variables and their official keys under `prefix` (SAM 1's `prompt_encoder`, SAM 2's
    `sam_prompt_encoder`: the same layout). Flax paths of its parameters start with `root` (("params",) for the
    module on its own, ("params", "prompt_encoder") inside a model); the Gaussian constant goes to the same place
    under "constants"."""
    pe, pk = tuple(root), prefix
    out: list[Entry] = [(("constants",) + pe[1:] + ("pe_gaussian",),
                         (f"{pk}.pe_layer.positional_encoding_gaussian_matrix",), _copy)]
    out.append((pe + ("point_embeddings",), tuple(f"{pk}.point_embeddings.{i}.weight" for i in range(4)), _stack_rows))
    out.append((pe + ("not_a_point_embed",), (f"{pk}.not_a_point_embed.weight",), _row))
    out.append((pe + ("no_mask_embed",), (f"{pk}.no_mask_embed.weight",), _row))
    out += _conv_entry(pe + ("mask_conv1",), f"{pk}.mask_downscaling.0") + _norm(pe + ("mask_norm1",), f"{pk}.mask_downscaling.1")
    out += _conv_entry(pe + ("mask_conv2",), f"{pk}.mask_downscaling.3") + _norm(pe + ("mask_norm2",), f"{pk}.mask_downscaling.4")
    out += _conv_entry(pe + ("mask_conv3",), f"{pk}.mask_downscaling.6")
    return out


def mask_decoder_entries(decoder: MaskDecoder, prefix: str = "mask_decoder", *, root: tuple[str, ...] = ("params",),
                         transformer_mlp: tuple[str, str] = ("mlp.lin1", "mlp.lin2")) -> list[Entry]:
    """A `MaskDecoder`'s parameters (flax paths starting with `root`, e.g. ("params", "mask_decoder")) and their
    official keys under `prefix`, including the SAM 2 options the decoder has. The official two-way blocks name
    their MLP layers `transformer_mlp`: SAM 1's `mlp.lin1` / `mlp.lin2`, SAM 2's `mlp.layers.0` / `mlp.layers.1`."""
    md, mk = tuple(root), prefix
    heads = decoder.num_heads
    out: list[Entry] = []
    tr, tk = md + ("transformer",), f"{mk}.transformer"
    for i in range(decoder.depth):
        b, k = tr + (f"layers_{i}",), f"{tk}.layers.{i}"
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            out += _attention(b + (name,), f"{k}.{name}", heads)
        for j in range(1, 5):
            out += _norm(b + (f"norm{j}",), f"{k}.norm{j}")
        out += _dense(b + ("mlp", "Dense_0"), f"{k}.{transformer_mlp[0]}")
        out += _dense(b + ("mlp", "Dense_1"), f"{k}.{transformer_mlp[1]}")
    out += _attention(tr + ("final_attn_token_to_image",), f"{tk}.final_attn_token_to_image", heads)
    out += _norm(tr + ("norm_final_attn",), f"{tk}.norm_final_attn")
    out.append((md + ("iou_token",), (f"{mk}.iou_token.weight",), _copy))
    out.append((md + ("mask_tokens",), (f"{mk}.mask_tokens.weight",), _copy))
    out += _conv_entry(md + ("upscale_conv1",), f"{mk}.output_upscaling.0", fn=_conv_transpose)
    out += _norm(md + ("upscale_norm",), f"{mk}.output_upscaling.1")
    out += _conv_entry(md + ("upscale_conv2",), f"{mk}.output_upscaling.3", fn=_conv_transpose)
    for i in range(decoder.num_multimask_outputs + 1):
        out += _mlp_layers(md + (f"hypernet_mlps_{i}",), f"{mk}.output_hypernetworks_mlps.{i}", 3)
    out += _mlp_layers(md + ("iou_head",), f"{mk}.iou_prediction_head", decoder.iou_head_depth)
    if decoder.pred_obj_scores:
        out.append((md + ("obj_score_token",), (f"{mk}.obj_score_token.weight",), _copy))
        if decoder.pred_obj_scores_mlp:
            out += _mlp_layers(md + ("obj_score_head",), f"{mk}.pred_obj_score_head", 3)
        else:
            out += _dense(md + ("obj_score_head",), f"{mk}.pred_obj_score_head")
    if decoder.use_high_res_features:
        out += _conv_entry(md + ("conv_s0",), f"{mk}.conv_s0") + _conv_entry(md + ("conv_s1",), f"{mk}.conv_s1")
    return out


def _shape(a) -> tuple[int, ...]:
    return tuple(int(d) for d in a.shape)


def infer_sam_config(state_dict: Mapping) -> dict:
    """The `Sam` fields an official state dict implies (works on anything with `.shape`)."""
    def need(key):
        if key not in state_dict:
            raise KeyError(f"not a segment-anything state dict: missing {key!r}")
        return _shape(state_dict[key])

    dim, _, patch, _ = need("image_encoder.patch_embed.proj.weight")
    grid = need("image_encoder.pos_embed")[1]
    depth = 0
    while f"image_encoder.blocks.{depth}.norm1.weight" in state_dict:
        depth += 1
    if depth == 0:
        raise KeyError("not a segment-anything state dict: no image_encoder.blocks.* keys")
    rel = [need(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    head_dim = rel[0][1]
    global_idx = tuple(i for i, (length, _) in enumerate(rel) if length == 2 * grid - 1)
    windows = {(length + 1) // 2 for i, (length, _) in enumerate(rel) if i not in global_idx}
    if len(windows) > 1:
        raise ValueError(f"blocks use different window sizes {sorted(windows)}; not a SAM image encoder")
    prompt_dim = need("prompt_encoder.no_mask_embed.weight")[1]
    num_masks = need("mask_decoder.mask_tokens.weight")[0]
    decoder_depth = 0
    while f"mask_decoder.transformer.layers.{decoder_depth}.norm1.weight" in state_dict:
        decoder_depth += 1
    cross = need("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")[0]
    iou_depth = 0
    while f"mask_decoder.iou_prediction_head.layers.{iou_depth}.weight" in state_dict:
        iou_depth += 1
    cfg = dict(
        image_size=grid * patch, patch_size=patch, encoder_dim=dim, encoder_depth=depth,
        encoder_heads=dim // head_dim, encoder_mlp_ratio=need("image_encoder.blocks.0.mlp.lin1.weight")[0] / dim,
        global_attn_indexes=global_idx, window_size=windows.pop() if windows else 14,
        prompt_dim=prompt_dim, mask_in_chans=need("prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=decoder_depth,
        decoder_mlp_dim=need("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        attention_downsample_rate=prompt_dim // cross, num_multimask_outputs=num_masks - 1,
        iou_head_depth=iou_depth, iou_head_hidden_dim=need("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )
    if cfg["encoder_mlp_ratio"] == int(cfg["encoder_mlp_ratio"]):
        cfg["encoder_mlp_ratio"] = float(int(cfg["encoder_mlp_ratio"]))
    return cfg


def _variant_name(cfg: dict) -> str | None:
    """The SAM_VARIANTS name whose fields (and the Sam defaults) match `cfg`, if any."""
    defaults = {k: f.default for k, f in Sam.__dataclass_fields__.items() if k in cfg}
    for name, fields in SAM_VARIANTS.items():
        expected = dict(defaults, **{k: v for k, v in fields.items() if k in cfg})
        expected["global_attn_indexes"] = tuple(expected["global_attn_indexes"])
        if expected == cfg:
            return name
    return None


def model_from_state_dict(state_dict: Mapping, **overrides) -> Sam:
    """The `Sam` module matching an official state dict (named variants keep their names' exact fields)."""
    cfg = infer_sam_config(state_dict)
    name = _variant_name(cfg)
    if name is not None:
        from vitsam.models.sam import sam_variant
        return sam_variant(name, **overrides)
    return Sam(**dict(cfg, **overrides))


def _set(tree: dict, path: tuple[str, ...], value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def variables_from_entries(state_dict: Mapping, entries: list[Entry], expected, *, strict: bool = True,
                           ours_only: Callable[[tuple[str, ...]], bool] = lambda path: False) -> dict:
    """Fill a variables tree shaped like `expected` (from `jax.eval_shape`) from official arrays by key-map
    entries. Missing keys and shape mismatches always raise; official keys left unused raise when `strict`, else
    warn; every variable must be filled except those `ours_only(path)` marks (parts official models lack)."""
    variables: dict = {}
    used: set[str] = set()
    for path, keys, fn in entries:
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise KeyError(f"checkpoint is missing {missing[0]!r} (needed for {'/'.join(path)})")
        value = fn(*(state_dict[k] for k in keys))
        want = expected
        try:
            for p in path:
                want = want[p]
        except KeyError:
            raise KeyError(f"the model has no variable {'/'.join(path)} for checkpoint key {keys[0]!r}") from None
        if _shape(value) != _shape(want):
            theirs = ", ".join(f"{k} {_shape(state_dict[k])}" for k in keys)
            raise ValueError(f"shape mismatch for checkpoint key {theirs}: converts to {_shape(value)}, "
                             f"but the model's {'/'.join(path)} is {_shape(want)}")
        _set(variables, path, value.astype(want.dtype))
        used.update(keys)

    unexpected = sorted(k for k in state_dict if k not in used)
    if unexpected:
        msg = f"{len(unexpected)} checkpoint key(s) not used by the model: {unexpected}"
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)

    filled = {path for path, _, _ in entries}
    unfilled = [p for p in flatten_paths(expected) if p not in filled and not ours_only(p)]
    if unfilled:
        raise KeyError(f"no checkpoint key fills {len(unfilled)} model variable(s), e.g. {'/'.join(unfilled[0])}")
    return variables


def state_dict_from_entries(variables: Mapping, entries: list[Entry]) -> dict[str, np.ndarray]:
    """The inverse of `variables_from_entries`: official key -> float32 array."""
    state = {}
    for path, keys, fn in entries:
        value = variables
        for p in path:
            value = value[p]
        arrays = fn.inverse(np.asarray(value, np.float32))
        for key, array in zip(keys, arrays if len(keys) > 1 else [arrays]):
            state[key] = np.array(array, np.float32, order="C")  # a contiguous, writable copy (torch.from_numpy)
    return state


def sam_state_dict_to_variables(state_dict: Mapping, model: Sam | None = None, *, strict: bool = True):
    """Official state dict (name -> array, numpy or torch-free) -> (model, variables).

    `model` defaults to the one inferred from the shapes. Missing keys and shape mismatches always raise;
    official keys left unused raise when `strict`, else warn. With `model.text`, the text encoder (not in
    official checkpoints) is initialized fresh (seed 0) and reported in a warning.
    """
    model = model_from_state_dict(state_dict) if model is None else model
    expected = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    variables = variables_from_entries(state_dict, sam_key_map(model), expected, strict=strict,
                                       ours_only=lambda p: len(p) > 1 and p[1] == "text_encoder")
    if model.text:
        warnings.warn("official SAM checkpoints have no text encoder: it is initialized fresh (seed 0)", stacklevel=2)
        text = jax.jit(lambda r: sam_init(model, r)["params"]["text_encoder"])(jax.random.PRNGKey(0))
        variables["params"]["text_encoder"] = text
    return model, variables


def sam_variables_to_state_dict(variables: Mapping, model: Sam) -> dict[str, np.ndarray]:
    """vitsam variables of `model` -> an official segment-anything state dict (official key -> float32 array),
    the inverse of `sam_state_dict_to_variables`, for the official `Sam.load_state_dict`. Our text encoder, which
    the official SAM lacks, is left out."""
    return state_dict_from_entries(variables, sam_key_map(model))


def load_sam_checkpoint(path, *, strict: bool = True, **overrides):
    """An official segment-anything .pth -> (model, variables). Needs PyTorch (the [torch] extra).

    Loads with `weights_only=True`, so nothing beyond tensors is unpickled. `overrides` replace fields of
    the inferred model (e.g. `attention_impl="cudnn"`, `dtype=jnp.bfloat16`, `text=True`).
    """
    state = read_state_dict(path)
    arrays = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}
    model = model_from_state_dict(arrays, **overrides)
    return sam_state_dict_to_variables(arrays, model, strict=strict)


__all__ = ["infer_sam_config", "load_sam_checkpoint", "model_from_state_dict", "sam_key_map",
           "sam_state_dict_to_variables", "sam_variables_to_state_dict"]
