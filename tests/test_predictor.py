"""SamPredictor and SAM pre/post-processing on CPU with the tiny variant.

References: Pillow (the official image resize), numpy versions of the official normalize / pad and of
PyTorch's bilinear interpolation, the model's own `decode` called directly on hand-mapped coordinates, and
(marker `parity`) torch.nn.functional.interpolate and the official segment-anything SamPredictor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import vitsam
from vitsam.models import sam_init, sam_variant
from vitsam.models.sam import processing
from vitsam.predictor import SamPredictor, bucket

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
TOL = dict(rtol=1e-5, atol=1e-5)
H, W = 60, 90  # the test image: landscape, so the input frame is 171 x 256 of the 256 x 256 model input


def random_variables(model, seed=0):
    """Variables of `model` drawn with numpy in the shapes `sam_init` gives (no RNG kernels to compile)."""
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        r = rng.standard_normal(leaf.shape).astype(np.float32)
        if "scale" in name:
            return 1.0 + 0.1 * r
        if leaf.ndim == 1 and "embed" not in name:
            return 0.1 * r
        return r / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)) if leaf.ndim > 1 else r
    return jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(draw(p, x), np.float32), shapes)


def make_image(h=H, w=W, seed=0):
    """Noise with a bright disc and a dark rectangle."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 140, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h * 0.4) ** 2 + (xx - w * 0.3) ** 2 < (h * 0.25) ** 2] = (230, 220, 90)
    img[int(h * 0.55):int(h * 0.9), int(w * 0.6):int(w * 0.9)] = (20, 30, 160)
    return img


@pytest.fixture(scope="module")
def tiny():
    model = sam_variant("tiny")
    return model, random_variables(model)


@pytest.fixture(scope="module")
def predictor(tiny):
    p = SamPredictor(*tiny)
    p.set_image(make_image())
    return p


@pytest.fixture(scope="module")
def reference_decode(tiny):
    """The model's decode called directly (no predictor): embedding (1, h, w, D) + prompts in input pixels."""
    model, _ = tiny
    return jax.jit(lambda v, *a, mm: model.apply(v, *a, multimask_output=mm, method=model.decode),
                   static_argnames="mm")


# ----------------------------------------------------------------------------- reference implementations

def official_preprocess(image, size):
    """The official steps in numpy: PIL resize of the uint8 image, (x - mean) / std, zero pad bottom/right."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), np.float64)
    out = np.zeros((size, size, 3))
    out[:new_h, :new_w] = (resized - MEAN) / STD
    return out, (new_h, new_w)


def numpy_bilinear(x, out_h, out_w):
    """PyTorch's bilinear interpolation (align_corners=False) pixel by pixel in float64: (..., h, w) -> (..., H, W)."""
    x = np.asarray(x, np.float64)
    h, w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1, wx = min(x0 + 1, w - 1), sx - x0
            out[..., i, j] = ((1 - wy) * ((1 - wx) * x[..., y0, x0] + wx * x[..., y0, x1])
                              + wy * ((1 - wx) * x[..., y1, x0] + wx * x[..., y1, x1]))
    return out


def numpy_postprocess(low_res, input_size, original_size, image_size):
    up = numpy_bilinear(low_res, image_size, image_size)[..., :input_size[0], :input_size[1]]
    return numpy_bilinear(up, *original_size)


def to_input_frame(coords, original_size, input_size):
    """Official ResizeLongestSide.apply_coords in float64."""
    coords = np.array(coords, np.float64)
    coords[..., 0] *= input_size[1] / original_size[1]
    coords[..., 1] *= input_size[0] / original_size[0]
    return coords.astype(np.float32)


# ----------------------------------------------------------------------------- processing

def test_resized_shape_rounds_half_up():
    assert processing.resized_shape(480, 640, 1024) == (768, 1024)
    assert processing.resized_shape(5, 2048, 1024) == (3, 1024)  # 2.5 -> 3 (round-half-even would give 2)
    assert processing.resized_shape(2048, 7, 1024) == (1024, 4)  # 3.5 -> 4
    assert processing.resized_shape(1024, 1024, 1024) == (1024, 1024)


@pytest.mark.parametrize("shape", [(37, 53), (300, 200), (17, 9), (257, 1000), (64, 64)])
def test_image_resize_equals_pillow_bit_for_bit(shape):
    img = make_image(*shape, seed=1)
    new_h, new_w = processing.resized_shape(*shape, 64 if max(shape) > 64 else 256)
    ref = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR))
    ours = np.asarray(jax.jit(processing.resize_uint8, static_argnums=1)(img, (new_h, new_w)))
    np.testing.assert_array_equal(ours, ref)


