"""SAM 2's memory attention: size, key map, axial RoPE and padding invariance (default suite), numerical parity
with the official sam2 `MemoryAttention` (parity).

Run the parity part with: pytest -m parity tests/test_sam2_memory_attention.py -s
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.convert.sam2 import memory_attention_key_map
from vitsam.models.sam2.memory_attention import MemoryAttention, axial_rope_angles, rope_queries_keys
from vitsam.params import abstract_init, count_params, flatten_paths

# The official MemoryAttention of sam2.1_hiera_{t,s,b+,l}.yaml (all four share it), counted with sam2 1.1.0:
# sum(p.numel() for p in MemoryAttention(256, True, MemoryAttentionLayer(...), 4).parameters()); it has 106 tensors.
OFFICIAL_PARAMS = 5_922_304
OFFICIAL_TENSORS = 106
MAX_REL_ERR = 1e-4


def _inputs(rng, batch, hw, frames, num_ptr, d_model, kv_dim):
    """Random curr, curr_pos (batch, hw, d_model) and memory, memory_pos (batch, frames·hw + num_ptr, kv_dim)."""
    s = frames * hw + num_ptr
    return (rng.normal(size=(batch, hw, d_model)).astype(np.float32),
            rng.normal(size=(batch, hw, d_model)).astype(np.float32),
            rng.normal(size=(batch, s, kv_dim)).astype(np.float32),
            rng.normal(size=(batch, s, kv_dim)).astype(np.float32))


def _abstract(model, hw=16, frames=1, num_ptr=4):
    shapes = [(1, hw, model.d_model)] * 2 + [(1, frames * hw + num_ptr, model.kv_dim)] * 2
    return abstract_init(model, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes), num_obj_ptr_tokens=num_ptr)


def test_param_count_matches_official():
    variables = _abstract(MemoryAttention())
    assert set(variables) == {"params"}
    assert count_params(variables) == OFFICIAL_PARAMS


def test_key_map_fills_every_param_once():
    model = MemoryAttention()
    entries = memory_attention_key_map(model)
    paths = [p for p, _, _ in entries]
    keys = [k for _, ks, _ in entries for k in ks]
    assert len(paths) == len(set(paths)) and set(paths) == set(flatten_paths(_abstract(model)))
    assert len(keys) == len(set(keys)) == OFFICIAL_TENSORS
    assert all(k.startswith("memory_attention.") for k in keys)


def _rope_reference(x, height, width, theta=10000.0):
    """Complex-number axial RoPE of x (B, h*w, H, Dh): channels (2i, 2i+1) are the complex number z_i, turned by
    x·f_i (first Dh/4 numbers) or y·f_i (last Dh/4), f_i = theta^(-4i/Dh), token t = y·w + x."""
    dh = x.shape[-1]
    f = 1.0 / theta ** (4.0 * np.arange(dh // 4) / dh)
    t = np.arange(height * width)
    angle = np.concatenate([np.outer(t % width, f), np.outer(t // width, f)], axis=1)  # (hw, Dh/2)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angle)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def test_rope_matches_complex_reference():
    rng = np.random.default_rng(0)
    h, w, dh, frames, excluded = 3, 5, 16, 2, 3
    q = rng.normal(size=(2, h * w, 2, dh))
    k = rng.normal(size=(2, frames * h * w + excluded, 2, dh))
    q_rot, k_rot = rope_queries_keys(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), height=h, width=w,
                                     num_k_exclude=excluded)
    np.testing.assert_allclose(q_rot, _rope_reference(q, h, w), atol=1e-5)
    for f in range(frames):  # every memory frame is rotated like the queries
        sl = slice(f * h * w, (f + 1) * h * w)
        np.testing.assert_allclose(k_rot[:, sl], _rope_reference(k[:, sl], h, w), atol=1e-5)
    np.testing.assert_allclose(k_rot[:, -excluded:], k[:, -excluded:], atol=0)  # object pointers untouched


def test_rope_preserves_norms_and_depends_on_offsets_only():
    rng = np.random.default_rng(1)
    h, w, dh = 6, 7, 32
    a, b = rng.normal(size=(2, dh))
    cos, sin = axial_rope_angles(dh, h, w)
    assert cos.dtype == np.float64 and cos.shape == (h * w, dh // 2)
    # the same vector a (as a query) and b (as a key) at every grid position
    qa, kb = rope_queries_keys(jnp.asarray(np.tile(a, (1, h * w, 1, 1)), jnp.float32),
                               jnp.asarray(np.tile(b, (1, h * w, 1, 1)), jnp.float32), height=h, width=w)
    qa, kb = np.asarray(qa)[0, :, 0].reshape(h, w, dh), np.asarray(kb)[0, :, 0].reshape(h, w, dh)
    np.testing.assert_allclose(np.linalg.norm(qa, axis=-1), np.linalg.norm(a), rtol=1e-5)
    dots = np.einsum("yxd,YXd->yxYX", qa, kb)
    for dy, dx in [(0, 0), (1, 0), (0, 2), (-2, 3), (4, -5)]:
        vals = [dots[y, x, y + dy, x + dx] for y in range(h) for x in range(w)
                if 0 <= y + dy < h and 0 <= x + dx < w]
        np.testing.assert_allclose(vals, vals[0], rtol=1e-4, atol=1e-4)
    assert not np.isclose(dots[0, 0, 0, 1], dots[0, 0, 1, 0])  # the two axes turn differently


def test_masked_padding_does_not_change_the_output():
    """A fixed-size bank: a padded frame between the real ones and padded pointer slots (per row), masked."""
    model = MemoryAttention(d_model=32, kv_dim=16, num_layers=1, num_heads=2, mlp_dim=64)
    hw, num_ptr = 16, 4
    rng = np.random.default_rng(2)
    curr, curr_pos, mem, mem_pos = _inputs(rng, 2, hw, 2, num_ptr, 32, 16)

    def pad(x):  # frame 0, a garbage frame, frame 1, then 6 pointer slots of which slots 2 and 5 are garbage
        garbage = lambda n: rng.normal(scale=100.0, size=(2, n, x.shape[2])).astype(np.float32)  # noqa: E731
        return np.concatenate([x[:, :hw], garbage(hw), x[:, hw:2 * hw + 2], garbage(1), x[:, 2 * hw + 2:],
                               garbage(1)], axis=1)

    mask = np.concatenate([np.ones(hw, bool), np.zeros(hw, bool), np.ones(hw, bool), [1, 1, 0, 1, 1, 0]])
    mask = np.stack([mask, mask]).astype(bool)
    mask[1, -3] = False  # row 1 also drops its third real pointer
    keep1 = np.r_[0:2 * hw + 2, 2 * hw + 3]  # row 1's bank without that pointer

    params = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(np.float32), _abstract(model))

    @jax.jit  # one compilation for the four calls
    def run(curr, curr_pos, mem, mem_pos, mem_p, mem_pos_p, mask):
        return (model.apply(params, curr, curr_pos, mem_p, mem_pos_p, 6, mask),
                model.apply(params, curr, curr_pos, mem_p, mem_pos_p, 6),
                model.apply(params, curr[:1], curr_pos[:1], mem[:1], mem_pos[:1], num_ptr),
                model.apply(params, curr[1:], curr_pos[1:], mem[1:, keep1], mem_pos[1:, keep1], num_ptr - 1))

    out, unmasked, ref0, ref1 = run(curr, curr_pos, mem, mem_pos, pad(mem), pad(mem_pos), mask)
    assert out.shape == curr.shape
    np.testing.assert_allclose(out[0], ref0[0], atol=2e-5)
    np.testing.assert_allclose(out[1], ref1[0], atol=2e-5)
    assert not np.allclose(unmasked[0], ref0[0], atol=1e-2)  # the padding does matter when not masked


def test_bad_memory_layout_raises():
    model = MemoryAttention(d_model=32, kv_dim=16, num_layers=1, mlp_dim=64)
    with pytest.raises(ValueError, match="whole frames"):  # 21 = 16 + 4 pointers + 1 stray token
        abstract_init(model, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in
                               [(1, 16, 32), (1, 16, 32), (1, 21, 16), (1, 21, 16)]), num_obj_ptr_tokens=4)
    with pytest.raises(ValueError, match="square"):
        abstract_init(model, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in
                               [(1, 15, 32), (1, 15, 32), (1, 15, 16), (1, 15, 16)]), num_obj_ptr_tokens=0)
    # a non-square grid is fine when given
    abstract_init(model, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in
                           [(1, 15, 32), (1, 15, 32), (1, 34, 16), (1, 34, 16)]), num_obj_ptr_tokens=4, grid=(3, 5))


def _convert(state_dict, model, expected):
    """Official state dict -> our variables with the key map: every key consumed, every param filled."""
    variables, used = {}, set()
    for path, keys, fn in memory_attention_key_map(model, prefix="memory_attention"):
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
    from sam2.modeling.memory_attention import MemoryAttention as TorchMemoryAttention
    from sam2.modeling.memory_attention import MemoryAttentionLayer as TorchLayer
    from sam2.modeling.sam.transformer import RoPEAttention

    # sam2.1_hiera_t.yaml, memory_attention section
    rope = dict(rope_theta=10000.0, feat_sizes=[64, 64], embedding_dim=256, num_heads=1, downsample_rate=1,
                dropout=0.1)
    layer = TorchLayer(activation="relu", cross_attention=RoPEAttention(rope_k_repeat=True, kv_in_dim=64, **rope),
                       d_model=256, dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False,
                       pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
                       self_attention=RoPEAttention(**rope))
    official = TorchMemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=4).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in official.named_parameters():
            p.normal_(0, 0.05)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    state_dict = {f"memory_attention.{k}": v.numpy() for k, v in official.state_dict().items()}
    assert sum(v.size for v in state_dict.values()) == OFFICIAL_PARAMS

    model = MemoryAttention()
    batch, side, frames, num_ptr = 2, 8, 2, 4
    curr, curr_pos, mem, mem_pos = _inputs(np.random.default_rng(3), batch, side * side, frames, num_ptr, 256, 64)
    variables = _convert(state_dict, model, _abstract(model, side * side, frames, num_ptr))

    t0 = time.perf_counter()
    ours = np.asarray(jax.jit(model.apply, static_argnums=5)(variables, curr, curr_pos, mem, mem_pos, num_ptr))
    t1 = time.perf_counter()
    seq_first = lambda a: torch.from_numpy(a).transpose(0, 1)  # noqa: E731 (the official takes (N, B, C))
    with torch.no_grad():
        theirs = official(curr=seq_first(curr), memory=seq_first(mem), curr_pos=seq_first(curr_pos),
                          memory_pos=seq_first(mem_pos), num_obj_ptr_tokens=num_ptr).transpose(0, 1).numpy()
    t2 = time.perf_counter()
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"\nmemory attention {side}x{side} grid, {frames} frames + {num_ptr} pointers, batch {batch}: "
          f"max rel err {rel:.2e}, ours {t1 - t0:.2f} s (with compile), official {t2 - t1:.2f} s")
    assert ours.shape == theirs.shape == (batch, side * side, 256)
    assert rel < MAX_REL_ERR
