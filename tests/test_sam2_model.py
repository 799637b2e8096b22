"""SAM 2 model assembly, converter and memory-bank layout (cheap: shapes, key maps, index logic). Numerical
parity with the official package is in test_sam2_parity.py (`pytest -m parity`)."""

import math

import jax
import numpy as np
import pytest

from vitsam.convert.sam2 import (infer_sam2_variant, sam2_key_map, sam2_state_dict_to_variables,
                                 sam2_variables_to_state_dict)
from vitsam.models.sam2.memory_bank import MemoryLayout, MemoryPlan, plan_memory
from vitsam.models.sam2.sam2 import sam2_init, sam2_variant, sine_1d
from vitsam.params import flatten_paths

# Parameter counts of the official models, measured with sam2 1.1.0:
# sum(p.numel() for p in build_sam2("configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml", None, device="cpu").parameters())
OFFICIAL_COUNTS = {"hiera_t": 38_962_498, "hiera_s": 46_060_354, "hiera_b+": 80_850_178, "hiera_l": 224_446_642}


def shapes(model):
    return jax.eval_shape(lambda r: sam2_init(model, r), jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_the_official(name):
    tree = shapes(sam2_variant(name))["params"]
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(tree)) == OFFICIAL_COUNTS[name]


@pytest.mark.parametrize("name,sam2_1", [("hiera_t", True), ("hiera_t", False), ("tiny", True)])
def test_key_map_fills_every_variable_once(name, sam2_1):
    model = sam2_variant(name, sam2_1=sam2_1)
    entries = sam2_key_map(model)
    paths = [path for path, _, _ in entries]
    keys = [k for _, ks, _ in entries for k in ks]
    assert len(set(paths)) == len(paths) and len(set(keys)) == len(keys)
    assert set(paths) == set(flatten_paths(shapes(model)))
    # SAM 2.0 lacks exactly the temporal projection of the pointers and the spatial no-object embedding.
    assert ("obj_ptr_tpos_proj.weight" in keys) == sam2_1 and ("no_obj_embed_spatial" in keys) == sam2_1


def test_state_dict_round_trip_and_variant_inference():
    model = sam2_variant("tiny")
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes(model))
    state = sam2_variables_to_state_dict(variables, model)
    assert infer_sam2_variant(state) == ("tiny", {"sam2_1": True})
    again, back = sam2_state_dict_to_variables(state)
    assert again == model
    for (path, a), (_, b) in zip(sorted(jax.tree_util.tree_flatten_with_path(variables)[0], key=str),
                                 sorted(jax.tree_util.tree_flatten_with_path(back)[0], key=str)):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    with pytest.raises(ValueError, match="not used"):
        sam2_state_dict_to_variables(dict(state, extra=np.zeros(3)))
    del state["no_obj_embed_spatial"]
    assert infer_sam2_variant(state) == ("tiny", {"sam2_1": False})
    state.pop("image_encoder.trunk.blocks.4.attn.qkv.weight")
    state["image_encoder.trunk.blocks.7.norm1.weight"] = np.ones(256)  # a deeper last stage: no such variant
    with pytest.raises(ValueError, match="unknown SAM 2 trunk"):
        infer_sam2_variant(state)


