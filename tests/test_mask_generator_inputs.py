"""Bad and unusual inputs of `SamAutomaticMaskGenerator` and `vitsam segment --everything`: images that are not
(H, W, 3) uint8, tiny and very elongated images, out-of-range options, image files that are not RGB.

What is an error and what is handled:
- `generate(array)` takes (H, W, 3) uint8 only: grayscale, RGBA, channels-first, batched, float, bool or integer
  arrays and lists are a one-line ValueError naming what was expected and what came (a float image could be
  0-1 or 0-255: it is not guessed).
- Image files are converted by `vitsam.images.read_image`: grayscale repeated to three channels, RGBA without
  its alpha (not composited), 16-bit grey by its high byte; `--everything` then runs as on that RGB array.
- Any non-empty image is segmented, however small or elongated: its masks have its own (H, W) (possibly none
  survive the filters). An image longer than 2 × image_size × its short side keeps a one-pixel short side
  when resized; crop boxes left empty on a side shorter than a layer's crop count are skipped.
- Options out of range are a one-line ValueError from the generator and an argparse error from the command.

The tiny SAM (128-px input) with the tilted random weights of test_mask_generator, 2 × 2 points a side.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from test_mask_generator import make_image, random_variables

from vitsam import cli
from vitsam import mask_generator as mg
from vitsam.models import sam_variant
from vitsam.predictor import SamPredictor

FEW = dict(points_per_side=2, points_per_batch=4)
ALL = dict(FEW, pred_iou_thresh=0, stability_score_thresh=0)  # the filters off: every candidate that NMS keeps


@pytest.fixture(scope="module")
def tiny():
    model = sam_variant("tiny", image_size=128, text=False)
    return model, random_variables(model, seed=1)


def generator(tiny, **kw):
    return mg.SamAutomaticMaskGenerator(*tiny, **{**ALL, **kw})


def assert_masks_fit(annotations, shape):
    """Every annotation describes a mask of the image's (H, W): area, a box inside the image."""
    h, w = shape
    for a in annotations:
        m = a["segmentation"]
        assert m.shape == (h, w) and m.dtype == bool
        assert a["area"] == int(m.sum())
        x, y, bw, bh = a["bbox"]
        assert 0 <= x <= x + bw < max(w, 1) and 0 <= y <= y + bh < max(h, 1)
        px, py = a["point_coords"][0]
        assert 0 <= px <= w and 0 <= py <= h


# ----------------------------------------------------------------------------- arrays that are not RGB uint8

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (12, 16)).astype(np.uint8)
RGB = RNG.integers(0, 256, (12, 16, 3)).astype(np.uint8)


@pytest.mark.parametrize("image, words", [
    (GREY, ["(H, W, 3)", "(12, 16)", "grayscale"]),
    (GREY[..., None], ["(H, W, 3)", "(12, 16, 1)"]),
    (np.concatenate([RGB, np.full((12, 16, 1), 255, np.uint8)], -1), ["(H, W, 3)", "(12, 16, 4)", "RGBA"]),
    (RGB.transpose(2, 0, 1), ["(H, W, 3)", "(3, 12, 16)"]),
    (RGB[None], ["(H, W, 3)", "(1, 12, 16, 3)"]),
    (RGB.astype(np.float32) / 255, ["uint8", "float32"]),
    (RGB.astype(np.float64), ["uint8", "float64"]),
    (RGB.astype(np.int64), ["uint8", "int64"]),
    (RGB > 128, ["uint8", "bool"]),
    (RGB.tolist(), ["uint8 (H, W, 3)", "list"]),
    (np.zeros((0, 16, 3), np.uint8), ["empty", "(0, 16, 3)"]),
    (np.zeros((12, 0, 3), np.uint8), ["empty", "(12, 0, 3)"]),
], ids=["grey", "grey-1-channel", "rgba", "channels-first", "batched", "float-0-1", "float-0-255", "int64", "bool",
        "list", "no-rows", "no-columns"])
def test_generate_takes_rgb_uint8_only(tiny, image, words):
    with pytest.raises(ValueError) as e:
        generator(tiny).generate(image)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


# ----------------------------------------------------------------------------- tiny and elongated images

