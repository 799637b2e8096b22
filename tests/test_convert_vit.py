"""ViT checkpoint import: vit_jax / big_vision .npz layouts, timm .pth / .safetensors, position-table resampling.

Default tests write tiny checkpoints by hand in each published key layout (independent writers naming every
key), load them back and compare with our model on the original parameters and with a numpy forward pass
that reads the published layout directly. Parity tests (`-m parity`) build randomized timm models, save
them, convert them and compare logits with timm's own forward pass.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.convert import (convert, load_model, load_vit_checkpoint, resample_position_embedding,
                            vit_params_from_state_dict)
from vitsam.models import VisionTransformer

TINY = dict(patch_size=4, image_size=16, width=32, depth=2, mlp_dim=48, num_heads=4, num_classes=5)


def tiny_model(**kw):
    return VisionTransformer(**{**TINY, **kw})


def random_params(model, seed=0):
    """Every leaf random (LayerNorm scales around 1), numpy float32."""
    x = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        scale = 1.0 if path[-1].key in ("scale",) else 0.3
        base = 1.0 if path[-1].key == "scale" else 0.0
        return (base + scale * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def images(size=16, n=2, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def run(model, params, x):
    return np.asarray(jax.jit(model.apply)({"params": params}, x))


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# --- independent writers of the published layouts -------------------------------------------------------

VIT_JAX_NAMES = dict(mha="MultiHeadDotProductAttention_1", ln1="LayerNorm_2", mlp="MlpBlock_3")
BIG_VISION_NAMES = dict(mha="MultiHeadDotProductAttention_0", ln1="LayerNorm_1", mlp="MlpBlock_0")


def block_tensors(blk, names):
    """One block of our params under the checkpoint's sub-module names, as {relative key: array}."""
    out = {"LayerNorm_0/scale": blk["LayerNorm_0"]["scale"], "LayerNorm_0/bias": blk["LayerNorm_0"]["bias"],
           f"{names['ln1']}/scale": blk["LayerNorm_1"]["scale"], f"{names['ln1']}/bias": blk["LayerNorm_1"]["bias"]}
    for n in ("query", "key", "value", "out"):
        out[f"{names['mha']}/{n}/kernel"] = blk["MultiHeadDotProductAttention_0"][n]["kernel"]
        out[f"{names['mha']}/{n}/bias"] = blk["MultiHeadDotProductAttention_0"][n]["bias"]
    for j in (0, 1):
        out[f"{names['mlp']}/Dense_{j}/kernel"] = blk["MlpBlock_0"][f"Dense_{j}"]["kernel"]
        out[f"{names['mlp']}/Dense_{j}/bias"] = blk["MlpBlock_0"][f"Dense_{j}"]["bias"]
    return out


def head_tensors(p):
    out = {"Transformer/encoder_norm/scale": p["Transformer"]["encoder_norm"]["scale"],
           "Transformer/encoder_norm/bias": p["Transformer"]["encoder_norm"]["bias"],
           "head/kernel": p["head"]["kernel"], "head/bias": p["head"]["bias"],
           "embedding/kernel": p["embedding"]["kernel"], "embedding/bias": p["embedding"]["bias"]}
    if "pre_logits" in p:
        out["pre_logits/kernel"], out["pre_logits/bias"] = p["pre_logits"]["kernel"], p["pre_logits"]["bias"]
    return out


def write_vit_jax(p, depth):
    """google-research/vision_transformer names: posemb (1, N+1, D) inside the Transformer, old-style numbering."""
    flat = head_tensors(p)
    flat["cls"] = p["cls"]
    flat["Transformer/posembed_input/pos_embedding"] = p["pos_embedding"]
    for i in range(depth):
        for k, v in block_tensors(p["Transformer"][f"encoderblock_{i}"], VIT_JAX_NAMES).items():
            flat[f"Transformer/encoderblock_{i}/{k}"] = v
    return flat


