"""`python -m train.sam` end to end (a very small SAM on vitsam_shapes/small): training, eval mIoU for point / box /
k clicks / text, exact resume after SIGKILL, the workdir loading as a model; frozen encoder, layer-wise lr decay,
drop path, fine-tuning from a converted checkpoint; clear config errors before any compute."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # train/ and configs/ are not installed packages in every setup

from train import loop  # noqa: E402
from train.optim import make_optimizer  # noqa: E402
# A SAM small enough to compile in seconds: 64-px input (4x4 grid, 16x16 low-res masks), one encoder block.
SMALL_MODEL = dict(image_size=64, patch_size=16, encoder_dim=32, encoder_depth=1, encoder_heads=2, global_attn_indexes=(0,),
                   prompt_dim=32, mask_in_chans=8, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64,
                   iou_head_hidden_dim=32, text_dim=32, text_depth=1, text_heads=2, text_mlp_dim=64)
SMALL_CFG = {**{f"model.{k}": v for k, v in SMALL_MODEL.items()},
             "data.name": "vitsam_shapes/small", "data.image_size": 32, "data.max_masks": 2, "data.eval_max_masks": 3,
             "data.eval_split": "test[:8]", "batch_size": 4, "sim.num_rounds": 3, "sim.mask_only_rounds": 1,
             "eval.clicks": 2, "log_every": 1, "optim.warmup_steps": 2, "sim.text": True}
SMALL = [f"--config.{k}={v}" for k, v in SMALL_CFG.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vitsam.data.shapes_builder import prepare_shapes

    path = tmp_path_factory.mktemp("tfds")
    prepare_shapes(path, "small")
    return path


def small_config(data_dir, **changes):
    """The default recipe with SMALL_CFG and `changes` ({"a.b": value})."""
    from configs.sam_shapes import get_config

    cfg = get_config()
    cfg.data.data_dir = str(data_dir)
    for key, value in {**SMALL_CFG, **changes}.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def run(workdir, *args, wait=True, timeout=600):
    cmd = [sys.executable, "-m", "train.sam", f"--workdir={workdir}", *SMALL, *args]
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def records(workdir, split):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


@pytest.mark.trainers
def test_trains_evaluates_resumes_exactly_after_sigkill_and_loads_as_a_model(tmp_path, data_dir):
    total = 12
    args = [f"--config.data.data_dir={data_dir}", f"--config.total_steps={total}", "--config.checkpoint_every=4",
            "--config.eval_every=12"]
    ref = run(tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr[-3000:]
    train_rows = records(tmp_path / "ref", "train")
    assert [r["step"] for r in train_rows] == list(range(1, total + 1))
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    (ev,) = records(tmp_path / "ref", "eval")
    for key in ("miou_point", "miou_box", "miou_2clicks", "miou_text"):
        assert 0.0 <= ev[key] <= 1.0, (key, ev)
    assert ev["examples"] == 8
    assert "final eval: miou_2clicks" in ref.stdout

    # eval_only on the finished workdir reproduces its final eval, and trains nothing
    from train import sam as ts

    cfg = small_config(data_dir, init_from=str(tmp_path / "ref"), eval_only=True)
    again = ts.train(cfg, tmp_path / "eval_only")
    saved = json.loads((tmp_path / "eval_only" / "eval.json").read_text())
    for key in ("miou_point", "miou_box", "miou_2clicks", "miou_text", "examples"):
        assert again[key] == pytest.approx(ev[key], abs=1e-5) and saved[key] == pytest.approx(ev[key], abs=1e-5)
    assert saved["init_from"] == str(tmp_path / "ref")
    assert not (tmp_path / "eval_only" / "checkpoints").exists()

    work = tmp_path / "killed"
    proc = run(work, *args, wait=False)
    ckpts = work / "checkpoints"
    deadline = time.time() + 400
    while time.time() < deadline and not (ckpts.exists() and any(p.name == "4" for p in ckpts.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in records(work, "train")) < total, "the run finished before it could be killed"
    again = run(work, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    got = records(work, "train")
    assert [r["step"] for r in got] == list(range(1, total + 1))
    np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in train_rows])
    assert records(work, "eval")[0]["miou_box"] == ev["miou_box"]

    # The workdir is a model: architecture from model.json, params and the Fourier constants from the checkpoint.
    from vitsam.convert import load_model
    from vitsam.models import Sam

    model, variables, kind = load_model(tmp_path / "ref")
    assert kind == "sam" and isinstance(model, Sam) and model.image_size == 64 and model.text
    assert set(variables) == {"params", "constants"}
    spec = json.loads((tmp_path / "ref" / "model.json").read_text())
    assert spec["class_names"] == ["circle", "square", "triangle", "star", "cross", "ring"]
    emb = model.apply(variables, jnp.zeros((1, 64, 64, 3)), method=Sam.encode_image)
    logits, iou = model.apply(variables, emb, boxes=jnp.array([[8.0, 8.0, 40.0, 40.0]]), multimask_output=False,
                              method=Sam.decode)
    assert logits.shape == (1, 1, 16, 16) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.trainers
def test_frozen_encoder_with_layer_decay_and_drop_path_trains_only_the_decoder(tmp_path, data_dir):
    from train import sam as ts

    cfg = small_config(data_dir, total_steps=2, eval_every=100, checkpoint_every=100, freeze_image_encoder=True)
    cfg.optim.layer_decay = 0.5
    cfg.model.drop_path = 0.3
    cfg.model.encoder_depth = 2
    cfg.model.global_attn_indexes = (1,)
    cfg.model.window_size = 2
    train_src, eval_src, names = ts.open_sources(cfg)
    model, _ = ts.build_model(cfg)
    # No eval here (the first test covers it): compiling it would double this test's time.
    task = dataclasses.replace(ts.sam_task(cfg, model, train_src, eval_src, names), eval_fn=None)
    init = jax.jit(task.init_params)(jax.random.split(jax.random.PRNGKey(cfg.seed))[0])
    loop.run(cfg, tmp_path, task, status=lambda s: None)
    from vitsam.checkpoint import Checkpointer

    state, _ = Checkpointer(tmp_path / "checkpoints", every=1).read(2)
    enc0, enc1 = init["image_encoder"], state["params"]["image_encoder"]
    for a, b in zip(jax.tree.leaves(enc0), jax.tree.leaves(enc1)):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init["mask_decoder"]),
                                                        jax.tree.leaves(state["params"]["mask_decoder"]))]
    assert any(changed)
    # no optimizer moments are kept for the frozen encoder
    n_moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    n_trainable = sum(x.size for k, v in state["params"].items() if k != "image_encoder" for x in jax.tree.leaves(v))
    assert n_moments < 2 * n_trainable + 100


@pytest.mark.trainers
def test_eval_reports_the_mask_after_each_click(data_dir):
    """miou_2clicks is the IoU after the second click, rebuilt here step by step from the model's own calls."""
    from train import sam as ts
    from vitsam.data import prompts
    from vitsam.losses import mask_iou

    cfg = small_config(data_dir, **{"eval.clicks": 3})
    train_src, eval_src, names = ts.open_sources(cfg)
    model, _ = ts.build_model(cfg)
    task = ts.sam_task(cfg, model, train_src, eval_src, names)
    params = jax.jit(task.init_params)(jax.random.PRNGKey(3))
    batch = next(iter(task.eval_iterator(8)))
    got = jax.device_get(jax.jit(task.eval_fn)(params, batch))
    assert {k for k in got if "clicks" in k} == {"miou_2clicks", "miou_3clicks"}

    sam = ts.SamTask(cfg, model, task.constants, None)
    images, targets, _, labels, valid = sam.prepare(batch)
    emb = jnp.repeat(sam.encode(params, images), labels.shape[1], axis=0)
    point, label = prompts.mask_point(None, targets, sam.frame)
    logits, iou = sam.decode(params, emb, point[:, None], label[:, None], multimask=True)
    first = np.take_along_axis(np.asarray(logits), np.argmax(np.asarray(iou), 1)[:, None, None, None], 1)[:, 0]
    click, click_label = prompts.error_point(None, jnp.asarray(first > 0), targets, sam.grid, sam.frame)
    logits, _ = sam.decode(params, emb, jnp.stack([point, click], 1), jnp.stack([label, click_label], 1),
                           mask_input=jnp.asarray(first), multimask=False)
    w = np.asarray(valid, np.float32)
    per_image = (np.asarray(mask_iou(logits[:, 0] > 0, targets)).reshape(w.shape) * w).sum(1) / np.maximum(w.sum(1), 1)
    values, counts = got["miou_2clicks"]
    np.testing.assert_allclose(values, per_image, atol=1e-5)
    np.testing.assert_array_equal(counts, w.sum(1))
    assert not np.allclose(values, got["miou_point"][0])  # a click changes the mask of an untrained model


