"""Sam2ImagePredictor and `vitsam segment` with SAM 2, on CPU with the tiny variant.

References: Pillow's float resize (the same antialiased triangle filter as torchvision's `Resize` of a tensor),
numpy bilinear interpolation (`test_predictor.numpy_bilinear`), the model's own `decode` on hand-mapped
coordinates, and (marker `parity`) the official sam2 `SAM2ImagePredictor` with a randomized hiera_t at 256 px.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_predictor import make_image, numpy_bilinear

import vitsam
from vitsam import cli
from vitsam.convert import export, load_model
from vitsam.models.sam.interpolate import resize_linear
from vitsam.models.sam2.sam2 import sam2_init, sam2_variant
from vitsam.sam2_predictor import IMAGE_MEAN, IMAGE_STD, Sam2ImagePredictor, _decode, input_points, preprocess

H, W = 48, 80  # the test image (not square: x and y scale differently to the 256 x 256 input)
S = 256
TOL = dict(rtol=1e-5, atol=1e-5)


def random_variables(model, seed=0):
    """Variables in `sam2_init`'s shapes drawn with numpy (no RNG kernels to compile), at a trained network's
    scale: weights ~ 1/sqrt(fan-in), norm scales near 1, biases and embeddings O(0.1-1)."""
    shapes = jax.eval_shape(lambda r: sam2_init(model, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        r = rng.standard_normal(leaf.shape)
        if "scale" in name:
            return 1.0 + 0.1 * r
        if leaf.ndim == 1:
            return (0.5 if "embed" in name else 0.1) * r
        return r / np.sqrt(max(np.prod(leaf.shape[:-1]), 1))
    return jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(draw(p, x), np.float32), shapes)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, variables, converted folder) of the tiny SAM 2, as `load_model` reads them back from the folder, so
    that `vitsam segment` shares the compiled programs (a rebuilt model is equal to `sam2_variant("tiny")` but
    hashes differently, its param_dtype being np.dtype("float32") rather than jnp.float32; restored arrays are
    committed to a device, numpy ones are not)."""
    model = sam2_variant("tiny")
    variables = random_variables(model)
    folder = export(model, variables, tmp_path_factory.mktemp("sam2") / "ckpt", kind="sam2")
    loaded, loaded_variables, kind = load_model(folder)
    assert kind == "sam2" and loaded == model
    return loaded, loaded_variables, folder


@pytest.fixture(scope="module")
def predictor(tiny):
    p = Sam2ImagePredictor(*tiny[:2])
    p.set_image(make_image(H, W))
    return p


@pytest.fixture(scope="module")
def reference(tiny):
    """The image's features from the model called directly (our `preprocess`, the encoder, the no-memory
    embedding added by hand): pix_feat (h, w, D) and high_res."""
    model, variables, _ = tiny
    feats = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(
        variables, preprocess(make_image(H, W), S)[None])
    return feats.vision[0] + variables["params"]["no_mem_embed"], tuple(x[0] for x in feats.high_res)


def to_input(coords):
    """(x, y) pixels of the H x W image -> pixels of the S x S input, as the official transform_coords."""
    coords = np.array(coords, np.float32)
    return coords / np.array([W, H], np.float32) * np.float32(S)


# ----------------------------------------------------------------------------- pre-processing

