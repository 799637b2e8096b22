"""Bad or unusual inputs: image files (16-bit, EXIF orientation, other PIL modes), prompts that are no prompt,
wrong ViT input shapes, the cuDNN kernel off GPU, and `vitsam segment` failing before the image encoder runs.

References are independent of the code under test: 16-bit PNGs written byte by byte with zlib and their
8-bit values worked out by hand (v >> 8), EXIF-rotated files compared with np.rot90 of the stored pixels.
"""

from __future__ import annotations

import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vitsam import cli
from vitsam.convert import export
from vitsam.models import sam_init, sam_variant, vit_variant
from vitsam.nn import dot_product_attention
from vitsam.params import abstract_init
from vitsam.predictor import SamPredictor, check_prompts

ORIENTATION = 0x0112  # the EXIF tag


def png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG file, written by hand: samples (H, W) or (H, W, C) uint16; color type 0 grey, 2 RGB,
    4 grey + alpha, 6 RGBA."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# Hand-picked 16-bit values and their high bytes.
V16 = np.array([[0, 255, 256, 0x1234], [0x8000, 0xABCD, 0xFF00, 65535]], np.uint16)
V8 = np.array([[0, 0, 1, 0x12], [0x80, 0xAB, 0xFF, 0xFF]], np.uint8)


def grey3(x):
    return np.repeat(x[..., None], 3, axis=-1)


# ----------------------------------------------------------------------------- image files

def test_16bit_grey_png_keeps_the_high_byte(tmp_path):
    path = tmp_path / "grey16.png"
    path.write_bytes(png16(V16, 0))
    assert Image.open(path).mode == "I;16"
    image = cli._read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 4, 3)
    np.testing.assert_array_equal(image, grey3(V8))


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_16bit_big_endian_and_int32_modes(tmp_path, mode):
    path = tmp_path / "grey.tif"
    if mode == "I;16B":
        Image.frombytes("I;16B", (4, 2), V16.astype(">u2").tobytes()).save(path)
    else:
        Image.fromarray(V16.astype(np.int32)).save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(cli._read_image(path), grey3(V8))


@pytest.mark.parametrize("color_type, channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_and_alpha_pngs(tmp_path, color_type, channels):
    samples = np.stack([np.roll(V16, c, axis=1) for c in range(channels)], axis=-1)  # distinct channels
    path = tmp_path / "colour16.png"
    path.write_bytes(png16(samples, color_type))
    expected = (samples >> 8).astype(np.uint8)
    expected = grey3(expected[..., 0]) if channels == 2 else expected[..., :3]  # alpha dropped
    np.testing.assert_array_equal(cli._read_image(path), expected)


def _palette_image():
    palette = [10, 20, 30, 200, 100, 0, 0, 255, 77]
    im = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], np.uint8), "P")
    im.putpalette(palette)
    return im, np.array(palette, np.uint8).reshape(3, 3)[[[0, 1, 2], [2, 1, 0]]]


@pytest.mark.parametrize("kind", ["P", "L", "LA", "RGBA", "CMYK", "1"])
def test_other_modes_become_rgb(tmp_path, kind):
    g = np.array([[0, 90, 255], [17, 128, 3]], np.uint8)
    if kind == "P":
        im, expected = _palette_image()
    elif kind == "L":
        im, expected = Image.fromarray(g, "L"), grey3(g)
    elif kind == "LA":
        im, expected = Image.fromarray(np.stack([g, 255 - g], -1), "LA"), grey3(g)
    elif kind == "RGBA":
        rgba = np.stack([g, 255 - g, g // 2, np.full_like(g, 7)], -1)
        im, expected = Image.fromarray(rgba, "RGBA"), rgba[..., :3]
    elif kind == "CMYK":  # K = 0 or C = M = Y = 0: R = 255 − C, …, or 255 − K
        cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [100, 50, 0, 0]],
                         [[0, 0, 0, 255], [0, 0, 0, 55], [30, 60, 90, 0]]], np.uint8)
        im = Image.frombytes("CMYK", (3, 2), cmyk.tobytes())
        expected = np.array([[[255, 255, 255], [0, 255, 255], [155, 205, 255]],
                             [[0, 0, 0], [200, 200, 200], [225, 195, 165]]], np.uint8)
    else:
        bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
        im, expected = Image.fromarray(bits), grey3(bits.astype(np.uint8) * 255)
    path = tmp_path / ("image.tif" if kind == "CMYK" else "image.png")
    im.save(path)
    image = cli._read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    np.testing.assert_array_equal(image, expected)


