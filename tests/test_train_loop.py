"""The shared training loop: exact resume after SIGKILL, NaN stop, a full disk, corrupt checkpoints, accumulation,
decay mask."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fixtures as fx
from train import loop
from train.optim import decay_mask, learning_rate_schedule, make_optimizer, muon_dimensions

FIXTURE = str(Path(fx.__file__).resolve())


def read(workdir, split="train"):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def run_fixture(workdir, total, *extra, wait=True):
    cmd = [sys.executable, FIXTURE, str(workdir), str(total), *map(str, extra)]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_rerun_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    total = 30
    ref = run_fixture(tmp_path / "ref", total)
    assert ref.returncode == 0, ref.stderr

    work = tmp_path / "killed"
    proc = run_fixture(work, total, wait=False)
    ckpts = work / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts.exists() and any(p.name == "10" for p in ckpts.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before = {r["step"] for r in read(work)}
    assert max(steps_before) < total, "the run finished before it could be killed"

    again = run_fixture(work, total)
    assert again.returncode == 0, again.stderr
    assert "resumed from step" in again.stdout
    ref_train, got_train = read(tmp_path / "ref"), read(work)
    assert [r["step"] for r in got_train] == list(range(1, total + 1))  # no duplicated or missing steps
    np.testing.assert_array_equal([r["loss"] for r in got_train], [r["loss"] for r in ref_train])
    np.testing.assert_array_equal([r["accuracy"] for r in read(work, "eval")],
                                  [r["accuracy"] for r in read(tmp_path / "ref", "eval")])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run_fixture(tmp_path, 30, 1, 12)  # batch 12 (step 13) is all NaN
    assert result.returncode != 0
    assert "loss is nan at step 13" in result.stderr
    assert "last good checkpoint (step 10)" in result.stderr
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 10
    # The kept checkpoint restores and holds finite parameters.
    from vitsam.checkpoint import Checkpointer
    state, data = Checkpointer(tmp_path / "checkpoints", every=5).read(10)
    assert data["iterator"] == {"json": {"i": 10}}
    leaves = jax.tree.leaves(state)
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def private_mount_prefix(mountpoint) -> list[str]:
    """The command prefix that runs a command in a private mount namespace where it may mount a tmpfs: `unshare -rm`
    (a user namespace too: needs no root), else `unshare -m` (root). Skips the test when neither works."""
    probe = 'mount -t tmpfs -o size=64k tmpfs "$0"'
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        try:
            if subprocess.run([*prefix, "sh", "-c", probe, str(mountpoint)], capture_output=True,
                              timeout=60).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    pytest.skip("cannot mount a tmpfs in a private mount namespace (neither `unshare -rm` nor `unshare -m` works)")


def tmpfs_kib(path) -> int:
    """What the files under `path` take on a tmpfs, in KiB: whole pages."""
    page = os.sysconf("SC_PAGESIZE")
    return sum(-(-f.stat().st_size // page) * page for f in Path(path).rglob("*") if f.is_file()) // 1024


def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_resumes(tmp_path):
    """A real full disk (a tmpfs in a private mount namespace): checkpoints 1 and 5 fit, 10 does not. The run stops
    with one line naming the checkpoint folder and the last good step; that step restores; once the disk is bigger
    the same command resumes from it and ends with the losses of a run that had room."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = private_mount_prefix(disk)
    ref = tmp_path / "ref"
    loop.run(fx.config(total_steps=10), ref, fx.task(dropout=0.1), status=lambda s: None)  # the fixture's command
    ckpts = ref / "checkpoints"
    # Room for checkpoints 1 and 5, half of 10 and the metrics: a checkpoint's size varies from run to run by up to
    # ~100 KiB (how orbax splits its files), half of one is ~250 KiB.
    room = tmpfs_kib(ckpts / "1") + tmpfs_kib(ckpts / "5") + tmpfs_kib(ckpts / "10") // 2 + 16
    work, out = disk / "run", tmp_path
    command = f"{shlex.quote(sys.executable)} {shlex.quote(FIXTURE)} {shlex.quote(str(work))} 10"
    q = {k: shlex.quote(str(v)) for k, v in dict(disk=disk, work=work, out=out).items()}
    script = f"""
        mount -t tmpfs -o size={room}k tmpfs {q["disk"]}
        {command} > {q["out"]}/full.out 2> {q["out"]}/full.err; echo $? > {q["out"]}/full.rc
        cp -r {q["work"]}/checkpoints {q["out"]}/left
        mount -o remount,size=64m {q["disk"]}
        {command} > {q["out"]}/again.out 2> {q["out"]}/again.err; echo $? > {q["out"]}/again.rc
        cp {q["work"]}/metrics.jsonl {q["out"]}/again.jsonl
    """
    subprocess.run([*prefix, "sh", "-c", script], check=True, timeout=600)

    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "1", err
    assert "Traceback" not in err
    shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # what a terminal shows of each line
    lines = [line for line in shown if line.strip() and not line.startswith("train:")]  # not the progress bar
    assert lines == [f"train_fixtures: error: No space left on device saving the checkpoint of step 10; the last good "
                     f"checkpoint, step 5, is intact in {work / 'checkpoints'}. Free some space and run the same "
                     f"command again: it resumes from step 5."], err
    steps = sorted(int(p.name) for p in (out / "left").iterdir() if p.name.isdigit())
    assert steps == [1, 5]  # the half-written step 10 is no checkpoint
    from vitsam.checkpoint import Checkpointer

    state, data = Checkpointer(out / "left", every=5).read(5)
    assert data["iterator"] == {"json": {"i": 5}}
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))

    assert (out / "again.rc").read_text().strip() == "0", (out / "again.err").read_text()
    assert "resumed from step 5" in (out / "again.out").read_text()
    got = list(map(json.loads, (out / "again.jsonl").read_text().splitlines()))
    assert [r["step"] for r in got if r["split"] == "train"] == list(range(1, 11))
    np.testing.assert_array_equal([r["loss"] for r in got if r["split"] == "train"], [r["loss"] for r in read(ref)])
    assert [r["accuracy"] for r in got if r["split"] == "eval"] == [r["accuracy"] for r in read(ref, "eval")]


