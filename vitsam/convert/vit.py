"""Import published ViT checkpoints into `VisionTransformer`: vit_jax / big_vision .npz, timm .pth / .safetensors.

`load_vit_checkpoint(path)` reads the file without unpickling anything but arrays, infers the variant from the
shapes and returns `(model, variables)`. The pure function `vit_params_from_state_dict(flat_dict)` does the
conversion on a dict of numpy arrays (no files), so it can be tested and reused.

Layouts (D width, H heads, Dh = D/H, M mlp dim, P patch, N = grid², K classes):

- vit_jax (google-research/vision_transformer): `embedding/kernel` (P,P,C,D), `cls` (1,1,D),
  `Transformer/posembed_input/pos_embedding` (1,N+1,D), blocks `Transformer/encoderblock_{i}/` with
  `LayerNorm_0`, `MultiHeadDotProductAttention_1/{query,key,value,out}`, `LayerNorm_2`, `MlpBlock_3/Dense_{0,1}`,
  `Transformer/encoder_norm`, optional `pre_logits`, `head`. Trained with Flax's tanh-approximate GELU.
- big_vision: the same tensors, optionally under a `params/` prefix, blocks named `MultiHeadDotProductAttention_0`,
  `LayerNorm_1`, `MlpBlock_0`, or stacked on a leading depth axis under `Transformer/encoderblock/` (scanned);
  the position table `pos_embedding` (1,N,D) sits at the top and has no class position (big_vision adds it
  before prepending the class token), which we express as a zero class position. No `cls` means pool "gap";
  "map" heads are not supported. tanh GELU as well.
- timm: `patch_embed.proj.weight` (D,C,P,P), `cls_token`, `pos_embed` (1,N+1,D) (or (1,N,D) for
  `no_embed_class` models), `blocks.{i}.norm1`, `attn.qkv` fused (3D,D), `attn.proj`, `norm2`, `mlp.fc1`,
  `mlp.fc2`, final `norm`, `head`. Exact GELU. The head count is not in the tensors (qkv is fused): it comes
  from the standard width -> heads table (`HEADS_BY_WIDTH`) unless `num_heads=` is given.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.convert.vit_adapt import adapt_params, check_against_model, grid_side
from vitsam.convert.weight_files import read_state_dict
from vitsam.models.vit import VisionTransformer

SOURCES = ("auto", "vit_jax", "big_vision", "timm")
ACTIVATION = {"flax": "gelu_tanh", "timm": "gelu"}
# Standard ViT widths -> heads (Ti, S, M, B, L, So400m, H, g, G, e), as in big_vision's variant table.
HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1664: 16, 1792: 16}
FLAX_POSEMB_KEYS = ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding", "pos_embedding")


class MissingKeyError(KeyError):
    """A tensor the model needs is not in the checkpoint (the message names the key)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class _Reader:
    """Hands out checkpoint tensors by key as float32, checks their shapes, remembers which keys were used."""

    def __init__(self, state: dict, prefix: str = ""):
        self.state, self.prefix, self.used = state, prefix, set()

    def has(self, key: str) -> bool:
        return self.prefix + key in self.state

    def shape(self, key: str) -> tuple:
        self._require(key, None)
        return tuple(np.shape(self.state[self.prefix + key]))

    def take(self, key: str, shape: tuple | None = None) -> np.ndarray:
        self._require(key, shape)
        full = self.prefix + key
        array = _to_float32(self.state[full], full)
        if shape is not None and array.shape != tuple(shape):
            raise ValueError(f"shape mismatch for checkpoint key {full!r}: the checkpoint has {array.shape}, "
                             f"the model expects {tuple(shape)}")
        self.used.add(full)
        return array

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.used)

    def _require(self, key, shape):
        if self.prefix + key not in self.state:
            expected = f" (expected shape {tuple(shape)})" if shape is not None else ""
            raise MissingKeyError(f"checkpoint is missing the key {self.prefix + key!r}{expected}")