def _exif_file(path, pixels, orientation, **save):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])  # np.rot90's k: 6 = a clockwise turn
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "turned.png"
    _exif_file(path, pixels, orientation)
    np.testing.assert_array_equal(cli._read_image(path), np.rot90(pixels, turn))


def test_exif_orientation_of_a_jpeg(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    path = tmp_path / "turned.jpg"
    _exif_file(path, pixels, 6, quality=95)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the decoded pixels, orientation not applied
    np.testing.assert_array_equal(cli._read_image(path), np.rot90(stored, -1))


# ----------------------------------------------------------------------------- prompts

@pytest.fixture(scope="module")
def tiny_sam():
    """A tiny SAM with zero weights: the checks never look at the values."""
    model = sam_variant("tiny")
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def predictor(tiny_sam):
    predictor = SamPredictor(*tiny_sam)
    predictor.set_image(np.zeros((48, 64, 3), np.uint8))
    return predictor


M = 64  # the tiny model's mask_input size
BAD_PROMPTS = [
    (dict(text=""), "text '' is empty"),
    (dict(text="   "), "text '   ' is empty"),
    (dict(text="?!"), "text '?!' is empty"),
    (dict(text=["a cat", " "]), "text[1] ' ' is empty"),
    (dict(point_coords=[[5, 5], [9, 9]], point_labels=[-1, -1]), "the prompt has only padding points (label -1)"),
    (dict(point_coords=[[[5, 5]], [[9, 9]]], point_labels=[[1], [-1]]), "prompt set 1 has only padding points"),
    (dict(box=[1, 2, 30, 40], mask_input=np.full((1, M, M), np.nan)), "mask_input must be finite"),
    (dict(mask_input=np.full((M, M), np.inf)), "mask_input must be finite"),
    (dict(mask_input=np.full((2, M, M), -np.inf)), "mask_input must be finite"),
]


@pytest.mark.parametrize("prompts, message", BAD_PROMPTS)
def test_prompts_that_are_no_prompt(predictor, prompts, message):
    with pytest.raises(ValueError) as info:
        predictor.predict(**prompts)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_padding_points_beside_a_real_prompt_are_fine(tiny_sam):
    # The padding is ignored; the box or the other point is the prompt.
    check_prompts(tiny_sam[0], (48, 64), point_coords=[[5, 5]], point_labels=[-1], box=[1, 2, 30, 40])
    check_prompts(tiny_sam[0], (48, 64), point_coords=[[5, 5], [9, 9]], point_labels=[1, -1])


# ----------------------------------------------------------------------------- ViT inputs

def tiny_vit(**kw):
    return vit_variant("Ti/16", num_classes=3, image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32,
                       num_heads=2, **kw)


@pytest.mark.parametrize("shape, message", [
    ((2, 16, 16, 1), "ViT expects NHWC images (B, H, W, 3), got shape (2, 16, 16, 1)"),
    ((2, 16, 16, 4), "ViT expects NHWC images (B, H, W, 3), got shape (2, 16, 16, 4)"),
    ((16, 16, 3), "ViT expects NHWC images (B, H, W, 3), got shape (16, 16, 3) (add the batch axis: images[None])"),
    ((16, 16), "ViT expects NHWC images (B, H, W, 3), got shape (16, 16)"),
])
def test_vit_rejects_wrong_channels_and_rank(shape, message):
    model = tiny_vit()
    variables = abstract_init(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    for run in (lambda: abstract_init(model, x), lambda: jax.eval_shape(jax.jit(model.apply), variables, x)):
        with pytest.raises(ValueError) as info:
            run()
        assert str(info.value) == message


def test_vit_channels_follow_a_loaded_patch_kernel():
    model = tiny_vit()
    variables = abstract_init(model, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    params = dict(variables["params"])
    params["embedding"] = dict(params["embedding"], kernel=jax.ShapeDtypeStruct((8, 8, 1, 16), jnp.float32))
    grey = {"params": params}  # e.g. a converted one-channel checkpoint
    assert jax.eval_shape(model.apply, grey, jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\), got shape \(2, 16, 16, 3\)"):
        jax.eval_shape(model.apply, grey, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))


# ----------------------------------------------------------------------------- cuDNN off GPU

CUDNN_MESSAGE = "attention implementation 'cudnn' needs an NVIDIA GPU with cuDNN"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the error off GPU")
def test_cudnn_attention_off_gpu_is_a_clear_error():
    q = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError) as info:
        dot_product_attention(q, q, q, implementation="cudnn")
    assert str(info.value).startswith(CUDNN_MESSAGE) and "use 'xla' or 'einsum'" in str(info.value)
    with pytest.raises(ValueError, match=CUDNN_MESSAGE):  # through a model, at trace time
        abstract_init(tiny_vit(attention_impl="cudnn"), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))


