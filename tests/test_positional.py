"""Sinusoidal positional encodings against the lecture's formula, written out independently here."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import vitsam
from vitsam.nn import LearnedPositionEmbedding, sinusoidal_encoding, sinusoidal_encoding_2d


def lecture_encoding(num_tokens, dim):
    """p_t = [sin(ω_1 t), cos(ω_1 t), …, sin(ω_{D/2} t), cos(ω_{D/2} t)], ω_k = 1/10000^(2k/D), k = 1…D/2."""
    table = np.zeros((num_tokens, dim))
    for t in range(num_tokens):
        for k in range(1, dim // 2 + 1):
            omega = 1.0 / 10000 ** (2 * k / dim)
            table[t, 2 * (k - 1)] = math.sin(omega * t)
            table[t, 2 * (k - 1) + 1] = math.cos(omega * t)
    return table


def test_public_api_shape():
    assert vitsam.nn.sinusoidal_encoding(50, 128).shape == (50, 128)


@pytest.mark.parametrize("num_tokens,dim", [(1, 2), (7, 4), (50, 128), (33, 10)])
def test_matches_lecture_formula(num_tokens, dim):
    enc = np.asarray(sinusoidal_encoding(num_tokens, dim))
    assert enc.shape == (num_tokens, dim)
    assert enc.dtype == np.float32
    np.testing.assert_allclose(enc, lecture_encoding(num_tokens, dim), atol=1e-6, rtol=0)


def test_first_position_is_zeros_and_ones():
    # t = 0: every sin is 0 and every cos is 1.
    enc = np.asarray(sinusoidal_encoding(3, 8))
    np.testing.assert_array_equal(enc[0, 0::2], 0.0)
    np.testing.assert_array_equal(enc[0, 1::2], 1.0)


def test_values_bounded():
    enc = np.asarray(sinusoidal_encoding(500, 64))
    assert np.all(enc >= -1.0) and np.all(enc <= 1.0)
    assert enc.min() < -0.99 and enc.max() > 0.99  # the fast frequencies do sweep the full range


def test_gram_matrix_depends_only_on_offset():
    t, d = 40, 32
    enc = np.asarray(sinusoidal_encoding(t, d), dtype=np.float64)
    gram = enc @ enc.T
    # (P Pᵀ)[i, j] = Σ_k sin(ω_k i) sin(ω_k j) + cos(ω_k i) cos(ω_k j) = Σ_k cos(ω_k (i − j)).
    omega = 1.0 / 10000.0 ** (2.0 * np.arange(1, d // 2 + 1) / d)
    offsets = np.arange(t)[:, None] - np.arange(t)[None, :]
    closed_form = np.cos(offsets[..., None] * omega).sum(-1)
    np.testing.assert_allclose(gram, closed_form, atol=1e-4)
    for s in (1, 5, 17):
        np.testing.assert_allclose(gram[:-s, :-s], gram[s:, s:], atol=1e-4)
    # Symmetric in the offset, and maximal (= D/2) on the diagonal.
    np.testing.assert_allclose(np.diag(gram), d / 2, atol=1e-4)


def test_dtype_argument():
    assert sinusoidal_encoding(4, 8, jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("dim", [3, 7, 1])
def test_odd_dim_rejected(dim):
    with pytest.raises(ValueError, match=rf"\b{dim}\b"):
        sinusoidal_encoding(5, dim)


def test_non_positive_tokens_rejected():
    with pytest.raises(ValueError, match="num_tokens"):
        sinusoidal_encoding(0, 8)


def test_2d_shape_and_halves():
    h, w, d = 3, 5, 16
    enc = np.asarray(sinusoidal_encoding_2d(h, w, d))
    assert enc.shape == (h, w, d)
    rows, cols = lecture_encoding(h, d // 2), lecture_encoding(w, d // 2)
    for i in range(h):
        for j in range(w):
            np.testing.assert_allclose(enc[i, j, : d // 2], rows[i], atol=1e-6)
            np.testing.assert_allclose(enc[i, j, d // 2:], cols[j], atol=1e-6)
    # Different grid cells get different codes.
    flat = enc.reshape(h * w, d)
    assert len({tuple(np.round(r, 5)) for r in flat}) == h * w


@pytest.mark.parametrize("dim", [6, 10, 2])
def test_2d_dim_not_multiple_of_4_rejected(dim):
    with pytest.raises(ValueError, match=rf"\b{dim}\b"):
        sinusoidal_encoding_2d(2, 2, dim)


def test_learned_position_embedding_adds_its_table():
    import jax

    module = LearnedPositionEmbedding()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 8)), jnp.float32)
    variables = module.init(jax.random.key(1, impl="rbg"), x)  # rbg: compiles faster than threefry on CPU
    table = np.asarray(variables["params"]["pos_embedding"])
    assert table.shape == (1, 6, 8)
    assert np.std(table) > 0  # random init, not zeros
    np.testing.assert_allclose(np.asarray(module.apply(variables, x)), np.asarray(x) + table, atol=1e-6)
