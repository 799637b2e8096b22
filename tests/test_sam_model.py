"""SAM model: shapes, official parameter counts, prompt semantics, text prompts, other input sizes (tiny variant, CPU).

Parity with the official PyTorch code is in test_sam_parity.py (marker `parity`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam import count_params
from vitsam.models import sam_init, sam_variant
from vitsam.models.sam.image_encoder import (RelPosAttention, relative_position_table, resize_linear_1d,
                                             window_partition, window_unpartition)
from vitsam.models.sam.text_encoder import split_words, tokenize, word_id

OFFICIAL_COUNTS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}
TOL = dict(rtol=1e-5, atol=1e-5)


def random_variables(model, seed=0):
    """Variables shaped by `sam_init` (eval_shape), every tensor drawn with numpy: no zero tables (rel-pos,
    biases) that could hide a bug, and no RNG kernels to compile (XLA's threefry compiles slowly on CPU)."""
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        r = rng.standard_normal(leaf.shape).astype(np.float32)
        if "scale" in name:  # LayerNorm
            return 1.0 + 0.1 * r
        if leaf.ndim == 1 and "embed" not in name:
            return 0.1 * r
        return r / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)) if leaf.ndim > 1 else r
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
    model = sam_variant("tiny")
    variables = random_variables(model)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, model.image_size, model.image_size, 3))
    emb = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(variables, images)
    decode = jax.jit(lambda v, *args, multimask: model.apply(v, *args, multimask_output=multimask, method=model.decode),
                     static_argnames="multimask")
    return model, variables, emb, decode


def _points(n_pad=0, labels=(1, 0, 1)):
    coords = np.array([[[30.0, 40.0], [200.0, 120.0], [90.5, 250.0]],
                       [[128.0, 128.0], [10.0, 240.0], [60.0, 60.0]]], np.float32)[:, :len(labels)]
    lab = np.tile(np.array(labels, np.int32), (2, 1))
    if n_pad:  # padding points at arbitrary positions: their coordinates must not matter
        coords = np.concatenate([coords, np.full((2, n_pad, 2), 77.0, np.float32)], axis=1)
        lab = np.concatenate([lab, np.full((2, n_pad), -1, np.int32)], axis=1)
    return jnp.asarray(coords), jnp.asarray(lab)


BOXES = jnp.array([[20.0, 30.0, 180.0, 200.0], [5.0, 60.0, 120.0, 250.0]])


