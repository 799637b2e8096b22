"""train.sam2: the memory bank of a training clip against the inference planner, clip batches, an end-to-end run of
the trainer (train, eval, eval_only, the workdir tracked by the video predictor) and its one-line errors.

train.sam2 defines absl flags, as train.sam does; both cannot be imported into one process, so the trainer runs in
subprocesses here and only its flag-free task (`train.sam2_task`) is imported."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train.sam2_task import Sam2Task, _tight_boxes  # noqa: E402

SMALL_CFG = {"data.name": "vitsam_shapes_video/small", "data.image_size": 64, "model.image_size": 64,
             "data.num_frames": 3, "data.eval_num_frames": 4, "data.max_objects": 2, "batch_size": 2,
             "sim.correction_clicks": 1, "sim.correct_frame_prob": 1.0, "log_every": 1, "optim.warmup_steps": 1,
             "sim.static_steps": 1, "model.memory_attention_layers": 1}


def recipe(**changes):
    from configs.sam2_shapes_video import get_config

    cfg = get_config()
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vitsam.data.shapes_video_builder import prepare_shapes_video

    path = tmp_path_factory.mktemp("tfds")
    prepare_shapes_video(path, "small")
    return path


@pytest.mark.parametrize("num_frames", [8, 12])
def test_memory_bank_of_a_training_clip_is_the_inference_plan(num_frames):
    """Frame t of a clip attends to what `plan_memory` (the official inference choice) picks for it, with the
    clip's conditioning frames (frame 0 and corrected ones) and every earlier frame tracked."""
    from vitsam.models.sam2 import plan_memory, sam2_variant

    model = sam2_variant("tiny", num_maskmem=4, max_obj_ptrs_in_encoder=5)
    task = Sam2Task(recipe(), model, {})
    rng = np.random.default_rng(0)
    for _ in range(6):
        is_cond = np.zeros((1, num_frames), bool)
        is_cond[0, 0] = True
        is_cond[0, rng.choice(np.arange(1, num_frames), 2, replace=False)] = True
        for t in range(1, num_frames):
            cond = [s for s in range(t) if is_cond[0, s]]
            plan = plan_memory(t, cond, range(t), num_frames, model.num_maskmem, model.max_obj_ptrs_in_encoder)
            mem_valid, tpos, ptr_valid, offsets = jax.device_get(task._memory_bank(t, jnp.asarray(is_cond), num_frames))
            assert {(int(s), int(tpos[0, s])) for s in np.flatnonzero(mem_valid[0])} == set(plan.memories)
            assert {(int(s), int(offsets[0, s])) for s in np.flatnonzero(ptr_valid[0])} == set(plan.pointers)


def test_tight_boxes_are_the_mask_boxes():
    from vitsam.data.shapes import mask_to_box
    from vitsam.data.shapes_video import render_clip

    clip = render_clip(3, image_size=64, num_frames=4)
    masks = clip.masks.reshape(-1, 64, 64)
    boxes = np.asarray(_tight_boxes(jnp.asarray(masks)))
    for mask, box in zip(masks, boxes):
        assert np.array_equal(box, mask_to_box(mask) if mask.any() else np.zeros(4))


def _two_clips_and_model(data_dir):
    """Two 2-frame test clips at 64 px (the arrays the loss reads), the first one's still clip (its frame 0 twice),
    the tiny SAM 2 at 64 px and its variables."""
    from vitsam.data.sources import open_source
    from vitsam.data.video_clips import make_clip_iterator
    from vitsam.data.video_source import TfdsVideoSource
    from vitsam.models.sam2 import sam2_init, sam2_variant

    source = TfdsVideoSource(open_source("vitsam_shapes_video/small", "test", data_dir))
    batches = make_clip_iterator(source, 1, 64, 2, 2, train=False, process_index=0, process_count=1, num_threads=0)
    batch, other = ({k: v for k, v in next(batches).items() if k in ("frames", "masks", "object_valid")}
                    for _ in range(2))
    still = {**batch, "frames": np.repeat(batch["frames"][:, :1], 2, axis=1),
             "masks": np.repeat(batch["masks"][:, :, :1], 2, axis=2)}
    model = sam2_variant("tiny", image_size=64)
    return batch, other, still, model, sam2_init(model, jax.random.PRNGKey(0))


