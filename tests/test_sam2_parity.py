"""The whole SAM 2.1 model against the official `sam2` 1.1.0 (`pytest -m parity`): an official hiera_t at 256 px
with every tensor randomized, converted with `sam2_state_dict_to_variables`; image features, the heads, and a
tracking sequence of official `track_step` calls (two objects, memories and object pointers) reproduced step
by step."""

import numpy as np
import pytest

pytestmark = pytest.mark.parity

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sam2_fixtures import official_and_ours  # noqa: E402
from vitsam.convert.sam2 import sam2_variables_to_state_dict  # noqa: E402
from vitsam.models.sam2.memory_bank import MemoryLayout, plan_memory  # noqa: E402

SIZE = 256


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)


@pytest.fixture(scope="module")
def pair():
    return official_and_ours(SIZE)


def test_round_trip_gives_the_official_state_dict(pair):
    official, model, variables = pair
    back = sam2_variables_to_state_dict(variables, model)
    state = official.state_dict()
    assert set(back) == set(state)
    for k, v in back.items():
        np.testing.assert_array_equal(v, state[k].numpy().reshape(v.shape), err_msg=k)


def official_features(official, image):
    out = official.forward_image(image)
    _, feats, pos, sizes = official._prepare_backbone_features(out)
    return out, feats, pos, sizes


def expand(seq, b):
    return [x.expand(-1, b, -1) for x in seq]


def test_image_features_and_heads(pair):
    official, model, variables = pair
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        out, feats, pos, sizes = official_features(official, torch.tensor(image).permute(0, 3, 1, 2))
    ours = model.apply(variables, jnp.asarray(image), method=model.encode_image)
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    assert rel(ours.vision, nhwc(out["backbone_fpn"][2])) < 1e-4
    assert rel(ours.high_res[0], nhwc(out["backbone_fpn"][0])) < 1e-4
    assert rel(ours.high_res[1], nhwc(out["backbone_fpn"][1])) < 1e-4
    assert rel(ours.vision_pos, nhwc(out["vision_pos_enc"][2])[0]) < 1e-5

    # The heads on the first frame: one click each for two objects (multimask), then two clicks (single mask).
    for coords, labels, multimask in [([[[60.0, 80.0]], [[200.0, 30.0]]], [[1], [1]], True),
                                      ([[[60.0, 80.0], [100.0, 90.0]], [[200.0, 30.0], [10, 10]]], [[1, 0], [1, 1]],
                                       False)]:
        coords, labels = np.array(coords, np.float32), np.array(labels, np.int32)
        high = [f.permute(1, 2, 0).reshape(1, -1, *s).expand(2, -1, -1, -1) for f, s in zip(feats[:-1], sizes[:-1])]
        pix = (feats[-1] + official.no_mem_embed).permute(1, 2, 0).reshape(1, -1, *sizes[-1]).expand(2, -1, -1, -1)
        with torch.no_grad():
            ref = official._forward_sam_heads(pix, {"point_coords": torch.tensor(coords),
                                                    "point_labels": torch.tensor(labels)}, None, high, multimask)
        heads = model.apply(variables, model.apply(variables, ours.vision, method=model.no_memory).repeat(2, 0),
                            tuple(h.repeat(2, 0) for h in ours.high_res), jnp.asarray(coords), jnp.asarray(labels),
                            None, multimask, method=model.sam_heads)
        assert rel(heads.multi_masks, ref[0].numpy()) < 1e-4
        assert rel(heads.multi_iou, ref[2].numpy()) < 1e-4
        assert rel(heads.masks, ref[3][:, 0].numpy()) < 1e-4
        assert rel(heads.obj_ptr, ref[5].numpy()) < 1e-4
        assert rel(heads.object_score, ref[6][:, 0].numpy()) < 1e-4