def test_shapes_and_properties(tiny):
    model, variables, emb, decode = tiny
    assert (model.image_size, model.mask_input_size) == (256, 64)
    assert emb.shape == (2, 16, 16, model.prompt_dim)
    coords, labels = _points()
    for multimask, c in ((True, 3), (False, 1)):
        logits, iou = decode(variables, emb, coords, labels, None, None, None, multimask=multimask)
        assert logits.shape == (2, c, 64, 64) and iou.shape == (2, c)
        assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert variables["constants"]["prompt_encoder"]["pe_gaussian"].shape == (2, model.prompt_dim // 2)
    assert sam_variant("vit_h").mask_input_size == 256 and sam_variant("vit_h").image_size == 1024


def test_multimask_is_masks_1_to_3_and_single_is_mask_0(tiny):
    """Both outputs come from one decoder pass: an untruncated model with 4 multimask outputs shows all."""
    model, variables, emb, decode = tiny
    coords, labels = _points()
    multi, iou_multi = decode(variables, emb, coords, labels, None, None, None, multimask=True)
    single, iou_single = decode(variables, emb, coords, labels, None, None, None, multimask=False)
    assert not np.allclose(single[:, 0], multi[:, 0])

    def all_outputs(sam, emb, coords, labels):  # the official padding point appended, no selection
        pe = sam.prompt_encoder
        sparse = pe.embed_points(jnp.concatenate([coords, jnp.zeros((2, 1, 2))], 1),
                                 jnp.concatenate([labels, -jnp.ones((2, 1), jnp.int32)], 1), (256, 256))
        return sam.mask_decoder(emb, pe.dense_pe(16, 16), sparse, pe.no_mask(2, 16, 16))

    all_masks, all_iou = jax.jit(lambda v, *a: model.apply(v, *a, method=all_outputs))(variables, emb, coords, labels)
    np.testing.assert_allclose(multi, all_masks[:, 1:], **TOL)
    np.testing.assert_allclose(single, all_masks[:, :1], **TOL)
    np.testing.assert_allclose(iou_multi, all_iou[:, 1:], **TOL)
    np.testing.assert_allclose(iou_single, all_iou[:, :1], **TOL)


def test_a_shared_embedding_equals_it_repeated_per_prompt_set(tiny):
    """Embeddings (1, h, w, D) for N prompt sets give what the same embedding repeated N times gives."""
    model, variables, emb, decode = tiny
    coords, labels = _points()
    mask = jax.random.normal(jax.random.PRNGKey(6), (2, 64, 64, 1)) * 4.0
    one = emb[:1]
    repeated = jnp.repeat(one, 2, axis=0)
    for prompts in ((coords, labels, None, None), (coords, labels, BOXES, None), (None, None, BOXES, mask)):
        shared_logits, shared_iou = decode(variables, one, *prompts, None, multimask=True)
        logits, iou = decode(variables, repeated, *prompts, None, multimask=True)
        assert shared_logits.shape == (2, 3, 64, 64)
        np.testing.assert_allclose(shared_logits, logits, **TOL)
        np.testing.assert_allclose(shared_iou, iou, **TOL)


def test_decode_tokens_then_masks_of_a_selection_equal_decode(tiny):
    """The two halves give decode's masks, also for a subset of the prompt sets and of the masks."""
    model, variables, emb, decode = tiny
    coords, labels = _points()
    logits, iou = decode(variables, emb, coords, labels, None, None, None, multimask=True)
    hyper, src, iou2 = jax.jit(lambda v: model.apply(v, emb, coords, labels, multimask_output=True,
                                                     method=model.decode_tokens))(variables)
    np.testing.assert_allclose(iou2, iou, **TOL)
    picked = jax.jit(lambda v: model.apply(v, src[1:], hyper[1:, ::2], (16, 16), method=model.decode_masks))(variables)
    np.testing.assert_allclose(picked, logits[1:, ::2], **TOL)


@pytest.mark.parametrize("n_pad", [1, 3])
def test_padding_points_do_not_change_result(tiny, n_pad):
    model, variables, emb, decode = tiny
    ref = decode(variables, emb, *_points(0), None, None, None, multimask=True)
    out = decode(variables, emb, *_points(n_pad), None, None, None, multimask=True)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, **TOL)
    # with a box, padding points are masked out entirely
    ref_box = decode(variables, emb, *_points(0), BOXES, None, None, multimask=True)
    out_box = decode(variables, emb, *_points(n_pad), BOXES, None, None, multimask=True)
    for a, b in zip(out_box, ref_box):
        np.testing.assert_allclose(a, b, **TOL)


def test_padding_changes_nothing_but_a_real_point_does(tiny):
    """Guards the padding test against a decoder that ignores its prompts."""
    model, variables, emb, decode = tiny
    a, _ = decode(variables, emb, *_points(0, labels=(1, 0)), None, None, None, multimask=True)
    b, _ = decode(variables, emb, *_points(0, labels=(1, 0, 1)), None, None, None, multimask=True)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_box_equals_its_corners_as_points_2_and_3(tiny):
    model, variables, emb, decode = tiny
    corners = BOXES.reshape(2, 2, 2)
    labels = jnp.tile(jnp.array([[2, 3]], jnp.int32), (2, 1))
    for multimask in (True, False):
        by_box = decode(variables, emb, None, None, BOXES, None, None, multimask=multimask)
        by_points = decode(variables, emb, corners, labels, None, None, None, multimask=multimask)
        for a, b in zip(by_box, by_points):
            np.testing.assert_allclose(a, b, **TOL)
    # and points + box equals points + corner points
    coords, plab = _points()
    mixed_box = decode(variables, emb, coords, plab, BOXES, None, None, multimask=True)
    mixed_pts = decode(variables, emb, jnp.concatenate([coords, corners], 1), jnp.concatenate([plab, labels], 1),
                       None, None, None, multimask=True)
    for a, b in zip(mixed_box, mixed_pts):
        np.testing.assert_allclose(a, b, **TOL)


