"""The ViT classifier: shapes, parameter counts, errors, bf16, jit and grad."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vitsam
from vitsam.models import VisionTransformer, decode_variant, vit_variant
from vitsam.params import abstract_init, count_params

TINY = dict(num_classes=5, patch_size=4, width=16, depth=2, mlp_dim=32, num_heads=2, image_size=16)


def images(batch=2, size=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)), jnp.float32)


def random_params(model, x, seed=0, scale=0.2):
    """Parameters of the model's shapes, all random (the zero-initialized head would make logits 0)."""
    shapes = abstract_init(model, x)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


def test_public_api_contract():
    model = vitsam.models.vit_variant("B/16", num_classes=1000)
    assert isinstance(model, nn.Module)
    assert (model.width, model.depth, model.mlp_dim, model.num_heads, model.patch_size) == (768, 12, 3072, 12, 16)
    assert vitsam.nn.sinusoidal_encoding(50, 128).shape == (50, 128)


@pytest.mark.parametrize("pool", ["tok", "gap"])
@pytest.mark.parametrize("posemb", ["learn", "sincos1d", "sincos2d"])
def test_shapes_and_parameters(pool, posemb):
    model = VisionTransformer(pool=pool, posemb=posemb, **TINY)
    x = jax.ShapeDtypeStruct((3, 16, 16, 3), jnp.float32)
    variables = abstract_init(model, x)
    params = variables["params"]
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 5)
    grid_tokens = (16 // 4) ** 2
    assert params["embedding"]["kernel"].shape == (4, 4, 3, 16)
    assert ("cls" in params) == (pool == "tok")
    assert ("pos_embedding" in params) == (posemb == "learn")
    if posemb == "learn":
        assert params["pos_embedding"].shape == (1, grid_tokens + (pool == "tok"), 16)
    assert set(k for k in params["Transformer"]) == {"encoderblock_0", "encoderblock_1", "encoder_norm"}
    assert params["head"]["kernel"].shape == (16, 5)
    assert "pre_logits" not in params


def test_representation_size_and_scan_shapes():
    model = VisionTransformer(representation_size=24, scan=True, **TINY)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    variables = abstract_init(model, x)
    assert variables["params"]["pre_logits"]["kernel"].shape == (16, 24)
    assert variables["params"]["head"]["kernel"].shape == (24, 5)
    assert variables["params"]["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 16)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)


def test_forward_runs_and_head_starts_at_zero():
    model = VisionTransformer(**TINY)
    x = images()
    # An "rbg" key: its init compiles several times faster on CPU than the default threefry.
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    # The head is zero-initialized (as in vit_jax), so the untrained model outputs zeros.
    np.testing.assert_array_equal(np.asarray(jax.jit(model.apply)(variables, x)), 0.0)
    params = random_params(model, x)
    logits = jax.jit(model.apply)({"params": params}, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    assert np.abs(np.asarray(logits[0] - logits[1])).max() > 1e-4  # different images, different logits


def test_non_square_image_with_sincos():
    model = VisionTransformer(posemb="sincos2d", pool="gap", **TINY)
    x = jax.ShapeDtypeStruct((1, 8, 20, 3), jnp.float32)
    assert jax.eval_shape(model.apply, abstract_init(model, x), x).shape == (1, 5)


# --- parameter counts ------------------------------------------------------------------------------

def count_formula(width, depth, mlp_dim, patch, image=224, classes=1000, channels=3):
    """ViT parameters from the architecture: patch conv + cls + positions + depth × block + final norm + head."""
    d, n = width, (image // patch) ** 2
    patch_conv = patch * patch * channels * d + d
    cls = d
    positions = (n + 1) * d
    layer_norm = 2 * d
    attention = 3 * (d * d + d) + (d * d + d)  # q, k, v projections and the output projection
    mlp = (d * mlp_dim + mlp_dim) + (mlp_dim * d + d)
    block = 2 * layer_norm + attention + mlp
    head = d * classes + classes
    return patch_conv + cls + positions + depth * block + layer_norm + head


def abstract_count(name, size=224, **overrides):
    model = vit_variant(name, num_classes=1000, **overrides)
    return count_params(abstract_init(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"])


@pytest.mark.parametrize("name,expected", [
    ("B/16", 86_567_656), ("L/16", 304_326_632), ("H/14", 632_045_800)])
def test_published_parameter_counts(name, expected):
    # vit_jax's own test values at 1000 classes, 224 px; counted from shapes only (nothing allocated).
    assert abstract_count(name) == expected


@pytest.mark.parametrize("name,sizes", [
    ("Ti/16", (192, 12, 768, 16)), ("S/16", (384, 12, 1536, 16)), ("B/32", (768, 12, 3072, 32)),
    ("B/16", (768, 12, 3072, 16))])
def test_parameter_counts_match_formula(name, sizes):
    assert abstract_count(name) == count_formula(*sizes)


def test_scan_does_not_change_parameter_count():
    assert abstract_count("Ti/16", scan=True) == count_formula(192, 12, 768, 16)


def test_other_patch_sizes_decode():
    assert decode_variant("S/8") == dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=8)
    assert vit_variant("Ti/16").num_heads == 3


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X/16", "B", "B/sixteen", "b/16"])
def test_unknown_variant_lists_valid_names(name):
    with pytest.raises(ValueError, match="unknown ViT variant") as info:
        vit_variant(name)
    for valid in ("Ti/16", "S/16", "B/16", "B/32", "L/16", "H/14"):
        assert valid in str(info.value)


def test_image_not_divisible_by_patch():
    model = VisionTransformer(posemb="sincos1d", **TINY)
    with pytest.raises(ValueError, match="18x16 is not divisible by the patch size 4"):
        abstract_init(model, jax.ShapeDtypeStruct((1, 18, 16, 3), jnp.float32))


def test_wrong_resolution_for_learned_table():
    model = VisionTransformer(**TINY)  # table sized for 16 px
    with pytest.raises(ValueError, match="image_size=16"):
        abstract_init(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    # Initialized at 16 px, applied at 32 px: also refused rather than silently mis-added.
    variables = abstract_init(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    with pytest.raises(ValueError, match="learned position table"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_unknown_override():
    with pytest.raises(TypeError, match="widht"):
        vit_variant("Ti/16", widht=8)


@pytest.mark.parametrize("field,value", [("pool", "max"), ("posemb", "rope")])
def test_unknown_pool_or_posemb(field, value):
    model = VisionTransformer(**{**TINY, field: value})
    with pytest.raises(ValueError, match=value):
        abstract_init(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))


def test_width_not_divisible_by_heads():
    model = VisionTransformer(**{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="not divisible by the number of heads 3"):
        abstract_init(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))


# --- bf16, jit, grad -------------------------------------------------------------------------------

def test_bf16_compute_float32_params():
    x = images(seed=1)
    fp32 = VisionTransformer(**TINY)
    bf16 = VisionTransformer(dtype=jnp.bfloat16, param_dtype=jnp.float32, **TINY)
    shapes = abstract_init(bf16, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    params = random_params(fp32, x, seed=2)
    assert jax.tree_util.tree_structure(shapes["params"]) == jax.tree_util.tree_structure(params)

    # Activations are bf16: look at every module's output dtype (shapes only).
    _, state = jax.eval_shape(
        lambda p, x: bf16.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"]), params, x)
    inter = state["intermediates"]
    assert inter["embedding"]["__call__"][0].dtype == jnp.bfloat16
    block = inter["Transformer"]["encoderblock_0"]
    assert block["__call__"][0].dtype == jnp.bfloat16
    assert block["MultiHeadDotProductAttention_0"]["__call__"][0].dtype == jnp.bfloat16
    assert block["MlpBlock_0"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["Transformer"]["__call__"][0].dtype == jnp.bfloat16

    run = lambda model: jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)  # noqa: E731
    out_bf16, out_fp32 = np.asarray(run(bf16)), np.asarray(run(fp32))
    assert out_bf16.dtype == np.float32  # logits are returned in float32
    assert np.all(np.isfinite(out_bf16))
    # bf16 keeps 8 significant bits (relative step 2^-8 ≈ 0.4 %); a few layers stay within a few percent.
    scale = np.abs(out_fp32).max()
    np.testing.assert_allclose(out_bf16, out_fp32, atol=0.05 * scale)
    assert np.abs(out_bf16 - out_fp32).max() > 0  # it really computed in lower precision


def test_jit_and_grad_in_train_mode():
    x = images(batch=4, seed=3)
    labels = jnp.array([0, 1, 2, 3])
    model = VisionTransformer(dropout=0.1, drop_path=0.2, **TINY)
    params = random_params(model, x, seed=4)

    @jax.jit
    def loss_and_grads(params, x, key):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
        return jax.value_and_grad(loss)(params)

    key = jax.random.PRNGKey(0)  # the default key type
    loss, grads = loss_and_grads(params, x, key)
    assert np.isfinite(float(loss))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert all(g.dtype == jnp.float32 for g in leaves)
    assert np.abs(np.asarray(grads["embedding"]["kernel"])).max() > 0
    assert np.abs(np.asarray(grads["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"])).max() > 0
    # Different dropout keys give different losses; the same key reproduces.
    loss_again, _ = loss_and_grads(params, x, key)
    loss_other, _ = loss_and_grads(params, x, jax.random.PRNGKey(1))
    assert float(loss_again) == float(loss)
    assert float(loss_other) != float(loss)
    eval_loss = float(-jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(jax.jit(model.apply)({"params": params}, x)), labels[:, None], axis=1)))
    assert eval_loss != float(loss)


@pytest.mark.parametrize("scan", [False, True])
def test_sow_weights_collects_attention_maps(scan):
    model = VisionTransformer(sow_weights=True, scan=scan, **TINY)
    x = jax.ShapeDtypeStruct((3, 16, 16, 3), jnp.float32)
    variables = {"params": abstract_init(model, x)["params"]}
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, x)
    transformer = state["intermediates"]["Transformer"]
    n = (16 // 4) ** 2 + 1
    if scan:  # one stacked map per layer along the depth axis
        (maps,) = transformer["encoderblock"]["MultiHeadDotProductAttention_0"]["attention_weights"]
        assert maps.shape == (2, 3, 2, n, n)
    else:
        for i in range(2):
            (maps,) = transformer[f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]["attention_weights"]
            assert maps.shape == (3, 2, n, n)
