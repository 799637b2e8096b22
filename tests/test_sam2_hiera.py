"""SAM 2's Hiera trunk: parameter counts, bicubic weights, and parity with the official PyTorch module."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.convert.sam2 import hiera_key_map
from vitsam.models.sam.interpolate import cubic_weights, resize_cubic
from vitsam.models.sam2.hiera import HIERA_VARIANTS, Hiera, hiera_variant

# Measured with sam2 1.1.0: `Hiera(**trunk)` for the `trunk` of configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml,
# sum(p.numel() for p in trunk.parameters()).
OFFICIAL_PARAMS = {"t": 26_849_472, "s": 33_947_328, "b+": 68_675_712, "l": 212_149_296}


def _shapes(model: Hiera, size: int = 64):
    return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, size, size, 3))), jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_match_official(name):
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(_shapes(hiera_variant(name))))
    assert count == OFFICIAL_PARAMS[name]


def test_output_shapes():
    model = hiera_variant("t")
    out = jax.eval_shape(lambda r: model.init_with_output(r, jnp.zeros((2, 128, 128, 3)))[0],
                         jax.random.PRNGKey(0))
    assert [o.shape for o in out] == [(2, 32, 32, 96), (2, 16, 16, 192), (2, 8, 8, 384), (2, 4, 4, 768)]
    assert model.channels == [96, 192, 384, 768]


def test_rejects_grid_not_multiple_of_first_window():
    with pytest.raises(ValueError, match="multiple of the first window"):
        jax.eval_shape(lambda r: hiera_variant("t").init(r, jnp.zeros((1, 48, 48, 3))), jax.random.PRNGKey(0))


def _keys_cubic(x, a=-0.75):
    """Keys' cubic convolution kernel at distance x."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _naive_cubic(in_size, out_size):
    """Direct sum over all source samples within distance 2, border-clamped (PyTorch's definition)."""
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = (i + 0.5) * in_size / out_size - 0.5
        for j in range(math.floor(src) - 1, math.floor(src) + 3):
            w[i, min(max(j, 0), in_size - 1)] += _keys_cubic(src - j)
    return w


@pytest.mark.parametrize("sizes", [(7, 16), (8, 8), (14, 64), (16, 7), (5, 3), (1, 4)])
def test_cubic_weights(sizes):
    w = cubic_weights(*sizes)
    assert w.shape == (sizes[1], sizes[0])
    np.testing.assert_allclose(w, _naive_cubic(*sizes), atol=1e-12)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)


def test_cubic_weights_known_values():
    np.testing.assert_array_equal(cubic_weights(8, 8), np.eye(8))
    # 2x upsampling: output 3 reads src = 1.25, so inputs 0..3 sit at distances 1.25, 0.25, 0.75, 1.75
    # (Keys' kernel with a = -0.75, worked out by hand).
    np.testing.assert_allclose(cubic_weights(4, 8)[3], [-0.10546875, 0.87890625, 0.26171875, -0.03515625])


def test_resize_cubic_axis_and_dtype():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 3))
    y = resize_cubic(x, 16, axis=1)
    assert y.shape == (2, 16, 5, 3) and y.dtype == x.dtype
    np.testing.assert_allclose(y, np.einsum("oi,bicd->bocd", cubic_weights(7, 16), np.asarray(x, np.float64)),
                               rtol=1e-5, atol=1e-6)
    assert resize_cubic(x, 5, axis=2) is x
    assert resize_cubic(x.astype(jnp.bfloat16), 9, axis=2).dtype == jnp.bfloat16


def _convert(entries, state, expected):
    """state dict -> variables by the key map; every key used, every variable filled, shapes equal."""
    variables, used = {}, set()
    for path, keys, fn in entries:
        value = fn(*(state[k] for k in keys))
        want = expected
        for p in path:
            want = want[p]
        assert value.shape == want.shape, (path, keys, value.shape, want.shape)
        node = variables
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
        used.update(keys)
    assert used == set(state), sorted(set(state) ^ used)[:5]
    filled = {path for path, _, _ in entries}
    ours = {tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]}
    assert filled == ours, sorted(filled ^ ours)[:5]
    return variables


def _official_trunk(name):
    from sam2.modeling.backbones.hieradet import Hiera as OfficialHiera

    return OfficialHiera(**{k: list(v) if isinstance(v, tuple) else v for k, v in HIERA_VARIANTS[name].items()})