def test_mask_input_path(tiny):
    """With a mask, the dense prompt comes from the mask convs (no_mask_embed unused); without, the reverse."""
    model, variables, emb, decode = tiny
    coords, labels = _points()
    mask = jax.random.normal(jax.random.PRNGKey(5), (2, 64, 64, 1)) * 4.0
    no_mask = decode(variables, emb, coords, labels, None, None, None, multimask=True)
    with_mask = decode(variables, emb, coords, labels, None, mask, None, multimask=True)
    assert float(jnp.abs(no_mask[0] - with_mask[0]).max()) > 1e-3

    def perturbed(name):
        params = jax.tree_util.tree_map(lambda x: x, variables["params"])
        params["prompt_encoder"][name] = jax.tree_util.tree_map(lambda x: x + 0.5, params["prompt_encoder"][name])
        return dict(variables, params=params)

    v_nomask, v_conv = perturbed("no_mask_embed"), perturbed("mask_conv3")
    np.testing.assert_allclose(decode(v_nomask, emb, coords, labels, None, mask, None, multimask=True)[0], with_mask[0], **TOL)
    np.testing.assert_allclose(decode(v_conv, emb, coords, labels, None, None, None, multimask=True)[0], no_mask[0], **TOL)
    assert float(jnp.abs(decode(v_nomask, emb, coords, labels, None, None, None, multimask=True)[0] - no_mask[0]).max()) > 1e-3
    assert float(jnp.abs(decode(v_conv, emb, coords, labels, None, mask, None, multimask=True)[0] - with_mask[0]).max()) > 1e-3


def test_no_prompt_at_all_runs(tiny):
    model, variables, emb, decode = tiny
    logits, iou = decode(variables, emb, None, None, None, None, None, multimask=False)
    assert logits.shape == (2, 1, 64, 64) and bool(jnp.all(jnp.isfinite(logits)))


def test_text_prompt_runs_and_padding_words_do_not_matter(tiny):
    model, variables, emb, decode = tiny
    ids16 = jnp.asarray(model.tokenize(["the red car", "A dog, on the left"]))
    assert ids16.shape == (2, model.text_max_len)
    ids8 = ids16[:, :8]  # same words, less padding
    out16 = decode(variables, emb, None, None, None, None, ids16, multimask=True)
    out8 = decode(variables, emb, None, None, None, None, ids8, multimask=True)
    for a, b in zip(out8, out16):
        np.testing.assert_allclose(a, b, **TOL)
    other = decode(variables, emb, None, None, None, None, jnp.asarray(model.tokenize(["the blue car", "a cat"])),
                   multimask=True)
    assert float(jnp.abs(other[0] - out16[0]).max()) > 1e-4
    # text combines with points
    coords, labels = _points()
    logits, _ = decode(variables, emb, coords, labels, None, None, ids16, multimask=False)
    assert logits.shape == (2, 1, 64, 64)
    # the official architecture has no text encoder
    model_b = sam_variant("tiny", text=False)
    with pytest.raises(ValueError, match="no text encoder"):
        model_b.apply({"params": {}}, emb, text_ids=ids16, method=model_b.decode)