@pytest.mark.trainers
def test_the_static_stage_trains_on_the_first_frame_still_and_mask_prompted(data_dir):
    """In the static stage the loss and gradient are those of the two-frame clip (frame 0, frame 0 again) with every
    track given its mask, whatever `sim.mask_prob` says and whatever the later frames hold; after it the clip's.
    The stage encodes the frame once and skips the point prompts, clicks and corrections; the reference computes
    the whole still clip: both frames encoded, and the prompts, clicks and corrections with weight 0 (a mask_prob
    just under 1 gives every track its mask with this key; a track prompted otherwise would change the loss)."""
    batch, other, still, model, variables = _two_clips_and_model(data_dir)
    changed = {**batch, "frames": batch["frames"].copy(), "masks": batch["masks"].copy()}
    changed["frames"][:, 1:] = other["frames"][:, 1:]   # frame 1 from another clip
    changed["masks"][:, :, 1:] = other["masks"][:, :, 1:]
    assert not np.array_equal(changed["frames"], batch["frames"])

    params, key = variables["params"], jax.random.PRNGKey(1)
    sim = {"sim.correction_clicks": 1, "sim.correct_frame_prob": 1.0}
    staged = Sam2Task(recipe(**sim, **{"sim.static_steps": 2, "sim.mask_prob": 0.0, "sim.static_point_prompts": False}),
                      model, variables["constants"])
    plain = Sam2Task(recipe(**sim, **{"sim.static_steps": 0, "sim.mask_prob": 1.0 - 1e-6}), model,
                     variables["constants"])
    still_grad = jax.jit(jax.value_and_grad(lambda p, b: staged.loss_fn(p, b, key, phase="still")[0]))
    clip_grad = jax.jit(jax.value_and_grad(lambda p, b: plain.loss_fn(p, b, key, phase="clips")[0]))
    want, want_grad = clip_grad(params, still)

    got, got_grad = still_grad(params, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grad))
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * scale)
    assert float(still_grad(params, changed)[0]) == pytest.approx(float(want), rel=1e-5)
    # the clips phase sees frame 1: there the change matters
    assert float(clip_grad(params, batch)[0]) != pytest.approx(float(clip_grad(params, changed)[0]), rel=1e-3)


@pytest.mark.trainers
def test_the_static_stage_prompts_with_points_at_static_mask_prob_zero(data_dir):
    """`sim.static_mask_prob` 0: the still clip's tracks get a point or box prompt and the correction clicks, and
    the still loss is that of the two-frame clip (frame 0 twice) with `sim.mask_prob` 0, which differs from the
    mask-prompted one."""
    batch, _, still, model, variables = _two_clips_and_model(data_dir)
    params, key = variables["params"], jax.random.PRNGKey(1)

    def loss(changes, phase, b):
        task = Sam2Task(recipe(**{"sim.correction_clicks": 1, **changes}), model, variables["constants"])
        return float(jax.jit(lambda p, b: task.loss_fn(p, b, key, phase=phase)[0])(params, b))

    points = loss({"sim.static_steps": 2, "sim.static_mask_prob": 0.0, "sim.mask_prob": 1.0}, "still", batch)
    assert points == pytest.approx(loss({"sim.static_steps": 0, "sim.mask_prob": 0.0}, "clips", still), rel=1e-5)
    masks = loss({"sim.static_steps": 2, "sim.static_mask_prob": 1.0, "sim.mask_prob": 0.0,
                  "sim.static_point_prompts": False}, "still", batch)
    assert points != pytest.approx(masks, rel=1e-5)   # at initialisation the prompt moves the loss by ~1e-4 of it