FULL_DISK_WRITES = r"""
import json, os, subprocess, sys
from pathlib import Path
import jax.numpy as jnp
sys.path.insert(0, sys.argv[2])
from train.loop import MetricsLog
from vitsam.checkpoint import Checkpointer, DiskFullError, write_model_spec

disk, out = Path(sys.argv[1]), {}
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], check=True)
write_model_spec(disk, {"kind": "vit", "fields": {"width": 32}})
ckpt = Checkpointer(disk / "checkpoints", every=1)
ckpt.save(1, {"w": jnp.ones(3)}, {"iterator": 1})
ckpt.wait()
log = MetricsLog(disk / "metrics.jsonl", 0, guard=ckpt.stop_on_disk_full)
log.write({"step": 1, "loss": 1.0})
fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, bytes(4096))
except OSError as e:
    out["filler"] = e.errno
for name, write in [("model", lambda: write_model_spec(disk, {"kind": "vit", "fields": {"width": 64}})),
                    ("metrics", lambda: log.write({"step": 2, "note": "x" * 8192}))]:
    try:
        write()
    except DiskFullError as e:
        out[name] = str(e)
MetricsLog(disk / "metrics.jsonl", 1)  # a resume at step 1, on the full disk
out["model.json"] = json.loads((disk / "model.json").read_text())
out["files"] = sorted(p.name for p in disk.iterdir())
out["metrics.jsonl"] = (disk / "metrics.jsonl").read_text()
print(json.dumps(out))
"""