def test_tokenizer():
    ids = tokenize(["Red CAR!", "red car", "red, car"], vocab_size=1000, max_len=4)
    assert ids.dtype == np.int32 and ids.shape == (3, 4)
    assert (ids[0] == ids[1]).all() and (ids[1] == ids[2]).all()
    assert (ids[:, 2:] == 0).all() and (ids[:, :2] > 0).all() and (ids < 1000).all()
    assert split_words("A dog's toy, 2x") == ["a", "dog", "s", "toy", "2x"]
    assert tokenize("one two three four five six", 50, 3).tolist() == [[word_id(w, 50) for w in ("one", "two", "three")]]
    assert len({word_id(w, 1 << 20) for w in ("cat", "dog", "car", "tree")}) == 4


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_parameter_counts(name):
    model = sam_variant(name)
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    assert count_params(shapes["params"]) == OFFICIAL_COUNTS[name]
    assert set(shapes) == {"params", "constants"}  # the Fourier Gaussian is not trainable
    if name == "vit_b":  # the text encoder is optional and counted apart
        with_text = jax.eval_shape(lambda r: sam_init(sam_variant(name, text=True), r), jax.random.PRNGKey(0))
        text = count_params(with_text["params"]["text_encoder"])
        assert text > 0 and count_params(with_text["params"]) == OFFICIAL_COUNTS[name] + text


@pytest.mark.parametrize("side", [128, 320])
def test_other_input_sizes(tiny, side):
    """The encoder interpolates the absolute table and the global blocks' relative tables; decode follows."""
    model, variables, _, decode = tiny
    images = jax.random.normal(jax.random.PRNGKey(2), (2, side, side, 3))
    emb = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(variables, images)
    g = side // 16
    assert emb.shape == (2, g, g, model.prompt_dim) and bool(jnp.all(jnp.isfinite(emb)))
    logits, iou = decode(variables, emb, jnp.array([[[side / 2, side / 3]]] * 2), jnp.array([[1], [1]]), None,
                         jnp.zeros((2, 4 * g, 4 * g, 1)), None, multimask=True)
    assert logits.shape == (2, 3, 4 * g, 4 * g) and bool(jnp.all(jnp.isfinite(logits)))


def test_resize_linear_matches_half_pixel_linear_interpolation():
    table = jax.random.normal(jax.random.PRNGKey(3), (31, 5))
    for size in (63, 17, 31):
        ref = jax.image.resize(table, (size, 5), method="linear", antialias=False)
        np.testing.assert_allclose(resize_linear_1d(table, size), ref, rtol=1e-5, atol=1e-6)


def test_window_partition_roundtrip():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 10, 13, 3))
    windows, padded = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 4, 4, 4, 3) and padded == (12, 16)
    np.testing.assert_array_equal(window_unpartition(windows, 4, padded, (10, 13)), x)
    np.testing.assert_array_equal(windows[1], x[0, 0:4, 4:8])  # window (0, 1) of image 0


