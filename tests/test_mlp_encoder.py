"""The MLP, the pre-norm encoder block and the encoder stack against numpy versions of the lecture's equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.nn import ACTIVATIONS, Encoder, EncoderBlock, Mlp, drop_path, get_activation


def randn(*shape, seed=0, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def random_params(module, *inputs, seed=0, scale=0.3, **kwargs):
    """Parameters of the module's own shapes, every leaf random (so zero-init biases and unit LayerNorm scales
    cannot hide a missing term)."""
    shapes = jax.eval_shape(lambda r, *xs: module.init(r, *xs, **kwargs), jax.random.PRNGKey(0), *inputs)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


def forward(module, train=False):
    """A jitted (params, x[, key]) -> output of the module, eval or train mode (one compile, not one per op)."""
    if train:
        return jax.jit(lambda p, x, key: module.apply({"params": p}, x, deterministic=False, rngs={"dropout": key}))
    return jax.jit(lambda p, x: module.apply({"params": p}, x))


def dropout_key(seed):
    """A dropout key. The "rbg" generator compiles several times faster on CPU than the default threefry
    (many dropout sites in one program); what is tested here does not depend on the generator. The default
    key type is exercised in test_vit.py."""
    return jax.random.key(seed, impl="rbg")


def f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# --- numpy references ------------------------------------------------------------------------------

def np_relu(x):
    return np.maximum(0.0, x)


def np_gelu(x):
    """Exact GELU: x Φ(x) = x · ½ (1 + erf(x / √2))."""
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_gelu_tanh(x):
    """Tanh approximation: ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


NP_ACTIVATIONS = {"relu": np_relu, "gelu": np_gelu, "gelu_tanh": np_gelu_tanh}


def np_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_mha(x, p):
    """Self-attention with k heads from query/key/value kernels (D, H, Dh) and out kernel (H, Dh, D)."""
    num_heads, head_dim = p["query"]["bias"].shape
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        heads = []
        for j in range(num_heads):
            q, k, v = (x[n] @ p[name]["kernel"][:, j] + p[name]["bias"][j] for name in ("query", "key", "value"))
            logits = q @ k.T / math.sqrt(head_dim)
            a = np.exp(logits - logits.max(-1, keepdims=True))
            heads.append(a / a.sum(-1, keepdims=True) @ v)
        out[n] = np.concatenate(heads, -1) @ p["out"]["kernel"].reshape(num_heads * head_dim, -1) + p["out"]["bias"]
    return out


def np_mlp(x, p, activation):
    h = NP_ACTIVATIONS[activation](x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def np_block(z, p, activation, eps=1e-6):
    """z' = MHA(LN(z)) + z;  z_out = MLP(LN(z')) + z'."""
    z1 = np_mha(np_layer_norm(z, p["LayerNorm_0"], eps), p["MultiHeadDotProductAttention_0"]) + z
    return np_mlp(np_layer_norm(z1, p["LayerNorm_1"], eps), p["MlpBlock_0"], activation) + z1


# --- MLP -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh"])
def test_activation_formulas(name):
    x = np.linspace(-6, 6, 241)
    np.testing.assert_allclose(np.asarray(get_activation(name)(jnp.asarray(x, jnp.float32))),
                               NP_ACTIVATIONS[name](x), atol=2e-6, rtol=1e-5)


def test_exact_and_tanh_gelu_differ():
    # The two GELUs are distinct functions (checkpoints depend on the right one).
    x = jnp.linspace(-4, 4, 81)
    diff = np.abs(np.asarray(get_activation("gelu")(x)) - np.asarray(get_activation("gelu_tanh")(x)))
    assert 1e-5 < diff.max() < 1e-2


def test_unknown_activation_lists_valid():
    with pytest.raises(ValueError, match="swish") as info:
        get_activation("swish")
    for name in ACTIVATIONS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid"):
        jax.eval_shape(Mlp(8, activation="swish").init, jax.random.PRNGKey(0), jnp.zeros((1, 4)))


def test_callable_activation_passes_through():
    fn = lambda x: x * 2  # noqa: E731
    assert get_activation(fn) is fn


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_mlp_matches_numpy(activation):
    x = randn(2, 3, 6, seed=1)
    module = Mlp(hidden_dim=10, activation=activation)
    params = random_params(module, x)
    assert params["Dense_0"]["kernel"].shape == (6, 10) and params["Dense_1"]["kernel"].shape == (10, 6)
    out = module.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(out), np_mlp(np.asarray(x, np.float64), f64(params), activation),
                               atol=1e-5, rtol=1e-5)