def test_preprocess_is_antialiased_resize_to_square_and_imagenet_normalization():
    """Against Pillow's float ("F") bilinear resize, which antialiases with the same triangle filter as
    torchvision's Resize((S, S)) of a float tensor (the official SAM2Transforms)."""
    img = make_image(120, 300, seed=2)  # width shrinks (antialiasing matters), height grows
    x = img.astype(np.float32) / 255.0
    resized = np.stack([np.asarray(Image.fromarray(x[..., c], "F").resize((S, S), Image.BILINEAR))
                        for c in range(3)], axis=-1)
    ref = (resized - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    ours = np.asarray(jax.jit(preprocess, static_argnums=1)(img, S))
    assert ours.shape == (S, S, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # guard: without antialiasing (plain bilinear) the shrunk width would differ clearly
    plain = resize_linear(resize_linear(jnp.asarray(x), S, axis=0, fused=False), S, axis=1, fused=False)
    assert np.abs((np.asarray(plain) - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD) - ref).max() > 0.1


# ----------------------------------------------------------------------------- prompts

def test_coordinates_scale_to_the_square_input_and_boxes_go_before_clicks():
    clicks, labels = np.array([[[10.0, 20.0], [79.5, 47.0]]], np.float32), np.array([[1, 0]], np.int32)
    box = np.array([[4.0, 6.0, 60.0, 40.0]], np.float32)
    coords, out_labels = input_points(dict(point_coords=clicks, point_labels=labels, box=box), (H, W), S)
    expected = np.concatenate([to_input(box.reshape(1, 2, 2)), to_input(clicks)], axis=1)
    np.testing.assert_array_equal(coords, expected)  # x · 256/80, y · 256/48, box corners first
    np.testing.assert_allclose(coords[0, 2], [10 * 3.2, 20 * 16 / 3], rtol=1e-6)
    np.testing.assert_array_equal(out_labels, [[2, 3, 1, 0]])
    coords, out_labels = input_points(dict(box=np.tile(box, (3, 1))), (H, W), S)  # boxes alone: N sets of corners
    assert coords.shape == (3, 2, 2) and out_labels.tolist() == [[2, 3]] * 3
    assert input_points(dict(mask_input=np.zeros((1, 64, 64))), (H, W), S) == (None, None)


def test_predict_equals_the_decoder_on_hand_mapped_points_and_bilinear_upsampling(tiny, predictor, reference):
    """A box and a click, one mask: the predictor against its jitted decoder step (`_decode`, `Sam2.decode` on one
    image's features) called on the reference features with hand-mapped points (box corners first, padded to 4),
    the masks against a numpy bilinear resize of the low-res logits straight to H x W."""
    model, variables, _ = tiny
    box, click = np.array([8.0, 5.0, 50.0, 40.0]), np.array([[30.0, 20.0]])
    masks, iou, low = predictor.predict(point_coords=click, point_labels=np.array([1]), box=box,
                                        multimask_output=False)
    assert masks.shape == (1, H, W) and masks.dtype == bool and iou.shape == (1,) and low.shape == (1, 64, 64)
    coords = np.concatenate([to_input(np.concatenate([box.reshape(2, 2), click])), np.zeros((1, 2))])[None]
    ref_low, ref_iou = _decode(model, variables, *reference, coords.astype(np.float32), np.array([[2, 3, 1, -1]]),
                               multimask_output=False)
    ref_low, ref_iou = np.asarray(ref_low)[0], np.asarray(ref_iou)[0]
    np.testing.assert_allclose(iou, ref_iou, **TOL)
    np.testing.assert_allclose(low, np.clip(ref_low, -32, 32), rtol=1e-5, atol=1e-4)
    assert np.abs(low).max() <= 32
    up = numpy_bilinear(ref_low, H, W)  # straight to H x W, from the unclamped logits
    logits, _, _ = predictor.predict(point_coords=click, point_labels=np.array([1]), box=box,
                                     multimask_output=False, return_logits=True)
    assert logits.shape == (1, H, W) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, up, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(masks, logits > 0)


def test_batched_prompt_sets_equal_single_calls_and_padding_changes_nothing(tiny, predictor):
    """Seven click sets, each padded with -1 points (P = 3, bucket 4), decoded in chunks of 4 and 3 (N bucket 4)
    against unpadded single calls (N = 1, P = 1): different buckets, the same results, in order."""
    chunked = Sam2ImagePredictor(*tiny[:2], max_prompts=4)
    chunked.set_image(make_image(H, W))
    clicks = np.random.default_rng(0).uniform(1, [W - 1, H - 1], (7, 2))
    coords = np.stack([np.stack([c, [500.0, -7.0], [0.0, 0.0]]) for c in clicks])  # padding anywhere
    labels = np.array([[1, -1, -1]] * 7)
    masks, iou, low = chunked.predict(point_coords=coords, point_labels=labels)
    assert masks.shape == (7, 3, H, W) and iou.shape == (7, 3) and low.shape == (7, 3, 64, 64)
    for i, c in enumerate(clicks):
        m1, iou1, low1 = predictor.predict(point_coords=c[None], point_labels=np.array([1]))
        np.testing.assert_allclose(iou1, iou[i], **TOL)
        np.testing.assert_allclose(low1, low[i], rtol=1e-5, atol=1e-4)
        assert (m1 != masks[i]).mean() < 1e-3
    assert np.abs(low[0] - low[1]).max() > 1e-2  # guard: the clicks matter


def test_calls_in_one_bucket_and_new_images_of_one_size_do_not_recompile(tiny):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)
    p = Sam2ImagePredictor(*tiny[:2])
    rng = np.random.default_rng(1)

    def call(n, k):  # n click sets of k clicks: bucket (4, 4) for n, k in {3, 4}
        return p.predict(point_coords=rng.uniform(0, [W, H], (n, k, 2)), point_labels=rng.integers(0, 2, (n, k)))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        p.set_image(make_image(H, W, seed=5))
        call(3, 3)  # compiles here only if no earlier test did
        compiles.clear()
        for n, k in ((4, 4), (3, 4), (4, 3)):
            assert call(n, k)[0].shape == (n, 3, H, W)
        p.set_image(make_image(H, W, seed=6))  # another image of the same size
        call(3, 3)
        assert compiles == [], f"{len(compiles)} compile(s) in repeated calls"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_mask_input_round_trip(predictor):
    click, label = np.array([[30.0, 20.0]]), np.array([1])
    _, iou, low = predictor.predict(point_coords=click, point_labels=label)
    prev = low[np.argmax(iou)][None]  # (1, 64, 64)
    masks, iou2, low2 = predictor.predict(point_coords=click, point_labels=label, mask_input=prev,
                                          multimask_output=False)
    assert masks.shape == (1, H, W) and iou2.shape == (1,) and low2.shape == (1, 64, 64)
    assert np.abs(low2[0] - low[np.argmax(iou)]).max() > 1e-3  # the mask input matters
    same = predictor.predict(point_coords=click, point_labels=label, mask_input=prev[0],  # (64, 64)
                             multimask_output=False)
    np.testing.assert_allclose(same[2], low2, **TOL)


def test_embedding_and_several_images(tiny, predictor, reference):
    emb = predictor.get_image_embedding()
    assert emb.shape == (16, 16, 64) and predictor.original_size == (H, W)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(reference[0]), rtol=1e-5, atol=1e-5)
    other = make_image(30, 30, seed=3)
    several = Sam2ImagePredictor(*tiny[:2], encode_batch=1)
    several.set_images([other, make_image(H, W), other])
    assert several.num_images == 3 and several.original_sizes == [(30, 30), (H, W), (30, 30)]
    np.testing.assert_allclose(np.asarray(several.get_image_embedding(1)), np.asarray(emb), **TOL)
    prompts = dict(box=np.array([8.0, 5.0, 50.0, 40.0]), point_coords=np.array([[30.0, 20.0]]),
                   point_labels=np.array([1]), multimask_output=False)
    np.testing.assert_allclose(several.predict(**prompts, image_index=1)[2], predictor.predict(**prompts)[2], **TOL)
    with pytest.raises(IndexError, match="image_index 3 out of range"):
        several.predict(**prompts, image_index=3)
    several.reset_image()
    assert not several.is_image_set
    assert vitsam.Sam2ImagePredictor is Sam2ImagePredictor