@pytest.mark.parametrize("shape", [(1, 1), (1, 256)])
def test_tiny_and_thin_images_are_segmented(tiny, shape):
    """Down to one pixel, and as thin as the 128-px model allows (the short side resized to 1 px: long side
    at most 2 × 128 × short side)."""
    image = RNG.integers(0, 256, (*shape, 3)).astype(np.uint8)
    anns = generator(tiny).generate(image)
    assert anns  # thresholds off: something survives
    assert_masks_fit(anns, shape)
    assert_masks_fit(generator(tiny, pred_iou_thresh=0.88, stability_score_thresh=0.95).generate(image), shape)


@pytest.mark.parametrize("shape", [(1, 257), (2000, 1), (5, 2000)])
def test_very_elongated_images_are_segmented(tiny, shape):
    image = RNG.integers(0, 256, (*shape, 3)).astype(np.uint8)
    anns = generator(tiny).generate(image)
    assert anns
    assert_masks_fit(anns, shape)


def test_predictor_takes_a_very_elongated_image(tiny):
    predictor = SamPredictor(*tiny)
    predictor.set_image(RNG.integers(0, 256, (1, 2000, 3)).astype(np.uint8))
    masks, _, _ = predictor.predict(point_coords=[[1000, 0]], point_labels=[1])
    assert masks.shape == (3, 1, 2000)


@pytest.mark.parametrize("shape, layers", [((1, 1), 1), ((3, 100), 2)])
def test_tiny_images_with_crop_layers(tiny, shape, layers):
    image = RNG.integers(0, 256, (*shape, 3)).astype(np.uint8)
    anns = generator(tiny, crop_n_layers=layers).generate(image)
    assert anns
    assert_masks_fit(anns, shape)


# ----------------------------------------------------------------------------- options out of range