def test_layer_ids_and_per_parameter_learning_rates():
    from train.sam import layer_id

    assert layer_id(("image_encoder", "patch_embed", "kernel"), 12) == 0
    assert layer_id(("image_encoder", "pos_embed"), 12) == 0
    assert layer_id(("image_encoder", "blocks_0", "attn", "qkv", "kernel"), 12) == 1
    assert layer_id(("image_encoder", "blocks_11", "mlp", "Dense_0", "bias"), 12) == 12
    assert layer_id(("image_encoder", "neck_conv1", "kernel"), 12) == 13
    assert layer_id(("mask_decoder", "iou_token"), 12) == 13
    # Adam's first step moves every parameter by lr · sign(grad) (bias-corrected m / sqrt(v) = ±1), so the
    # scaled parameter must move by exactly lr · scale; a frozen one not at all.
    cfg = ml_collections.ConfigDict(dict(lr=0.1, end_lr=0.1, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999,
                                         clip_norm=0.0))
    params = {"a": {"w": jnp.ones((3,))}, "b": {"w": jnp.ones((3,))}, "c": {"w": jnp.ones((3,))}}
    grads = jax.tree.map(lambda x: jnp.array([1.0, -2.0, 3.0]), params)
    tx, _ = make_optimizer(cfg, 10, trainable=lambda path: path[0] != "c",
                           lr_scale=lambda path: 0.25 if path[0] == "b" else 1.0)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["a"]["w"], [-0.1, 0.1, -0.1], rtol=1e-4)
    np.testing.assert_allclose(updates["b"]["w"], [-0.025, 0.025, -0.025], rtol=1e-4)
    np.testing.assert_array_equal(updates["c"]["w"], 0.0)
    assert all(leaf.shape != (3,) or True for leaf in jax.tree.leaves(state))
    moments = [leaf for leaf in jax.tree.leaves(state) if getattr(leaf, "shape", ()) == (3,)]
    assert len(moments) == 4  # mu and nu of a and b only