def test_bad_input_gets_a_clear_error(tiny, predictor):
    with pytest.raises(RuntimeError, match="no image set"):
        Sam2ImagePredictor(*tiny[:2]).predict(box=np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="must be uint8"):
        predictor.set_image(make_image(H, W).astype(np.float32))
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) RGB.*grayscale"):
        predictor.set_image(make_image(H, W)[..., 0])
    with pytest.raises(ValueError, match="RGBA"):
        predictor.set_image(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="no prompt given"):
        predictor.predict()
    with pytest.raises(ValueError, match=r"point_coords must be \(P, 2\)"):
        predictor.predict(point_coords=np.zeros((2, 3)), point_labels=np.ones(2))
    with pytest.raises(ValueError, match=r"point \(85, 10\) lies outside the 80x48"):
        predictor.predict(point_coords=np.array([[85.0, 10.0]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        predictor.predict(box=np.array([30.0, 10.0, 20.0, 20.0]))
    with pytest.raises(ValueError, match=r"mask_input must be low-res logits \(64, 64\)"):
        predictor.predict(box=np.array([1.0, 2.0, 30.0, 40.0]), mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="only padding points"):
        predictor.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([-1]))
    assert predictor.get_image_embedding().shape == (16, 16, 64)  # still the image set by the fixture


# ----------------------------------------------------------------------------- vitsam segment

@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("segment_sam2") / "image.png"
    Image.fromarray(make_image(H, W)).save(path)
    return path


def test_segment_with_a_sam2_folder_writes_the_predictor_masks(tiny, predictor, image_path, tmp_path, capsys):
    assert cli.main(["segment", str(image_path), "--checkpoint", str(tiny[2]), "--point", "30,20",
                     "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("predicted IoU") == 3  # one click: three masks
    masks, _, _ = predictor.predict(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]))
    for c in range(3):
        with Image.open(tmp_path / f"mask_{c}.png") as im:
            np.testing.assert_array_equal(np.asarray(im) == 255, masks[c])
    assert (tmp_path / "overlay.png").exists() and not (tmp_path / "mask_3.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--everything"], "--everything runs the automatic mask generator, which takes SAM 1 models"),
    (["--text", "a disc"], "--text needs a SAM with a text encoder"),
])
def test_segment_refuses_what_sam2_cannot_do(tiny, image_path, tmp_path, capsys, args, message):
    assert cli.main(["segment", str(image_path), "--checkpoint", str(tiny[2]), *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("vitsam segment: error:")


# ----------------------------------------------------------------------------- official parity

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)


@pytest.fixture(scope="module")
def official_pair():
    """The official SAM2ImagePredictor on a hiera_t at 256 px with every tensor randomized at a trained network's
    scale (the recipe of test_sam2_parity.py), and ours on the converted weights."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sam2")
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from vitsam.convert.sam2 import sam2_state_dict_to_variables

    official = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                          hydra_overrides_extra=[f"++model.image_size={S}"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in official.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) or ".norm" in name \
                    and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() >= 2 and "pos_embed" not in name and "tpos_enc" not in name and "embed" not in name \
                    and "token" not in name:
                p.copy_(noise / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * noise)
    official.eval()
    state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    model, variables = sam2_state_dict_to_variables(state, sam2_variant("hiera_t", image_size=S))
    theirs = SAM2ImagePredictor(official)
    theirs._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]  # hard-coded for 1024 px
    return theirs, Sam2ImagePredictor(model, variables)


@pytest.mark.parity
def test_image_predictor_matches_the_official_sam2_image_predictor(official_pair):
    """Masks >= 99.9 % equal; IoU and low-res logits within 1e-4 relative (max abs diff / max abs value)."""
    theirs, ours = official_pair
    image = make_image(200, 300, seed=7)  # not square: x and y scale differently
    theirs.set_image(image)
    ours.set_image(image)
    np.testing.assert_allclose(np.asarray(preprocess(image, S)),
                               theirs._transforms(image).permute(1, 2, 0).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.get_image_embedding()),
                               theirs.get_image_embedding()[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-4)

    first = theirs.predict(point_coords=np.array([[90.0, 80.0]]), point_labels=np.array([1]))
    prev = first[2][np.argmax(first[1])][None]  # (1, 64, 64), a previous low_res
    cases = {
        "one click, multimask": dict(point_coords=np.array([[90.0, 80.0]]), point_labels=np.array([1])),
        "two clicks, one mask": dict(point_coords=np.array([[90.0, 80.0], [250.5, 150.0]]),
                                     point_labels=np.array([1, 0]), multimask_output=False),
        "a box": dict(box=np.array([40.0, 30.0, 200.0, 170.0]), multimask_output=False),
        "box + click": dict(box=np.array([40.0, 30.0, 200.0, 170.0]), point_coords=np.array([[220.0, 60.0]]),
                            point_labels=np.array([0]), multimask_output=False),
        "mask_input + click": dict(point_coords=np.array([[90.0, 80.0]]), point_labels=np.array([1]),
                                   mask_input=prev, multimask_output=False),
        "mask_input alone": dict(mask_input=prev),
        "two boxes (batched)": dict(box=np.array([[40.0, 30.0, 200.0, 170.0], [150.0, 100.0, 290.0, 190.0]]),
                                    multimask_output=False),
        "logits": dict(point_coords=np.array([[90.0, 80.0]]), point_labels=np.array([1]), return_logits=True),
    }
    for what, prompts in cases.items():
        t_masks, t_iou, t_low = theirs.predict(**prompts)
        masks, iou, low = ours.predict(**prompts)
        assert masks.shape == t_masks.shape and iou.shape == t_iou.shape and low.shape == t_low.shape, what
        if prompts.get("return_logits"):
            assert rel(masks, t_masks) < 1e-4, what
        else:
            assert masks.dtype == bool and np.mean(masks == (t_masks > 0)) >= 0.999, what
            assert 0.01 < t_masks.mean() < 0.99, what  # guard: the masks are not trivial
        assert rel(iou, t_iou) < 1e-4, (what, rel(iou, t_iou))
        assert rel(low, t_low) < 1e-4, (what, rel(low, t_low))