@pytest.mark.parametrize("kw, message", [
    (dict(points_per_side=-1), "points_per_side must be a whole number >= 1, got -1"),
    (dict(points_per_side=-32), "points_per_side must be a whole number >= 1"),
    (dict(points_per_side=2.5), "points_per_side must be a whole number >= 1, got 2.5"),
    (dict(points_per_side=True), "points_per_side must be a whole number"),
    (dict(points_per_side="32"), "points_per_side must be a whole number >= 1, got '32'"),
    (dict(points_per_batch=0.5), "points_per_batch must be a whole number"),
    (dict(pred_iou_thresh=-0.01), "pred_iou_thresh must be a number between 0 and 1, got -0.01"),
    (dict(pred_iou_thresh=float("inf")), "pred_iou_thresh must be a number between 0 and 1"),
    (dict(pred_iou_thresh="0.88"), "pred_iou_thresh must be a number between 0 and 1, got '0.88'"),
    (dict(stability_score_thresh=1.5), "stability_score_thresh must be a number between 0 and 1, got 1.5"),
    (dict(stability_score_thresh=float("nan")), "stability_score_thresh must be a number between 0 and 1"),
    (dict(box_nms_thresh=-0.5), "box_nms_thresh must be a number between 0 and 1, got -0.5"),
    (dict(crop_nms_thresh=1.2), "crop_nms_thresh must be a number between 0 and 1, got 1.2"),
    (dict(crop_nms_thresh=None), "crop_nms_thresh must be a number between 0 and 1, got None"),
    (dict(stability_score_offset=-1.0), "stability_score_offset must be a finite number >= 0, got -1.0"),
    (dict(crop_overlap_ratio=-0.1), "crop_overlap_ratio must be a number in [0, 1)"),
])
def test_out_of_range_options_are_one_line_value_errors(tiny, kw, message):
    with pytest.raises(ValueError) as e:
        mg.check_options(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        mg.SamAutomaticMaskGenerator(*tiny, **kw)


def test_option_limits_are_accepted(tiny):
    """0 and 1 are valid thresholds (0 turns a filter off; 1 keeps masks whose predicted IoU is above 1, which
    a real SAM does not predict); NumPy numbers pass."""
    mg.check_options(pred_iou_thresh=0, stability_score_thresh=1, box_nms_thresh=0.0, crop_nms_thresh=1.0)
    mg.check_options(points_per_side=np.int64(1), pred_iou_thresh=np.float32(0.5))
    anns = generator(tiny, points_per_side=np.int64(1), pred_iou_thresh=1.0).generate(make_image())
    assert all(a["predicted_iou"] > 1 for a in anns)


@pytest.mark.parametrize("args, message", [
    (["--points-per-side", "0"], "--points-per-side: must be at least 1"),
    (["--points-per-batch", "-2"], "--points-per-batch: must be at least 1"),
    (["--crop-n-layers", "-1"], "--crop-n-layers: must be at least 0"),
    (["--min-mask-region-area", "x"], "--min-mask-region-area: expected a whole number"),
    (["--pred-iou-thresh", "1.2"], "--pred-iou-thresh: must be between 0 and 1"),
    (["--stability-score-thresh", "-0.5"], "--stability-score-thresh: must be between 0 and 1"),
    (["--points-per-side", "-1"], "--points-per-side: must be at least 1, got -1"),
    (["--points-per-side", "2.5"], "--points-per-side: expected a whole number, got '2.5'"),
    (["--pred-iou-thresh", "-0.01"], "--pred-iou-thresh: must be between 0 and 1"),
    (["--pred-iou-thresh", "nan"], "--pred-iou-thresh: must be between 0 and 1"),
    (["--pred-iou-thresh", "high"], "--pred-iou-thresh: expected a number, got 'high'"),
    (["--stability-score-thresh", "1.01"], "--stability-score-thresh: must be between 0 and 1"),
    (["--stability-score-thresh", "inf"], "--stability-score-thresh: must be between 0 and 1"),
])
def test_cli_out_of_range_options_are_argparse_errors(tmp_path, args, message, capsys):
    """Refused while parsing: before any checkpoint is read (this one does not exist)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "none"), "--everything",
                  *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- image files that are not RGB

def everything(image_path, out):
    return cli.main(["segment", str(image_path), "--checkpoint", "ckpt", "--everything", "--points-per-side", "2",
                     "--points-per-batch", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                     "--out", str(out)])


def read_masks(out, height, width):
    data = json.loads(next(out.glob("*.json")).read_text())
    assert data["image"]["height"] == height and data["image"]["width"] == width
    masks = []
    for i in range(len(data["annotations"])):
        with Image.open(out / f"mask_{i:03d}.png") as im:
            masks.append(np.asarray(im) == 255)
    with Image.open(out / "overlay.png") as im:
        assert im.mode == "RGB" and im.size == (width, height)
    return masks


@pytest.mark.parametrize("kind", ["grey", "grey-16-bit", "rgba", "grey-alpha", "palette"])
def test_cli_everything_reads_non_rgb_files_as_rgb(tiny, tmp_path, kind, capsys, monkeypatch):
    """The command's own image reading; the model is the fixture's (`load_model` replaced: loading a checkpoint
    is tested elsewhere)."""
    import vitsam.convert

    monkeypatch.setattr(vitsam.convert, "load_model", lambda path: (*tiny, "sam"))
    rgb = make_image()
    grey = rgb.mean(-1).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    picture, expected = {
        "grey": (Image.fromarray(grey), np.repeat(grey[..., None], 3, -1)),
        "grey-16-bit": (Image.fromarray(grey.astype(np.uint16) * 257), np.repeat(grey[..., None], 3, -1)),
        # the alpha channel is dropped, not composited over a background
        "rgba": (Image.fromarray(np.dstack([rgb, alpha])), rgb),
        "grey-alpha": (Image.fromarray(np.dstack([grey, alpha])), np.repeat(grey[..., None], 3, -1)),
        "palette": (Image.fromarray(rgb).quantize(16), None),
    }[kind]
    path = tmp_path / f"{kind}.png"
    picture.save(path)
    if expected is None:
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB"))
    out = tmp_path / "out"
    assert everything(path, out) == 0
    masks = read_masks(out, *rgb.shape[:2])
    want = [a["segmentation"] for a in generator(tiny).generate(expected)]
    assert masks and len(masks) == len(want)
    np.testing.assert_array_equal(masks, want)
    assert f"{kind}.json" in capsys.readouterr().out