@pytest.mark.trainers
def test_static_point_prompts_add_the_first_frames_point_terms_and_track_from_the_mask(data_dir):
    """`sim.static_point_prompts`: the still loss is the mean over the mask-prompted still clip's tracked-frame terms
    (so the tracking starts from the mask, unchanged) and the frame-0 terms of a point or box prompt and one
    correction click on every track (each term weighs one track, as in the clip loss; the point terms taken from
    the still clip prompted by points alone, same key); only with the option do the point embeddings learn."""
    batch, _, _, model, variables = _two_clips_and_model(data_dir)
    params, key = variables["params"], jax.random.PRNGKey(1)

    def task(on, mask_prob):
        return Sam2Task(recipe(**{"sim.correction_clicks": 1, "sim.static_steps": 2, "sim.static_point_prompts": on,
                                  "sim.static_mask_prob": mask_prob}), model, variables["constants"])

    def loss_and_point_grad(t):   # the gradient for the point embeddings alone
        def loss(embeddings):
            prompt_encoder = {**params["prompt_encoder"], "point_embeddings": embeddings}
            return t.loss_fn({**params, "prompt_encoder": prompt_encoder}, batch, key, phase="still")

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params["prompt_encoder"]["point_embeddings"])

    (loss_on, grad_on), (loss_off, grad_off) = (loss_and_point_grad(task(on, 1.0)) for on in (True, False))
    assert float(jnp.abs(grad_off).sum()) == 0.0 and float(jnp.abs(grad_on).sum()) > 0.0

    points = task(False, 0.0)
    steps = jax.jit(lambda p: points.run_clip(p, batch, key, train=True, still=True, mask_prob=0.0)[0])(params)
    first, click = steps[:2]
    k = float(first["mask_w"].sum())     # present tracks: the same on frame 0 and its copy
    v = float(first["w"].sum())
    assert k > 0
    mask = (k * float(loss_off[1]["mask_loss"]) + sum(float((s["mask_loss"] * s["mask_w"]).sum())
                                                      for s in (first, click))) / (3 * k)
    obj = (v * float(loss_off[1]["object_bce"]) + sum(float((s["object_bce"] * s["w"]).sum())
                                                      for s in (first, click))) / (3 * v)
    assert float(loss_on[1]["mask_loss"]) == pytest.approx(mask, rel=1e-5)
    assert float(loss_on[0]) == pytest.approx(mask + obj, rel=1e-5)


def test_clip_batches(data_dir):
    from vitsam.data.sources import open_source
    from vitsam.data.video_clips import make_clip_iterator
    from vitsam.data.video_source import TfdsVideoSource

    source = TfdsVideoSource(open_source("vitsam_shapes_video/small", "test", data_dir))
    batch = next(make_clip_iterator(source, 4, 32, 5, 2, train=False, process_index=0, process_count=1,
                                    num_threads=0))
    assert batch["frames"].shape == (4, 5, 32, 32, 3) and batch["masks"].shape == (4, 2, 5, 32, 32)
    assert (batch["start"] == 0).all()
    for row in range(4):
        record = source.read(int(batch["index"][row]), list(range(5)))
        visible = record["masks"][:, 0].any(axis=(1, 2))
        ids = np.asarray(record["object_ids"])[visible][:2]
        n = len(ids)
        assert batch["object_valid"][row].tolist() == [True] * n + [False] * (2 - n)
        assert batch["object_ids"][row, :n].tolist() == ids.tolist()
        for slot, obj in enumerate(ids):  # 64 -> 32: nearest neighbour takes every second pixel (centres)
            k = list(record["object_ids"]).index(obj)
            assert np.array_equal(batch["masks"][row, slot], record["masks"][k][:, 1::2, 1::2])
        assert batch["masks"][row, :n, 0].any(axis=(1, 2)).all()  # every slot visible on the prompted frame

    it = make_clip_iterator(source, 2, 32, 5, 2, train=True, seed=3, process_index=0, process_count=1, num_threads=0)
    next(it)
    state = it.get_state()
    want = next(it)
    again = make_clip_iterator(source, 2, 32, 5, 2, train=True, seed=3, process_index=0, process_count=1,
                               num_threads=0)
    again.set_state(state)
    got = next(again)
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    for row in range(2):  # a random start, still with every valid slot visible on its first frame
        assert got["masks"][row][got["object_valid"][row], 0].any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match=r"has 8 annotated frames; a clip of 9 frames 1 apart needs 9"):
        make_clip_iterator(source, 2, 32, 9, 2, train=True, process_index=0, process_count=1)