def test_refinement_slots_are_uniform_among_the_eligible_masks():
    from train.sam_task import _pick_slots, _unique_class

    labels = jnp.array([[2, 0, 2, 5], [1, 3, 4, 4]])
    valid = jnp.array([[True, True, True, True], [True, True, True, False]])
    unique = _unique_class(labels, valid)  # row 0: classes 0 and 5 are unique; row 1: 1, 3, 4 (the 2nd 4 is padding)
    np.testing.assert_array_equal(unique, [[False, True, False, True], [True, True, True, False]])
    picks = jax.vmap(lambda k: _pick_slots(k, unique, 2))(jax.random.split(jax.random.PRNGKey(0), 3000))
    picks = np.asarray(picks)  # (3000, 2, 2)
    assert all(len(set(p)) == 2 for row in picks for p in row)  # no slot twice
    counts = [np.bincount(picks[:, r].reshape(-1), minlength=4) / picks.shape[0] for r in range(2)]
    np.testing.assert_array_equal(counts[0], [0, 1, 0, 1])  # both unique masks every time
    np.testing.assert_allclose(counts[1], [2 / 3, 2 / 3, 2 / 3, 0], atol=0.03)  # 2 of 3, each equally often


def test_drop_path_acts_only_in_training():
    from vitsam.models import Sam, sam_init, sam_variant

    model = sam_variant("tiny", **{**{k: v for k, v in SMALL_MODEL.items() if not k.startswith("text")},
                                   "encoder_depth": 2, "global_attn_indexes": (1,)},
                        text=False, window_size=2, drop_path=0.5)
    variables = sam_init(model, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
    plain = model.apply(variables, x, method=Sam.encode_image)
    same = model.apply(variables, x, method=Sam.encode_image, train=False)
    np.testing.assert_array_equal(plain, same)
    dropped = model.apply(variables, x, True, method=Sam.encode_image, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(plain, dropped)
    no_drop = model.clone(drop_path=0.0).apply(variables, x, True, method=Sam.encode_image,
                                               rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_allclose(no_drop, plain, rtol=1e-6, atol=1e-6)


def test_fine_tuning_starts_from_a_converted_checkpoint(tmp_path, data_dir):
    from train import sam as ts
    from vitsam.convert import export
    from vitsam.models import sam_init, sam_variant

    model = sam_variant("tiny", **SMALL_MODEL)
    variables = sam_init(model, jax.random.PRNGKey(5))
    export(model, variables, tmp_path / "converted", kind="sam")
    cfg = small_config(data_dir, init_from=str(tmp_path / "converted"))
    cfg.model.drop_path = 0.2
    cfg.model.encoder_dim = 999  # architecture fields are ignored when fine-tuning
    loaded, init = ts.build_model(cfg)
    assert loaded.encoder_dim == 32 and loaded.drop_path == 0.2
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(init)):
        np.testing.assert_array_equal(a, b)
    train_src, eval_src, names = ts.open_sources(cfg)
    task = ts.sam_task(cfg, loaded, train_src, eval_src, names, init)
    np.testing.assert_array_equal(task.constants["prompt_encoder"]["pe_gaussian"],
                                  variables["constants"]["prompt_encoder"]["pe_gaussian"])
    assert task.initial_params() is init["params"]


def test_eval_values_with_weights_average_over_the_weighted_items(tmp_path):
    """The loop's weighted eval: per-image means weighted by their mask counts give the mean over masks."""
    ious = np.array([[0.5, 1.0, 0.0], [0.2, 0.0, 0.0], [0.9, 0.3, 0.6], [0.4, 0.4, 0.4]], np.float32)
    valid = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool)
    real = np.array([True, True, True, False])  # the last image is padding

    def eval_fn(params, batch):
        w = batch["valid"].astype(jnp.float32)
        count = w.sum(1)
        return {"miou": ((batch["iou"] * w).sum(1) / jnp.maximum(count, 1), count), "plain": batch["iou"][:, 0]}

    task = loop.Task(init_params=None, loss_fn=None, train_iterator=None, eval_fn=eval_fn,
                     eval_iterator=lambda b: [{"iou": ious[:2], "valid": valid[:2], "mask": real[:2]},
                                              {"iou": ious[2:], "valid": valid[2:], "mask": real[2:]}])
    from vitsam import parallel

    result = loop.evaluate(jax.jit(loop.make_eval_step(task)), None, task, 2, parallel.data_mesh())
    per_mask = ious[valid & real[:, None]]
    assert result["miou"] == pytest.approx(per_mask.mean())
    assert result["plain"] == pytest.approx(ious[:3, 0].mean())
    assert result["examples"] == 3


@pytest.mark.parametrize("changes, message", [
    ({"data.format": "voc"}, "data.format must be one of"),
    ({"sim.num_rounds": 0}, "sim.num_rounds must be at least 1"),
    ({"sim.mask_only_rounds": 3}, "sim.mask_only_rounds"),
    ({"sim.box_prob": 1.5}, "sim.box_prob"),
    ({"optim.layer_decay": 0.0}, "optim.layer_decay"),
    ({"eval_only": True}, "eval_only evaluates the checkpoint in init_from"),
    ({"data.format": "sa1b"}, "needs data.train_path"),
    ({"data.format": "coco", "data.train_path": "x.json"}, "needs data.train_path, data.train_images"),
    ({"model.variant": "vit_q"}, "unknown SAM variant"),
    ({"data.eval_split": "nope"}, "nope"),
])
def test_config_errors_are_clear_and_come_before_compute(tmp_path, data_dir, changes, message):
    from train import sam as ts

    cfg = small_config(data_dir, **changes)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ts.train(cfg, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_command_line_errors_exit_with_a_message(tmp_path, data_dir):
    result = run(tmp_path / "w", f"--config.data.data_dir={data_dir}", "--config.data.format=sa1b",
                 "--config.data.train_path=/no/such/folder", timeout=300)
    assert result.returncode != 0
    assert "train.sam: error: SA-1B folder /no/such/folder does not exist" in result.stderr


def test_the_loss_and_eval_compute_with_the_constants_they_are_given(data_dir):
    """SAM's loss and eval read the Fourier matrix the loop passes (the state's saved one), not the task's own
    draw: in their programs the constants argument feeds the computation (the loop's side: test_train_loop)."""
    from train import sam as ts

    cfg = small_config(data_dir, **{"sim.text": False})
    model, _ = ts.build_model(cfg)
    task = ts.sam_task(cfg, model, None, None, None)
    params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    batch = task.batch_spec(4)
    programs = [jax.make_jaxpr(lambda p, b, c: task.loss_fn(p, b, jax.random.PRNGKey(1), constants=c)[0]),
                jax.make_jaxpr(lambda p, b, c: task.eval_fn(p, b, constants=c))]
    for make in programs:
        jaxpr = make(params, batch, task.constants).jaxpr
        constants_in = jaxpr.invars[-len(jax.tree.leaves(task.constants)):]
        used = {v for eqn in jaxpr.eqns for v in eqn.invars if type(v).__name__ != "Literal"}
        assert constants_in and all(v in used for v in constants_in)