def test_mlp_out_dim():
    x = randn(2, 6, seed=1)
    module = Mlp(hidden_dim=10, out_dim=3)
    params = random_params(module, x)
    out = module.apply({"params": params}, x)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(out), np_mlp(np.asarray(x, np.float64), f64(params), "relu"), atol=1e-5)


# --- encoder block ---------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_equations(activation):
    z = randn(2, 5, 8, seed=2)
    block = EncoderBlock(num_heads=2, mlp_dim=16, activation=activation)
    params = random_params(block, z, seed=3)
    out = block.apply({"params": params}, z)
    expected = np_block(np.asarray(z, np.float64), f64(params), activation)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=1e-4)


def test_encoder_block_heads_must_divide_dim():
    with pytest.raises(ValueError, match="not divisible by the number of heads 3"):
        jax.eval_shape(EncoderBlock(num_heads=3, mlp_dim=16).init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)))


def test_encoder_block_rejects_unbatched_tokens():
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        jax.eval_shape(EncoderBlock(num_heads=2, mlp_dim=16).init, jax.random.PRNGKey(0), jnp.zeros((4, 8)))


def test_encoder_matches_stacked_numpy_blocks():
    z = randn(2, 4, 8, seed=4)
    encoder = Encoder(depth=3, num_heads=2, mlp_dim=16, activation="gelu")
    params = random_params(encoder, z, seed=5)
    expected = np.asarray(z, np.float64)
    p = f64(params)
    for i in range(3):
        expected = np_block(expected, p[f"encoderblock_{i}"], "gelu")
    expected = np_layer_norm(expected, p["encoder_norm"], 1e-6)
    np.testing.assert_allclose(np.asarray(encoder.apply({"params": params}, z)), expected, atol=1e-4, rtol=1e-4)


# --- encoder stack: scan, remat, compile cost --------------------------------------------------------

def unstack(scanned_params, depth):
    """Stacked `encoderblock` leaves [i] -> `encoderblock_{i}`."""
    params = {k: v for k, v in scanned_params.items() if k != "encoderblock"}
    for i in range(depth):
        params[f"encoderblock_{i}"] = jax.tree_util.tree_map(lambda a: a[i], scanned_params["encoderblock"])
    return params


def test_scan_equals_unrolled():
    depth = 3
    z = randn(2, 4, 8, seed=6)
    scanned = Encoder(depth=depth, num_heads=2, mlp_dim=16, scan=True)
    unrolled = Encoder(depth=depth, num_heads=2, mlp_dim=16, scan=False)
    params = jax.jit(scanned.init)(jax.random.key(0, impl="rbg"), z)["params"]  # rbg: compiles faster
    assert params["encoderblock"]["LayerNorm_0"]["scale"].shape == (depth, 8)
    assert params["encoderblock"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (depth, 8, 2, 4)
    # Each layer is initialized with its own key.
    kernels = np.asarray(params["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1])
    per_layer = unstack(params, depth)
    assert jax.tree_util.tree_structure(per_layer) == jax.tree_util.tree_structure(
        jax.eval_shape(unrolled.init, jax.random.PRNGKey(0), z)["params"])
    out_scan = forward(scanned)(params, z)
    out_loop = forward(unrolled)(per_layer, z)
    np.testing.assert_allclose(np.asarray(out_scan), np.asarray(out_loop), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_same_outputs_and_gradients(scan):
    z = randn(2, 4, 8, seed=7)
    plain = Encoder(depth=2, num_heads=2, mlp_dim=16, scan=scan)
    remat = Encoder(depth=2, num_heads=2, mlp_dim=16, scan=scan, remat=True)
    params = random_params(plain, z, seed=8)

    def loss_and_grads(module):
        def loss(p, x):
            out = module.apply({"params": p}, x)
            return jnp.sum(out ** 2), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, z)

    (_, out_plain), g_plain = loss_and_grads(plain)
    (_, out_remat), g_remat = loss_and_grads(remat)
    np.testing.assert_allclose(np.asarray(out_remat), np.asarray(out_plain), atol=1e-6)
    flat_plain, tree_plain = jax.tree_util.tree_flatten(g_plain)
    flat_remat, tree_remat = jax.tree_util.tree_flatten(g_remat)
    assert tree_plain == tree_remat
    for a, b in zip(flat_plain, flat_remat):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)
    assert any(np.abs(np.asarray(a)).max() > 0 for a in flat_plain)


def test_remat_train_mode_with_drop_path():
    # remat must keep the random draws: same key -> same outputs as without remat.
    z = randn(4, 4, 8, seed=9)
    for scan in (False, True):
        kw = dict(depth=2, num_heads=2, mlp_dim=16, dropout=0.2, drop_path=0.5, scan=scan)
        params = random_params(Encoder(**kw), z, seed=10)
        key = dropout_key(3)
        a = forward(Encoder(**kw), train=True)(params, z, key)
        b = forward(Encoder(remat=True, **kw), train=True)(params, z, key)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def _hlo_size(depth, scan, compiled=False):
    z = jax.ShapeDtypeStruct((2, 4, 8), jnp.float32)
    encoder = Encoder(depth=depth, num_heads=2, mlp_dim=16, scan=scan)
    variables = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), z)
    lowered = jax.jit(encoder.apply).lower(variables, z)
    return len(lowered.compile().as_text() if compiled else lowered.as_text())


