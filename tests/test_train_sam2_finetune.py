"""train.sam2 fine-tunes an official SAM 2.1 checkpoint (sam2.1_hiera_tiny.pt format, random weights) on DAVIS 2017
and SA-V folders: the trainer runs end to end at another input size than the checkpoint's (128 px), with the image
encoder frozen, and the workdir holds the checkpoint's encoder unchanged and a trained memory attention / decoder.

Parity-marked: the checkpoint is written by the official `sam2` package (PyTorch). The trainer runs in
subprocesses (its absl flags, see tests/test_train_sam2.py); the two runs compile the same steps, so the second
loads them from the test session's XLA cache (tests/conftest.py)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_video_folders import _save_jpeg, _save_palette_png  # noqa: E402

pytestmark = pytest.mark.parity

SIZE = 64          # the rendered frames; the trainer resizes them to IMAGE_SIZE
IMAGE_SIZE = 128
NUM_FRAMES = 8     # frames per video on disk
SEQUENCES = ("bear", "cows")  # DAVIS train = both, val = cows
FROZEN = ("trunk", "neck")


def _clip(index):
    from vitsam.data.shapes_video import render_clip

    return render_clip(index, seed=7, image_size=SIZE, num_frames=NUM_FRAMES, max_objects=2)


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory):
    """An official-format SAM 2.1 hiera_t checkpoint ({"model": state_dict}) with the official random init."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("official") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(DAVIS 2017 root, SA-V train root, SA-V val root), each video a rendered moving-shapes clip."""
    from vitsam.data import rle

    root = tmp_path_factory.mktemp("data")
    davis = root / "DAVIS"
    for index, seq in enumerate(SEQUENCES):
        clip = _clip(index)
        labels = np.zeros((NUM_FRAMES, SIZE, SIZE), np.uint8)
        for k, obj in enumerate(clip.object_ids):
            labels[clip.masks[k]] = obj
        for t in range(NUM_FRAMES):
            _save_jpeg(davis / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", clip.frames[t])
            _save_palette_png(davis / "Annotations" / "480p" / seq / f"{t:05d}.png", labels[t])
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("\n".join(SEQUENCES) + "\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text(f"{SEQUENCES[1]}\n")

    # SA-V: <name>_manual.json (one RLE per masklet on every annotated frame, annotated frame t = video frame 4t)
    # and the frames extracted as JPEGImages_24fps/<name>/<video frame:05d>.jpg, as SAM 2's training reads them
    sav_train, sav_val = root / "sav_train", root / "sav_val"
    for sav_root, indices in ((sav_train, (2, 3)), (sav_val, (4,))):
        for index in indices:
            clip, name = _clip(index), f"sav_{index:06d}"
            for t in range(NUM_FRAMES):
                _save_jpeg(sav_root / "JPEGImages_24fps" / name / f"{4 * t:05d}.jpg", clip.frames[t])
            ids = [int(i) - 1 for i in clip.object_ids]
            data = {"video_id": name, "video_frame_count": float(4 * NUM_FRAMES - 3), "video_height": float(SIZE),
                    "video_width": float(SIZE), "masklet_num": len(ids), "masklet_id": ids,
                    "masklet_type": ["manual"] * len(ids),
                    "masklet": [[rle.encode(clip.masks[k, t]) for k in range(len(ids))] for t in range(NUM_FRAMES)]}
            (sav_root / f"{name}_manual.json").write_text(json.dumps(data))
    return davis, sav_train, sav_val


def _finetune(workdir, pt, *data_flags, timeout=900):
    flags = {"init_from": pt, "model.image_size": IMAGE_SIZE, "data.image_size": IMAGE_SIZE,
             "freeze_image_encoder": True, "batch_size": 1, "total_steps": 2, "eval_every": 2, "log_every": 1,
             "checkpoint_every": 2, "optim.warmup_steps": 1, "data.num_frames": 3, "data.eval_num_frames": 3,
             "data.max_objects": 2, "sim.correction_clicks": 0, "sim.correct_frame_prob": 0.0,
             "sim.static_steps": 0}
    args = [f"--config.{k}={v}" for k, v in flags.items()]
    return subprocess.run([sys.executable, "-m", "train.sam2", f"--workdir={workdir}", *args, *data_flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _leaves(tree):
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _check_run(workdir, run, official_params, examples):
    from vitsam.convert import load_model

    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["objects"] >= 1 for r in train_rows)
    (ev,) = [r for r in rows if r["split"] == "eval"]
    for prompt in ("mask", "click"):
        for m in ("J", "F", "JF"):
            assert 0.0 <= ev[f"{m}_{prompt}"] <= 1.0, (m, prompt, ev)
        assert ev[f"JF_{prompt}"] == pytest.approx((ev[f"J_{prompt}"] + ev[f"F_{prompt}"]) / 2, abs=1e-5)
    assert ev["examples"] == examples

    model, variables, kind = load_model(workdir)
    assert kind == "sam2" and model.image_size == IMAGE_SIZE
    assert model.multimask_output_for_tracking  # the checkpoint's own choice (SAM 2.1: True), not the recipe's
    trained = _leaves(variables["params"])
    assert trained.keys() == official_params.keys()
    frozen = [k for k in trained if k.split("'")[1] in FROZEN]
    assert frozen and all(np.array_equal(trained[k], official_params[k]) for k in frozen)
    for module in ("memory_attention", "mask_decoder"):
        keys = [k for k in trained if module == k.split("'")[1]]
        assert keys, (module, sorted({k.split("'")[1] for k in trained}))
        assert any(not np.array_equal(trained[k], official_params[k]) for k in keys), module


def test_finetunes_an_official_checkpoint_on_davis_and_sav_folders(tmp_path, official_pt, folders):
    from vitsam.convert import load_model

    davis, sav_train, sav_val = folders
    _, variables, kind = load_model(official_pt)
    assert kind == "sam2"
    official_params = _leaves(variables["params"])

    run = _finetune(tmp_path / "davis", official_pt, "--config.data.format=davis",
                    f"--config.data.train_path={davis}", "--config.data.davis_train_set=train",
                    "--config.data.davis_eval_set=val")
    _check_run(tmp_path / "davis", run, official_params, examples=1)

    run = _finetune(tmp_path / "sav", official_pt, "--config.data.format=sav", f"--config.data.train_path={sav_train}",
                    f"--config.data.eval_path={sav_val}")
    _check_run(tmp_path / "sav", run, official_params, examples=1)
