"""Scaled dot-product and multi-head attention against a naive numpy softmax(Q Kᵀ/√d) V."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.nn import (CHUNK_LOGITS_BYTES, MultiHeadAttention, chunked_attention, dot_product_attention,
                       query_chunk_size)


def softmax_rows(logits):
    """Row-wise softmax over the last axis."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def naive_attention(q, k, v, bias=None, mask=None):
    """Per example and head: A = softmax(Q Kᵀ/√d + bias) with masked logits removed, out = A V.

    q: (B, T, H, d); k, v: (B, S, H, d); bias, mask broadcastable to (B, H, T, S).
    Returns out (B, T, H, d) and A (B, H, T, S), in float64.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    s = k.shape[1]
    bias = np.zeros((b, h, t, s)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b, h, t, s))
    mask = np.ones((b, h, t, s), bool) if mask is None else np.broadcast_to(np.asarray(mask), (b, h, t, s))
    out = np.zeros((b, t, h, d))
    weights = np.zeros((b, h, t, s))
    for n in range(b):
        for j in range(h):
            logits = q[n, :, j] @ k[n, :, j].T / np.sqrt(d) + bias[n, j]  # (T, S)
            logits = np.where(mask[n, j], logits, -np.inf)
            a = softmax_rows(logits)
            weights[n, j] = a
            out[n, :, j] = a @ v[n, :, j]
    return out, weights


def randn(*shape, seed=0):
    """Standard-normal float32 test data (numpy's generator: no per-shape compile as with jax.random)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _qkv(b=2, t=5, s=7, h=3, d=4, seed=0):
    return randn(b, t, h, d, seed=seed), randn(b, s, h, d, seed=seed + 1), randn(b, s, h, d, seed=seed + 2)


def _mask(b, h, t, s, seed=1):
    """A random boolean mask with at least one allowed key per query row (key 0)."""
    mask = np.random.default_rng(seed).random((b, h, t, s)) > 0.5
    mask[..., 0] = True
    return jnp.asarray(mask)


@pytest.mark.parametrize("t,s", [(5, 5), (5, 7), (1, 3)])
def test_matches_naive(t, s):
    q, k, v = _qkv(t=t, s=s)
    out, weights = dot_product_attention(q, k, v, return_weights=True)
    ref_out, ref_weights = naive_attention(q, k, v)
    assert out.shape == q.shape and weights.shape == (2, 3, t, s)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), ref_weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)


def test_with_bias_and_mask():
    q, k, v = _qkv()
    bias = randn(2, 3, 5, 7, seed=5) * 3
    mask = _mask(2, 3, 5, 7)
    for kwargs in (dict(bias=bias), dict(mask=mask), dict(bias=bias, mask=mask)):
        out, weights = dot_product_attention(q, k, v, return_weights=True, **kwargs)
        ref_out, ref_weights = naive_attention(q, k, v, **kwargs)
        np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(weights), ref_weights, atol=1e-6)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    # Masked keys get exactly zero weight.
    _, weights = dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert np.all(np.asarray(weights)[~np.asarray(mask)] == 0.0)


def test_broadcast_bias_and_mask():
    q, k, v = _qkv()
    bias = randn(1, 1, 5, 7, seed=5)  # shared over batch and heads
    mask = jnp.tril(jnp.ones((5, 7), bool))[None, None]  # causal-like, row 0 keeps key 0
    out = dot_product_attention(q, k, v, bias=bias, mask=mask)
    ref_out, _ = naive_attention(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "xla"])
