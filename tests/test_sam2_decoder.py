"""SAM 2's sine position encoding, FPN neck and the SAM 2 options of the mask decoder.

The default part (a few seconds) checks the encoding against the formula written out here, the parameter
trees (SAM 1's unchanged, SAM 2's covered by the key map) and the stability fallback. The parity part
(`pytest -m parity tests/test_sam2_decoder.py -s`, needs torch and sam2) compares with the official FpnNeck,
PromptEncoder and MaskDecoder built as `SAM2Base._build_sam_heads` builds them for the SAM 2.1 configs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam.convert.sam import mask_decoder_entries
from vitsam.convert.sam2 import mask_decoder_key_map, neck_key_map, prompt_encoder_key_map
from vitsam.models.sam.mask_decoder import MaskDecoder, dynamic_multimask_via_stability
from vitsam.models.sam.prompt_encoder import PromptEncoder
from vitsam.models.sam2.neck import FpnNeck
from vitsam.nn.positional import sine_position_encoding
from vitsam.params import flatten_paths

# The SAM 2.1 decoder (all of `_build_sam_heads`' options, plus the stability fallback of build_sam's overrides).
SAM2_DECODER = dict(pred_obj_scores=True, pred_obj_scores_mlp=True, iou_prediction_use_sigmoid=True,
                    use_high_res_features=True, dynamic_multimask_via_stability=True,
                    use_multimask_token_for_obj_ptr=True)
HIERA_T_CHANNELS = (768, 384, 192, 96)


def detr_sine(height, width, dim, temperature=10000.0):
    """The formula, one value at a time: y = 2π (i + 1) / (H + 1e-6), x likewise; F = dim / 2 channels per axis,
    channel k of an axis is sin(v / T^(2⌊k/2⌋/F)) for even k, cos for odd k; the y channels come first."""
    feats = dim // 2
    out = np.zeros((height, width, dim))
    for i in range(height):
        for j in range(width):
            y = 2 * math.pi * (i + 1) / (height + 1e-6)
            x = 2 * math.pi * (j + 1) / (width + 1e-6)
            for k in range(feats):
                t = temperature ** (2 * (k // 2) / feats)
                f = math.sin if k % 2 == 0 else math.cos
                out[i, j, k] = f(y / t)
                out[i, j, feats + k] = f(x / t)
    return out


@pytest.mark.parametrize("height,width,dim", [(1, 1, 4), (3, 5, 8), (6, 4, 36)])
def test_sine_position_encoding_matches_formula(height, width, dim):
    enc = sine_position_encoding(height, width, dim)
    assert enc.shape == (height, width, dim) and enc.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(enc), detr_sine(height, width, dim), atol=1e-6)
    np.testing.assert_allclose(np.asarray(sine_position_encoding(height, width, dim, temperature=20.0)),
                               detr_sine(height, width, dim, 20.0), atol=1e-6)
    assert sine_position_encoding(height, width, dim, dtype=jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("dim", [2, 6, 0])
def test_sine_position_encoding_rejects_bad_dims(dim):
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position_encoding(4, 4, dim)


def _decoder_shapes(decoder: MaskDecoder, n=1, h=4, w=4):
    d = decoder.dim
    args = (jnp.zeros((n, h, w, d)), jnp.zeros((h, w, d)), jnp.zeros((n, 2, d)), jnp.zeros((n, h, w, d)))
    high_res = None
    if decoder.use_high_res_features:
        high_res = (jnp.zeros((n, 4 * h, 4 * w, d // 8)), jnp.zeros((n, 2 * h, 2 * w, d // 4)))
    shapes = jax.eval_shape(lambda r: decoder.init(r, *args, high_res=high_res), jax.random.PRNGKey(0))
    return {p: tuple(v.shape) for p, v in flatten_paths(shapes).items()}


def test_sam1_decoder_tree_unchanged_and_sam2_tree_covered_by_key_maps():
    small = dict(dim=64, num_heads=4, mlp_dim=128, iou_head_hidden_dim=64)
    sam1 = _decoder_shapes(MaskDecoder(**small))
    # SAM 1's tree is exactly what the SAM 1 key map fills (the key map predates the SAM 2 options).
    assert sorted(sam1) == sorted(p for p, _, _ in mask_decoder_entries(MaskDecoder(**small)))
    assert not any(name in "/".join(p) for p in sam1 for name in ("obj_score", "conv_s"))

    sam2 = _decoder_shapes(MaskDecoder(**small, **SAM2_DECODER))
    entries = mask_decoder_key_map(MaskDecoder(**small, **SAM2_DECODER))
    assert sorted(sam2) == sorted(p for p, _, _ in entries)
    assert {p: s for p, s in sam2.items() if p in sam1} == sam1
    extra = {p: s for p, s in sam2.items() if p not in sam1}
    assert extra[("params", "obj_score_token")] == (1, 64)
    assert extra[("params", "obj_score_head", "layers_2", "kernel")] == (64, 1)
    assert extra[("params", "conv_s0", "kernel")] == (1, 1, 64, 8)
    assert extra[("params", "conv_s1", "kernel")] == (1, 1, 64, 16)
    keys = [k for _, ks, _ in entries for k in ks]
    assert "sam_mask_decoder.transformer.layers.1.mlp.layers.1.weight" in keys
    assert "sam_mask_decoder.pred_obj_score_head.layers.2.bias" in keys

    linear_head = _decoder_shapes(MaskDecoder(**small, pred_obj_scores=True))
    assert linear_head[("params", "obj_score_head", "kernel")] == (64, 1)


def test_dynamic_multimask_via_stability():
    masks = np.full((3, 4, 8, 8), -5.0, np.float32)
    masks[0, 0, :4] = 5.0  # stable: the single mask stays
    masks[1, 0, :4] = 0.01  # between −delta and delta: stability 0, the best multimask output (IoU) replaces it
    # masks[2, 0]: nothing above −delta (an empty union): stability 1, stays
    masks[:, 1:] = np.random.default_rng(0).normal(size=(3, 3, 8, 8))
    iou = np.array([[0.1, 0.9, 0.2, 0.3], [0.5, 0.2, 0.8, 0.4], [0.1, 0.2, 0.3, 0.9]], np.float32)
    out, out_iou = dynamic_multimask_via_stability(jnp.asarray(masks), jnp.asarray(iou))
    assert out.shape == (3, 1, 8, 8) and out_iou.shape == (3, 1)
    np.testing.assert_array_equal(out[:, 0], masks[[0, 1, 2], [0, 2, 0]])
    np.testing.assert_array_equal(out_iou[:, 0], iou[[0, 1, 2], [0, 2, 0]])


def test_select_outputs_follows_the_official_choice():
    masks = jnp.arange(2 * 4 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4, 4) - 60.0
    iou = jnp.array([[0.1, 0.2, 0.9, 0.3], [0.4, 0.3, 0.2, 0.1]])
    tokens = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    dec = MaskDecoder(**SAM2_DECODER)
    m, i, t = dec.select_outputs(masks, iou, tokens, True)
    assert m.shape == (2, 3, 4, 4) and i.shape == (2, 3) and (t == tokens[:, 1:]).all()
    m, i, t = dec.select_outputs(masks, iou, tokens, False)
    assert (m == dynamic_multimask_via_stability(masks, iou)[0]).all() and (t == tokens[:, :1]).all()
    m, i, t = dec.select_outputs(masks, iou, tokens, False, train=True)
    assert (m == masks[:, :1]).all() and (i == iou[:, :1]).all()
    m, i, t = MaskDecoder().select_outputs(masks, iou, tokens, True)
    assert (t == tokens[:, :1]).all()


def test_neck_levels_and_top_down():
    channels = (32, 16, 8)
    neck = FpnNeck(8, channels, fpn_top_down_levels=(1, 2))
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(2, 16 // 2 ** i, 16 // 2 ** i, c)), jnp.float32)
          for i, c in enumerate(reversed(channels))]
    variables = neck.init(jax.random.PRNGKey(0), xs)
    assert set(variables["params"]) == {"convs_0", "convs_1", "convs_2"}
    assert variables["params"]["convs_0"]["kernel"].shape == (1, 1, 32, 8)
    feats, pos = neck.apply(variables, xs)
    assert [f.shape for f in feats] == [(2, 16, 16, 8), (2, 8, 8, 8), (2, 4, 4, 8)]
    assert [p.shape for p in pos] == [(16, 16, 8), (8, 8, 8), (4, 4, 8)]
    conv = lambda j, x: x @ variables["params"][f"convs_{j}"]["kernel"][0, 0] + variables["params"][f"convs_{j}"]["bias"]  # noqa: E731
    up = lambda x: jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)  # noqa: E731
    np.testing.assert_allclose(feats[2], conv(0, xs[2]), atol=1e-5)
    np.testing.assert_allclose(feats[1], conv(1, xs[1]) + up(feats[2]), atol=1e-5)
    np.testing.assert_allclose(feats[0], conv(2, xs[0]), atol=1e-5)  # level 0 is not top-down
    np.testing.assert_allclose(pos[1], sine_position_encoding(8, 8, 8))
    assert [p for p, _, _ in neck_key_map(neck)][:2] == [("params", "convs_0", "kernel"), ("params", "convs_0", "bias")]


# ----------------------------------------------------------------------------------------------------------------
# Parity with the official SAM 2 (PyTorch).

MAX_REL_ERR = 1e-4


def rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _official():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    return torch


def _randomize(torch, module, seed):
    """Every parameter and buffer random (defaults leave biases at zero and norms at identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            r = torch.randn(t.shape, generator=gen)
            if "gaussian" in name or name.endswith(("_embed.weight", "_token.weight", "mask_tokens.weight")) \
                    or ".point_embeddings." in name:
                t.copy_(r)  # embeddings and the Fourier matrix: N(0, 1), as their defaults
            elif t.ndim == 1 and "norm" in name or name.startswith(("output_upscaling.1", "mask_downscaling.1",
                                                                      "mask_downscaling.4")):
                t.copy_(1 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            else:
                t.copy_(0.05 * r)


def _convert(state_dict, entries, expected):
    """Official tensors -> our variables; every official key used and every variable filled, shapes equal."""
    sd = {k: v.detach().numpy() for k, v in state_dict.items()}
    variables, used = {}, set()
    for path, keys, fn in entries:
        value = fn(*(sd[k] for k in keys))
        node = variables
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
        used.update(keys)
    assert sorted(used) == sorted(sd), sorted(set(sd) ^ used)
    want = {p: tuple(v.shape) for p, v in flatten_paths(expected).items()}
    got = {p: tuple(v.shape) for p, v in flatten_paths(variables).items()}
    assert got == want
    return variables


@pytest.mark.parity
@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_neck_parity(interp):
    torch = _official()
    from sam2.modeling.backbones.image_encoder import FpnNeck as OfficialNeck
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    # hiera_t's neck (SAM 2.1 config) on a 128-px input: stride-4…32 grids 32, 16, 8, 4.
    official = OfficialNeck(PositionEmbeddingSine(256, normalize=True, scale=None, temperature=10000), d_model=256,
                            backbone_channel_list=list(HIERA_T_CHANNELS), fpn_top_down_levels=[2, 3],
                            fpn_interp_model=interp).eval()
    _randomize(torch, official, seed=1)
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i, generator=gen) for i, c in enumerate(reversed(HIERA_T_CHANNELS))]
    with torch.no_grad():
        ref_out, ref_pos = official(xs)

    neck = FpnNeck(256, HIERA_T_CHANNELS, (2, 3), fpn_interp_model=interp)
    ours_xs = [jnp.asarray(x.numpy().transpose(0, 2, 3, 1)) for x in xs]
    expected = jax.eval_shape(lambda r: neck.init(r, ours_xs), jax.random.PRNGKey(0))
    variables = _convert({f"image_encoder.neck.{k}": v for k, v in official.state_dict().items()},
                         neck_key_map(neck), expected)
    out, pos = jax.jit(neck.apply)(variables, ours_xs)
    errors = {}
    for i in range(4):
        errors[f"features {i}"] = rel_err(out[i], ref_out[i].numpy().transpose(0, 2, 3, 1))
        errors[f"pos {i}"] = rel_err(np.broadcast_to(pos[i], out[i].shape), ref_pos[i].numpy().transpose(0, 2, 3, 1))
    print(f"\nneck ({interp}):", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < MAX_REL_ERR, errors


@pytest.mark.parity
def test_decoder_parity():
    torch = _official()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as OfficialDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as OfficialPrompts
    from sam2.modeling.sam.transformer import TwoWayTransformer as OfficialTransformer

    d, grid, size = 256, 16, 256  # a 16×16 embedding of a 256-px frame; high-res features 64×64 and 32×32
    official_pe = OfficialPrompts(embed_dim=d, image_embedding_size=(grid, grid), input_image_size=(size, size),
                                  mask_in_chans=16)
    official = OfficialDecoder(
        num_multimask_outputs=3, transformer=OfficialTransformer(depth=2, embedding_dim=d, mlp_dim=2048, num_heads=8),
        transformer_dim=d, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
        iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True, dynamic_multimask_via_stability=True,
        dynamic_multimask_stability_delta=0.05, dynamic_multimask_stability_thresh=0.98)
    official_pe.eval(), official.eval()
    _randomize(torch, official_pe, seed=3)
    _randomize(torch, official, seed=4)

    prompts = PromptEncoder(d, 16)
    decoder = MaskDecoder(d, 3, 2, 8, 2048, 2, 3, 256, **SAM2_DECODER)
    n = 2
    z = jnp.zeros
    pe_expected = jax.eval_shape(lambda r: prompts.init(r, z((n, 1, 2)), jnp.ones((n, 1), jnp.int32), z((n, 4)),
                                                        z((n, 4 * grid, 4 * grid, 1)), (grid, grid), (size, size)),
                                 jax.random.PRNGKey(0))
    dec_expected = jax.eval_shape(
        lambda r: decoder.init(r, z((n, grid, grid, d)), z((grid, grid, d)), z((n, 3, d)), z((n, grid, grid, d)),
                               high_res=(z((n, 4 * grid, 4 * grid, d // 8)), z((n, 2 * grid, 2 * grid, d // 4)))),
        jax.random.PRNGKey(0))
    pe_vars = _convert({f"sam_prompt_encoder.{k}": v for k, v in official_pe.state_dict().items()},
                       prompt_encoder_key_map(prompts), pe_expected)
    dec_vars = _convert({f"sam_mask_decoder.{k}": v for k, v in official.state_dict().items()},
                        mask_decoder_key_map(decoder), dec_expected)

    gen = torch.Generator().manual_seed(5)
    image = torch.randn(n, d, grid, grid, generator=gen)
    feat_s0 = torch.randn(n, d, 4 * grid, 4 * grid, generator=gen)
    feat_s1 = torch.randn(n, d, 2 * grid, 2 * grid, generator=gen)
    rng = np.random.default_rng(6)
    points = rng.uniform(0, size, (n, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, 1]], np.int32)
    boxes = np.array([[10, 20, 200, 150], [30, 40, 100, 220]], np.float32)
    nhwc = lambda t: jnp.asarray(t.numpy().transpose(0, 2, 3, 1))  # noqa: E731

    def ours(pv, dv, image, s0, s1, points, labels, boxes, multimask):
        sparse = [prompts.apply(pv, points, labels, (size, size), method=prompts.embed_points)]
        if boxes is not None:
            sparse.append(prompts.apply(pv, boxes, (size, size), method=prompts.embed_boxes))
        dense = prompts.apply(pv, n, grid, grid, method=prompts.no_mask)
        image_pe = prompts.apply(pv, grid, grid, method=prompts.dense_pe)
        high_res = decoder.apply(dv, s0, s1, method=decoder.project_high_res)
        tokens = decoder.apply(dv, image, image_pe, jnp.concatenate(sparse, axis=1), dense, method=decoder.attend)
        masks = decoder.apply(dv, tokens.src, tokens.hyper, (grid, grid), high_res, method=decoder.upscale)
        masks, iou, sam_tokens = decoder.apply(dv, masks, tokens.iou, tokens.mask_tokens, multimask,
                                               method=decoder.select_outputs)
        return masks, iou, sam_tokens, tokens.object_score

    run = jax.jit(ours, static_argnames="multimask")
    errors, fallbacks = {}, 0
    for case in ("points", "points+box"):
        with_box = case == "points+box"
        # Without a box the official prompt gets its padding point; ours is given it explicitly.
        pts, lab = points, labels
        if not with_box:
            pts = np.concatenate([points, np.zeros((n, 1, 2), np.float32)], axis=1)
            lab = np.concatenate([labels, -np.ones((n, 1), np.int32)], axis=1)
        for multimask in (True, False):
            with torch.no_grad():
                sparse, dense = official_pe(points=(torch.from_numpy(points), torch.from_numpy(labels)),
                                            boxes=torch.from_numpy(boxes) if with_box else None, masks=None)
                high_res = [official.conv_s0(feat_s0), official.conv_s1(feat_s1)]
                ref = official(image_embeddings=image, image_pe=official_pe.get_dense_pe(),
                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                               multimask_output=multimask, repeat_image=False, high_res_features=high_res)
                if not multimask:
                    all_masks = official.predict_masks(image, official_pe.get_dense_pe(), sparse, dense, False,
                                                       high_res)[0]
                    fallbacks += int((official._get_stability_scores(all_masks[:, :1]) < 0.98).sum())
            got = run(pe_vars, dec_vars, nhwc(image), nhwc(feat_s0), nhwc(feat_s1), jnp.asarray(pts),
                      jnp.asarray(lab), jnp.asarray(boxes) if with_box else None, multimask=multimask)
            tag = f"{case}/{'multi' if multimask else 'single'}"
            for name, a, b in zip(("masks", "iou", "sam_tokens", "object_score"), got, ref):
                errors[f"{name} {tag}"] = rel_err(a, b.numpy())
    print("\ndecoder:", {k: f"{v:.1e}" for k, v in errors.items()}, f"stability fallbacks: {fallbacks} of {2 * n}")
    assert max(errors.values()) < MAX_REL_ERR, errors

    # The random decoder's single masks are all unstable; the selection alone, on stable and unstable masks:
    gen = np.random.default_rng(7)
    masks = gen.normal(size=(6, 4, 16, 16)).astype(np.float32)
    masks[:3, 0] = np.where(masks[:3, 0] > 0, 3.0, -3.0)  # stable
    masks[3, 0] = -1.0  # an empty union: stable
    iou = gen.uniform(size=(6, 4)).astype(np.float32)
    with torch.no_grad():
        ref = official._dynamic_multimask_via_stability(torch.from_numpy(masks), torch.from_numpy(iou))
    got = dynamic_multimask_via_stability(jnp.asarray(masks), jnp.asarray(iou))
    np.testing.assert_array_equal(got[0], ref[0].numpy())
    np.testing.assert_array_equal(got[1], ref[1].numpy())
