"""`vitsam segment` with a tiny SAM exported to an orbax folder, and the overlay pictures it draws."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from vitsam import cli
from vitsam.convert import export, load_model
from vitsam.models import sam_init, sam_variant
from vitsam.overlay import BACKGROUND, BOX, FOREGROUND, PALETTE, mask_boundary, mask_image, overlay
from vitsam.predictor import SamPredictor

H, W = 48, 64


def random_variables(model, seed=0):
    """Variables in `sam_init`'s shapes, drawn with numpy (no RNG kernels to compile)."""
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint folder, model, variables, image path) for a tiny SAM."""
    root = tmp_path_factory.mktemp("segment")
    model = sam_variant("tiny")
    variables = random_variables(model)
    export(model, variables, root / "ckpt", kind="sam")
    rng = np.random.default_rng(0)
    image = rng.integers(50, 150, (H, W, 3)).astype(np.uint8)
    image[10:30, 15:40] = (220, 40, 40)
    Image.fromarray(image).save(root / "image.png")
    return root / "ckpt", model, variables, root / "image.png"


def read_png(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_exported_sam_rebuilds_from_model_json(exported):
    ckpt, model, variables, _ = exported
    spec = json.loads((ckpt / "model.json").read_text())
    assert spec["kind"] == "sam" and spec["fields"]["global_attn_indexes"] == [1]
    loaded, loaded_vars, kind = load_model(ckpt)
    assert kind == "sam" and loaded == model
    assert set(loaded_vars) == {"params", "constants"}  # the Fourier matrix travels with the weights
    for a, b in zip(jax.tree.leaves(loaded_vars), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_segment_points_writes_masks_and_overlay(exported, tmp_path, capsys):
    ckpt, model, variables, image_path = exported
    out = tmp_path / "out"
    assert cli.main(["segment", str(image_path), "--checkpoint", str(ckpt), "--point", "20,15",
                     "--point", "50.5,40,0", "--multimask", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("predicted IoU") == 3 and "overlay.png" in printed

    predictor = SamPredictor(model, variables)
    predictor.set_image(np.asarray(Image.open(image_path).convert("RGB")))
    masks, iou, _ = predictor.predict(point_coords=np.array([[20, 15], [50.5, 40]]), point_labels=np.array([1, 0]))
    for c in range(3):
        mode, png = read_png(out / f"mask_{c}.png")
        assert mode == "L" and png.shape == (H, W) and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, masks[c])
    assert not (out / "mask_3.png").exists()

    mode, picture = read_png(out / "overlay.png")
    assert mode == "RGB" and picture.shape == (H, W, 3)
    assert tuple(picture[15, 20]) == FOREGROUND and tuple(picture[40, 50]) == BACKGROUND


@pytest.mark.parametrize("prompt, masks", [(["--point", "20,15"], 3), (["--point", "20,15", "--point", "30,20"], 1),
                                           (["--box", "2,3,30,40"], 1), (["--text", "square"], 3),
                                           (["--text", "square", "--point", "20,15"], 1),
                                           (["--box", "2,3,30,40", "--multimask"], 3),
                                           (["--point", "20,15", "--single"], 1)])
def test_segment_multimask_by_default_only_for_one_point_or_text_alone(exported, tmp_path, capsys, prompt, masks):
    ckpt, _, _, image_path = exported
    assert cli.main(["segment", str(image_path), "--checkpoint", str(ckpt), *prompt, "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("predicted IoU") == masks
    assert sorted(p.name for p in tmp_path.glob("mask_*.png")) == [f"mask_{c}.png" for c in range(masks)]


def test_segment_boxes_and_text_single_mask(exported, tmp_path):
    ckpt, _, _, image_path = exported
    out = tmp_path / "out"
    assert cli.main(["segment", str(image_path), "--checkpoint", str(ckpt), "--box", "2,3,30,40",
                     "--box", "20,10,60,45", "--text", "a red square", "--single", "--out", str(out)]) == 0
    for i in range(2):  # one prompt set per box, the text with each
        mode, png = read_png(out / f"mask_{i}_0.png")
        assert mode == "L" and png.shape == (H, W) and set(np.unique(png)) <= {0, 255}
    assert not (out / "mask_0_1.png").exists() and not (out / "mask_0.png").exists()
    _, picture = read_png(out / "overlay.png")
    assert tuple(picture[20, 2]) == BOX and tuple(picture[3, 10]) == BOX  # left and top edges of box 0


@pytest.mark.parametrize("args,message", [
    (["--point", "10"], "--point expects x,y[,label]"),
    (["--point", "a,b"], "--point expects x,y[,label]"),
    (["--point", "10,20,7"], "--point labels must be 1 (foreground) or 0 (background)"),
    (["--box", "1,2,3"], "--box expects x0,y0,x1,y1"),
    ([], "no prompt"),
    (["--box", "1,2,3,4", "--box", "1,2,5,6", "--text", "a", "--text", "b", "--text", "c"],
     "got 2 --box prompts for 3 prompt sets"),
])
def test_bad_prompts_are_one_line_errors(exported, args, message, capsys):
    ckpt, _, _, image_path = exported
    assert cli.main(["segment", str(image_path), "--checkpoint", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("vitsam segment: error:")


def test_prompt_outside_the_image_and_missing_files(exported, tmp_path, capsys):
    ckpt, _, _, image_path = exported
    assert cli.main(["segment", str(image_path), "--checkpoint", str(ckpt), "--point", "70,5",
                     "--out", str(tmp_path)]) == 2
    assert "point (70, 5) lies outside the 64x48" in capsys.readouterr().err
    assert cli.main(["segment", str(image_path), "--checkpoint", str(tmp_path / "nope"), "--box", "1,2,3,4"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such image"):
        cli.main(["segment", str(tmp_path / "nope.png"), "--checkpoint", str(ckpt), "--box", "1,2,3,4"])


# ----------------------------------------------------------------------------- overlay

def test_overlay_blends_outlines_and_draws_prompts():
    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    picture = overlay(image, mask[None], points=[[40, 30], [45, 8], [3, 35]], labels=[1, 0, -1],
                      boxes=[[2, 25, 20, 38]])
    assert picture.shape == (40, 50, 3) and picture.dtype == np.uint8
    blend = np.floor(0.5 * 100 + 0.5 * np.array(PALETTE[0]) + 0.5)
    np.testing.assert_array_equal(picture[12, 20], blend)  # interior: half image, half colour
    assert tuple(picture[5, 20]) == PALETTE[0] and tuple(picture[12, 10]) == PALETTE[0]  # outline
    assert tuple(picture[30, 40]) == FOREGROUND and tuple(picture[8, 45]) == BACKGROUND
    assert tuple(picture[35, 3]) == (100, 100, 100)  # padding points are not drawn
    assert tuple(picture[30, 2]) == BOX and tuple(picture[38, 10]) == BOX
    assert tuple(picture[0, 0]) == (100, 100, 100) and tuple(picture[22, 35]) == (100, 100, 100)


def test_mask_boundary_and_mask_image():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 3:9] = True
    rim = mask.copy()
    rim[3:7, 4:8] = False  # a filled rectangle's boundary is its outer ring
    np.testing.assert_array_equal(mask_boundary(mask), rim)
    full = np.ones((4, 5), bool)
    assert mask_boundary(full).sum() == 4 * 5 - 2 * 3  # pixels on the image border count as boundary
    png = np.asarray(mask_image(mask))
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
    np.testing.assert_array_equal(png == 255, mask)
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((4, 4, 3)), None)