def test_global_attention_chunks_give_the_same_encoder_output_and_are_chosen_on_cpu_for_big_grids():
    from vitsam.models.sam.image_encoder import ImageEncoder, default_query_rows

    make = lambda rows: ImageEncoder(image_size=64, patch_size=8, dim=32, depth=2, num_heads=2, out_dim=16,  # noqa: E731
                                     window_size=3, global_attn_indexes=(1,), global_query_rows=rows)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
    variables = make(0).init(jax.random.PRNGKey(1), x)
    variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), variables)
    whole = make(0).apply(variables, x)
    for rows in (1, 4, 16, None):  # 16 rows: more than the grid's 8, so one chunk per head
        np.testing.assert_allclose(make(rows).apply(variables, x), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        make(3).apply(variables, x)
    # SAM's global attention at 1024 px: 805 MB of logits; 16 rows of one head: 16·64 × 4096 × 4 B = 16 MiB.
    assert default_query_rows(12, (64, 64), "cpu") == 16
    assert default_query_rows(12, (64, 64), "gpu") == 0
    assert default_query_rows(12, (32, 32), "cpu") == 32  # 512 px: 48 MiB in all, one head's 4 MiB at once
    assert default_query_rows(16, (48, 80), "cpu") == 12  # 12·80 × 3840 × 4 B ≈ 14 MiB (16 rows: 19 MiB)
    assert default_query_rows(2, (16, 16), "cpu") == 0    # the tiny SAM's 16x16 grid: 0.5 MB


@pytest.mark.parametrize("query_rows", [0, 1, 2])
def test_relative_position_attention_against_naive_loops(query_rows):
    """logits[q, k] = q·k/√d + q·R_h[qy − ky + S − 1] + q·R_w[qx − kx + S − 1], written out with loops; the
    same in chunks of query rows."""
    h = w = 4
    heads, dim = 2, 8
    layer = RelPosAttention(heads, rel_size=h, query_rows=query_rows)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, h, w, dim))
    params = layer.init(jax.random.PRNGKey(7), x)["params"]
    params["rel_pos_h"] = jax.random.normal(jax.random.PRNGKey(8), params["rel_pos_h"].shape)
    params["rel_pos_w"] = jax.random.normal(jax.random.PRNGKey(9), params["rel_pos_w"].shape)
    out = layer.apply({"params": params}, x)

    p = jax.tree_util.tree_map(np.asarray, params)
    xs = np.asarray(x, np.float64)[1].reshape(h * w, dim)  # the second image
    qkv = xs @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    dh = dim // heads
    res = np.zeros((h * w, dim))
    for n in range(heads):
        q, k, v = (qkv[:, i * dim + n * dh: i * dim + (n + 1) * dh] for i in range(3))
        logits = np.zeros((h * w, h * w))
        for a in range(h * w):
            for b in range(h * w):
                (qy, qx), (ky, kx) = divmod(a, w), divmod(b, w)
                logits[a, b] = (q[a] @ k[b] / np.sqrt(dh) + q[a] @ p["rel_pos_h"][qy - ky + h - 1]
                                + q[a] @ p["rel_pos_w"][qx - kx + w - 1])
        att = np.exp(logits - logits.max(1, keepdims=True))
        res[:, n * dh:(n + 1) * dh] = (att / att.sum(1, keepdims=True)) @ v
    ref = res @ p["proj"]["kernel"] + p["proj"]["bias"]
    np.testing.assert_allclose(np.asarray(out)[1].reshape(h * w, dim), ref, rtol=1e-4, atol=1e-5)
    assert relative_position_table(params["rel_pos_h"], h).shape == (h, h, dh)


