"""The table of bad inputs: each row one input a user can give the `vitsam` command, and the one line it must
answer with (exit status 2, no traceback, the file or flag named).

Rows that need PyTorch (reading .pth files) run in the parity stage, which installs it. Bad inputs of the
trainers, the predictor's Python API and the images are tested beside their code: tests/test_train_loop.py,
tests/test_train_vit.py, tests/test_input_checks.py, tests/test_cli.py, tests/test_segment_cli.py.
"""

import zipfile

import numpy as np
import pytest

from vitsam import cli

parity = pytest.mark.parity


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def garbage_npz(tmp):
    path = tmp / "garbage.npz"
    path.write_bytes(b"this is not a zip archive" * 40)
    return path


def truncated_npz(tmp):
    return _truncated(_npz(tmp / "weights.npz", a=np.ones((64, 64), np.float32), b=np.ones(64, np.float32)))


def pickled_npz(tmp):
    return _npz(tmp / "pickled.npz", objects=np.array([{"a": 1}, None], dtype=object))


def npz_missing_keys(tmp):
    # A patch embedding and nothing else: the importer must name the first tensor it misses.
    return _npz(tmp / "partial.npz", **{"embedding/kernel": np.zeros((4, 4, 3, 32), np.float32),
                                        "embedding/bias": np.zeros(32, np.float32)})


def npz_not_a_vit(tmp):
    return _npz(tmp / "other.npz", weights=np.zeros(3, np.float32))


def truncated_safetensors(tmp):
    from safetensors.numpy import save_file

    path = tmp / "model.safetensors"
    save_file({"patch_embed.proj.weight": np.zeros((32, 3, 4, 4), np.float32)}, str(path))
    return _truncated(path)


def empty_safetensors(tmp):
    path = tmp / "model.safetensors"
    path.write_bytes(b"")
    return path


def unknown_suffix(tmp):
    path = tmp / "weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    return path


def truncated_pth(tmp):
    import torch

    path = tmp / "weights.pth"
    torch.save({"w": torch.zeros(4096)}, path)
    return _truncated(path)


def garbage_pth(tmp):
    path = tmp / "weights.pth"
    path.write_bytes(b"hello world" * 10)
    return path


class _RunsCode:
    """Unpickling this calls print(): a stand-in for a malicious pickle (os.system would work the same way)."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def code_running_pth(tmp):
    import torch

    path = tmp / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": _RunsCode()}, path)
    return path


def zip_not_a_checkpoint(tmp):
    path = tmp / "archive.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    return path


# (id, make the input in a temp folder, a part of the expected message (after "error: "), marks)
WEIGHT_FILES = [
    ("missing file", lambda tmp: tmp / "nope.npz", "no checkpoint at", ()),
    ("unknown suffix", unknown_suffix, "unrecognised checkpoint", ()),
    ("garbage .npz", garbage_npz, "not a readable .npz archive", ()),
    ("truncated .npz", truncated_npz, "not a readable .npz archive", ()),
    ("pickled objects in .npz", pickled_npz, "refused for safety", ()),
    (".npz with missing keys", npz_missing_keys, "checkpoint is missing the position table", ()),
    (".npz of something else", npz_not_a_vit, "unrecognised checkpoint", ()),
    ("truncated .safetensors", truncated_safetensors, "not a readable .safetensors file", ()),
    ("empty .safetensors", empty_safetensors, "not a readable .safetensors file", ()),
    ("truncated .pth", truncated_pth, "not a readable PyTorch checkpoint, truncated or corrupt", (parity,)),
    ("garbage .pth", garbage_pth, "not a readable PyTorch checkpoint, truncated or corrupt", (parity,)),
    ("zip that is not a .pth", zip_not_a_checkpoint, "not a readable PyTorch checkpoint", (parity,)),
    (".pth whose pickle runs code", code_running_pth, "refused for safety", (parity,)),
]


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, command, expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"vitsam {command}: error: "), err
    assert expected in lines[0], err


@pytest.mark.parametrize("make, expected", [pytest.param(make, expected, id=name, marks=marks)
                                            for name, make, expected, marks in WEIGHT_FILES])
@pytest.mark.parametrize("command", ["convert", "classify"])
def test_weight_files(command, make, expected, tmp_path, capsys):
    path = make(tmp_path)
    if command == "convert":
        argv = ["convert", str(path), str(tmp_path / "out")]
    else:
        argv = ["classify", str(tmp_path / "img.png"), "--checkpoint", str(path)]
        from PIL import Image
        Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, command, expected)
    assert path.name in err
    assert "unpickled code ran" not in out + err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_pth_without_torch_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x80\x02}q\x00.")
    code, _, err = run_cli(["convert", str(path), str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "convert", "needs PyTorch: pip install 'vitsam[torch]'")


def test_safetensors_without_the_package_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, _, err = run_cli(["convert", str(path), str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "convert", "needs the safetensors package: pip install 'vitsam[safetensors]'")


def test_nan_weights_convert_and_classify_with_a_one_line_warning(tmp_path, capsys):
    import jax
    import jax.numpy as jnp
    from PIL import Image

    from vitsam.convert import export
    from vitsam.models import vit_variant

    model = vit_variant("Ti/16", num_classes=3, image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32,
                        num_heads=2)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    kernel = variables["params"]["embedding"]["kernel"]
    variables["params"]["embedding"]["kernel"] = kernel.at[0, 0, 0, :5].set(jnp.nan).at[1, 0, 0, 0].set(jnp.inf)
    export(model, variables, tmp_path / "nan_vit", kind="vit")
    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")

    code, out, err = run_cli(["classify", str(tmp_path / "img.png"), "--checkpoint", str(tmp_path / "nan_vit")],
                             capsys)
    assert code == 0 and "nan" in out.lower()  # it still runs: the outputs are NaN, as the warning says
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [f"vitsam classify: warning: {tmp_path / 'nan_vit'}: 6 of "
                       f"{sum(x.size for x in jax.tree.leaves(variables)):,} weights are NaN or infinite "
                       "(first in params/embedding/kernel); the model's outputs will be NaN"], err

    code, _, err = run_cli(["convert", str(tmp_path / "nan_vit"), str(tmp_path / "copy")], capsys)
    assert code == 0 and "6 of" in err and "NaN or infinite" in err


def test_a_trainer_without_the_data_extra_names_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    # As if `pip install -e .` had been run without [data]: the input pipeline's packages cannot be imported.
    script = ("import runpy, sys; sys.modules['tensorflow_datasets'] = sys.modules['grain'] = None; "
              f"sys.argv = ['train.vit', '--workdir={tmp_path / 'w'}', '--config.total_steps=1']; "
              "runpy.run_module('train.vit', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == ("train.vit: error: this needs the package 'grain', which is not "
                                              "installed: pip install 'vitsam[data]'")
