"""`vitsam export`: the exported StableHLO and ONNX programs against the JAX model they come from.

References: `SamPredictor` (our JAX path, whose pre- and post-processing match the official code bit for bit in
tests/test_sam_processing.py) for SAM, `model.apply` for the ViT. Tolerances, as max |exported − JAX| / max |JAX|:
StableHLO 1e-5 (measured ≤ 5.8e-6, 2026-12-04: XLA fuses the exported program differently, and the predictor
projects the shared image embedding once for all prompts where the exported decoder broadcasts it first),
ONNX 1e-4 (measured ≤ 2.2e-6),
masks at the original size agreeing on ≥ 99.99% of the pixels (measured 100%).
The vit_b architecture (random weights) runs the same checks on one image size in
`test_the_vit_b_architecture_exports_faithfully`.

Run with: pytest -m export tests/test_export.py   (needs the [export] extra and jax2onnx: README, "Export")
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

from PIL import Image

from vitsam import cli
from vitsam.convert import export as write_checkpoint
from vitsam.export import export_sam, export_vit
from vitsam.models import vit_variant
from vitsam.models.sam import sam_init, sam_variant
from vitsam.predictor import SamPredictor

STABLEHLO_REL, ONNX_REL, MASK_AGREEMENT = 1e-5, 1e-4, 0.9999
SIZES = ((300, 200), (180, 400))  # (H, W): portrait, landscape; both differ from the tiny model's 256 px
POINTS = 16  # the ONNX decoder's point slots


def _close(got, want, rel):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert err <= rel, f"max relative error {err:.2e} > {rel:.0e}"


def _load(paths, program):
    from jax import export

    hlo = export.deserialize(paths[program]["stablehlo"].read_bytes())
    session = ort.InferenceSession(str(paths[program]["onnx"]), providers=["CPUExecutionProvider"])
    return hlo, session


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    model = sam_variant("tiny")  # with a text encoder, as `train.sam` trains it: the export leaves it out
    variables = sam_init(model, jax.random.PRNGKey(0))
    out = tmp_path_factory.mktemp("export") / "tiny_sam"
    paths = export_sam(model, variables, out, max_side=1024, onnx_points=POINTS, log=lambda *_: None)
    return model, variables, out, paths


def _decoder_inputs(model, embedding, shape, points=None, labels=None, box=None, mask=None, slots=None):
    """One prompt set as the exported decoder's inputs (P = slots, padding label -1)."""
    n_points = 0 if points is None else len(points)
    p = slots or max(n_points, 1)
    coords = np.zeros((1, p, 2), np.float32)
    labs = np.full((1, p), -1, np.int32)
    if n_points:
        coords[0, :n_points], labs[0, :n_points] = points, labels
    m = model.mask_input_size
    return dict(image_embeddings=np.asarray(embedding)[None], point_coords=coords, point_labels=labs,
                boxes=np.asarray(box if box is not None else np.zeros(4), np.float32)[None],
                has_box=np.float32([box is not None]),
                mask_input=(np.zeros((1, m, m), np.float32) if mask is None else np.asarray(mask, np.float32)[None]),
                has_mask_input=np.float32([mask is not None]), original_size=np.empty((*shape, 0), np.uint8))


def _prompts(shape, predictor):
    """point / box / box+points / mask input (a previous low-res output) for an image of `shape`."""
    h, w = shape
    point, labels = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h]], np.float32), np.array([1, 0], np.int32)
    box = np.array([0.1 * w, 0.2 * h, 0.8 * w, 0.9 * h], np.float32)
    _, _, low = predictor.predict(point_coords=point[:1], point_labels=labels[:1], multimask_output=False)
    return {
        "point": dict(points=point[:1], labels=labels[:1]),
        "box": dict(box=box),
        "box+points": dict(points=point, labels=labels, box=box),
        "mask": dict(points=point[:1], labels=labels[:1], mask=low[0]),
    }


def _predict(predictor, prompt, multimask):
    kwargs = {}
    if "points" in prompt:
        kwargs.update(point_coords=prompt["points"], point_labels=prompt["labels"])
    if "box" in prompt:
        kwargs["box"] = prompt["box"]
    if "mask" in prompt:
        kwargs["mask_input"] = prompt["mask"][None]
    return predictor.predict(**kwargs, multimask_output=multimask)


def _check_decoder(outputs, want, multimask, rel):
    masks, iou, low = (np.asarray(x) for x in outputs)
    pick = slice(1, 4) if multimask else slice(0, 1)
    want_masks, want_iou, want_low = want
    _close(iou[0, pick], want_iou, rel)
    _close(low[0, pick], want_low, rel)
    assert masks.dtype == bool and masks.shape[2:] == want_masks.shape[1:]
    assert np.mean(masks[0, pick] == want_masks) >= MASK_AGREEMENT