@pytest.mark.parity
def test_parity_with_official_hiera_t():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    torch.manual_seed(0)
    official = _official_trunk("t").eval()
    with torch.no_grad():
        for name, p in official.named_parameters():
            # Weights around ±0.02, norms around 1, biases and position tables nonzero (the defaults are 0).
            if "pos_embed" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.02 + float(name.endswith(("norm1.weight", "norm2.weight"))))
    state = {k: v.numpy() for k, v in official.state_dict().items()}

    # 256 px: a 64x64 grid; windows 8 -> 4 (pooled), 4 -> 2; stage 3 (16x16) pads to 28 in 14-windows and the
    # pooling block's 7-windows; stage 4 (8x8) pads to 14 in 7-windows; the 7x7 background upsamples to 64x64.
    model = hiera_variant("t")
    size = 256
    expected = _shapes(model, size)
    variables = _convert(hiera_key_map(model, prefix="trunk"), {f"trunk.{k}": v for k, v in state.items()},
                         expected)
    image = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = [o.permute(0, 2, 3, 1).numpy() for o in official(torch.from_numpy(image).permute(0, 3, 1, 2))]
    ours = jax.jit(model.apply)(variables, jnp.asarray(image))
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        rel = np.abs(np.asarray(a) - b).max() / np.abs(b).max()
        assert rel < 1e-4, rel


@pytest.mark.parity
@pytest.mark.parametrize("name", ["t", "s", "b+", "l"])
def test_key_map_covers_official_keys(name):
    pytest.importorskip("torch")
    pytest.importorskip("sam2")
    official = _official_trunk(name)  # ~1 s for "l" (the meta device fails in its constructor)
    state = {f"image_encoder.trunk.{k}": jax.ShapeDtypeStruct(tuple(v.shape), jnp.float32)
             for k, v in official.state_dict().items()}
    model = hiera_variant(name)
    expected = _shapes(model)
    jax.eval_shape(lambda s: _convert(hiera_key_map(model), s, expected), state)
    assert sum(math.prod(s.shape) for s in state.values()) == OFFICIAL_PARAMS[name]


@pytest.mark.parity
@pytest.mark.parametrize("sizes", [(7, 16), (8, 8), (7, 64), (14, 16), (16, 7)])
def test_resize_cubic_matches_torch_bicubic(sizes):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    n, m = sizes
    x = np.random.default_rng(0).normal(size=(1, 3, n, n)).astype(np.float32)
    theirs = F.interpolate(torch.from_numpy(x), size=(m, m), mode="bicubic", align_corners=False).numpy()
    xs = jnp.asarray(x.transpose(0, 2, 3, 1))
    ours = resize_cubic(resize_cubic(xs, m, axis=1), m, axis=2)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), theirs, atol=2e-6, rtol=1e-5)


def test_max_pool_is_flax_max_pool_with_its_gradient():
    """The reshaped-cell max (odd remainders dropped) against flax's reduce-window max pool, values and gradient."""
    import flax.linen as nn

    from vitsam.models.sam2.hiera import max_pool

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 3))
    for stride in ((2, 2), (3, 2)):
        def ref(x):
            return nn.max_pool(x, stride, strides=stride, padding="VALID")

        np.testing.assert_array_equal(max_pool(x, stride), ref(x))
        grad = jax.grad(lambda x, f: jnp.sum(jnp.sin(f(x))), argnums=0)
        np.testing.assert_array_equal(grad(x, lambda x: max_pool(x, stride)), grad(x, ref))
    assert max_pool(x, None) is x


@pytest.mark.parametrize("q_stride", [None, (2, 2)])
def test_attention_in_query_chunks_is_attention_at_once(q_stride):
    """`query_chunk` > 0 (one image and head at a time) gives the attention over all queries at once, pooled
    queries included; its gradient too."""
    from vitsam.models.sam2.hiera import MultiScaleAttention

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 8))
    whole = MultiScaleAttention(12, 3, q_stride, query_chunk=0)
    variables = whole.init(jax.random.PRNGKey(1), x)
    queries = 24 if q_stride is None else 6
    for chunk in (1, 3, queries):
        chunked = MultiScaleAttention(12, 3, q_stride, query_chunk=chunk)
        np.testing.assert_allclose(chunked.apply(variables, x), whole.apply(variables, x), atol=1e-5, rtol=1e-5)
    loss = lambda m: lambda v: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
    grads = [jax.grad(loss(m))(variables) for m in (whole, MultiScaleAttention(12, 3, q_stride, query_chunk=3))]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), *grads)