def _to_float32(array, key: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:  # bfloat16 saved by numpy as raw 2-byte records
        import ml_dtypes
        array = array.view(ml_dtypes.bfloat16)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise ValueError(f"checkpoint key {key!r} holds {array.dtype} values, expected floating point")
    return array.astype(np.float32)


def _position_table(pos: np.ndarray, key: str, width: int, has_cls: bool) -> tuple[np.ndarray, int]:
    """A checkpoint's position table -> (our table (1, N(+1), D), grid side). A table without a class
    position for a model with a class token gets a zero one (the same function: no position added to it)."""
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        raise ValueError(f"position table {key!r} has shape {pos.shape}, expected (1, tokens, {width})")
    n = pos.shape[1]
    if has_cls and grid_side(n - 1):
        return pos, grid_side(n - 1)
    if grid_side(n):
        if has_cls:
            pos = np.concatenate([np.zeros((1, 1, width), pos.dtype), pos], axis=1)
        return pos, grid_side(n)
    raise ValueError(f"position table {key!r} has {n} positions: not a square grid"
                     f"{' (with or without a class position)' if has_cls else ''}")


def _heads_for(width: int, num_heads: int | None) -> int:
    if num_heads is not None:
        return int(num_heads)
    if width not in HEADS_BY_WIDTH:
        raise ValueError(f"cannot infer the number of heads for width {width} (not a standard ViT width: "
                         f"{sorted(HEADS_BY_WIDTH)}); pass num_heads=")
    return HEADS_BY_WIDTH[width]


def _nest(flat: dict) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _assemble(top: dict, blocks: list[dict], scan: bool) -> dict:
    """Our parameter tree from flat top-level tensors and one flat dict per encoder block."""
    flat = dict(top)
    if scan:
        for name in blocks[0]:
            flat[f"Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
    else:
        for i, block in enumerate(blocks):
            flat.update({f"Transformer/encoderblock_{i}/{name}": v for name, v in block.items()})
    return _nest(flat)


# --- vit_jax / big_vision (.npz) -----------------------------------------------------------------------

def _flax_params(state: dict, num_heads: int | None) -> tuple[dict, dict, list[dict], _Reader]:
    prefixes = sorted({p for k in state if k.endswith("embedding/kernel")
                       and ((p := k[: -len("embedding/kernel")]) == "" or p.endswith("/"))})
    if len(prefixes) != 1:
        raise ValueError(f"cannot find a unique 'embedding/kernel' (the patch embedding) among the checkpoint "
                         f"keys; found {[p + 'embedding/kernel' for p in prefixes]}")
    r = _Reader(state, prefixes[0])
    if any(k.startswith(r.prefix + "MAPHead_0/") for k in state):
        raise NotImplementedError("this checkpoint pools with a MAP head (big_vision pool_type='map'); "
                                  "vitsam's ViT supports the class token ('tok') and average pooling ('gap')")
    pos_key = next((k for k in FLAX_POSEMB_KEYS if r.has(k)), None)
    if pos_key is None:
        raise MissingKeyError(
            f"checkpoint is missing the position table (one of {[r.prefix + k for k in FLAX_POSEMB_KEYS]}); "
            "big_vision models with fixed 'sincos2d' positions have none and cannot be imported (vitsam's "
            "sinusoidal formula differs)")

    kernel_shape = r.shape("embedding/kernel")
    if len(kernel_shape) != 4 or kernel_shape[0] != kernel_shape[1]:
        raise ValueError(f"patch embedding {r.prefix}embedding/kernel has shape {kernel_shape}, expected (P, P, C, D)")
    p, _, _, d = kernel_shape
    has_cls = r.has("cls")

    scanned = r.has("Transformer/encoderblock/LayerNorm_0/scale")
    if scanned:
        bp = "Transformer/encoderblock/"
        depth = r.shape(bp + "LayerNorm_0/scale")[0]
    else:
        pattern = re.compile(re.escape(r.prefix) + r"Transformer/encoderblock_(\d+)/")
        found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not found:
            raise MissingKeyError(f"checkpoint has no encoder blocks ({r.prefix}Transformer/encoderblock_0/...)")
        depth, bp = max(found) + 1, "Transformer/encoderblock_0/"
    # vit_jax (pre-Linen auto-naming) numbers sub-modules across types; big_vision numbers them per type.
    vit_jax_names = r.has(bp + "MultiHeadDotProductAttention_1/query/kernel")
    mha, ln1, mlp = ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if vit_jax_names else \
                    ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
    lead = 1 if scanned else 0
    q_shape = r.shape(f"{bp}{mha}/query/kernel")
    if len(q_shape) != 3 + lead:
        raise ValueError(f"{r.prefix}{bp}{mha}/query/kernel has shape {q_shape}, expected "
                         f"{'(depth, D, heads, head_dim)' if scanned else '(D, heads, head_dim)'}")
    h = q_shape[lead + 1] if num_heads is None else int(num_heads)
    if d % h:
        raise ValueError(f"width {d} is not divisible by num_heads={h}")
    dh = d // h
    m = r.shape(f"{bp}{mlp}/Dense_0/kernel")[-1]

    spec = [("LayerNorm_0/scale", "LayerNorm_0/scale", (d,)), ("LayerNorm_0/bias", "LayerNorm_0/bias", (d,))]
    for n in ("query", "key", "value"):
        spec += [(f"MultiHeadDotProductAttention_0/{n}/kernel", f"{mha}/{n}/kernel", (d, h, dh)),
                 (f"MultiHeadDotProductAttention_0/{n}/bias", f"{mha}/{n}/bias", (h, dh))]
    spec += [("MultiHeadDotProductAttention_0/out/kernel", f"{mha}/out/kernel", (h, dh, d)),
             ("MultiHeadDotProductAttention_0/out/bias", f"{mha}/out/bias", (d,)),
             ("LayerNorm_1/scale", f"{ln1}/scale", (d,)), ("LayerNorm_1/bias", f"{ln1}/bias", (d,)),
             ("MlpBlock_0/Dense_0/kernel", f"{mlp}/Dense_0/kernel", (d, m)),
             ("MlpBlock_0/Dense_0/bias", f"{mlp}/Dense_0/bias", (m,)),
             ("MlpBlock_0/Dense_1/kernel", f"{mlp}/Dense_1/kernel", (m, d)),
             ("MlpBlock_0/Dense_1/bias", f"{mlp}/Dense_1/bias", (d,))]
    if scanned:
        stacked = {ours: r.take(f"Transformer/encoderblock/{theirs}", (depth,) + shape) for ours, theirs, shape in spec}
        blocks = [{ours: a[i] for ours, a in stacked.items()} for i in range(depth)]
    else:
        blocks = [{ours: r.take(f"Transformer/encoderblock_{i}/{theirs}", shape) for ours, theirs, shape in spec}
                  for i in range(depth)]

    top = {"embedding/kernel": r.take("embedding/kernel", kernel_shape),
           "embedding/bias": r.take("embedding/bias", (d,)),
           "Transformer/encoder_norm/scale": r.take("Transformer/encoder_norm/scale", (d,)),
           "Transformer/encoder_norm/bias": r.take("Transformer/encoder_norm/bias", (d,))}
    if has_cls:
        top["cls"] = r.take("cls", (1, 1, d))
    top["pos_embedding"], grid = _position_table(r.take(pos_key), r.prefix + pos_key, d, has_cls)
    rep = None
    if r.has("pre_logits/kernel"):
        rep = r.shape("pre_logits/kernel")[-1]
        top["pre_logits/kernel"] = r.take("pre_logits/kernel", (d, rep))
        top["pre_logits/bias"] = r.take("pre_logits/bias", (rep,))
    num_classes = None
    if r.has("head/kernel"):
        num_classes = r.shape("head/kernel")[-1]
        top["head/kernel"] = r.take("head/kernel", (rep or d, num_classes))
        top["head/bias"] = r.take("head/bias", (num_classes,))

    config = dict(patch_size=p, width=d, depth=depth, mlp_dim=m, num_heads=h, image_size=grid * p,
                  num_classes=num_classes, representation_size=rep, pool="tok" if has_cls else "gap",
                  activation=ACTIVATION["flax"], scan=scanned)
    return config, top, blocks, r


# --- timm (.pth / .safetensors) -----------------------------------------------------------------------

_TIMM_UNSUPPORTED = {
    "fc_norm.weight": "a norm after average pooling (timm global_pool='avg' with fc_norm; vitsam's 'gap' pools "
                      "after the final norm)",
    "attn_pool.latent": "attention pooling (timm global_pool='map')",
    "reg_token": "register tokens",
    "norm_pre.weight": "a norm before the encoder (CLIP-style norm_pre)",
}


def _timm_params(state: dict, num_heads: int | None) -> tuple[dict, dict, list[dict], _Reader]:
    for key, what in _TIMM_UNSUPPORTED.items():
        if key in state:
            raise NotImplementedError(f"this timm checkpoint has {key!r}: {what} is not supported by vitsam's ViT")
    r = _Reader(state)
    w_shape = r.shape("patch_embed.proj.weight")
    if len(w_shape) != 4 or w_shape[2] != w_shape[3]:
        raise ValueError(f"patch_embed.proj.weight has shape {w_shape}, expected (D, C, P, P)")
    d, c, p, _ = w_shape
    has_cls = r.has("cls_token")
    found = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not found:
        raise MissingKeyError("checkpoint has no encoder blocks (blocks.0. ...)")
    depth = max(found) + 1
    h = _heads_for(d, num_heads)
    if d % h:
        raise ValueError(f"width {d} is not divisible by num_heads={h}")
    dh = d // h
    m = r.shape("blocks.0.mlp.fc1.weight")[0]

    def linear(key, n_in, n_out):  # torch Linear weight (out, in) -> Flax kernel (in, out)
        return r.take(f"{key}.weight", (n_out, n_in)).T, r.take(f"{key}.bias", (n_out,))

    blocks = []
    for i in range(depth):
        b = f"blocks.{i}."
        qkv_w = r.take(b + "attn.qkv.weight", (3 * d, d)).reshape(3, d, d)  # rows: [q; k; v], each (H·Dh, D)
        qkv_b = r.take(b + "attn.qkv.bias", (3 * d,)).reshape(3, h, dh)
        proj_w, proj_b = linear(b + "attn.proj", d, d)
        fc1_w, fc1_b = linear(b + "mlp.fc1", d, m)
        fc2_w, fc2_b = linear(b + "mlp.fc2", m, d)
        block = {"LayerNorm_0/scale": r.take(b + "norm1.weight", (d,)),
                 "LayerNorm_0/bias": r.take(b + "norm1.bias", (d,)),
                 "MultiHeadDotProductAttention_0/out/kernel": proj_w.reshape(h, dh, d),
                 "MultiHeadDotProductAttention_0/out/bias": proj_b,
                 "LayerNorm_1/scale": r.take(b + "norm2.weight", (d,)),
                 "LayerNorm_1/bias": r.take(b + "norm2.bias", (d,)),
                 "MlpBlock_0/Dense_0/kernel": fc1_w, "MlpBlock_0/Dense_0/bias": fc1_b,
                 "MlpBlock_0/Dense_1/kernel": fc2_w, "MlpBlock_0/Dense_1/bias": fc2_b}
        for j, n in enumerate(("query", "key", "value")):
            block[f"MultiHeadDotProductAttention_0/{n}/kernel"] = qkv_w[j].T.reshape(d, h, dh)
            block[f"MultiHeadDotProductAttention_0/{n}/bias"] = qkv_b[j]
        blocks.append(block)

    top = {"embedding/kernel": r.take("patch_embed.proj.weight", w_shape).transpose(2, 3, 1, 0),
           "embedding/bias": r.take("patch_embed.proj.bias", (d,)),
           "Transformer/encoder_norm/scale": r.take("norm.weight", (d,)),
           "Transformer/encoder_norm/bias": r.take("norm.bias", (d,))}
    if has_cls:
        top["cls"] = r.take("cls_token", (1, 1, d))
    top["pos_embedding"], grid = _position_table(r.take("pos_embed"), "pos_embed", d, has_cls)
    rep = None
    if r.has("pre_logits.fc.weight"):  # old timm representation layer (Linear + tanh)
        rep = r.shape("pre_logits.fc.weight")[0]
        top["pre_logits/kernel"], top["pre_logits/bias"] = linear("pre_logits.fc", d, rep)
    num_classes = None
    if r.has("head.weight"):
        num_classes = r.shape("head.weight")[0]
        top["head/kernel"], top["head/bias"] = linear("head", rep or d, num_classes)

    config = dict(patch_size=p, width=d, depth=depth, mlp_dim=m, num_heads=h, image_size=grid * p,
                  num_classes=num_classes, representation_size=rep, pool="tok" if has_cls else "gap",
                  activation=ACTIVATION["timm"], scan=False)
    return config, top, blocks, r


# --- public API -----------------------------------------------------------------------------------------

def detect_source(state: dict) -> str:
    """"timm" or "vit_jax" / "big_vision" (one .npz reader serves both) from the key names."""
    if "patch_embed.proj.weight" in state:
        return "timm"
    if any(k.endswith("embedding/kernel") for k in state):
        return "vit_jax" if any(k.endswith("Transformer/posembed_input/pos_embedding") for k in state) else "big_vision"
    raise ValueError("unrecognised checkpoint: neither a timm ViT ('patch_embed.proj.weight') nor a vit_jax / "
                     f"big_vision one ('embedding/kernel'); first keys: {sorted(state)[:8]}")


def vit_params_from_state_dict(state: dict, source: str = "auto", *, num_heads: int | None = None,
                               scan: bool | None = None, strict: bool = True) -> tuple[dict, dict]:
    """A flat checkpoint dict {key: array} -> (config, params) for `VisionTransformer(**config)`.

    `config` holds the inferred fields (patch_size, width, depth, mlp_dim, num_heads, image_size, num_classes,
    representation_size, pool, activation, scan); `params` is our nested float32 numpy tree. `scan` picks
    the stacked or per-block layout (default: as stored). Keys the model does not use raise a ValueError
    listing them (`strict=False`: a warning); a missing key or a wrong shape raises naming the key and shapes.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; valid: {SOURCES}")
    if source == "auto":
        source = detect_source(state)
    read = _timm_params if source == "timm" else _flax_params
    config, top, blocks, reader = read(state, num_heads)
    unused = reader.unused()
    if unused:
        listed = ", ".join(map(repr, unused[:20])) + (f" … and {len(unused) - 20} more" if len(unused) > 20 else "")
        message = f"{len(unused)} checkpoint key(s) not used by the {source} ViT importer: {listed}"
        if strict:
            raise ValueError(message + " (pass strict=False to load anyway)")
        warnings.warn(message, stacklevel=2)
    if scan is not None:
        config["scan"] = bool(scan)
    return config, _assemble(top, blocks, config["scan"])


def load_vit_checkpoint(path, *, image_size: int | None = None, num_classes: int | None = None,
                        num_heads: int | None = None, source: str = "auto", strict: bool = True,
                        resample_method: str = "bilinear", antialias: bool = False, **overrides):
    """A vit_jax / big_vision .npz or timm .pth / .safetensors ViT -> (VisionTransformer, variables).

    The variant is inferred from the tensor shapes and the activation from the source (tanh GELU for
    .npz, exact GELU for timm). `image_size` other than the checkpoint's resamples the position grid
    (`resample_position_embedding`); `num_classes` other than the checkpoint's gives a fresh zero head.
    `overrides` set other `VisionTransformer` fields (scan, dtype, attention_impl, dropout, ...).
    """
    state = read_state_dict(path)
    config, params = vit_params_from_state_dict(state, source, num_heads=num_heads, scan=overrides.pop("scan", None),
                                                strict=strict)
    adapt_params(config, params, image_size, num_classes, resample_method, antialias)
    if config["num_classes"] is None:
        raise ValueError("the checkpoint has no classification head; pass num_classes= to add a fresh zero head")
    model = VisionTransformer(**{**config, **overrides})
    channels = params["embedding"]["kernel"].shape[2]
    check_against_model(model, params, channels)
    return model, {"params": jax.tree_util.tree_map(jnp.asarray, params)}
