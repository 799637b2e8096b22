"""Token and patch embeddings, E = X U_e, against naive numpy versions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.nn import PatchEmbedding, SequenceEmbedding, TokenEmbedding, patchify


def naive_patchify(images, p):
    """(B, H, W, C) -> (B, H/P, W/P, P·P·C), each patch flattened in (row, column, channel) order."""
    b, h, w, c = images.shape
    out = np.zeros((b, h // p, w // p, p * p * c), images.dtype)
    for n in range(b):
        for i in range(h // p):
            for j in range(w // p):
                patch = images[n, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # (P, P, C)
                out[n, i, j] = [patch[r, s, ch] for r in range(p) for s in range(p) for ch in range(c)]
    return out


def test_patchify_matches_loop():
    images = np.random.default_rng(0).normal(size=(2, 12, 8, 3)).astype(np.float32)
    out = np.asarray(patchify(jnp.asarray(images), 4))
    assert out.shape == (2, 3, 2, 48)
    np.testing.assert_array_equal(out, naive_patchify(images, 4))


@pytest.mark.parametrize("shape,p", [((1, 10, 8, 3), 4), ((1, 8, 10, 3), 4), ((2, 7, 7, 1), 2)])
def test_patchify_rejects_indivisible(shape, p):
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        patchify(jnp.zeros(shape), p)


def _random_variables(module, *inputs, seed=0):
    """Variables of the module's own shapes filled with random values
    (the bias is zero-initialized, which would hide bugs)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def test_patch_embedding_conv_equals_dense_and_numpy():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 12, 3)), jnp.float32)
    conv = PatchEmbedding(patch_size=4, dim=5, formulation="conv")
    dense = PatchEmbedding(patch_size=4, dim=5, formulation="dense")
    variables = _random_variables(conv, images, seed=2)
    # Both formulations declare the same parameters.
    assert jax.eval_shape(dense.init, jax.random.PRNGKey(1), images) == jax.eval_shape(
        conv.init, jax.random.PRNGKey(1), images)

    y_conv = np.asarray(conv.apply(variables, images))
    y_dense = np.asarray(dense.apply(variables, images))
    assert y_conv.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(y_conv, y_dense, atol=1e-4, rtol=1e-5)

    # E = X U_e + b with X the naive patches and U_e the kernel as a (P·P·C, D) matrix.
    kernel = np.asarray(variables["params"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["bias"], np.float64)
    x = naive_patchify(np.asarray(images, np.float64), 4)
    expected = x @ kernel.reshape(4 * 4 * 3, 5) + bias
    np.testing.assert_allclose(y_conv, expected, atol=1e-4, rtol=1e-5)


def test_patch_embedding_rejects_indivisible_image():
    module = PatchEmbedding(patch_size=4, dim=5)
    with pytest.raises(ValueError, match="10x8 is not divisible by the patch size 4"):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 10, 8, 3)))


def test_patch_embedding_unknown_formulation():
    module = PatchEmbedding(patch_size=2, dim=4, formulation="fft")
    with pytest.raises(ValueError, match="fft"):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))


def test_token_embedding_is_one_hot_times_table():
    vocab, dim = 11, 6
    ids = jnp.array([[0, 3, 10, 3], [7, 7, 1, 2]])
    module = TokenEmbedding(vocab, dim)
    variables = module.init(jax.random.key(0, impl="rbg"), ids)
    table = np.asarray(variables["params"]["embedding"], np.float64)
    assert table.shape == (vocab, dim)
    one_hot = np.eye(vocab)[np.asarray(ids)]  # (B, T, V)
    np.testing.assert_allclose(np.asarray(module.apply(variables, ids)), one_hot @ table, atol=1e-7)


def test_token_embedding_rejects_float_ids():
    with pytest.raises(TypeError, match="integer"):
        jax.eval_shape(TokenEmbedding(4, 2).init, jax.random.PRNGKey(0), jnp.zeros((1, 3)))


def test_sequence_embedding_sinusoidal_is_table_rows_plus_formula():
    vocab, dim, t = 9, 8, 5
    ids = jnp.array([[1, 8, 0, 4, 4]])
    module = SequenceEmbedding(vocab, dim, max_len=16, positions="sinusoidal")
    variables = module.init(jax.random.key(0, impl="rbg"), ids)
    # Only U_e is learned with sinusoidal positions.
    assert list(variables["params"]) == ["tokens"]
    table = np.asarray(variables["params"]["tokens"]["embedding"], np.float64)
    # p_s = [sin(ω_1 s), cos(ω_1 s), …], ω_k = 1/10000^(2k/D), k = 1 … D/2
    omega = [1 / 10000 ** (2 * k / dim) for k in range(1, dim // 2 + 1)]
    positions = np.array([[f(w * s) for w in omega for f in (math.sin, math.cos)] for s in range(t)])
    expected = table[np.asarray(ids[0])] + positions
    np.testing.assert_allclose(np.asarray(module.apply(variables, ids))[0], expected, atol=1e-6)


def test_sequence_embedding_learned_and_errors():
    ids = jnp.array([[1, 2, 3]])
    module = SequenceEmbedding(5, 4, max_len=6, positions="learned")
    variables = module.init(jax.random.key(0, impl="rbg"), ids)
    table = np.asarray(variables["params"]["tokens"]["embedding"])
    pos = np.asarray(variables["params"]["pos_embedding"])
    assert pos.shape == (1, 6, 4)
    np.testing.assert_allclose(np.asarray(module.apply(variables, ids)), table[[1, 2, 3]][None] + pos[:, :3], atol=1e-6)
    with pytest.raises(ValueError, match="max_len=6"):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 7), jnp.int32))
    with pytest.raises(ValueError, match="rotary"):
        jax.eval_shape(SequenceEmbedding(5, 4, max_len=6, positions="rotary").init, jax.random.PRNGKey(0), ids)
