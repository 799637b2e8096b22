"""The `vitsam` command: figures, classify with random and exported weights, convert, clear errors, a fast
`--help`."""

import json
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vitsam import cli
from vitsam.convert import export, load_model
from vitsam.models import vit_variant

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def image_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def tiny_vit(num_classes=3):
    return vit_variant("Ti/16", num_classes=num_classes, image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64,
                       num_heads=2, head_zero_init=False)


def test_figures_writes_the_three_pictures(tmp_path, image_path):
    out = tmp_path / "figs"
    assert cli.main(["figures", "--out", str(out), "--image", str(image_path), "--image-size", "32",
                     "--variant", "Ti/16"]) == 0
    for name in ("encoding.png", "similarity.png", "attention.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_classify_with_exported_weights_prints_the_models_top_class(tmp_path, image_path, capsys):
    model = tiny_vit()
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    export(model, variables, tmp_path / "ckpt", kind="vit", class_names=["disc", "box", "wedge"])
    assert cli.main(["classify", str(image_path), "--checkpoint", str(tmp_path / "ckpt"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    # Independent check: the same preprocessing by hand and the model's own argmax.
    x = np.asarray(Image.open(image_path).convert("RGB").resize((32, 32), Image.BICUBIC), np.float32) / 127.5 - 1
    top = int(np.argmax(model.apply(variables, x[None])[0]))
    first = [line for line in out.splitlines() if "p=" in line][0]
    assert ["disc", "box", "wedge"][top] in first
    loaded, _, kind = load_model(tmp_path / "ckpt")
    assert kind == "vit" and loaded.num_classes == 3
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text())["kind"] == "vit"


def test_bad_inputs_are_one_line_errors(tmp_path, image_path, capsys):
    assert cli.main(["classify", str(image_path), "--variant", "Q/3"]) == 2
    assert "unknown ViT variant 'Q/3'" in capsys.readouterr().err
    assert cli.main(["classify", str(image_path), "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such image"):
        cli.main(["classify", str(tmp_path / "nope.png")])


def test_help_and_argument_errors_are_fast_and_import_no_jax():
    # A fresh interpreter: the parser, --help and argparse's errors must not import JAX or the models (each
    # command imports what it runs). One JSON line per command line, then the heavy modules that were loaded.
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from vitsam import cli
        for argv in (["--help"], ["bench", "--help"], ["bench", "--batch", "1,x"], ["segment"]):
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    cli.main(argv)
                except SystemExit as e:
                    code = e.code
            print(json.dumps(dict(code=code, out=out.getvalue(), err=err.getvalue())))
        print(json.dumps(sorted({"jax", "numpy", "flax", "PIL", "vitsam.models", "vitsam.nn"} & set(sys.modules))))
    """)
    t0 = time.perf_counter()
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t0
    *runs, heavy = map(json.loads, lines.splitlines())
    help_, bench_help, bad_batch, no_image = runs
    assert help_["code"] == 0 and "segment" in help_["out"] and "bench" in help_["out"]
    assert bench_help["code"] == 0 and "--kernel" in bench_help["out"]
    assert bad_batch["code"] == 2 and "invalid comma-separated int value: '1,x'" in bad_batch["err"]
    assert no_image["code"] == 2 and "required: image" in no_image["err"]
    assert heavy == []
    assert seconds < 2, seconds


@pytest.mark.parametrize("argv, message", [
    (["classify", "x.png", "--num-classes", "0"], "--num-classes: must be at least 1, got 0"),
    (["classify", "x.png", "--top", "-2"], "--top: must be at least 1, got -2"),
    (["convert", "a.npz", "b", "--image-size", "big"], "--image-size: expected a whole number, got 'big'"),
])
def test_counts_below_one_are_argument_errors(argv, message, capsys):
    from vitsam.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