def test_model_json_and_metrics_writes_on_a_full_disk_fail_in_one_line_and_keep_what_was_there(tmp_path):
    import errno

    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = private_mount_prefix(disk)
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run([*prefix, sys.executable, "-c", FULL_DISK_WRITES, str(disk), root], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["filler"] == errno.ENOSPC
    kept = f"; the last good checkpoint, step 1, is intact in {disk / 'checkpoints'}. Free some space and run the " \
           f"same command again: it resumes from step 1."
    assert out["model"] == f"No space left on device writing {disk / 'model.json'}{kept}"
    assert out["metrics"] == f"No space left on device writing {disk / 'metrics.jsonl'}{kept}"
    assert out["model.json"] == {"kind": "vit", "fields": {"width": 32}}  # the old one, whole
    assert out["files"] == ["checkpoints", "filler", "metrics.jsonl", "model.json"]  # no half-written copy
    assert out["metrics.jsonl"] == '{"step": 1, "loss": 1.0}\n'  # the cut record dropped, with no space to spare


def test_disk_full_errno_reads_oserrors_and_tensorstores_messages():
    import errno

    from vitsam.checkpoint import disk_full_errno

    assert disk_full_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    quota = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/x": Failed to write 4 bytes to file 12: '
                       f"{os.strerror(errno.EDQUOT)} [os_error_code='{errno.EDQUOT}']")
    assert disk_full_errno(quota) == errno.EDQUOT
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as e:
        assert disk_full_errno(e) == errno.ENOSPC
    assert disk_full_errno(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_errno(ValueError("bad shape")) is None


def test_corrupt_newest_checkpoint_is_moved_aside_and_saved_again(tmp_path, capsys):
    """A corrupt final checkpoint: the rerun falls back to the previous one, moves the corrupt step aside (kept,
    not deleted) and can finish, saving that step again; more steps afterwards work too."""
    cfg = fx.config(total_steps=10, checkpoint_every=5)
    loop.run(cfg, tmp_path, fx.task())
    newest = tmp_path / "checkpoints" / "10"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint at step 10.*moved it to"):
        loop.run(cfg, tmp_path, fx.task(), status=print)
    assert "resumed from step 5" in capsys.readouterr().out
    aside = list((tmp_path / "checkpoints_unreadable").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("10-") and any(aside[0].rglob("*"))
    from vitsam.checkpoint import Checkpointer

    state, data = Checkpointer(tmp_path / "checkpoints", every=5).read(10)  # saved again, readable
    assert data["iterator"] == {"json": {"i": 10}}
    cfg.total_steps = 12
    loop.run(cfg, tmp_path, fx.task(), status=print)
    assert "resumed from step 10" in capsys.readouterr().out
    assert [r["step"] for r in read(tmp_path)] == list(range(1, 13))


@pytest.mark.parametrize("field, value, message", [
    ("keep_checkpoints", 0, "keep_checkpoints must be at least 1, got 0 (0 would delete every checkpoint"),
    ("total_steps", 0, "total_steps must be at least 1"),
    ("eval_every", 0, "eval_every must be at least 1"),
    ("log_every", 0, "log_every must be at least 1"),
    ("checkpoint_every", -5, "checkpoint_every must be at least 1"),
    ("optim.lr", -1e-3, "optim.lr must not be negative"),
    ("optim.lr", 0.0, "optim.lr must be positive"),
    ("optim.warmup_steps", -1, "optim.warmup_steps must not be negative"),
    ("optim.name", "sgd", "optim.name must be one of ('adamw', 'muon'), got 'sgd'"),
    ("optim.muon_exclude", "head/(", "optim.muon_exclude is not a regular expression"),
])
def test_nonsense_loop_values_are_refused_before_anything_is_written(tmp_path, field, value, message):
    cfg = fx.config()
    node, _, name = field.rpartition(".")
    (cfg[node] if node else cfg)[name] = value
    with pytest.raises(ValueError) as e:
        loop.run(cfg, tmp_path, fx.task())
    assert message in str(e.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_workdir_of_another_model_is_refused_before_anything_changes(tmp_path):
    from vitsam.checkpoint import check_model_spec, model_spec, write_model_spec
    from vitsam.models import registry

    small = fx.vit_variant("Ti/16", num_classes=4, image_size=16, patch_size=4, width=32, depth=2, mlp_dim=64,
                           num_heads=2)
    write_model_spec(tmp_path, model_spec("vit", small))
    fields = registry.get("vit").training_fields
    check_model_spec(tmp_path, model_spec("vit", small.clone(width=64)), fields)  # no checkpoint yet: allowed
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    before = (tmp_path / "model.json").read_bytes()
    with pytest.raises(ValueError) as e:
        check_model_spec(tmp_path, model_spec("vit", small.clone(width=64, depth=3)), fields)
    assert "width: 32 in the run, 64 now" in str(e.value) and "depth: 2 in the run, 3 now" in str(e.value)
    check_model_spec(tmp_path, model_spec("vit", small.clone(dropout=0.3, drop_path=0.1)), fields)  # training-only
    with pytest.raises(ValueError, match="holds a vit run, not a sam one"):
        check_model_spec(tmp_path, {"kind": "sam", "fields": {}}, fields)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json is not valid JSON"):
        check_model_spec(tmp_path, model_spec("vit", small), fields)
    (tmp_path / "model.json").write_bytes(before)


def test_the_loss_receives_the_states_constants_not_the_tasks(tmp_path):
    """Task constants are saved in the state; the step and eval hand the state's copy to loss_fn / eval_fn (after a
    resume: the restored one), never the task's own."""
    import dataclasses

    import optax

    from train.loop import make_eval_step
    from train.setup import TrainState, make_train_step

    base = fx.task()
    def loss_fn(params, batch, rng, constants):
        loss, aux = base.loss_fn(params, batch, rng)
        return loss * constants["scale"], aux

    def eval_fn(params, batch, constants):
        return {"scale": jnp.broadcast_to(constants["scale"], batch["label"].shape)}

    task = dataclasses.replace(base, loss_fn=loss_fn, eval_fn=eval_fn, constants={"scale": np.float32(1.0)})
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    tx = optax.sgd(0.0)
    batch = next(task.train_iterator(8))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       constants={"scale": jnp.float32(3.0)})
    _, metrics = jax.jit(make_train_step(task, tx, lambda s: 0.0, 1, jax.random.PRNGKey(1)))(state, batch)
    plain = base.loss_fn(params, batch, jax.random.fold_in(jax.random.PRNGKey(1), 0))[0]
    np.testing.assert_allclose(metrics["loss"], 3.0 * plain, rtol=1e-6)
    sums, weights, _ = make_eval_step(task)(params, batch, state.constants)
    assert float(sums["scale"]) == 3.0 * float(weights["scale"])


def test_each_step_trains_in_the_phase_the_task_names_for_it(tmp_path):
    """`Task.phase`: loss_fn receives phase(step) of the step being taken (0 for the first) as a Python value,
    also when the batch is split into microbatches, and after a resume from the restored step on."""
    import dataclasses

    base = fx.task()

    def loss_fn(params, batch, rng, phase):
        loss, aux = base.loss_fn(params, batch, rng)
        return loss, {**aux, "phase": jnp.float32({"a": 1.0, "b": 2.0}[phase])}

    task = dataclasses.replace(base, loss_fn=loss_fn, phase=lambda step: "a" if step < 2 or step == 3 else "b")
    loop.run(fx.config(total_steps=3, accum=2), tmp_path, task)
    loop.run(fx.config(total_steps=5, accum=2), tmp_path, task)
    rows = read(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in rows] == [1.0, 1.0, 2.0, 1.0, 2.0]


def test_a_phase_with_its_own_batch_reads_the_stream_in_order_and_resumes_where_it_was(tmp_path):
    """`Task.phase_batch`: steps of phase "a" train on 4 examples, the others on the config's 8; the iterator reads
    gcd(8, 4) = 4 at a time, so stream positions 0-3, 4-7, 8-15, ... follow one another across the phases and
    across a resume."""
    import dataclasses

    class Positions(fx.SyntheticIterator):
        def __next__(self):
            first = self.i * self.batch_size
            return {**super().__next__(), "pos": np.arange(first, first + self.batch_size, dtype=np.float32)}

    base = fx.task()

    def loss_fn(params, batch, rng, phase):
        loss, aux = base.loss_fn(params, batch, rng)
        return loss, {**aux, "first": batch["pos"].min(), "last": batch["pos"].max(),
                      "rows": jnp.float32(batch["pos"].shape[0])}

    task = dataclasses.replace(base, loss_fn=loss_fn, train_iterator=Positions, phase_batch={"a": 4},
                               phase=lambda step: "a" if step < 2 else "b")
    loop.run(fx.config(total_steps=3, batch_size=8), tmp_path, task)
    loop.run(fx.config(total_steps=5, batch_size=8), tmp_path, task)
    rows = read(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [(r["first"], r["last"], r["rows"]) for r in rows] == [
        (0, 3, 4), (4, 7, 4), (8, 15, 8), (16, 23, 8), (24, 31, 8)]


def test_a_later_phase_compiled_ahead_trains_as_the_jitted_step_does(tmp_path):
    """The step program of phase "b" is compiled in the background while phase "a" trains (`loop.compile_ahead`);
    the run's losses equal, to the bit, those of the jitted step called step by step on the same batches."""
    import dataclasses

    from train.setup import setup

    base = fx.task()

    def loss_fn(params, batch, rng, phase):
        loss, aux = base.loss_fn(params, batch, rng)
        return loss * {"a": 1.0, "b": 2.0}[phase], aux

    task = dataclasses.replace(base, loss_fn=loss_fn, phase_batch={"b": 8},
                               phase=lambda step: "a" if step in (0, 1, 3) else "b")
    cfg = fx.config(total_steps=5, batch_size=16)
    said = []
    loop.run(cfg, tmp_path, task, status=said.append)
    assert loop.upcoming_phases(task, 0, 5) == ["b"] and loop.upcoming_phases(task, 4, 5) == []
    assert "ran the first step of phase 'b' (compiled beside the steps before it)" in " ".join(said)

    s = setup(cfg, task)
    state = jax.jit(s.init, out_shardings=s.shardings)(jax.random.split(jax.random.PRNGKey(cfg.seed))[0])
    stream, losses = fx.SyntheticIterator(task.read_batch(16)), []
    for step in range(5):
        phase = task.phase(step)
        rows = task.step_batch(16, phase)
        batch = jax.tree.map(jnp.asarray, loop._read(stream, rows // task.read_batch(16)))
        state, metrics = s.train_step(state, batch, phase)
        losses.append(float(metrics["loss"]))
    assert [r["loss"] for r in read(tmp_path)] == losses


def test_the_eval_program_compiled_ahead_gives_the_jitted_steps_figures():
    """`loop.compile_eval_ahead` compiles the eval program in a background thread; `evaluate` runs it on batches
    of the shapes it was compiled for (here every batch: the jitted step is never called) with the figures of the
    jitted step to the bit, and runs the jitted step on a batch of other shapes."""
    import dataclasses

    from train.setup import setup

    task, cfg = fx.task(), fx.config()
    s = setup(cfg, task)
    state = jax.jit(s.init, out_shardings=s.shardings)(jax.random.PRNGKey(0))
    eval_step = jax.jit(loop.make_eval_step(task))
    ahead = loop.compile_eval_ahead(eval_step, s.abstract.params, None, task, s.local_batch, s.mesh).result()
    jitted = loop.evaluate(eval_step, state.params, task, s.local_batch, s.mesh)
    assert jitted["examples"] == 2 * (s.local_batch - 3)

    def not_called(*args):
        raise AssertionError("the jitted eval step ran")

    assert loop.evaluate(not_called, state.params, task, s.local_batch, s.mesh, ahead=ahead) == jitted

    def short_last_batch(b):  # the second batch holds 8 rows
        first, second = task.eval_iterator(b)
        yield first
        yield jax.tree.map(lambda x: x[:8], second)

    calls = []
    shorter = dataclasses.replace(task, eval_iterator=short_last_batch)
    got = loop.evaluate(lambda *a: calls.append(1) or eval_step(*a), state.params, shorter, s.local_batch, s.mesh,
                        ahead=ahead)
    assert calls == [1] and got == loop.evaluate(eval_step, state.params, shorter, s.local_batch, s.mesh)


_EXIT_DURING_COMPILE = """
import sys, threading, time
import jax, jax.numpy as jnp
from train import launch, loop

def chain(x):  # thousands of ops: seconds of XLA compile
    for i in range(600):
        x = jnp.sin(x @ x.T + i)
    return x

lowered = jax.jit(chain).lower(jax.ShapeDtypeStruct((32, 32), jnp.float32))
threading.Thread(target=lowered.compile, name=loop.BACKGROUND_COMPILES[1], daemon=True).start()
time.sleep(0.5)
assert loop.compiling_in_background()
with launch.exit_beside_background_compiles(), launch.errors_in_one_line("prog"):
    print("stopping", flush=False)
    if sys.argv[1] == "error":
        raise ValueError("a bad value")
"""


@pytest.mark.parametrize("how, status, stderr", [("stop", 0, ""), ("error", 1, "prog: error: a bad value")])
def test_a_program_that_ends_while_a_background_compile_runs_exits_as_it_would_have(how, status, stderr):
    """Python's shutdown aborts a process while a daemon thread is inside XLA's compile (SIGABRT); a trainer that
    stops early (a signal, an error) with a `loop.compile_ahead` or `loop.compile_eval_ahead` thread still
    compiling ends through `launch.exit_beside_background_compiles` with its own status, message and output."""
    out = subprocess.run([sys.executable, "-c", _EXIT_DURING_COMPILE, how], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert out.returncode == status, out.stderr[-2000:]
    assert out.stdout == "stopping\n" and out.stderr.strip().endswith(stderr) and "FATAL" not in out.stderr


@pytest.mark.parametrize("phase_batch, message", [
    ({"a": 0}, "the batch of phase 'a' must be at least 1, got 0"),
    ({"a": 3}, "grad_accum_steps=2 must divide the per-device batch of phase 'a', 3"),
])
def test_a_phase_batch_that_cannot_be_split_is_refused_before_anything_runs(tmp_path, phase_batch, message):
    import dataclasses

    task = dataclasses.replace(fx.task(), phase_batch=phase_batch, phase=lambda step: "a")
    with pytest.raises(ValueError, match=re.escape(message)):
        loop.run(fx.config(total_steps=2, batch_size=8, accum=2), tmp_path, task)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("signal_at", [3, 5])
def test_sigterm_checkpoints_the_step_reached_and_the_same_command_finishes(tmp_path, capsys, signal_at):
    """SIGTERM while the batch of step `signal_at` is read: that step is taken, checkpointed (at 5 by the periodic
    save, checkpoint_every=5, which the stop must not repeat) and the run ends cleanly; a rerun goes on from it."""
    import dataclasses

    class Terminating(fx.SyntheticIterator):
        def __next__(self):
            if self.i == signal_at - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__next__()

    cfg = fx.config(total_steps=7)
    loop.run(cfg, tmp_path, dataclasses.replace(fx.task(), train_iterator=lambda b: Terminating(b)))
    assert f"signal {int(signal.SIGTERM)} received" in capsys.readouterr().out
    assert [r["step"] for r in read(tmp_path)] == list(range(1, signal_at + 1))
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == signal_at
    loop.run(cfg, tmp_path, fx.task())
    assert f"resumed from step {signal_at}" in capsys.readouterr().out
    assert [r["step"] for r in read(tmp_path)] == list(range(1, 8))


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = loop.run(fx.config(total_steps=6, accum=1), tmp_path / "a", fx.task())
    accum = loop.run(fx.config(total_steps=6, accum=4), tmp_path / "b", fx.task())
    np.testing.assert_allclose([r["loss"] for r in read(tmp_path / "b")], [r["loss"] for r in read(tmp_path / "a")],
                               rtol=2e-5)
    assert full["accuracy"] == pytest.approx(accum["accuracy"])


def test_eval_counts_each_real_example_once(tmp_path):
    result = loop.run(fx.config(total_steps=10), tmp_path, fx.task())
    assert result["examples"] == 2 * (16 - 3)


def test_bad_batch_and_workdir_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        loop.run(fx.config(accum=3), tmp_path, fx.task())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not writable"):
        loop.run(fx.config(), blocker / "sub", fx.task())


def test_processes_sharing_a_workdir_all_pass_its_writability_check(tmp_path):
    """Every process of a multi-process run checks the one workdir at the same moment (one host, or a shared
    filesystem); none may see another's probe vanish. Threads stand in for the processes (300 checks each)."""
    import threading

    errors = []

    def check():
        for _ in range(300):
            try:
                loop.prepare_workdir(tmp_path)
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                errors.append(e)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(tmp_path.iterdir()) == []  # no probe left behind


def test_decay_mask_skips_biases_norms_and_embeddings():
    model = fx.vit_variant("Ti/16", num_classes=3, image_size=16, patch_size=4, width=16, depth=1, mlp_dim=16,
                           num_heads=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]}
    assert flat["embedding/kernel"] and flat["head/kernel"]
    assert flat["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"]
    assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
    for name in ("cls", "pos_embedding", "embedding/bias", "head/bias", "Transformer/encoder_norm/scale",
                 "Transformer/encoderblock_0/LayerNorm_0/bias", "Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias"):
        assert not flat[name], name


def test_a_run_shorter_than_its_warmup_still_decays_to_the_end_lr():
    cfg = fx.config().optim
    cfg.lr, cfg.end_lr, cfg.warmup_steps = 1.0, 0.0, 100
    s = learning_rate_schedule(cfg, 10)
    lrs = [float(s(i)) for i in range(11)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.0, abs=1e-7)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6])) and all(a > b for a, b in zip(lrs[5:10], lrs[6:11]))


def test_schedule_warms_up_linearly_then_decays_by_a_cosine():
    cfg = fx.config().optim
    cfg.lr, cfg.end_lr, cfg.warmup_steps = 1.0, 0.0, 10
    s = learning_rate_schedule(cfg, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)), abs=1e-6)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)