# ----------------------------------------------------------------------------- `vitsam segment` fails early

class Encoded(Exception):
    """Raised in place of the image encoder: reaching it means every check before it passed."""


@pytest.fixture
def no_encoder(monkeypatch):
    """`SamPredictor.set_image` replaced by a stop that records the image it was given."""
    seen = []

    def stop(self, image):
        seen.append(image)
        raise Encoded
    monkeypatch.setattr(SamPredictor, "set_image", stop)
    return seen


@pytest.fixture(scope="module")
def no_text_ckpt(tmp_path_factory):
    """A tiny SAM without a text encoder, zero weights, exported; and a 48 x 64 image stored turned (EXIF 6)."""
    root = tmp_path_factory.mktemp("checks")
    model = sam_variant("tiny", text=False)
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    export(model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), root / "ckpt", kind="sam")
    stored = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)  # displayed: 48 high, 64 wide
    _exif_file(root / "turned.png", stored, 6)
    (root / "file.txt").write_text("not a folder")
    return root, stored


def segment(root, *args):
    return cli.main(["segment", str(root / "turned.png"), "--checkpoint", str(root / "ckpt"), *args])


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "--text '' is empty (no letters or digits)"),
    (["--text", "  "], "--text '  ' is empty (no letters or digits)"),
    (["--box", "1,2,3,4", "--out", "{root}/file.txt/masks"], "--out {root}/file.txt/masks lies under the file "
                                                               "{root}/file.txt: give a folder"),
    (["--box", "1,2,3,4", "--out", "{root}/file.txt"], "--out {root}/file.txt is a file: give a folder"),
    (["--text", "a cat"], "--text needs a SAM with a text encoder, and {root}/ckpt has none"),
    # inside the stored 48 x 64 (width x height) pixels, outside the displayed 64 x 48 picture
    (["--point", "10,55"], "point (10, 55) lies outside the 64x48 (width x height) image"),
    (["--box", "0,0,40,60"], "box [0.0, 0.0, 40.0, 60.0] lies outside the 64x48 (width x height) image"),
])
def test_segment_checks_before_encoding(no_text_ckpt, no_encoder, tmp_path, capsys, args, message):
    root, _ = no_text_ckpt
    out = tmp_path / "masks"  # a later --out in args wins
    assert segment(root, "--out", str(out), *(a.format(root=root) for a in args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitsam segment: error: ") and err.count("\n") == 1
    assert message.format(root=root) in err
    assert not no_encoder and not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_segment_read_only_out(no_text_ckpt, no_encoder, tmp_path, capsys):
    root, _ = no_text_ckpt
    tmp_path.chmod(0o500)
    try:
        assert segment(root, "--box", "1,2,3,4", "--out", str(tmp_path / "masks")) == 2
    finally:
        tmp_path.chmod(0o700)
    assert f"cannot write in {tmp_path} (permission denied)" in capsys.readouterr().err


def test_segment_encodes_the_image_as_displayed(no_text_ckpt, no_encoder, tmp_path):
    root, stored = no_text_ckpt
    # (60, 40) lies inside the displayed 64 x 48 picture but outside the stored 48 x 64 pixels.
    with pytest.raises(Encoded):
        segment(root, "--point", "60,40", "--out", str(tmp_path / "masks"))
    np.testing.assert_array_equal(no_encoder[0], np.rot90(stored, -1))