def _check_encoders(predictor, image, encoder, encoder_onnx):
    """Both exported encoders against `SamPredictor.set_image` on one image; returns the StableHLO embedding."""
    predictor.set_image(image)
    want = np.asarray(predictor.get_image_embedding())
    embedding = np.asarray(encoder.call(image[None]))[0]
    _close(embedding, want, STABLEHLO_REL)
    _close(encoder_onnx.run(None, {"images": image[None]})[0][0], want, ONNX_REL)
    return embedding


def _check_prompt(model, predictor, embedding, shape, prompt, multimask, decoder, decoder_onnx):
    """One prompt through both exported decoders against `SamPredictor.predict`."""
    want = _predict(predictor, prompt, multimask)
    args = (model, embedding, shape, prompt.get("points"), prompt.get("labels"), prompt.get("box"),
            prompt.get("mask"))
    # StableHLO: as many point slots as the predictor's bucket (the same padding); ONNX: its fixed slots.
    n = len(prompt.get("points", ())) + 2 * ("box" in prompt)
    slots = 1 << max(n - 1, 0).bit_length() if "points" in prompt else None
    _check_decoder(decoder.call(*_decoder_inputs(*args, slots=slots).values()), want, multimask, STABLEHLO_REL)
    _check_decoder(decoder_onnx.run(None, _decoder_inputs(*args, slots=POINTS)), want, multimask, ONNX_REL)


@pytest.mark.parametrize("shape", SIZES)
def test_the_tiny_sam_exports_equal_the_predictor(tiny_sam, shape):
    model, variables, _, paths = tiny_sam
    encoder, encoder_onnx = _load(paths, "image_encoder")
    decoder, decoder_onnx = _load(paths, "prompt_decoder")
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    predictor = SamPredictor(model, variables)
    embedding = _check_encoders(predictor, image, encoder, encoder_onnx)
    for prompt in _prompts(shape, predictor).values():
        for multimask in (True, False):
            _check_prompt(model, predictor, embedding, shape, prompt, multimask, decoder, decoder_onnx)


def test_a_batch_of_prompt_sets_decodes_like_one_at_a_time(tiny_sam):
    """N prompt sets in one call (symbolic N): each row as its own call; rows mix points, boxes and masks."""
    model, variables, _, paths = tiny_sam
    decoder, decoder_onnx = _load(paths, "prompt_decoder")
    shape = (120, 90)
    rng = np.random.default_rng(5)
    embedding = rng.normal(size=(model.embedding_size, model.embedding_size, model.prompt_dim)).astype(np.float32)
    rows = [_decoder_inputs(model, embedding, shape, [[10, 20]], [1], slots=POINTS),
            _decoder_inputs(model, embedding, shape, box=[5, 5, 60, 80], slots=POINTS),
            _decoder_inputs(model, embedding, shape, [[30, 40], [50, 20]], [1, 0], box=[0, 0, 89, 119],
                            mask=rng.normal(size=(64, 64)), slots=POINTS)]
    batch = {k: (v if k in ("image_embeddings", "original_size") else np.concatenate([r[k] for r in rows]))
             for k, v in rows[0].items()}
    for run in (lambda x: decoder.call(*x.values()), lambda x: decoder_onnx.run(None, x)):
        together = [np.asarray(o) for o in run(batch)]
        for i, row in enumerate(rows):
            alone = [np.asarray(o) for o in run(row)]
            for a, b in zip(together, alone):
                if a.dtype == bool:
                    assert np.mean(a[i] == b[0]) >= MASK_AGREEMENT
                else:
                    _close(a[i], b[0], 1e-5)