def _tiny_vit_params():
    model = fx.vit_variant("Ti/16", num_classes=3, image_size=16, patch_size=4, width=16, depth=1, mlp_dim=32,
                           num_heads=2)
    return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]


def test_muon_treats_each_kernel_as_the_matrix_of_its_map():
    params = _tiny_vit_params()
    flat = {"/".join(k.key for k in path): d for path, d in jax.tree_util.tree_flatten_with_path(
        muon_dimensions(params), is_leaf=lambda x: x is None or hasattr(x, "reduction_axis"))[0]}
    block = "Transformer/encoderblock_0/"
    attn = block + "MultiHeadDotProductAttention_0/"
    as_tuples = {k: d and (np.atleast_1d(d.reduction_axis).tolist(), np.atleast_1d(d.output_axis).tolist())
                 for k, d in flat.items()}
    for name in ("query", "key", "value"):                      # (D, H, hd): D in, H·hd out
        assert as_tuples[attn + name + "/kernel"] == ([0], [1, 2])
    assert as_tuples[attn + "out/kernel"] == ([0, 1], [2])      # (H, hd, D)
    assert as_tuples[block + "MlpBlock_0/Dense_0/kernel"] == ([0], [1])
    for name in ("embedding/kernel", "head/kernel", "pos_embedding", attn + "query/bias",
                 block + "LayerNorm_0/scale"):
        assert flat[name] is None, name
    none_left = muon_dimensions(params, exclude="")            # "": every kernel on Muon
    assert none_left["embedding"]["kernel"].output_axis == 3 and none_left["head"]["kernel"] is not None
    no_mlp = muon_dimensions(params, exclude="MlpBlock")
    assert no_mlp["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"] is None
    conv = muon_dimensions({"neck": {"kernel": jnp.zeros((3, 3, 8, 4))}})["neck"]["kernel"]
    assert (tuple(conv.reduction_axis), conv.output_axis) == ((0, 1, 2), 3)   # (kh·kw·in) × out