def write_big_vision(p, depth, scanned=False, prefix=""):
    """big_vision names: top-level pos_embedding (1, N, D) without a class position (big_vision adds the
    positions before prepending the class token, so our class position is folded into `cls`)."""
    flat = head_tensors(p)
    if "cls" in p:
        flat["cls"] = p["cls"] + p["pos_embedding"][:, :1]
        flat["pos_embedding"] = p["pos_embedding"][:, 1:]
    else:
        flat["pos_embedding"] = p["pos_embedding"]
    blocks = [block_tensors(p["Transformer"][f"encoderblock_{i}"], BIG_VISION_NAMES) for i in range(depth)]
    for k in blocks[0]:
        if scanned:
            flat[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
        else:
            for i, b in enumerate(blocks):
                flat[f"Transformer/encoderblock_{i}/{k}"] = b[k]
    return {prefix + k: v for k, v in flat.items()}


def write_timm(p, depth):
    """timm names and PyTorch layouts: Linear weights (out, in), conv (D, C, P, P), fused qkv (3D, D)."""
    d = p["cls"].shape[-1]
    flat = {"patch_embed.proj.weight": p["embedding"]["kernel"].transpose(3, 2, 0, 1),
            "patch_embed.proj.bias": p["embedding"]["bias"], "cls_token": p["cls"], "pos_embed": p["pos_embedding"],
            "norm.weight": p["Transformer"]["encoder_norm"]["scale"], "norm.bias": p["Transformer"]["encoder_norm"]["bias"],
            "head.weight": p["head"]["kernel"].T, "head.bias": p["head"]["bias"]}
    for i in range(depth):
        blk, b = p["Transformer"][f"encoderblock_{i}"], f"blocks.{i}."
        att = blk["MultiHeadDotProductAttention_0"]
        flat[b + "attn.qkv.weight"] = np.concatenate([att[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")])
        flat[b + "attn.qkv.bias"] = np.concatenate([att[n]["bias"].reshape(d) for n in ("query", "key", "value")])
        flat[b + "attn.proj.weight"] = att["out"]["kernel"].reshape(d, d).T
        flat[b + "attn.proj.bias"] = att["out"]["bias"]
        for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            flat[f"{b}{theirs}.weight"], flat[f"{b}{theirs}.bias"] = blk[ours]["scale"], blk[ours]["bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            flat[f"{b}mlp.{fc}.weight"] = blk["MlpBlock_0"][f"Dense_{j}"]["kernel"].T
            flat[f"{b}mlp.{fc}.bias"] = blk["MlpBlock_0"][f"Dense_{j}"]["bias"]
    return flat


def save_npz(tmp_path, flat, name="ckpt.npz"):
    path = tmp_path / name
    np.savez(path, **flat)
    return path


# --- a numpy forward pass that reads the published .npz layouts directly ---------------------------------

def np_layernorm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def np_gelu_tanh(x):  # Flax's default nn.gelu (approximate=True), used by vit_jax and big_vision
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_flax_vit(flat, x, prefix=""):
    """vit_jax / big_vision ViT in float64 from the checkpoint dict: patches, positions, blocks, pooling, head."""
    g = lambda k: np.asarray(flat[prefix + k], np.float64)  # noqa: E731
    vit_jax = prefix + "Transformer/posembed_input/pos_embedding" in flat
    scanned = prefix + "Transformer/encoderblock/LayerNorm_0/scale" in flat
    names = VIT_JAX_NAMES if vit_jax else BIG_VISION_NAMES
    kernel = g("embedding/kernel")
    p, d = kernel.shape[0], kernel.shape[-1]
    b, h, w, c = x.shape
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
    t = patches @ kernel.reshape(-1, d) + g("embedding/bias")
    has_cls = prefix + "cls" in flat
    if vit_jax:  # class token first, then positions for all tokens
        if has_cls:
            t = np.concatenate([np.broadcast_to(g("cls"), (b, 1, d)), t], axis=1)
        t = t + g("Transformer/posembed_input/pos_embedding")
    else:  # big_vision: positions for the patches, then the class token
        t = t + g("pos_embedding")
        if has_cls:
            t = np.concatenate([np.broadcast_to(g("cls"), (b, 1, d)), t], axis=1)
    depth = g("Transformer/encoderblock/LayerNorm_0/scale").shape[0] if scanned else \
        len({k.split("/")[1] for k in (k.removeprefix(prefix) for k in flat) if k.startswith("Transformer/encoderblock_")})
    for i in range(depth):
        blk = (lambda k: g(f"Transformer/encoderblock/{k}")[i]) if scanned else \
              (lambda k: g(f"Transformer/encoderblock_{i}/{k}"))
        y = np_layernorm(t, blk("LayerNorm_0/scale"), blk("LayerNorm_0/bias"))
        q, k, v = (np.einsum("btd,dhk->bthk", y, blk(f"{names['mha']}/{n}/kernel")) + blk(f"{names['mha']}/{n}/bias")
                   for n in ("query", "key", "value"))
        logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshk->bthk", a, v)
        t = t + np.einsum("bthk,hkd->btd", o, blk(f"{names['mha']}/out/kernel")) + blk(f"{names['mha']}/out/bias")
        y = np_layernorm(t, blk(f"{names['ln1']}/scale"), blk(f"{names['ln1']}/bias"))
        y = np_gelu_tanh(y @ blk(f"{names['mlp']}/Dense_0/kernel") + blk(f"{names['mlp']}/Dense_0/bias"))
        t = t + y @ blk(f"{names['mlp']}/Dense_1/kernel") + blk(f"{names['mlp']}/Dense_1/bias")
    t = np_layernorm(t, g("Transformer/encoder_norm/scale"), g("Transformer/encoder_norm/bias"))
    z = t[:, 0] if has_cls else t.mean(1)
    if prefix + "pre_logits/kernel" in flat:
        z = np.tanh(z @ g("pre_logits/kernel") + g("pre_logits/bias"))
    return z @ g("head/kernel") + g("head/bias")


# --- .npz layouts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rep", [None, 12], ids=["no_pre_logits", "pre_logits"])
def test_vit_jax_npz(tmp_path, rep):
    ref_model = tiny_model(representation_size=rep, activation="gelu_tanh")
    params = random_params(ref_model)
    path = save_npz(tmp_path, write_vit_jax(params, TINY["depth"]))

    model, variables = load_vit_checkpoint(path)
    for field in ("patch_size", "image_size", "width", "depth", "mlp_dim", "num_heads", "num_classes"):
        assert getattr(model, field) == TINY[field], field
    assert (model.representation_size, model.activation, model.pool, model.scan) == (rep, "gelu_tanh", "tok", False)

    x = images()
    got = run(model, variables["params"], x)
    np.testing.assert_array_equal(got, run(ref_model, params, x))
    assert rel_err(got, np_flax_vit(dict(np.load(path)), x)) < 1e-5


@pytest.mark.parametrize("scanned,prefix,pool,rep", [
    (False, "", "tok", None), (True, "params/", "tok", 12), (False, "params/", "gap", None), (True, "", "gap", 12)])
def test_big_vision_npz(tmp_path, scanned, prefix, pool, rep):
    ref_model = tiny_model(representation_size=rep, activation="gelu_tanh", pool=pool)
    params = random_params(ref_model)
    flat = write_big_vision(params, TINY["depth"], scanned=scanned, prefix=prefix)
    if pool == "tok":
        assert flat[prefix + "pos_embedding"].shape == (1, 16, TINY["width"])  # no class position stored
    path = save_npz(tmp_path, flat)

    model, variables = load_vit_checkpoint(path)
    assert (model.scan, model.pool, model.representation_size, model.activation) == (scanned, pool, rep, "gelu_tanh")
    assert model.num_heads == TINY["num_heads"] and model.image_size == TINY["image_size"]
    if pool == "tok":  # the class position is a zero row
        np.testing.assert_array_equal(np.asarray(variables["params"]["pos_embedding"][0, 0]), 0.0)

    x = images()
    got = run(model, variables["params"], x)
    assert rel_err(got, np_flax_vit(flat, x, prefix)) < 1e-5
    np.testing.assert_allclose(got, run(ref_model, params, x), rtol=1e-6, atol=1e-6 * np.abs(got).max())


def test_scan_override_restacks_blocks(tmp_path):
    ref_model = tiny_model(activation="gelu_tanh")
    params = random_params(ref_model)
    path = save_npz(tmp_path, write_vit_jax(params, TINY["depth"]))
    model, variables = load_vit_checkpoint(path, scan=True)
    assert model.scan and variables["params"]["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 32)
    x = images()
    np.testing.assert_allclose(run(model, variables["params"], x), run(ref_model, params, x), rtol=1e-5, atol=1e-5)


def test_missing_key_names_the_key(tmp_path):
    flat = write_vit_jax(random_params(tiny_model()), TINY["depth"])
    del flat["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    with pytest.raises(KeyError, match=r"Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias.*\(32,\)"):
        load_vit_checkpoint(save_npz(tmp_path, flat))


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    flat = write_vit_jax(random_params(tiny_model()), TINY["depth"])
    flat["Transformer/encoderblock_1/LayerNorm_2/scale"] = np.ones(33, np.float32)
    with pytest.raises(ValueError, match=r"encoderblock_1/LayerNorm_2/scale.*\(33,\).*\(32,\)"):
        load_vit_checkpoint(save_npz(tmp_path, flat))
    flat = write_timm(random_params(tiny_model()), TINY["depth"])
    flat["blocks.0.attn.qkv.weight"] = flat["blocks.0.attn.qkv.weight"][:90]
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*\(90, 32\).*\(96, 32\)"):
        vit_params_from_state_dict(flat, num_heads=4)


def test_unexpected_keys_are_listed(tmp_path):
    flat = write_vit_jax(random_params(tiny_model()), TINY["depth"])
    flat["Transformer/encoderblock_0/extra/scale"] = np.ones(32, np.float32)
    flat["optimizer/step"] = np.zeros((), np.float32)
    path = save_npz(tmp_path, flat)
    with pytest.raises(ValueError, match=r"2 checkpoint key\(s\) not used.*'Transformer/encoderblock_0/extra/scale'"
                                         r".*'optimizer/step'"):
        load_vit_checkpoint(path)
    with pytest.warns(UserWarning, match="optimizer/step"):
        model, variables = load_vit_checkpoint(path, strict=False)
    assert model.depth == 2


def test_unsupported_heads_and_positions_are_refused(tmp_path):
    params = random_params(tiny_model(pool="gap"))
    flat = write_big_vision(params, TINY["depth"])
    flat["MAPHead_0/probe"] = np.zeros((1, 1, 32), np.float32)
    with pytest.raises(NotImplementedError, match="MAP head"):
        vit_params_from_state_dict(flat)
    flat = write_big_vision(params, TINY["depth"])
    del flat["pos_embedding"]  # an .npz missing a key says which, whatever the reason it is missing
    with pytest.raises(KeyError, match="missing the position table"):
        vit_params_from_state_dict(flat)
    timm = write_timm(random_params(tiny_model()), TINY["depth"])
    with pytest.raises(NotImplementedError, match="fc_norm"):
        vit_params_from_state_dict({**timm, "fc_norm.weight": np.ones(32, np.float32)}, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):  # width 32 is not a standard ViT width
        vit_params_from_state_dict(timm)


def test_timm_layout_without_torch(tmp_path):
    """The timm key layout from numpy arrays (no torch needed): exact GELU, fused qkv split per head."""
    ref_model = tiny_model(activation="gelu")
    params = random_params(ref_model)
    config, converted = vit_params_from_state_dict(write_timm(params, TINY["depth"]), num_heads=4)
    assert config == dict(patch_size=4, width=32, depth=2, mlp_dim=48, num_heads=4, image_size=16, num_classes=5,
                          representation_size=None, pool="tok", activation="gelu", scan=False)
    x = images()
    np.testing.assert_array_equal(run(VisionTransformer(**config), converted, x), run(ref_model, params, x))


def test_safetensors_file_without_torch(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ref_model = tiny_model(activation="gelu")
    params = random_params(ref_model)
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in write_timm(params, 2).items()}, str(path))
    model, variables = load_vit_checkpoint(path, num_heads=4)
    x = images()
    np.testing.assert_array_equal(run(model, variables["params"], x), run(ref_model, params, x))


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint file type"):
        load_vit_checkpoint(path)


# --- position-table resampling --------------------------------------------------------------------------

def np_bilinear_half_pixel(grid, out_h, out_w):
    """Bilinear resize with half-pixel centres and clamped edges (PyTorch's align_corners=False), by hand."""
    in_h, in_w, _ = grid.shape

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = grid[y0][:, x0] * (1 - fx)[None, :, None] + grid[y0][:, x1] * fx[None, :, None]
    bottom = grid[y1][:, x0] * (1 - fx)[None, :, None] + grid[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def smooth_table(g, d=6, has_cls=True):
    """A smooth function of the patch centre ((i + 0.5) / g, (j + 0.5) / g), one phase per channel."""
    c = (np.arange(g) + 0.5) / g
    u, v = np.meshgrid(c, c, indexing="ij")
    phase = np.arange(d)
    table = np.sin(2.0 * u[..., None] + phase) * np.cos(1.5 * v[..., None] - 0.5 * phase)
    table = table.reshape(1, g * g, d).astype(np.float32)
    return np.concatenate([np.full((1, 1, d), 7.0, np.float32), table], axis=1) if has_cls else table


def test_resample_identity_and_class_position():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1, 1 + 49, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_position_embedding(table, 7, has_cls=True), table)
    np.testing.assert_array_equal(resample_position_embedding(table[:, 1:], (7, 7), has_cls=False), table[:, 1:])
    out = resample_position_embedding(table, 12, has_cls=True)
    assert out.shape == (1, 1 + 144, 8)
    np.testing.assert_array_equal(out[:, 0], table[:, 0])
    with pytest.raises(ValueError, match="not a square grid"):
        resample_position_embedding(table, 5, has_cls=False)  # 50 positions without a class row


@pytest.mark.parametrize("old,new", [(4, 7), (8, 5), (24, 14)])
def test_resample_is_half_pixel_bilinear(old, new):
    table = np.random.default_rng(0).normal(size=(1, 1 + old * old, 5)).astype(np.float32)
    out = resample_position_embedding(table, new, has_cls=True)
    expected = np_bilinear_half_pixel(table[0, 1:].reshape(old, old, 5).astype(np.float64), new, new)
    np.testing.assert_allclose(out[0, 1:].reshape(new, new, 5), expected, atol=1e-5)


def test_resample_smooth_table_up_and_down():
    table = smooth_table(8)
    up = resample_position_embedding(table, 16, has_cls=True)
    # Bilinear on a smooth f: inside the old grid the error is at most h²/8·max|f''| (h = 1/8, |f''| <= 6.25,
    # so about 0.012); the outer half-pixel ring is clamped to the edge value (error up to ~slope·0.75/16).
    err = np.abs(up[:, 1:] - smooth_table(16)[:, 1:]).reshape(16, 16, -1)
    assert err[1:-1, 1:-1].max() < 0.02 and err.max() < 0.15
    back = resample_position_embedding(up, 8, has_cls=True)
    assert np.abs(back - table).max() < 0.05
    np.testing.assert_array_equal(back[:, 0], table[:, 0])
    smooth = resample_position_embedding(up, 8, has_cls=True, antialias=True)  # low-pass: a bit further off
    assert np.abs(smooth - table).max() < 0.08


def test_load_at_other_resolution_and_class_count(tmp_path):
    params = random_params(tiny_model(activation="gelu_tanh"))
    path = save_npz(tmp_path, write_vit_jax(params, TINY["depth"]))
    model, variables = load_vit_checkpoint(path, image_size=28, num_classes=3)
    assert (model.image_size, model.num_classes) == (28, 3)
    pos = np.asarray(variables["params"]["pos_embedding"])
    assert pos.shape == (1, 1 + 49, 32)
    np.testing.assert_array_equal(pos[:, 0], params["pos_embedding"][:, 0])
    expected = np_bilinear_half_pixel(params["pos_embedding"][0, 1:].reshape(4, 4, 32).astype(np.float64), 7, 7)
    np.testing.assert_allclose(pos[0, 1:].reshape(7, 7, 32), expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(variables["params"]["head"]["kernel"]), np.zeros((32, 3)))
    logits = np.asarray(model.apply(variables, images(28)))
    np.testing.assert_array_equal(logits, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        load_vit_checkpoint(path, image_size=30)


def test_convert_to_orbax_and_load_back(tmp_path):
    params = random_params(tiny_model(activation="gelu_tanh"))
    src = save_npz(tmp_path, write_vit_jax(params, TINY["depth"]))
    model, variables = load_vit_checkpoint(src)
    dst, timings = convert(src, tmp_path / "converted")
    assert set(timings) == {"import", "write", "load_converted"}
    model2, variables2, kind = load_model(dst)
    assert kind == "vit" and model2 == model.clone()
    x = images()
    np.testing.assert_array_equal(run(model2, variables2["params"], x), run(model, variables["params"], x))
    with pytest.raises(FileExistsError):
        convert(src, dst)


# --- parity with timm (randomized weights) -------------------------------------------------------------

def randomize_timm(model, seed):
    """Every tensor random: matrices N(0, 1/fan_in), norm scales 1 + N(0, 0.2²), biases N(0, 0.1²),
    class token and position table N(0, 0.5²)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            noise = torch.randn(t.shape, generator=gen)
            if name in ("cls_token", "pos_embed"):
                t.copy_(0.5 * noise)
            elif t.ndim >= 2:
                t.copy_(noise / math.sqrt(t[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                t.copy_(1.0 + 0.2 * noise)
            else:
                t.copy_(0.1 * noise)
    return model.eval()


def timm_logits(model, x):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def save_timm(model, path):
    import torch
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)


@pytest.mark.parity
@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16_224", {}), ("vit_small_patch16_224", {}), ("vit_base_patch16_224", {}),
    ("vit_tiny_patch16_224", dict(no_embed_class=True)),
    ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", fc_norm=False)),
], ids=["tiny", "small", "base", "tiny-no_embed_class", "tiny-gap"])
def test_timm_parity(tmp_path, name, kwargs):
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    reference = randomize_timm(timm.create_model(name, pretrained=False, **kwargs), seed=0)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    t0 = time.perf_counter()
    expected = timm_logits(reference, x)
    t_timm = time.perf_counter() - t0
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"{name}{suffix}"
        save_timm(reference, path)
        t0 = time.perf_counter()
        model, variables = load_vit_checkpoint(path)
        t_load = time.perf_counter() - t0
        assert model.activation == "gelu" and model.pool == ("gap" if "global_pool" in kwargs else "tok")
        t0 = time.perf_counter()
        got = np.asarray(jax.jit(model.apply)(variables, x))
        t_ours = time.perf_counter() - t0
        err = rel_err(got, expected)
        print(f"\n{name} {kwargs} {suffix}: max rel err {err:.2e} (max |logit| {np.abs(expected).max():.2f}); "
              f"convert {t_load:.2f}s, ours compile+run {t_ours:.2f}s, timm {t_timm:.2f}s")
        assert err < 1e-4


@pytest.mark.parity
def test_timm_384_model_loaded_at_224(tmp_path):
    """A 384-px model loaded at 224 (position grid 24 -> 14) against timm's own resampling."""
    timm = pytest.importorskip("timm")
    import torch
    from timm.layers import resample_abs_pos_embed

    source = randomize_timm(timm.create_model("vit_tiny_patch16_384", pretrained=False), seed=1)
    path = tmp_path / "tiny384.pth"
    torch.save(source.state_dict(), path)
    model, variables = load_vit_checkpoint(path, image_size=224)
    ours = np.asarray(variables["params"]["pos_embedding"])
    assert model.image_size == 224 and ours.shape == (1, 197, 192)

    state = dict(source.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[14, 14], num_prefix_tokens=1,
                                                interpolation="bilinear", antialias=False)
    table_err = float(np.abs(ours - state["pos_embed"].numpy()).max())
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    reference.load_state_dict(state)
    x = np.random.default_rng(2).normal(size=(2, 224, 224, 3)).astype(np.float32)
    expected = timm_logits(reference, x)
    err = rel_err(np.asarray(jax.jit(model.apply)(variables, x)), expected)

    # antialiased shrinking: jax.image.resize's triangle filter vs PyTorch's antialiased bilinear
    _, aa_vars = load_vit_checkpoint(path, image_size=224, antialias=True)
    torch_aa = resample_abs_pos_embed(source.state_dict()["pos_embed"], new_size=[14, 14], num_prefix_tokens=1,
                                      interpolation="bilinear", antialias=True).numpy()
    aa_err = float(np.abs(np.asarray(aa_vars["params"]["pos_embedding"]) - torch_aa).max())
    print(f"\n384->224: pos table max abs diff vs timm bilinear {table_err:.2e}; logits max rel err {err:.2e}; "
          f"antialiased table max abs diff vs torch antialias=True {aa_err:.2e} (table scale "
          f"{np.abs(torch_aa).max():.2f})")
    assert table_err < 1e-5
    assert err < 1e-4