def _run(workdir, *args, timeout=900):
    flags = [f"--config.{k}={v}" for k, v in SMALL_CFG.items()]
    return subprocess.run([sys.executable, "-m", "train.sam2", f"--workdir={workdir}", *flags, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.trainers
def test_trains_evaluates_and_the_workdir_tracks_a_video(tmp_path, data_dir):
    run = _run(tmp_path / "run", f"--config.data.data_dir={data_dir}", "--config.total_steps=3",
               "--config.eval_every=3", "--config.data.eval_split=test[:4]")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["objects"] >= 2 for r in train_rows)
    (ev,) = [r for r in rows if r["split"] == "eval"]
    for prompt in ("mask", "click"):
        for m in ("J", "F", "JF"):
            assert 0.0 <= ev[f"{m}_{prompt}"] <= 1.0
        assert ev[f"JF_{prompt}"] == pytest.approx((ev[f"J_{prompt}"] + ev[f"F_{prompt}"]) / 2, abs=1e-5)
    assert ev["examples"] == 4

    # eval_only on the workdir gives the same figures, and trains nothing
    again = _run(tmp_path / "eval", f"--config.data.data_dir={data_dir}", f"--config.init_from={tmp_path / 'run'}",
                 "--config.eval_only=True", "--config.data.eval_split=test[:4]")
    assert again.returncode == 0, again.stderr[-3000:]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for key in ("J_mask", "F_click", "JF_mask", "examples"):
        assert saved[key] == pytest.approx(ev[key], abs=1e-5)
    assert not (tmp_path / "eval" / "checkpoints").exists()

    # the workdir is a SAM 2 checkpoint for the video predictor
    from vitsam import Sam2VideoPredictor
    from vitsam.convert import load_model
    from vitsam.data.shapes_video import render_clip

    model, variables, kind = load_model(tmp_path / "run")
    assert kind == "sam2" and model.image_size == 64
    assert not model.multimask_output_for_tracking  # the from-scratch default (configs/sam2_shapes_video.py)
    clip = render_clip(0, image_size=64, num_frames=4)
    predictor = Sam2VideoPredictor(model, variables)
    state = predictor.init_state(clip.frames)
    predictor.add_new_mask(state, 0, 1, clip.masks[0, 0])
    frames = [f for f, _, masks in predictor.propagate_in_video(state) if masks.shape == (1, 1, 64, 64)]
    assert frames == [0, 1, 2, 3]


def test_bad_input_is_one_line(tmp_path, data_dir):
    from PIL import Image

    from vitsam.convert import export
    from vitsam.models import sam_init, sam_variant

    sam1 = sam_variant("tiny", image_size=64, patch_size=16, encoder_dim=32, encoder_depth=1, encoder_heads=2,
                       global_attn_indexes=(0,), prompt_dim=32, mask_in_chans=8, decoder_depth=1, decoder_heads=2,
                       decoder_mlp_dim=64, iou_head_hidden_dim=32, text=False)
    export(sam1, sam_init(sam1, jax.random.PRNGKey(0)), tmp_path / "sam1", kind="sam")

    davis = tmp_path / "davis"  # frame 00001 has no annotation
    for name in ("00000", "00001"):
        (davis / "JPEGImages" / "480p" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(davis / "JPEGImages" / "480p" / "seq" / f"{name}.jpg")
    (davis / "Annotations" / "480p" / "seq").mkdir(parents=True)
    Image.fromarray(np.ones((24, 32), np.uint8), mode="P").save(davis / "Annotations" / "480p" / "seq" / "00000.png")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    for split in ("train", "val"):
        (davis / "ImageSets" / "2017" / f"{split}.txt").write_text("seq\n")

    cases = {
        "sam1": ({"init_from": str(tmp_path / "sam1")}, "holds a sam model, not a SAM 2"),
        "short": ({"data.num_frames": 9}, "has 8 annotated frames; a clip of 9 frames 1 apart needs 9"),
        "davis": ({"data.format": "davis", "data.train_path": str(davis)},
                  "DAVIS sequence seq: frame 00001.jpg has no annotation"),
        "format": ({"data.format": "youtube"}, "data.format must be one of"),
        "eval_only": ({"eval_only": True}, "eval_only evaluates the checkpoint in init_from, which is empty"),
        "prob": ({"sim.mask_prob": 1.5}, "sim.mask_prob must be in [0, 1]"),
        "static_prob": ({"sim.static_mask_prob": -0.1}, "sim.static_mask_prob must be in [0, 1]"),
        "static": ({"sim.static_steps": -1}, "sim.static_steps must not be negative, got -1"),
        "static_batch": ({"sim.static_batch_size": 0}, "sim.static_batch_size must be at least 1"),
        "prompts": ({"eval.prompts": ("box",)}, "eval.prompts must be some of"),
    }
    # Every case through `train.sam2.train` in one process (each would cost a process start on the command line)
    base = {**SMALL_CFG, "data.data_dir": str(data_dir), "total_steps": 1}
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from train import sam2
from tests.test_train_sam2 import recipe
out = {{}}
for name, (changes, _) in {cases!r}.items():
    try:
        sam2.train(recipe(**{{**{base!r}, **changes}}), {str(tmp_path / "bad")!r})
        out[name] = None
    except ValueError as e:
        out[name] = str(e)
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, message) in cases.items():
        assert errors[name] is not None and message in errors[name], (name, errors[name])
        assert "\n" not in errors[name]
    assert not (tmp_path / "bad" / "checkpoints").exists()

    # on the command line: one line on stderr, exit status 1
    out = _run(tmp_path / "bad", f"--config.data.data_dir={data_dir}", f"--config.init_from={tmp_path / 'sam1'}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("train.sam2: error: ") and "not a SAM 2" in out.stderr


def test_step_loss_with_one_multimask_flag_is_the_per_row_loss():
    """`_step_loss` given one Python bool scores only those candidates: the same terms as the per-row (N,) flags
    that mask the other candidates out."""
    from vitsam.models.sam2 import sam2_init, sam2_variant
    from vitsam.models.sam2.sam2 import HeadOutput

    model = sam2_variant("tiny", image_size=64)
    # Zero variables of the right shapes: the loss upscales and scores, and reads no trained value.
    shapes = jax.eval_shape(lambda key: sam2_init(model, key), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    task = Sam2Task(recipe(), model, variables.get("constants", {}))
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    n = 5
    heads = HeadOutput(multi_masks=4 * jax.random.normal(k[0], (n, 4, 16, 16)),
                       multi_iou=jax.random.uniform(k[1], (n, 4)), masks=None, obj_ptr=None,
                       object_score=jax.random.normal(k[2], (n,)))
    target = jax.random.uniform(k[3], (n, 64, 64)) < 0.4
    target = target.at[0].set(False)  # an absent object: no mask terms
    weight = jnp.arange(n) < 4
    for flag in (False, True):
        got = jax.jit(lambda p, h: task._step_loss(p, h, target, flag, weight))(variables["params"], heads)
        want = jax.jit(lambda p, h: task._step_loss(p, h, target, jnp.full((n,), flag), weight))(
            variables["params"], heads)
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=f"{flag} {key}")


def test_multimask_choice_follows_the_official_rule():
    """SAM2Base._use_multimask: multimask_output_in_sam and (is_init_cond_frame or multimask_output_for_tracking)
    and multimask_min_pt_num (0) <= points <= multimask_max_pt_num (1)."""
    from vitsam.models.sam2 import sam2_variant

    for tracking in (True, False):
        model = sam2_variant("tiny", multimask_output_for_tracking=tracking)
        for points in range(4):
            for init_cond in (True, False):
                want = (init_cond or tracking) and 0 <= points <= 1
                assert model.multimask_for(points, init_cond) == want, (tracking, points, init_cond)