@pytest.mark.slow
def test_sam_init_runs_forward():
    """A real `sam_init` (RNG included; slow to compile on CPU) gives finite outputs of the right shapes."""
    model = sam_variant("tiny")
    variables = jax.jit(lambda r: sam_init(model, r))(jax.random.PRNGKey(0))
    images = jax.random.normal(jax.random.PRNGKey(1), (1, 256, 256, 3))
    logits, iou = jax.jit(lambda v, x: model.apply(v, x, jnp.array([[[64.0, 64.0]]]), jnp.array([[1]])))(variables, images)
    assert logits.shape == (1, 3, 64, 64) and iou.shape == (1, 3) and bool(jnp.all(jnp.isfinite(logits)))
    assert not jnp.any(variables["params"]["image_encoder"]["blocks_0"]["attn"]["rel_pos_h"])  # official: zero-init


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_upsample2x_equals_flax_conv_transpose_and_a_numpy_loop(dtype):
    import flax.linen as nn

    from vitsam.models.sam.mask_decoder import Upsample2x

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 6)), jnp.float32)
    params = {"kernel": jnp.asarray(rng.normal(size=(2, 2, 6, 5)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    ours = np.asarray(Upsample2x(5, dtype=dtype).apply({"params": params}, x), np.float32)
    ref = nn.ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype)
    theirs = np.asarray(ref.apply({"params": params}, x), np.float32)
    assert ours.shape == (2, 6, 8, 5)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(ours, theirs, atol=tol * 10, rtol=tol)
    # Flax's transposed conv: out[2i + a, 2j + b] = x[i, j] @ kernel[1 - a, 1 - b] + bias.
    xn, k, b = np.asarray(x, np.float64), np.asarray(params["kernel"], np.float64), np.asarray(params["bias"])
    loop = np.zeros((2, 6, 8, 5))
    for i in range(3):
        for j in range(4):
            for a in range(2):
                for c in range(2):
                    loop[:, 2 * i + a, 2 * j + c] = xn[:, i, j] @ k[1 - a, 1 - c] + b
    np.testing.assert_allclose(theirs if dtype == jnp.float32 else ours, loop, atol=tol * 10, rtol=tol)


def test_pe_scale_scales_the_fourier_matrix_and_must_be_positive():
    from vitsam.models.sam.prompt_encoder import PromptEncoder

    enc = PromptEncoder(dim=16, mask_in_chans=4, pe_scale=3.0)
    variables = enc.init(jax.random.PRNGKey(5), 2, 3, method=PromptEncoder.dense_pe)
    g1 = PromptEncoder(dim=16, mask_in_chans=4).init(jax.random.PRNGKey(5), 2, 3, method=PromptEncoder.dense_pe)
    g3 = variables["constants"]["pe_gaussian"]
    np.testing.assert_allclose(g3, 3.0 * g1["constants"]["pe_gaussian"], rtol=1e-6)
    pe = enc.apply(variables, 2, 3, method=PromptEncoder.dense_pe)  # (2, 3, 16)
    xy = np.array([[(j + 0.5) / 3, (i + 0.5) / 2] for i in range(2) for j in range(3)])  # cell centres (x, y)
    proj = 2 * np.pi * (2 * xy - 1) @ np.asarray(g3, np.float64)
    np.testing.assert_allclose(pe.reshape(6, 16), np.concatenate([np.sin(proj), np.cos(proj)], 1), atol=1e-5)
    with pytest.raises(ValueError, match="pe_scale"):
        PromptEncoder(dim=16, pe_scale=0.0).init(jax.random.PRNGKey(0), 2, 2, method=PromptEncoder.dense_pe)
    # and through the composed model (jit keeps only the constant's draw)
    small = dict(image_size=32, patch_size=8, encoder_dim=16, encoder_depth=1, global_attn_indexes=(0,), prompt_dim=16)
    consts = [jax.jit(lambda r, m=sam_variant("tiny", pe_scale=s, **small): sam_init(m, r)["constants"])(
        jax.random.PRNGKey(1))["prompt_encoder"]["pe_gaussian"] for s in (1.0, 2.5)]
    np.testing.assert_allclose(consts[1], 2.5 * consts[0], rtol=1e-6)


def test_fourier_features_have_the_gaussian_kernel_of_their_scale():
    """E cos(2π g·2Δ) for g ~ N(0, σ² I) is exp(−8π² σ² |Δ|²), half its peak at |Δ| = 0.094 / σ (pe_scale docs)."""
    from vitsam.models.sam.prompt_encoder import fourier_features

    sigma, f = 2.0, 20_000
    g = sigma * np.random.default_rng(0).standard_normal((2, f)).astype(np.float32)
    p = np.array([[0.5, 0.5]], np.float32)
    for d in (0.0, 0.02, 0.094 / sigma, 0.08):
        q = p + np.array([[d * 0.6, d * 0.8]], np.float32)  # |q − p| = d
        similarity = float(np.sum(np.asarray(fourier_features(p, g) * fourier_features(q, g))) / f)
        assert similarity == pytest.approx(np.exp(-8 * np.pi ** 2 * sigma ** 2 * d ** 2), abs=0.02), d
        if d == 0.094 / sigma:
            assert similarity == pytest.approx(0.5, abs=0.03)