def test_sine_1d_is_the_transformer_formula():
    pos, dim = np.array([0.0, 0.25, 1.0, 3.0]), 8
    half = dim // 2
    want = np.zeros((4, dim))
    for i, p in enumerate(pos):
        for k in range(half):
            want[i, k] = np.sin(p / 10000 ** (2 * (k // 2) / half))
            want[i, half + k] = np.cos(p / 10000 ** (2 * (k // 2) / half))
    np.testing.assert_allclose(sine_1d(pos, dim), want, atol=1e-6)


def test_plan_memory_follows_the_official_rule():
    # Frame 10, prompted on frame 0, frames 1-9 tracked: the conditioning frame (slot 0) and frames 4-9 (slots
    # 1-6, the latest highest); pointers from frame 0 (distance 10) and frames 9 … 1 (distances 1 … 9).
    plan = plan_memory(10, [0], range(1, 10), num_frames=20)
    assert plan.memories == ((0, 0), (4, 1), (5, 2), (6, 3), (7, 4), (8, 5), (9, 6))
    assert plan.pointers == ((0, 10),) + tuple((10 - d, d) for d in range(1, 10))
    # In reverse from frame 5 with prompts on 9 and 2: memories from frames 6-11 not tracked are skipped;
    # pointers only from conditioning frames not in the past of the reversed order (9), at distance (5 - 9)·(-1).
    plan = plan_memory(5, [9, 2], [6, 7, 8], num_frames=12, reverse=True)
    assert plan.memories == ((2, 0), (9, 0), (8, 4), (7, 5), (6, 6))
    assert plan.pointers == ((9, 4), (6, 1), (7, 2), (8, 3))
    # Pointers stop at the video's start, and at min(num_frames, 16) - 1 frames back.
    assert [t for t, _ in plan_memory(3, [0], [1, 2], num_frames=4).pointers] == [0, 2, 1]
    assert len(plan_memory(40, [0], range(1, 40), num_frames=50).pointers) == 16


def test_memory_layout_pads_to_fixed_slots():
    layout = MemoryLayout.for_cond_frames(3)
    assert (layout.cond_slots, layout.memory_slots, layout.pointer_slots) == (4, 10, 19)
    plan = MemoryPlan(memories=((0, 0), (6, 0), (8, 5), (9, 6)), pointers=((0, 10), (9, 1)))
    mems, ptrs = layout.place(plan)
    assert mems == [(0, 0), (6, 0), None, None, (8, 5), (9, 6), None, None, None, None]
    assert ptrs[:5] == [(0, 10), None, None, None, (9, 1)] and ptrs[5:] == [None] * 14
    with pytest.raises(ValueError, match="do not fit"):
        MemoryLayout(1).place(plan)
    # Fitted to plans: power-of-two counts of conditioning and recent slots (recent at most num_maskmem - 1).
    early = plan_memory(2, [0], [1], num_frames=20)  # frame 0 (conditioning) and frame 1
    assert MemoryLayout.for_plans([early]).memory_slots == 2
    mid = plan_memory(12, [0, 3, 9], range(1, 12), num_frames=20)  # 3 conditioning, 5 recent (6 … 11 minus 9)
    layout = MemoryLayout.for_plans([early, mid])
    assert (layout.cond_slots, layout.recent, layout.memory_slots) == (4, 6, 10)
    assert MemoryLayout.for_plans([plan_memory(4, [0], [1, 2, 3], num_frames=20)]).recent == 4
    assert MemoryLayout.for_plans([plan_memory(19, [0], range(1, 19), num_frames=20)]).recent == 6


@pytest.mark.parity
def test_official_pt_file_loads_and_converts(tmp_path):
    """An official-format checkpoint file ({"model": state dict} saved by torch) loads with load_sam2_checkpoint,
    is recognised as SAM 2 (not SAM, whose keys also start with image_encoder.), and `vitsam convert` turns it
    into a folder that load_model reads back."""
    torch = pytest.importorskip("torch")
    from vitsam.cli import main
    from vitsam.convert import load_model, load_sam2_checkpoint
    from vitsam.models import registry

    model = sam2_variant("tiny")
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes(model))
    state = {k: torch.from_numpy(v) for k, v in sam2_variables_to_state_dict(variables, model).items()}
    path = tmp_path / "sam2.1_tiny.pt"
    torch.save({"model": state}, path)
    assert registry.kind_of_file(path).name == "sam2"
    loaded, back = load_sam2_checkpoint(path)
    assert loaded == model
    np.testing.assert_array_equal(back["params"]["no_obj_ptr"], variables["params"]["no_obj_ptr"])
    assert main(["convert", str(path), str(tmp_path / "converted")]) == 0
    again, back, kind = load_model(tmp_path / "converted")
    assert kind == "sam2" and again.d_model == model.d_model
    np.testing.assert_array_equal(back["params"]["trunk"]["pos_embed"], variables["params"]["trunk"]["pos_embed"])