def test_kernels_agree(implementation):
    q, k, v = _qkv(d=8)
    bias = randn(2, 3, 5, 7, seed=5)
    mask = _mask(2, 3, 5, 7)
    for kwargs in (dict(), dict(bias=bias), dict(mask=mask), dict(bias=bias, mask=mask)):
        reference = dot_product_attention(q, k, v, implementation="einsum", **kwargs)
        other = dot_product_attention(q, k, v, implementation=implementation, **kwargs)
        np.testing.assert_allclose(np.asarray(other), np.asarray(reference), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(other), naive_attention(q, k, v, **kwargs)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cudnn_kernel_agrees():
    if jax.default_backend() != "gpu":
        pytest.skip("cudnn attention needs an NVIDIA GPU")
    q, k, v = (a.astype(jnp.bfloat16) for a in _qkv(b=2, t=64, s=64, h=4, d=64))
    reference = dot_product_attention(q, k, v, implementation="einsum")
    out = dot_product_attention(q, k, v, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference, np.float32), atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(out, np.float32), naive_attention(q, k, v)[0], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("chunk", [1, 3, 6])
def test_chunked_attention_matches_naive_with_a_per_chunk_bias(chunk):
    q, k, v = _qkv(t=6, s=7)
    bias = randn(6, 7, seed=5) * 3  # a bias per query row, shared by examples and heads
    seen = []

    def bias_fn(q_chunk, i):
        seen.append(q_chunk.shape)
        return jax.lax.dynamic_slice_in_dim(bias, i * chunk, chunk)

    out = chunked_attention(q, k, v, chunk, bias_fn)
    assert out.shape == q.shape and seen[0] == (chunk, 4)
    np.testing.assert_allclose(np.asarray(out), naive_attention(q, k, v, bias=bias)[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(chunked_attention(q, k, v, chunk)), naive_attention(q, k, v)[0],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        chunked_attention(q, k, v, 4)


def test_query_chunk_size():
    budget = CHUNK_LOGITS_BYTES // 4  # fp32 logits
    assert query_chunk_size(12, 4096, 4096, "cpu") == budget // 4096  # 805 MB in all; 1024 queries a head
    assert query_chunk_size(12, 4096, 4096, "gpu") == 0
    assert query_chunk_size(2, 256, 256, "cpu") == 0  # 0.5 MB: all at once
    assert query_chunk_size(4, 1024, 4096, "cpu") == 1024  # 64 MiB in all, one head's 16 MiB at once
    # The largest multiple of 64 dividing 4096 within budget / 3840 ≈ 1092 queries.
    assert query_chunk_size(12, 4096, 3840, "cpu", step=64) == 1024
    assert query_chunk_size(1, 8, 2 * budget, "cpu", step=2) == 2  # not even one step fits: one step


def test_bad_arguments():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="flash"):
        dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="einsum"):
        dot_product_attention(q, k, v, implementation="xla", return_weights=True)
    with pytest.raises(ValueError, match="incompatible"):
        dot_product_attention(q, k[..., :2], v[..., :2])
    with pytest.raises(ValueError, match=r"\(B, T, H, Dh\)"):
        dot_product_attention(q[0], k[0], v[0])


# --- multi-head attention -------------------------------------------------------------------------

def naive_mha(params, x_q, x_kv, bias=None, mask=None):
    """k single-head attentions from the module's own parameter arrays, concatenated and projected.

    query/key/value kernels (D, H, Dh) with biases (H, Dh); out kernel (H, Dh, D_out), bias (D_out,).
    """
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
    b, t, _ = x_q.shape
    s = x_kv.shape[1]
    num_heads, head_dim = p["query"]["bias"].shape
    bias = np.zeros((b, num_heads, t, s)) if bias is None else np.broadcast_to(bias, (b, num_heads, t, s))
    mask = np.ones((b, num_heads, t, s), bool) if mask is None else np.broadcast_to(mask, (b, num_heads, t, s))
    out = np.zeros((b, t, p["out"]["bias"].shape[0]))
    for n in range(b):
        heads = []
        for j in range(num_heads):
            q = x_q[n] @ p["query"]["kernel"][:, j] + p["query"]["bias"][j]  # (T, Dh)
            k = x_kv[n] @ p["key"]["kernel"][:, j] + p["key"]["bias"][j]  # (S, Dh)
            v = x_kv[n] @ p["value"]["kernel"][:, j] + p["value"]["bias"][j]  # (S, Dh)
            logits = np.where(mask[n, j], q @ k.T / np.sqrt(head_dim) + bias[n, j], -np.inf)
            heads.append(softmax_rows(logits) @ v)
        concat = np.concatenate(heads, axis=-1)  # (T, H·Dh)
        w_out = p["out"]["kernel"].reshape(num_heads * head_dim, -1)  # head-major, matching the concat
        out[n] = concat @ w_out + p["out"]["bias"]
    return out


def _init_random(module, *inputs):
    """Parameters of the module's own shapes filled with random numbers, biases included
    (zero-initialized biases would hide a missing bias term)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def test_mha_self_attention_matches_single_heads():
    x = randn(2, 6, 12, seed=2)
    module = MultiHeadAttention(num_heads=3)
    params = _init_random(module, x)
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes["query"] == {"kernel": (12, 3, 4), "bias": (3, 4)}
    assert shapes["key"]["kernel"] == shapes["value"]["kernel"] == (12, 3, 4)
    assert shapes["out"] == {"kernel": (3, 4, 12), "bias": (12,)}
    out = module.apply({"params": params}, x)
    assert out.shape == (2, 6, 12)
    np.testing.assert_allclose(np.asarray(out), naive_mha(params, x, x), atol=1e-4, rtol=1e-4)


def test_mha_with_bias_and_mask():
    x = randn(2, 6, 8, seed=2)
    module = MultiHeadAttention(num_heads=2)
    params = _init_random(module, x)
    bias = np.asarray(randn(2, 2, 6, 6, seed=3))
    mask = np.asarray(_mask(2, 2, 6, 6))
    out = module.apply({"params": params}, x, bias=jnp.asarray(bias), mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out), naive_mha(params, x, x, bias, mask), atol=1e-4, rtol=1e-4)


def test_mha_cross_attention():
    x_q = randn(2, 4, 8, seed=2)
    x_kv = randn(2, 9, 6, seed=3)  # other length and width
    module = MultiHeadAttention(num_heads=2)
    params = _init_random(module, x_q, x_kv)
    assert params["key"]["kernel"].shape == (6, 2, 4)
    assert params["query"]["kernel"].shape == (8, 2, 4)
    out = module.apply({"params": params}, x_q, x_kv)
    assert out.shape == (2, 4, 8)
    np.testing.assert_allclose(np.asarray(out), naive_mha(params, x_q, x_kv), atol=1e-4, rtol=1e-4)


def test_mha_qkv_features_and_out_features():
    x_q = randn(1, 5, 16, seed=2)
    x_kv = randn(1, 3, 16, seed=3)
    module = MultiHeadAttention(num_heads=4, qkv_features=8, out_features=10)
    params = _init_random(module, x_q, x_kv)
    assert params["query"]["kernel"].shape == (16, 4, 2)
    assert params["out"]["kernel"].shape == (4, 2, 10)
    out = module.apply({"params": params}, x_q, x_kv)
    assert out.shape == (1, 5, 10)
    np.testing.assert_allclose(np.asarray(out), naive_mha(params, x_q, x_kv), atol=1e-4, rtol=1e-4)


def test_mha_heads_must_divide_features():
    with pytest.raises(ValueError, match="not divisible by the number of heads 3"):
        jax.eval_shape(MultiHeadAttention(num_heads=3).init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match="10 is not divisible"):
        module = MultiHeadAttention(num_heads=4, qkv_features=10)
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 8)))


@pytest.mark.parametrize("implementation", ["auto", "xla"])
def test_mha_kernels_agree(implementation):
    x = randn(2, 6, 16, seed=2)
    params = _init_random(MultiHeadAttention(num_heads=2), x)
    ref = MultiHeadAttention(num_heads=2, implementation="einsum").apply({"params": params}, x)
    out = MultiHeadAttention(num_heads=2, implementation=implementation).apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_mha_sow_weights():
    x = randn(2, 6, 8, seed=2)
    x_kv = randn(2, 4, 8, seed=3)
    module = MultiHeadAttention(num_heads=2, sow_weights=True, implementation="xla")
    params = _init_random(module, x, x_kv)
    out, state = module.apply({"params": params}, x, x_kv, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (2, 2, 6, 4)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    # The sown maps are the softmax of the module's own projections.
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    q = np.einsum("btd,dhk->bthk", np.asarray(x, np.float64), p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsd,dhk->bshk", np.asarray(x_kv, np.float64), p["key"]["kernel"]) + p["key"]["bias"]
    np.testing.assert_allclose(np.asarray(weights), softmax_rows(np.einsum("bthk,bshk->bhts", q, k) / 2.0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), naive_mha(params, x, x_kv), atol=1e-4, rtol=1e-4)
    # Without sow_weights nothing is recorded.
    _, state = MultiHeadAttention(num_heads=2).apply({"params": params}, x, x_kv, mutable=["intermediates"])
    assert "attention_weights" not in state.get("intermediates", {})