def test_tracking_steps_match_official_track_step(pair):
    """Frame 0: a click per object (an initial conditioning frame); frames 1-4 tracked from the memories,
    with a correction click on frame 3 for object 1 (a second conditioning frame)."""
    official, model, variables = pair
    num_frames, b = 5, 2
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(num_frames, SIZE, SIZE, 3)).astype(np.float32)
    clicks = {0: (np.array([[[60.0, 80.0]], [[200.0, 30.0]]], np.float32), np.ones((2, 1), np.int32)),
              3: (np.array([[[64.0, 64.0]], [[120.0, 140.0]]], np.float32), np.array([[1], [0]], np.int32))}
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))
    stored = {}  # frame -> (memory (B, h, w, C), pointer (B, D))
    layout = MemoryLayout.for_cond_frames(2, num_maskmem=model.num_maskmem)

    for t in range(num_frames):
        with torch.no_grad():
            _, feats, pos, sizes = official_features(official, torch.tensor(frames[t:t + 1]).permute(0, 3, 1, 2))
            point_inputs = None
            if t in clicks:
                point_inputs = {"point_coords": torch.tensor(clicks[t][0]), "point_labels": torch.tensor(clicks[t][1])}
            ref = official.track_step(t, t == 0, expand(feats, b), expand(pos, b), sizes, point_inputs, None,
                                      output_dict, num_frames)
        key = "cond_frame_outputs" if t in clicks else "non_cond_frame_outputs"
        output_dict[key][t] = ref

        f = encode(variables, jnp.asarray(frames[t:t + 1]))
        vision = jnp.repeat(f.vision, b, 0)
        high = tuple(jnp.repeat(h, b, 0) for h in f.high_res)
        kwargs = dict(multimask_output=model.multimask_for(clicks[t][0].shape[1] if t in clicks else 0))
        args = [None] * 6
        if t > 0:
            plan = plan_memory(t, [c for c in clicks if c < t], [s for s in stored if s not in clicks], num_frames,
                               model.num_maskmem, model.max_obj_ptrs_in_encoder)
            mem_slots, ptr_slots = layout.place(plan)
            zeros_m, zeros_p = jnp.zeros_like(stored[0][0]), jnp.zeros_like(stored[0][1])
            memories = jnp.stack([stored[s[0]][0] if s else zeros_m for s in mem_slots], axis=1)
            tpos = jnp.asarray([[s[1] if s else 0 for s in mem_slots]] * b, jnp.int32)
            valid = jnp.asarray([[s is not None for s in mem_slots]] * b)
            ptrs = jnp.stack([stored[s[0]][1] if s else zeros_p for s in ptr_slots], axis=1)
            offsets = jnp.asarray([[s[1] if s else 0 for s in ptr_slots]] * b, jnp.float32)
            ptr_valid = jnp.asarray([[s is not None for s in ptr_slots]] * b)
            args = [memories, tpos, valid, ptrs, offsets, ptr_valid]
            kwargs["max_ptr_offset"] = min(num_frames, model.max_obj_ptrs_in_encoder) - 1
        coords = labels = None
        if t in clicks:
            coords, labels = jnp.asarray(clicks[t][0]), jnp.asarray(clicks[t][1])
        heads, memory = model.apply(variables, vision, f.vision_pos, high, *args, coords, labels, None,
                                    method=model.track, **kwargs)
        stored[t] = (memory, heads.obj_ptr)

        assert rel(heads.masks, ref["pred_masks"][:, 0].numpy()) < 1e-3, t
        assert rel(heads.obj_ptr, ref["obj_ptr"].numpy()) < 1e-3, t
        assert rel(heads.object_score, ref["object_score_logits"][:, 0].numpy()) < 1e-3, t
        ref_mem = ref["maskmem_features"].permute(0, 2, 3, 1).numpy()
        assert rel(memory, ref_mem) < 1e-3, t
        # The masks themselves: the same pixels above 0.
        assert np.mean((np.asarray(heads.masks) > 0) == (ref["pred_masks"][:, 0].numpy() > 0)) > 0.999, t


def test_mask_as_output(pair):
    """A given mask (add_new_mask) used as the frame's output: the official `_use_mask_as_output`."""
    official, model, variables = pair
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[0, 40:150, 30:90] = True  # the second object's mask is empty: "no object"
    with torch.no_grad():
        _, feats, _, sizes = official_features(official, torch.tensor(image).permute(0, 3, 1, 2))
        high = [f.permute(1, 2, 0).reshape(1, -1, *s).expand(2, -1, -1, -1) for f, s in zip(feats[:-1], sizes[:-1])]
        pix = feats[-1].permute(1, 2, 0).reshape(1, -1, *sizes[-1]).expand(2, -1, -1, -1)
        ref = official._use_mask_as_output(pix, high, torch.tensor(masks)[:, None].float())
    f = model.apply(variables, jnp.asarray(image), method=model.encode_image)
    out = model.apply(variables, f.vision.repeat(2, 0), tuple(h.repeat(2, 0) for h in f.high_res),
                      jnp.asarray(masks), method=model.mask_as_output)
    assert rel(out.masks, ref[3][:, 0].numpy()) < 1e-5
    assert rel(out.obj_ptr, ref[5].numpy()) < 1e-4
    np.testing.assert_allclose(out.object_score, ref[6][:, 0].numpy())


@pytest.mark.parametrize("config,variant,sam2_1", [("sam2/sam2_hiera_t", "hiera_t", False),
                                                   ("sam2/sam2_hiera_b+", "hiera_b+", False),
                                                   ("sam2.1/sam2.1_hiera_s", "hiera_s", True),
                                                   ("sam2.1/sam2.1_hiera_l", "hiera_l", True)])
def test_key_maps_of_other_official_models(config, variant, sam2_1):
    """SAM 2.0 and the bigger SAM 2.1 models: the official state dict's keys and shapes are exactly the key map's
    (on shapes alone), and the variant inferred from them is the right one."""
    from sam2.build_sam import build_sam2

    from vitsam.convert.sam2 import infer_sam2_variant, sam2_key_map
    from vitsam.models.sam2.sam2 import sam2_init, sam2_variant

    state = build_sam2(f"configs/{config}.yaml", None, device="cpu").state_dict()
    shapes = {k: jax.ShapeDtypeStruct(tuple(v.shape), jnp.float32) for k, v in state.items()}
    assert infer_sam2_variant(shapes) == (variant, {"sam2_1": sam2_1})
    model = sam2_variant(variant, sam2_1=sam2_1)
    expected = jax.eval_shape(lambda r: sam2_init(model, r), jax.random.PRNGKey(0))
    entries = sam2_key_map(model)
    assert sorted(k for _, keys, _ in entries for k in keys) == sorted(shapes)
    for path, keys, fn in entries:
        want = expected
        for p in path:
            want = want[p]
        got = jax.eval_shape(fn, *(shapes[k] for k in keys))
        assert got.shape == want.shape, (path, keys)