def test_preprocess_matches_official_steps():
    img = make_image(70, 45, seed=2)
    ref, (new_h, new_w) = official_preprocess(img, 128)
    ours = np.asarray(processing.preprocess(img, 128))
    assert ours.shape == (128, 128, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert (new_h, new_w) == (128, 82) and not ours[:, new_w:].any() and ours[:, :new_w].std() > 0.1


@pytest.mark.parametrize("src,dst", [((16, 16), (64, 64)), ((30, 50), (13, 21)), ((7, 5), (7, 12)), ((9, 40), (31, 3))])
def test_resize_bilinear_matches_numpy_reference(src, dst):
    x = np.random.default_rng(0).standard_normal((2, *src)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(processing.resize_bilinear(x, dst)), numpy_bilinear(x, *dst), atol=1e-5)


def test_postprocess_matches_numpy_reference():
    low = 4 * np.random.default_rng(1).standard_normal((3, 16, 16)).astype(np.float32)
    for original in ((30, 45), (200, 300)):  # shrink back and enlarge
        input_size = processing.resized_shape(*original, 64)
        ref = numpy_postprocess(low, input_size, original, 64)
        ours = np.asarray(processing.postprocess_logits(low, input_size, original, 64))
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        masks = np.asarray(processing.postprocess_masks(low, input_size, original, 64))
        assert masks.dtype == bool and masks.shape == (3, *original)
        np.testing.assert_array_equal(masks[np.abs(ref) > 1e-3], ref[np.abs(ref) > 1e-3] > 0)


@pytest.mark.parity
def test_postprocess_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    low = 4 * np.random.default_rng(2).standard_normal((2, 3, 256, 256)).astype(np.float32)
    for original in ((480, 640), (300, 200), (1500, 900)):
        input_size = processing.resized_shape(*original, 1024)
        t = F.interpolate(torch.from_numpy(low), (1024, 1024), mode="bilinear", align_corners=False)
        t = t[..., :input_size[0], :input_size[1]]
        ref = F.interpolate(t, original, mode="bilinear", align_corners=False).numpy()
        ours = np.asarray(processing.postprocess_logits(low, input_size, original, 1024))
        np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_bucket():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 64, 128]


# ----------------------------------------------------------------------------- predictor

def test_embedding_is_the_encoder_on_the_official_preprocessing(tiny, predictor):
    model, variables = tiny
    x, input_size = official_preprocess(make_image(), model.image_size)
    ref = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(variables, x[None].astype(np.float32))[0]
    emb = predictor.get_image_embedding()
    assert emb.shape == (16, 16, model.prompt_dim)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(ref), rtol=1e-5, atol=1e-4)
    assert predictor.original_size == (H, W) and predictor.input_size == input_size == (171, 256)
    assert vitsam.SamPredictor is SamPredictor