def test_the_files_run_with_jax_alone_and_onnxruntime_alone(tiny_sam, tmp_path):
    """A fresh interpreter that imports neither vitsam nor flax reloads both formats and gets the same outputs."""
    model, variables, out, paths = tiny_sam
    image = np.random.default_rng(2).integers(0, 256, (150, 110, 3), dtype=np.uint8)
    predictor = SamPredictor(model, variables)
    predictor.set_image(image)
    want = np.asarray(predictor.get_image_embedding())
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(f"""
        import sys, numpy as np, jax
        from jax import export
        import onnxruntime as ort
        image = np.load({str(tmp_path / "image.npy")!r})
        hlo = export.deserialize(open({str(out / "image_encoder.stablehlo")!r}, "rb").read())
        a = np.asarray(hlo.call(image[None]))[0]
        b = ort.InferenceSession({str(out / "image_encoder.onnx")!r}).run(None, {{"images": image[None]}})[0][0]
        np.save({str(tmp_path / "a.npy")!r}, a)
        np.save({str(tmp_path / "b.npy")!r}, b)
        loaded = [m for m in sys.modules if m.split(".")[0] in ("vitsam", "flax", "jax2onnx", "optax", "orbax")]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    _close(np.load(tmp_path / "a.npy"), want, STABLEHLO_REL)
    _close(np.load(tmp_path / "b.npy"), want, ONNX_REL)


def test_the_generated_readme_describes_every_input_and_its_example_runs(tiny_sam, monkeypatch):
    model, variables, out, paths = tiny_sam
    readme = (out / "README.md").read_text()
    meta = json.loads((out / "metadata.json").read_text())
    for program, spec in meta["programs"].items():
        session = ort.InferenceSession(str(paths[program]["onnx"]))
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in spec["inputs"]]
        assert [o.name for o in session.get_outputs()] == [o["name"] for o in spec["outputs"]]
        for item in spec["inputs"] + spec["outputs"]:
            assert f"`{item['name']}`" in readme
    # The example, run as a user would: in the export folder, with a photo.jpg there.
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    image = np.random.default_rng(4).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    Image.fromarray(image).save(out / "photo.jpg", quality=95)
    monkeypatch.chdir(out)
    namespace = {}
    try:
        exec(compile(code.replace("(500, 375)", "(130, 100)"), "README.md", "exec"), namespace)
    finally:
        photo = np.asarray(Image.open(out / "photo.jpg").convert("RGB"))
        (out / "photo.jpg").unlink()
    assert namespace["best"].shape == (200, 260) and namespace["best"].dtype == bool
    predictor = SamPredictor(model, variables)
    predictor.set_image(photo)
    masks, iou, _ = predictor.predict(point_coords=np.float32([[130, 100]]), point_labels=np.int32([1]))
    assert np.mean(namespace["best"] == masks[iou.argmax()]) >= MASK_AGREEMENT


def test_the_vit_classifier_exports_with_its_class_names(tmp_path, monkeypatch):
    model = vit_variant("Ti/16", num_classes=3, image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64,
                        num_heads=2, head_zero_init=False)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    names = ["disc", "box", "wedge"]
    # From a checkpoint folder with class names, through the command line.
    write_checkpoint(model, variables, tmp_path / "ckpt", kind="vit", class_names=names)
    assert cli.main(["export", str(tmp_path / "ckpt"), str(tmp_path / "vit")]) == 0
    paths = {"classifier": {fmt: tmp_path / "vit" / f"classifier.{fmt}" for fmt in ("stablehlo", "onnx")}}
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    # The jitted JAX model on the same uint8 -> [-1, 1] mapping (numpy's x / 127.5 differs from XLA's by an ulp,
    # which a random ViT amplifies to 2e-6).
    jax_model = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.float32) / 127.5 - 1.0))
    want = np.asarray(jax_model(variables, images))
    hlo, session = _load(paths, "classifier")
    _close(hlo.call(images), want, STABLEHLO_REL)
    _close(session.run(None, {"images": images})[0], want, ONNX_REL)
    _close(hlo.call(images[:2]), want[:2], STABLEHLO_REL)  # a symbolic batch
    props = {p.key: p.value for p in onnx.load(str(paths["classifier"]["onnx"])).metadata_props}
    assert json.loads(props["vitsam"])["class_names"] == names
    assert json.loads((tmp_path / "vit" / "metadata.json").read_text())["class_names"] == names
    # The generated README's example, in the export folder with a photo.jpg there.
    code = re.search(r"```python\n(.*?)```", (tmp_path / "vit" / "README.md").read_text(), re.S).group(1)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(
        tmp_path / "vit" / "photo.jpg")
    monkeypatch.chdir(tmp_path / "vit")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    resized = np.asarray(Image.open("photo.jpg").convert("RGB").resize((32, 32), Image.BICUBIC))
    assert namespace["top"] == int(np.argmax(jax_model(variables, resized[None])[0]))
    with pytest.raises(ValueError, match="2 class names for a head of 3 classes"):
        export_vit(model, variables, tmp_path / "vit2", class_names=names[:2])


def test_lower_precision_and_several_platforms(tiny_sam, tmp_path):
    """bfloat16 / float16 weights and compute: the embedding stays close to float32's; one file lowered for cpu,
    cuda and tpu runs here on the CPU."""
    from jax import export

    model, variables, _, f32_paths = tiny_sam
    image = np.random.default_rng(7).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    want = np.asarray(export.deserialize(f32_paths["image_encoder"]["stablehlo"].read_bytes()).call(image[None]))
    for dtype, rel in (("bfloat16", 0.1), ("float16", 0.02)):
        paths = export_sam(model, variables, tmp_path / dtype, formats=("stablehlo",), dtype=dtype,
                           platforms=("cpu", "cuda", "tpu"), log=lambda *_: None)
        exported = export.deserialize(paths["image_encoder"]["stablehlo"].read_bytes())
        assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
        got = np.asarray(exported.call(image[None]))
        assert got.dtype == np.float32
        _close(got, want, rel)


def test_bad_calls_of_the_exported_programs_are_refused(tiny_sam):
    model, _, _, paths = tiny_sam
    encoder, encoder_onnx = _load(paths, "image_encoder")
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="Dtype mismatch for args\\[0\\]: expected uint8"):
        encoder.call(image[None].astype(np.float32))
    with pytest.raises(ValueError, match="Rank mismatch for args\\[0\\]: expected \\(B, H, W, 3\\)"):
        encoder.call(image)
    too_tall = np.zeros((1, 1100, 30, 3), np.uint8)  # above max_side, 1024 for this export
    with pytest.raises(ValueError) as refused:
        encoder.call(too_tall)
    assert "shape constraint H <= 1024" in str(refused.value.__cause__)
    assert np.all(np.isnan(encoder_onnx.run(None, {"images": too_tall})[0]))
    with pytest.raises(Exception, match="(?i)type|rank|dimension"):
        encoder_onnx.run(None, {"images": image[None].astype(np.float32)})
    with pytest.raises(Exception, match="(?i)rank|dimension"):
        encoder_onnx.run(None, {"images": image})


def test_bad_options_and_folders_are_one_line_errors(tiny_sam, tmp_path, capsys):
    model, variables, out, _ = tiny_sam
    write_checkpoint(model, variables, tmp_path / "ckpt", kind="sam")
    cases = [
        (["--format", "tflite"], "unknown format 'tflite'"),
        (["--platforms", "metal"], "unknown platform 'metal'"),
        (["--dtype", "int8"], "unknown dtype 'int8'"),
        (["--dtype", "float16"], "ONNX export is float32 only"),
    ]
    for extra, message in cases:
        assert cli.main(["export", str(tmp_path / "ckpt"), str(tmp_path / "new"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "new").exists()
    # A non-empty folder is refused (before the checkpoint is read) and left as it was.
    before = sorted(p.name for p in out.iterdir())
    assert cli.main(["export", str(tmp_path / "ckpt"), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    # Not a checkpoint vitsam knows.
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["export", str(tmp_path / "notes.txt"), str(tmp_path / "new")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert cli.main(["export", str(tmp_path / "missing.pth"), str(tmp_path / "new")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_the_cli_exports_a_checkpoint_folder_and_overwrite_replaces_only_an_export(tiny_sam, tmp_path, capsys):
    model, variables, _, _ = tiny_sam
    write_checkpoint(model, variables, tmp_path / "ckpt", kind="sam")
    dst = tmp_path / "out"
    command = ["export", str(tmp_path / "ckpt"), str(dst), "--format", "stablehlo"]
    assert cli.main(command) == 0
    assert "prompt_decoder: stablehlo" in capsys.readouterr().out
    (dst / "image_encoder.stablehlo").write_bytes(b"stale")
    assert cli.main([*command, "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "image_encoder.stablehlo", "metadata.json",
                                                     "prompt_decoder.stablehlo"]
    assert (dst / "image_encoder.stablehlo").read_bytes() != b"stale"
    assert not list(tmp_path.glob("out.*"))  # no .partial or .old left
    # A folder that is not an earlier export is never replaced, --overwrite or not.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"cat")
    assert cli.main(["export", str(tmp_path / "ckpt"), str(other), "--overwrite"]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]


def test_the_vit_b_architecture_exports_faithfully(tmp_path):
    """vit_b (random weights, 1024 px): both formats against the predictor, every prompt kind, two image sizes."""
    model = sam_variant("vit_b")
    variables = sam_init(model, jax.random.PRNGKey(1))
    paths = export_sam(model, variables, tmp_path / "vit_b", log=lambda *_: None)
    encoder, encoder_onnx = _load(paths, "image_encoder")
    decoder, decoder_onnx = _load(paths, "prompt_decoder")
    predictor = SamPredictor(model, variables)
    for shape in ((480, 640), (700, 300)):
        image = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
        embedding = _check_encoders(predictor, image, encoder, encoder_onnx)
        for prompt in _prompts(shape, predictor).values():
            _check_prompt(model, predictor, embedding, shape, prompt, True, decoder, decoder_onnx)
