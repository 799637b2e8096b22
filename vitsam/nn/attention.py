"""Scaled dot-product attention and the multi-head attention module (self- and cross-attention).

Layout throughout: queries (B, T, H, Dh), keys and values (B, S, H, Dh), the layout of
`jax.nn.dot_product_attention`; an additive bias or boolean mask broadcasts to (B, H, T, S).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("einsum", "auto", "xla", "cudnn")


def dot_product_attention(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    *,
    bias: jnp.ndarray | None = None,
    mask: jnp.ndarray | None = None,
    implementation: str = "einsum",
    return_weights: bool = False,
):
    """softmax(Q Kᵀ / √Dh + bias) V per head, the softmax taken row-wise over the keys.

    Args:
      query: (B, T, H, Dh); key, value: (B, S, H, Dh) (values may be of another width Dv with "einsum").
      bias: optional additive term, broadcastable to (B, H, T, S).
      mask: optional boolean, broadcastable to (B, H, T, S); True means "may attend".
      implementation: "einsum" (plain XLA einsums, the only one that can return the weights),
        or a kernel of `jax.nn.dot_product_attention`: "auto" (JAX picks), "xla", "cudnn"
        (flash attention on NVIDIA GPUs only, a ValueError elsewhere; bf16/fp16 and Dh a multiple of 8,
        else JAX raises).
      return_weights: also return the attention maps A, (B, H, T, S) (einsum only).

    Returns:
      (B, T, H, Dv), or a tuple (output, weights) when `return_weights`.
    """
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            f"attention expects (B, T, H, Dh) arrays, got query {query.shape}, key {key.shape}, value {value.shape}")
    if key.shape[:-1] != value.shape[:-1] or query.shape[-1] != key.shape[-1] or query.shape[-2] != key.shape[-2] \
            or (implementation != "einsum" and value.shape != key.shape):
        raise ValueError(f"incompatible attention shapes: query {query.shape}, key {key.shape}, value {value.shape}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; valid: {IMPLEMENTATIONS}")
    if return_weights and implementation != "einsum":
        raise ValueError("attention weights can only be returned by implementation='einsum'")

    if implementation == "cudnn" and jax.default_backend() != "gpu":
        # Otherwise JAX fails inside the kernel with a bare "cuDNN is not detected".
        raise ValueError(f"attention implementation 'cudnn' needs an NVIDIA GPU with cuDNN, but JAX runs on "
                         f"{jax.default_backend()}: use 'xla' or 'einsum'")

    if implementation != "einsum":
        if implementation == "cudnn" and bias is not None:
            bias = bias.astype(query.dtype)  # cuDNN takes the bias in the inputs' dtype (bf16 / fp16)
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias, mask=mask,
            implementation=None if implementation == "auto" else implementation)

    scale = 1.0 / jnp.sqrt(jnp.asarray(query.shape[-1], jnp.float32))
    logits = jnp.einsum("bthd,bshd->bhts", query, key, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    # Contract to (B, H, T, Dh), then move the heads: asked for "bthd" directly, XLA:CPU computes the
    # transposed product and first transposes the whole (B, H, T, S) weight array (a third slower for SAM's
    # 4096-token global attention).
    out = jnp.einsum("bhts,bshd->bhtd", weights, value).transpose(0, 2, 1, 3)
    return (out, weights) if return_weights else out


# On CPU, attention whose fp32 logits per example pass this many bytes runs in chunks (`chunked_attention`) of
# one head's queries whose logits stay within it.
CHUNK_LOGITS_BYTES = 16 * 2**20


def query_chunk_size(heads: int, queries: int, keys: int, backend: str, step: int = 1) -> int:
    """The chunk `chunked_attention` is given by default: 0 (attend all at once) off CPU or when one example's
    fp32 logits (heads, queries, keys) fit `CHUNK_LOGITS_BYTES`; else the most queries, a multiple of `step`
    that divides `queries`, whose logits for one head, (chunk, keys), stay within it (at least `step`)."""
    if backend != "cpu" or heads * queries * keys * 4 <= CHUNK_LOGITS_BYTES:
        return 0
    fits = [c for c in range(step, queries + 1, step) if queries % c == 0 and c * keys * 4 <= CHUNK_LOGITS_BYTES]
    return max(fits, default=step)


def chunked_attention(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    chunk: int,
    bias_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray] | None = None,
) -> jnp.ndarray:
    """`dot_product_attention` (einsum) for one example and one head at a time, `chunk` queries at a time
    (`jax.lax.map`), so that the (B, H, T, S) logits never exist whole: on CPU, where those spill every cache,
    a head's keys and values stay in the cache for all its chunks.

    Args:
      query: (B, T, H, Dh), T a multiple of `chunk`; key, value: (B, S, H, Dh).
      chunk: queries per step, 0 < chunk <= T.
      bias_fn: optional additive term of one chunk, `bias_fn(q, i)` -> (chunk, S) from the chunk's queries
        (chunk, Dh) and its index i (a traced integer; its queries are i·chunk ... (i + 1)·chunk − 1).

    Returns:
      (B, T, H, Dh).
    """
    b, t, heads, head_dim = query.shape
    s = key.shape[1]
    if not 0 < chunk <= t or t % chunk:
        raise ValueError(f"query chunk {chunk} does not divide the {t} queries")
    scale = 1.0 / jnp.sqrt(jnp.asarray(head_dim, jnp.float32))
    # Head-major layouts made once out here: inside the loops XLA:CPU would transpose the keys and values
    # again for every chunk.
    q_heads = query.transpose(0, 2, 1, 3).reshape(b * heads, t // chunk, chunk, head_dim)
    k_t = key.transpose(0, 2, 3, 1).reshape(b * heads, head_dim, s)
    v_h = value.transpose(0, 2, 1, 3).reshape(b * heads, s, value.shape[-1])

    def one_chunk(q, i, k_t, v_h):
        logits = jnp.matmul(q, k_t, preferred_element_type=jnp.float32) * scale
        if bias_fn is not None:
            logits = logits + bias_fn(q, i).astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1).astype(v_h.dtype) @ v_h

    def one_head(args):
        q, k_t, v_h = args
        return jax.lax.map(lambda c: one_chunk(c[0], c[1], k_t, v_h), (q, jnp.arange(t // chunk)))

    out = jax.lax.map(one_head, (q_heads, k_t, v_h))  # (B·H, T / chunk, chunk, Dv)
    return out.reshape(b, heads, t, -1).transpose(0, 2, 1, 3)


class MultiHeadAttention(nn.Module):
    """k-head attention with Q/K/V projections and an output projection back to D.

    Self-attention: `mha(x)`. Cross-attention: `mha(x_q, x_kv)`, queries from one sequence and keys/values
    from another; `inputs_v=` gives the values a different input than the keys (B, S, D_kv).
    Inputs (B, T, D) and (B, S, D_kv); output (B, T, out_features or D). One side may have a batch of 1
    while the other has B: it is projected once and shared (an image attended by B prompt sets).

    Parameters (the layout of Flax's MultiHeadDotProductAttention and of published ViT checkpoints):
    `query`, `key`, `value` kernels (D, H, Dh) with biases (H, Dh); `out` kernel (H, Dh, D_out), bias (D_out,).
    `qkv_features` sets H·Dh (SAM's decoder shrinks it to 128 in cross-attention).
    `qk_transform(q, k) -> (q, k)`, when given, maps the projected queries (B, T, H, Dh) and keys (B, S, H, Dh)
    before the dot product (SAM 2's rotary position encoding).
    With `sow_weights`, the maps (B, H, T, S) are sown into the "intermediates" collection as
    "attention_weights" (forces the einsum kernel).
    `late_values`: weigh the value inputs (B, S, D_kv) first and project them after, A·(X W_v + b) =
    (A·X) W_v + b (each row of A sums to 1): the same result with D_kv instead of Dh multiply-adds per key and
    value, fewer when the values are narrower than the heads (SAM 2's 64-d memories attended by 256-d heads).
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    implementation: str = "einsum"
    sow_weights: bool = False
    late_values: bool = False
    kernel_init: Callable = nn.initializers.xavier_uniform()
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None = None, *,
                 inputs_v: jnp.ndarray | None = None,
                 bias: jnp.ndarray | None = None, mask: jnp.ndarray | None = None,
                 qk_transform: Callable | None = None) -> jnp.ndarray:
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        inputs_v = inputs_kv if inputs_v is None else inputs_v  # SAM: keys carry a positional term, values not
        if inputs_q.ndim != 3 or inputs_kv.ndim != 3 or inputs_v.shape[1:] != inputs_kv.shape[1:] \
                or len({inputs_q.shape[0], inputs_kv.shape[0], inputs_v.shape[0]} - {1}) > 1:
            raise ValueError(f"MultiHeadAttention expects (B, T, D) inputs, got {inputs_q.shape} and {inputs_kv.shape}"
                             f" (values {inputs_v.shape})")
        features = self.qkv_features or inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"attention dim {features} is not divisible by the number of heads {self.num_heads}")
        head_dim = features // self.num_heads
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (self.num_heads, head_dim), use_bias=self.use_bias, kernel_init=self.kernel_init,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        value = proj("value")
        q, k = proj("query")(inputs_q), proj("key")(inputs_kv)
        if self.late_values:  # every head weighs the raw value inputs (B, S, H, D_kv)
            v = jnp.broadcast_to(inputs_v[:, :, None, :], (*inputs_v.shape[:2], self.num_heads, inputs_v.shape[-1]))
        else:
            v = value(inputs_v)
        if qk_transform is not None:
            q, k = qk_transform(q, k)
        batch = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (jnp.broadcast_to(x, (batch, *x.shape[1:])) for x in (q, k, v))
        impl = "einsum" if self.sow_weights or self.late_values else self.implementation
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl, return_weights=self.sow_weights)
        if self.sow_weights:
            out, weights = out
            self.sow("intermediates", "attention_weights", weights)
        if self.late_values:  # (B, T, H, D_kv) -> each head's projection of its weighted inputs (B, T, H, Dh)
            out = jnp.moveaxis(jnp.diagonal(value(out), axis1=2, axis2=3), -1, 2)
        return nn.DenseGeneral(
            self.out_features or inputs_q.shape[-1], axis=(-2, -1), use_bias=self.use_bias,
            kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
