"""SAM 2's memory encoder: size, key map and behaviour (default suite), numerical parity with the official
sam2 `MemoryEncoder` (parity).

Run the parity part with: pytest -m parity tests/test_sam2_memory_encoder.py -s
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.convert.sam2 import memory_encoder_key_map
from vitsam.models.sam2.memory_encoder import MemoryEncoder
from vitsam.params import abstract_init, count_params, flatten_paths

# The official MemoryEncoder of sam2.1_hiera_{t,s,b+,l}.yaml (all four share it), counted with sam2 1.1.0:
# sum(p.numel() for p in MemoryEncoder(64, MaskDownSampler(3, 2, 1), Fuser(CXBlock(256, 7, 3), 2), ...).parameters())
OFFICIAL_PARAMS = 1_384_608
MAX_REL_ERR = 1e-4


def _shapes(model, side):
    """Abstract inputs: features (1, side, side, in_dim), masks (1, 16 side, 16 side, 1)."""
    s = model.mask_total_stride
    return (jax.ShapeDtypeStruct((1, side, side, model.in_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, s * side, s * side, 1), jnp.float32))


def test_param_count_matches_official():
    model = MemoryEncoder()
    variables = abstract_init(model, *_shapes(model, 4))
    assert set(variables) == {"params"}
    assert count_params(variables) == OFFICIAL_PARAMS


def test_key_map_fills_every_param_once():
    for model in (MemoryEncoder(), MemoryEncoder(32, 32, num_fuser_layers=3, fuser_input_projection=True,
                                                 layer_scale_init_value=0.0)):
        params = flatten_paths(abstract_init(model, *_shapes(model, 4)))
        entries = memory_encoder_key_map(model)
        paths = [path for path, _, _ in entries]
        assert sorted(paths) == sorted(params)
        keys = [k for _, ks, _ in entries for k in ks]
        assert len(keys) == len(set(keys))


def test_output_shape_and_mask_sigmoid_skip():
    # A small encoder (mask stride 4: two downsampling stages) under one jit, to keep the compile short.
    model = MemoryEncoder(out_dim=8, in_dim=16, num_fuser_layers=1, mask_total_stride=4)
    kf, km = jax.random.split(jax.random.PRNGKey(0))
    feats = jax.random.normal(kf, (2, 3, 5, 16))
    logits = 4.0 * jax.random.normal(km, (2, 12, 20, 1))

    @jax.jit
    def run(feats, logits):
        variables = model.init(jax.random.PRNGKey(1), feats, logits)
        return (model.apply(variables, feats, logits),
                model.apply(variables, feats, jax.nn.sigmoid(logits), skip_mask_sigmoid=True),
                model.apply(variables, feats, logits, skip_mask_sigmoid=True))

    out, squashed_skipped, logits_skipped = run(feats, logits)
    assert out.shape == (2, 3, 5, 8)
    # Skipping the sigmoid on sigmoid(logits) is the same as applying it to the logits, and not the same as
    # skipping it on the logits.
    np.testing.assert_allclose(squashed_skipped, out, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits_skipped, out, atol=1e-3)


# ---- parity with the official sam2 MemoryEncoder ----


def _rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _convert(state_dict, model, expected):
    """Official state dict -> our variables with the key map: every key consumed, every param filled."""
    variables, used = {}, set()
    for path, keys, fn in memory_encoder_key_map(model):
        value = fn(*(state_dict[k] for k in keys))
        want = expected
        for p in path:
            want = want[p]
        assert value.shape == want.shape, (path, value.shape, want.shape)
        node = variables
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
        used.update(keys)
    assert used == set(state_dict), sorted(set(state_dict) - used)
    assert set(flatten_paths(variables)) == set(flatten_paths(expected))
    return variables


@pytest.mark.parity
def test_parity_with_official():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler
    from sam2.modeling.memory_encoder import MemoryEncoder as OfficialMemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    # The memory_encoder section of configs/sam2.1/sam2.1_hiera_t.yaml.
    official = OfficialMemoryEncoder(
        out_dim=64,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=2),
        position_encoding=PositionEmbeddingSine(num_pos_feats=64, normalize=True, scale=None, temperature=10000),
    ).eval()
    # Every tensor random; weights scaled by their fan-in so activations stay O(1), norms near identity, and
    # the layer scales O(1) (at their 1e-6 init the ConvNeXt blocks would be invisible).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in official.named_parameters():
            r = torch.randn(t.shape, generator=gen)
            if name.endswith("gamma"):
                t.copy_(1 + 0.3 * r)
            elif t.ndim == 1 and ("norm" in name or name.startswith("mask_downsampler.encoder.")) \
                    and name.endswith("weight"):
                t.copy_(1 + 0.1 * r)
            elif t.ndim == 1:
                t.copy_(0.1 * r)
            else:
                t.copy_(r / np.sqrt(np.prod(t.shape[1:])))
    state = {f"memory_encoder.{k}": v.numpy() for k, v in official.state_dict().items()}  # checkpoint keys

    model = MemoryEncoder(out_dim=64, in_dim=256, num_fuser_layers=2)
    side = 16
    variables = _convert(state, model, abstract_init(model, *_shapes(model, side)))
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, side, side, 256)).astype(np.float32)
    masks = (4 * rng.standard_normal((1, 16 * side, 16 * side, 1))).astype(np.float32)
    apply = jax.jit(model.apply, static_argnames="skip_mask_sigmoid")
    for skip in (False, True):
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = official(torch.from_numpy(feats).permute(0, 3, 1, 2), torch.from_numpy(masks).permute(0, 3, 1, 2),
                           skip_mask_sigmoid=skip)["vision_features"].permute(0, 2, 3, 1).numpy()
        ours = apply(variables, jnp.asarray(feats), jnp.asarray(masks), skip_mask_sigmoid=skip)
        err = _rel_err(ours, ref)
        print(f"skip_mask_sigmoid={skip}: rel err {err:.2e}, max |ref| {np.abs(ref).max():.3g} "
              f"({time.perf_counter() - t0:.1f} s)")
        assert err < MAX_REL_ERR