def test_muon_orthogonalizes_the_attention_kernel_as_one_matrix():
    """The first Muon update of a (D, H, hd) query kernel, read as a D × (H·hd) matrix, has the gradient's
    singular vectors with singular values near 1 (Newton-Schulz), scaled to an RMS of 0.2 · lr; the parameters
    outside the matrices get the first step of AdamW with Nesterov momentum (as optax's Muon runs it):
    lr · (1 + b1 / (1 + b1)) · sign(g)."""
    params = _tiny_vit_params()
    cfg = fx.config().optim
    cfg.name, cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.clip_norm = "muon", 0.1, 0, 0.0, 0.0
    tx, _ = make_optimizer(cfg, 100)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    attn = ("Transformer", "encoderblock_0", "MultiHeadDotProductAttention_0", "query", "kernel")
    g, u = grads, updates
    for key in attn:
        g, u = g[key], u[key]
    d = g.shape[0]
    g2, u2 = np.asarray(g).reshape(d, -1), -np.asarray(u).reshape(d, -1) / cfg.lr
    left, sv, right = np.linalg.svd(g2, full_matrices=False)
    inner = left.T @ u2 @ right.T                           # diagonal iff u2 shares g2's singular vectors
    off = inner - np.diag(np.diag(inner))
    assert np.abs(off).max() < 1e-3 * np.abs(np.diag(inner)).max()
    ortho = np.diag(inner) / (0.2 * np.sqrt(max(g2.shape)))  # undo the RMS scaling
    assert np.all((ortho > 0.6) & (ortho < 1.25)), ortho      # Newton-Schulz's band around 1
    assert np.sqrt(np.mean(u2 ** 2)) == pytest.approx(0.2, rel=0.25)
    # a per-head (vmapped) orthogonalization would not share the full matrix's singular vectors:
    per_head = np.concatenate([np.linalg.svd(h, full_matrices=False)[0] @ np.linalg.svd(h, full_matrices=False)[2]
                               for h in np.moveaxis(np.asarray(g), 1, 0)], axis=1)
    assert np.abs(left.T @ per_head @ right.T - np.diag(np.diag(left.T @ per_head @ right.T))).max() > 1e-2
    bias_g, bias_u = grads["head"]["bias"], updates["head"]["bias"]
    np.testing.assert_allclose(bias_u, -cfg.lr * (1 + cfg.b1 / (1 + cfg.b1)) * np.sign(bias_g), rtol=1e-4)


def test_a_muon_run_resumes_exactly(tmp_path):
    import shutil

    cfg = fx.config(total_steps=6, checkpoint_every=3)
    cfg.optim.name = "muon"
    loop.run(cfg, tmp_path / "ref", fx.task())
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "6")       # as if the run had died after step 3's save
    messages = []
    loop.run(cfg, tmp_path / "cut", fx.task(), status=messages.append)
    assert any("resumed from step 3" in m for m in messages), messages
    ref, cut = read(tmp_path / "ref"), read(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 7))
    np.testing.assert_array_equal([r["loss"] for r in cut], [r["loss"] for r in ref])
    assert len({r["loss"] for r in ref[2:]}) == 4               # it trains (steps 1-2: the zero head's log 4)