def test_points_match_the_model_decode_and_numpy_postprocessing(tiny, predictor, reference_decode):
    """Three points (bucketed to 4 inside the predictor) against the model's decode on the official mapping."""
    model, variables = tiny
    coords, labels = np.array([[20.0, 25.0], [70.0, 45.0], [10.5, 50.0]]), np.array([1, 0, 1])
    masks, iou, low = predictor.predict(point_coords=coords, point_labels=labels)
    assert masks.shape == (3, H, W) and masks.dtype == bool and iou.shape == (3,) and low.shape == (3, 64, 64)

    emb = predictor.get_image_embedding()[None]
    pts = to_input_frame(coords, (H, W), predictor.input_size)[None]
    ref_low, ref_iou = reference_decode(variables, emb, pts, labels[None], None, None, None, mm=True)
    np.testing.assert_allclose(low, ref_low[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(iou, ref_iou[0], **TOL)
    ref_logits = numpy_postprocess(np.asarray(ref_low[0]), predictor.input_size, (H, W), model.image_size)
    sure = np.abs(ref_logits) > 1e-3
    np.testing.assert_array_equal(masks[sure], ref_logits[sure] > 0)
    assert 0.02 < masks.mean() < 0.98  # non-trivial masks, so the comparison means something


def test_padding_points_do_not_change_the_result(predictor):
    coords, labels = np.array([[20.0, 25.0], [70.0, 45.0], [10.5, 50.0]]), np.array([1, 0, 1])
    ref = predictor.predict(point_coords=coords, point_labels=labels)
    # a padding point (label -1) anywhere, even outside the image: ignored
    padded = predictor.predict(point_coords=np.concatenate([coords, [[500.0, -3.0]]]),
                               point_labels=np.concatenate([labels, [-1]]))
    for a, b in zip(padded[1:], ref[1:]):
        np.testing.assert_allclose(a, b, **TOL)
    assert (padded[0] != ref[0]).mean() < 1e-3  # masks: only pixels with logits ~ 0 may flip
    # guard: a real fourth point does change it
    moved = predictor.predict(point_coords=np.concatenate([coords, [[80.0, 5.0]]]),
                              point_labels=np.concatenate([labels, [0]]))
    assert np.abs(moved[2] - ref[2]).max() > 1e-3


def test_box_equals_its_corners_as_points_with_corner_labels(predictor):
    box = np.array([12.0, 8.0, 50.0, 41.0])
    by_box = predictor.predict(box=box)
    by_points = predictor.predict(point_coords=box.reshape(2, 2), point_labels=np.array([2, 3]))
    for a, b in zip(by_box[1:], by_points[1:]):
        np.testing.assert_allclose(a, b, **TOL)
    assert (by_box[0] != by_points[0]).mean() < 1e-3


def test_batched_boxes_equal_single_calls_and_multimask_vs_single(tiny, predictor, reference_decode):
    model, variables = tiny
    boxes = np.array([[12.0, 8.0, 50.0, 41.0], [40.0, 30.0, 85.0, 58.0], [0.0, 0.0, 90.0, 60.0]])
    masks, iou, low = predictor.predict(box=boxes)  # N = 3, bucket 4
    assert masks.shape == (3, 3, H, W) and iou.shape == (3, 3) and low.shape == (3, 3, 64, 64)
    single_masks, single_iou, single_low = predictor.predict(box=boxes, multimask_output=False)
    assert single_masks.shape == (3, 1, H, W) and single_iou.shape == (3, 1) and single_low.shape == (3, 1, 64, 64)
    emb = jnp.broadcast_to(predictor.get_image_embedding(), (3, 16, 16, model.prompt_dim))
    frame_boxes = to_input_frame(boxes.reshape(3, 2, 2), (H, W), predictor.input_size).reshape(3, 4)
    ref_low, ref_iou = reference_decode(variables, emb, None, None, frame_boxes, None, None, mm=True)
    np.testing.assert_allclose(low, ref_low, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(iou, ref_iou, **TOL)
    # single = the decoder's mask 0, which the multimask output (masks 1-3) leaves out
    assert not np.any([np.allclose(single_low[:, 0], low[:, c], atol=1e-3) for c in range(3)])
    one = predictor.predict(box=boxes[1])  # unbatched call = row 1 of the batch
    assert one[0].shape == (3, H, W)
    np.testing.assert_allclose(one[2], low[1], **TOL)

    # more prompt sets than max_prompts: decoded in chunks (4 + 1 here), results concatenated in order
    chunked = SamPredictor(model, variables, max_prompts=4)
    chunked.set_image(make_image())
    five = np.concatenate([boxes, [[30.0, 5.0, 60.0, 20.0], [1.0, 40.0, 44.0, 59.0]]])
    masks5, iou5, low5 = chunked.predict(box=five)
    assert masks5.shape == (5, 3, H, W)
    np.testing.assert_allclose(low5[:3], low, **TOL)
    np.testing.assert_allclose(low5[4], predictor.predict(box=five[4])[2], **TOL)


def test_mask_input_round_trip(tiny, predictor, reference_decode):
    """low_res_logits fed back as mask_input reach the decoder unchanged, in every accepted shape."""
    model, variables = tiny
    point, label = np.array([[20.0, 25.0], [70.0, 45.0], [10.5, 50.0]]), np.array([1, 0, 1])
    _, iou, low = predictor.predict(point_coords=point, point_labels=label)
    prev = low[np.argmax(iou)][None]  # (1, 64, 64), as in the official notebooks
    masks, iou2, low2 = predictor.predict(point_coords=point, point_labels=label, mask_input=prev)
    emb = predictor.get_image_embedding()[None]
    pts = to_input_frame(point, (H, W), predictor.input_size)[None]
    ref_low, ref_iou = reference_decode(variables, emb, pts, label[None], None, prev[..., None], None, mm=True)
    np.testing.assert_allclose(low2, ref_low[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(iou2, ref_iou[0], **TOL)
    assert np.abs(low2 - low).max() > 1e-3  # the mask input matters
    same = predictor.predict(point_coords=point, point_labels=label, mask_input=prev[0])  # (64, 64)
    np.testing.assert_allclose(same[2], low2, **TOL)


def test_text_prompts(tiny, predictor, reference_decode):
    model, variables = tiny
    one = predictor.predict(text="yellow disc")
    assert one[0].shape == (3, H, W)
    many = predictor.predict(text=["yellow disc", "blue box on the right"])
    assert many[0].shape == (2, 3, H, W)
    emb = jnp.broadcast_to(predictor.get_image_embedding(), (2, 16, 16, model.prompt_dim))
    ids = model.tokenize(["yellow disc", "blue box on the right"])
    ref_low, ref_iou = reference_decode(variables, emb, None, None, None, None, ids, mm=True)
    np.testing.assert_allclose(many[2], ref_low, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one[2], many[2][0], **TOL)
    assert np.abs(many[2][0] - many[2][1]).max() > 1e-3


def test_repeated_calls_do_not_recompile(predictor):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        rng = np.random.default_rng(0)

        def call(n, p):  # a prompt structure used only here: points + box, single mask
            coords = rng.uniform(0, [W, H], (n, p, 2))
            boxes = np.sort(rng.uniform(0, [W, H, W, H], (n, 4)).reshape(n, 2, 2), axis=1).reshape(n, 4)
            return predictor.predict(point_coords=coords, point_labels=rng.integers(0, 2, (n, p)), box=boxes,
                                     multimask_output=False)

        call(3, 3)  # bucket (4 prompt sets, 4 points)
        assert compiles, "the compile listener saw nothing: the check below would be vacuous"
        compiles.clear()
        for n, p in ((4, 4), (3, 4), (3, 3), (4, 3)):
            masks, iou, low = call(n, p)
            assert masks.shape == (n, 1, H, W) and iou.shape == (n, 1)
        predictor.set_image(make_image(seed=5))  # another image of the same size: no compile either
        call(4, 4)
        assert compiles == [], f"{len(compiles)} compile(s) in repeated calls"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        predictor.set_image(make_image())


def test_batch_of_images(tiny, predictor):
    small = make_image(40, 40, seed=3)
    batch = SamPredictor(*tiny, encode_batch=2)
    batch.set_images([make_image(), small, make_image(seed=4)])  # chunks of 2 and 1 (padded to 1)
    assert batch.num_images == 3 and batch.original_sizes == [(H, W), (40, 40), (H, W)]
    np.testing.assert_allclose(np.asarray(batch.get_image_embedding(0)),
                               np.asarray(predictor.get_image_embedding()), rtol=1e-5, atol=1e-4)
    single = SamPredictor(*tiny)
    single.set_image(small)
    np.testing.assert_allclose(np.asarray(batch.get_image_embedding(1)), np.asarray(single.get_image_embedding()),
                               rtol=1e-5, atol=1e-4)
    box = np.array([5.0, 5.0, 30.0, 25.0])
    masks, iou, low = batch.predict(box=box, image_index=1)
    assert masks.shape == (3, 40, 40)
    np.testing.assert_allclose(low, single.predict(box=box)[2], rtol=1e-5, atol=1e-4)
    with pytest.raises(IndexError, match="image_index 3 out of range"):
        batch.predict(box=box, image_index=3)


def test_bad_input_gets_a_clear_error(tiny, predictor):
    model, variables = tiny
    with pytest.raises(RuntimeError, match="no image set"):
        SamPredictor(model, variables).predict(box=np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="must be uint8"):
        predictor.set_image(make_image().astype(np.float32))
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) RGB.*grayscale"):
        predictor.set_image(make_image()[..., 0])
    with pytest.raises(ValueError, match=r"RGBA"):
        predictor.set_image(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="no prompt given"):
        predictor.predict()
    with pytest.raises(ValueError, match=r"point \(95, 10\) lies outside the 90x60"):
        predictor.predict(point_coords=np.array([[10.0, 10.0], [95.0, 10.0]]), point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match="outside"):
        predictor.predict(point_coords=np.array([[10.0, -1.0]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="box .* lies outside"):
        predictor.predict(box=np.array([10.0, 10.0, 20.0, 61.0]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        predictor.predict(box=np.array([30.0, 10.0, 20.0, 20.0]))
    with pytest.raises(ValueError, match="must be given together"):
        predictor.predict(point_coords=np.array([[10.0, 10.0]]))
    with pytest.raises(ValueError, match="point_labels must have shape"):
        predictor.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match="point labels must be"):
        predictor.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([5]))
    with pytest.raises(ValueError, match="mix of single and batched"):
        predictor.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1]),
                          box=np.array([[1.0, 2.0, 30.0, 40.0]]))
    with pytest.raises(ValueError, match="disagree on N"):
        predictor.predict(box=np.array([[1.0, 2.0, 30.0, 40.0]] * 2), text=["a", "b", "c"])
    with pytest.raises(ValueError, match="mask_input must be low-res logits"):
        predictor.predict(box=np.array([1.0, 2.0, 30.0, 40.0]), mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="text must be a string"):
        predictor.predict(text=[1, 2])
    with pytest.raises(ValueError, match="no text encoder"):
        SamPredictor(sam_variant("tiny", text=False), variables).predict(text="a cat")


# ----------------------------------------------------------------------------- official parity

@pytest.mark.parity
def test_predictor_matches_the_official_sam_predictor():
    """Same weights, image and prompts through segment-anything's SamPredictor and ours."""
    torch = pytest.importorskip("torch")
    sa = pytest.importorskip("segment_anything")
    from vitsam.bench.torch_peers import official_sam
    from vitsam.convert import sam_state_dict_to_variables

    torch.manual_seed(0)
    official = official_sam("tiny")  # segment-anything's classes at vitsam's "tiny" sizes
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every tensor random (the default init has zero tables and tiny logits)
        for name, t in official.named_parameters():
            r = torch.randn(t.shape, generator=gen)
            if t.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                t.copy_(1 + 0.1 * r)
            elif t.ndim == 1 or "rel_pos" in name or "pos_embed" in name:
                t.copy_(0.1 * r)
            elif name.endswith(("_embed.weight", "_token.weight", "mask_tokens.weight")) or "point_embeddings" in name:
                t.copy_(r)  # embedding tables: torch's N(0, 1)
            else:
                t.copy_(r / np.sqrt(np.prod(t.shape[1:])))
    state = {k: v.detach().numpy() for k, v in official.state_dict().items() if not k.startswith("pixel_")}
    model, variables = sam_state_dict_to_variables(state, sam_variant("tiny", text=False))

    theirs, ours = sa.SamPredictor(official), SamPredictor(model, variables)
    # portrait, larger than the 256-px input (downscaled); landscape, smaller (upscaled)
    for shape, scale in (((300, 200), 1.0), ((110, 160), 0.4)):
        image = make_image(*shape, seed=7)
        theirs.set_image(image)
        ours.set_image(image)
        assert tuple(theirs.input_size) == ours.input_size and tuple(theirs.original_size) == ours.original_size
        np.testing.assert_allclose(np.asarray(ours.get_image_embedding()),
                                   theirs.get_image_embedding()[0].permute(1, 2, 0).numpy(), atol=2e-4)

        coords, labels = scale * np.array([[50.0, 80.0], [150.0, 220.0]]), np.array([1, 0])
        box = scale * np.array([20.0, 30.0, 170.0, 260.0])
        cases = [dict(point_coords=coords, point_labels=labels), dict(box=box),
                 dict(point_coords=coords, point_labels=labels, box=box)]
        for kwargs in cases:
            for multimask in (True, False):
                t_masks, t_iou, t_low = theirs.predict(**kwargs, multimask_output=multimask)
                o_masks, o_iou, o_low = ours.predict(**kwargs, multimask_output=multimask)
                np.testing.assert_allclose(o_low, t_low, rtol=1e-4, atol=1e-5 * np.abs(t_low).max())
                np.testing.assert_allclose(o_iou, t_iou, rtol=1e-4, atol=1e-5)
                assert (o_masks != t_masks).mean() < 1e-3  # only pixels with |logit| ~ 0 may flip
                assert 0 < t_masks.mean() < 1
        t_next = theirs.predict(point_coords=coords, point_labels=labels, mask_input=t_low[:1])
        o_next = ours.predict(point_coords=coords, point_labels=labels, mask_input=o_low[:1])
        np.testing.assert_allclose(o_next[2], t_next[2], rtol=1e-4, atol=1e-5 * np.abs(t_next[2]).max())
        assert np.abs(t_next[2] - t_low).max() > 1e-3  # the mask input mattered
