"""`python -m train.vit` end to end on the embedded dataset: devices, config errors, plotting."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--config.model.width=32", "--config.model.depth=2", "--config.model.mlp_dim=64", "--config.model.num_heads=2",
        "--config.data.image_size=32", "--config.batch_size=16", "--config.log_every=1", "--config.eval_every=1000",
        "--config.checkpoint_every=1000", "--config.data.name=vitsam_shapes/small"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vitsam.data.shapes_builder import prepare_shapes

    path = tmp_path_factory.mktemp("tfds")
    prepare_shapes(path, "small")
    return path


def train(workdir, *args, devices=1, timeout=600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "train.vit", f"--workdir={workdir}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_one_and_eight_devices_give_the_same_losses(tmp_path, data_dir):
    args = [*TINY, f"--config.data.data_dir={data_dir}", "--config.total_steps=6"]
    one = train(tmp_path / "one", *args, devices=1)
    assert one.returncode == 0, one.stderr[-3000:]
    eight = train(tmp_path / "eight", *args, devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert "on 8 device(s)" in eight.stdout
    np.testing.assert_allclose(losses(tmp_path / "eight"), losses(tmp_path / "one"), rtol=1e-5)
    assert "final eval: accuracy" in one.stdout

    plot = subprocess.run([sys.executable, "-m", "train.plot", str(tmp_path / "one")], cwd=REPO,
                          capture_output=True, text=True)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "one" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same workdir with another architecture: refused before anything in it changes.
    files = {p: p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    other = train(tmp_path / "one", *args, "--config.model.width=64", "--config.total_steps=8")
    assert other.returncode != 0
    assert "holds checkpoints of another model (width: 32 in the run, 64 now)" in other.stderr
    assert "Traceback" not in other.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("args, message", [
    (["--config.batch_size=12"], "does not split over the mesh's batch axes (data 8 × fsdp 1 = 8)"),
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.data.name=no_such_dataset"], "no_such_dataset"),
    (["--config.data.train_split=nope"], "nope"),
    (["--config.model.variant=Q/7"], "unknown ViT variant"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=2"], "the axis sizes multiply to 6, but there are 8 devices"),
])
def test_config_errors_are_clear_and_happen_before_any_compute(tmp_path, data_dir, args, message):
    result = train(tmp_path / "w", *TINY, f"--config.data.data_dir={data_dir}", *args, devices=8, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert "compiled and ran the first step" not in result.stdout


def test_unwritable_workdir_is_a_clear_error(tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = train(blocker / "sub", *TINY, f"--config.data.data_dir={data_dir}", timeout=300)
    assert result.returncode != 0
    assert "not writable" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config.optim.lrr=1e-3"], "train.vit: error: unknown config field 'lrr' Did you mean \"lr\" instead of \"lrr\"?"),
    (["--config=/no/such/recipe.py"], "No such file or directory: '/no/such/recipe.py'"),
    (["--config.batch_size=many"], "flag --config.batch_size=many: invalid literal for int()"),
])
def test_command_line_mistakes_are_one_line_errors(tmp_path, args, message):
    result = train(tmp_path / "w", *args, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