def test_scan_compile_cost_does_not_grow_with_depth():
    scan_2, scan_8 = _hlo_size(2, scan=True), _hlo_size(8, scan=True)
    loop_2, loop_8 = _hlo_size(2, scan=False), _hlo_size(8, scan=False)
    assert abs(scan_8 - scan_2) <= 0.02 * scan_2, (scan_2, scan_8)
    assert loop_8 > 2.5 * loop_2, (loop_2, loop_8)  # the unrolled program holds one copy per block
    assert scan_8 < 0.5 * loop_8
    compiled_2, compiled_8 = _hlo_size(2, scan=True, compiled=True), _hlo_size(8, scan=True, compiled=True)
    assert abs(compiled_8 - compiled_2) <= 0.02 * compiled_2, (compiled_2, compiled_8)


def test_encoder_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        jax.eval_shape(Encoder(depth=0, num_heads=2, mlp_dim=16).init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)))


# --- dropout and stochastic depth ------------------------------------------------------------------

@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("rates", [dict(dropout=0.3), dict(drop_path=0.5)])
def test_train_mode_is_random_eval_is_deterministic(scan, rates):
    z = randn(8, 4, 8, seed=11)
    encoder = Encoder(depth=3, num_heads=2, mlp_dim=16, scan=scan, **rates)
    params = random_params(encoder, z, seed=12)
    eval_a = forward(encoder)(params, z)
    eval_b = encoder.apply({"params": params}, z, rngs={"dropout": dropout_key(5)})
    np.testing.assert_allclose(np.asarray(eval_a), np.asarray(eval_b), atol=1e-6)
    train_fn = forward(encoder, train=True)
    train = lambda seed: np.asarray(train_fn(params, z, dropout_key(seed)))  # noqa: E731
    train_1, train_1_again, train_2 = train(1), train(1), train(2)
    assert np.abs(train_1 - np.asarray(eval_a)).max() > 1e-3
    assert np.abs(train_1 - train_2).max() > 1e-3
    np.testing.assert_array_equal(train_1, train_1_again)  # reproducible from the key


def test_drop_path_zeroes_whole_examples():
    rate, batch = 0.3, 2000
    x = jnp.ones((batch, 3, 5))
    y = np.asarray(drop_path(x, rate, jax.random.PRNGKey(0)))
    dropped = np.all(y == 0.0, axis=(1, 2))
    kept = np.all(np.isclose(y, 1.0 / (1.0 - rate)), axis=(1, 2))
    assert np.all(dropped | kept)  # every example is either zeroed or rescaled as a whole
    # Binomial(2000, 0.3): standard deviation of the fraction ≈ 0.01.
    assert abs(dropped.mean() - rate) < 0.04
    assert abs(y.mean() - 1.0) < 0.06  # the rescaling keeps the expectation
    # A traced rate (as inside nn.scan) behaves the same.
    y_traced = np.asarray(jax.jit(drop_path)(x, jnp.float32(rate), jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(y_traced, y)


def test_block_drop_path_acts_per_example():
    # Identical examples through one block with drop path only: each example keeps or drops each of the two
    # residual branches as a whole, so at most 4 distinct outputs, one of them the untouched input.
    z = jnp.broadcast_to(randn(1, 4, 8, seed=13), (64, 4, 8))
    block = EncoderBlock(num_heads=2, mlp_dim=16)
    params = random_params(block, z, seed=14)
    out = np.asarray(block.apply({"params": params}, z, False, 0.5, rngs={"dropout": jax.random.PRNGKey(0)}))
    distinct = np.unique(np.round(out.reshape(64, -1), 5), axis=0)
    assert 2 <= len(distinct) <= 4
    assert np.any(np.all(np.isclose(out, np.asarray(z[:1]), atol=1e-6), axis=(1, 2)))
    # Eval ignores the rate.
    np.testing.assert_allclose(np.asarray(block.apply({"params": params}, z, True, 0.5)),
                               np.asarray(block.apply({"params": params}, z)), atol=0)
