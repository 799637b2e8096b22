"""Meshes and sharding rules as config data: the fsdp tactic against a naive rule, first-match rules, the optimizer
state following its parameter, the live shardings of ViT-B/16 and SAM vit_b on 8 devices, clear errors for bad
meshes, rules, batches and compile targets, and compile-only plans (8 CPU devices; a curriculum's last phase)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from train.optim import make_optimizer
from vitsam import parallel, sharding

REPO = Path(__file__).resolve().parent.parent


class FakeMesh:
    """Only what the rules read of a mesh: axis names and sizes (no devices needed)."""

    def __init__(self, **axes):
        self.shape = axes
        self.axis_names = tuple(axes)


def naive_fsdp(shape, n, min_size):
    """The tactic as the issue states it: the largest dimension divisible by n, later dims first among equals."""
    if n == 1 or np.prod(shape) < min_size:
        return P()
    best = None
    for dim, size in enumerate(shape):
        if size % n == 0 and (best is None or size >= shape[best]):
            best = dim
    return P() if best is None else P(*([None] * best), "fsdp")


@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (768, 768), (3, 14, 14, 1280), (1, 257, 1280),
                                   (16, 80, 1280), (10,), (6, 6), (7, 9, 11), (2**15,)])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_fsdp_tactic_is_the_largest_divisible_dimension(shape, n):
    assert sharding.fsdp_spec(shape, n, min_size=64) == naive_fsdp(shape, n, 64)


def test_first_matching_rule_wins_and_unmatched_parameters_are_replicated():
    mesh = FakeMesh(data=2, fsdp=4)
    params = {"pos_embed": jnp.zeros((1, 64, 64, 32)), "qkv": {"kernel": jnp.zeros((32, 96)), "bias": jnp.zeros(96)},
              "mlp": {"kernel": jnp.zeros((32, 128))}}
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    rules = (("pos_embed", "replicate"), (r"qkv/kernel$", (None, ("data", "fsdp"))), ("mlp", "fsdp"))
    specs = sharding.param_specs(params, rules, mesh, min_size=1)
    assert specs["pos_embed"] == P()
    assert specs["qkv"]["kernel"] == P(None, ("data", "fsdp"))
    assert specs["qkv"]["bias"] == P()                       # no rule matches "qkv/bias"
    assert specs["mlp"]["kernel"] == P(None, "fsdp")         # 128 is the largest dimension


@pytest.mark.parametrize("rules, message", [
    ((("kernel", (None, "model")),), "names mesh axis 'model'"),
    ((("kernel", ("fsdp", None, None)),), "has 3 entries but parameter w/kernel has rank 2"),
    ((("kernel", ("fsdp",)),), "splits dimension 0 of parameter w/kernel (shape (6, 8)) over 'fsdp' = 4"),
    ((("kernel", "shard_it"),), "spec must be 'fsdp', 'replicate' or a tuple"),
    ((("(", "fsdp"),), "bad regex"),
    (("kernel",), "must be a (regex, spec) pair"),
])
def test_bad_rules_are_clear_errors(rules, message):
    params = {"w": {"kernel": jax.ShapeDtypeStruct((6, 8), jnp.float32)}}
    with pytest.raises(ValueError) as e:
        sharding.param_specs(params, rules, FakeMesh(data=2, fsdp=4), min_size=1)
    assert message in str(e.value)


@pytest.mark.parametrize("axes, devices, message", [
    ({"data": 2, "fsdp": 2}, 8, "multiply to 4, but there are 8 devices"),
    ({"data": 3, "fsdp": -1}, 8, "does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, 8, "at most one -1"),
    ({"data": 0, "fsdp": 8}, 8, "mesh.data"),
])
def test_bad_meshes_are_clear_errors(axes, devices, message):
    with pytest.raises(ValueError, match="mesh") as e:
        parallel.mesh_shape(axes, devices)
    assert message in str(e.value)


def test_mesh_sizes_fill_the_devices():
    assert parallel.mesh_shape({"data": -1, "fsdp": 4}, 8) == {"data": 2, "fsdp": 4}
    assert parallel.mesh_shape({"data": 8, "fsdp": 1}, 8) == {"data": 8, "fsdp": 1}


def test_optimizer_state_follows_its_parameter_with_frozen_parts():
    mesh = FakeMesh(data=1, fsdp=4)
    params = {"encoder": {"kernel": jnp.zeros((16, 8))}, "decoder": {"kernel": jnp.zeros((8, 32)),
                                                                      "bias": jnp.zeros((32,))}}
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, end_lr=0.0, warmup_steps=1, weight_decay=0.1, b1=0.9, b2=0.99,
                                         clip_norm=1.0))
    tx, _ = make_optimizer(cfg, 10, trainable=lambda path: path[0] != "encoder")
    opt = jax.eval_shape(tx.init, params)
    specs = sharding.param_specs(params, ((".*", "fsdp"),), mesh, min_size=1)
    follow = sharding.follow_params(opt, params, specs, "REPLICATED")
    flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(follow)[0]}
    mu = [k for k in flat if ".mu" in k]
    assert mu and all("encoder" not in k for k in flat)     # the frozen encoder has no optimizer state
    for key, spec in flat.items():
        if "['decoder']['kernel']" in key:
            assert spec == P(None, "fsdp"), key
        elif "['decoder']['bias']" in key:
            assert spec == P("fsdp"), key  # 32 elements divide by 4
        else:
            assert spec == "REPLICATED", key                  # step counts


def test_muon_state_follows_its_parameter():
    """Muon's momentum of a weight matrix and AdamW's moments of a bias take their parameter's sharding."""
    mesh = FakeMesh(data=1, fsdp=4)
    params = {"dense": {"kernel": jnp.zeros((16, 8)), "bias": jnp.zeros((8,))}}
    cfg = ml_collections.ConfigDict(dict(name="muon", lr=1e-3, end_lr=0.0, warmup_steps=1, weight_decay=0.1,
                                         b1=0.9, b2=0.99, clip_norm=1.0))
    tx, _ = make_optimizer(cfg, 10)
    opt = jax.eval_shape(tx.init, params)
    specs = sharding.param_specs(params, ((".*", "fsdp"),), mesh, min_size=1)
    flat = {jax.tree_util.keystr(p): (x.shape, s) for (p, x), s in zip(
        jax.tree_util.tree_flatten_with_path(opt)[0], jax.tree.leaves(sharding.follow_params(opt, params, specs,
                                                                                           "REPLICATED")))}
    kernel = [k for k, (shape, _) in flat.items() if shape == (16, 8)]
    bias = [k for k, (shape, _) in flat.items() if shape == (8,)]
    assert len(kernel) == 1 and len(bias) == 2, flat           # Muon: one momentum; AdamW: mu and nu
    assert specs["dense"]["kernel"] != P() and flat[kernel[0]][1] == specs["dense"]["kernel"]
    assert all(flat[k][1] == specs["dense"]["bias"] == P("fsdp") for k in bias)


LIVE_SCRIPT = r"""
import json, re, sys
import jax, numpy as np
sys.path.insert(0, {repo!r})
from train import loop
from vitsam.models import vit_variant, sam_variant

out = {{}}
for kind in [{kind!r}]:
    if kind == "vit":
        from configs import vit_shapes as recipe
        from train import vit
    else:
        from configs import sam_shapes as recipe
        from train import sam
    cfg = recipe.get_config()
    cfg.mesh.data, cfg.mesh.fsdp = 2, 4
    cfg.sharding_rules = {rules!r}
    cfg.sharding_min_size = {min_size}
    cfg.batch_size = 8
    cfg.optim.name = "adamw"   # the test reads Adam's two moments of every parameter
    if kind == "vit":
        cfg.data.image_size = 224
        task = vit.classification_task(cfg, vit_variant("B/16", num_classes=1000), None, None)
    else:
        cfg.sim.text = False
        task = sam.sam_task(cfg, sam_variant("vit_b", attention_query_rows=0), None, None, None)
    s = loop.setup(cfg, task)
    state = jax.jit(s.init, out_shardings=s.shardings)(jax.random.PRNGKey(0))
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        rows.append([name, list(x.shape), [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec],
                     list(x.addressable_shards[0].data.shape)])
    out[kind] = rows
print(json.dumps(out))
"""


@pytest.mark.multihost  # two ~45-s subprocesses: in the scale-out stage, not the default suite
def test_live_shardings_of_vit_b16_and_sam_vit_b_follow_the_rules(tmp_path):
    """Params born sharded on 8 devices (data 2 × fsdp 4): each live array has the spec a naive reading of the
    rules gives, its shard has the matching shape, and Adam's moments have their parameter's spec."""
    rules = (("pos_embed", "replicate"), (r"attn/qkv/kernel$", (None, "fsdp")), (".*", "fsdp"))
    min_size = 2**14
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    live = {}
    for kind in ("vit", "sam"):  # each trainer defines its absl flags: one per process
        script = LIVE_SCRIPT.format(repo=str(REPO), rules=rules, min_size=min_size, kind=kind)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                timeout=600, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        live |= json.loads(result.stdout.strip().splitlines()[-1])
    import re

    for kind, rows in live.items():
        params = {name[len("params/"):]: (shape, spec, shard) for name, shape, spec, shard in rows
                  if name.startswith("params/")}
        assert len(params) > 100, kind
        for name, (shape, spec, shard) in params.items():
            if "pos_embed" in name:
                want = P()
            elif re.search(r"attn/qkv/kernel$", name):
                want = P(None, "fsdp")
            else:
                want = naive_fsdp(tuple(shape), 4, min_size)
            assert P(*spec) == want, (kind, name, shape, spec)
            expected_shard = [s // 4 if i < len(want) and want[i] == "fsdp" else s for i, s in enumerate(shape)]
            assert shard == expected_shard, (kind, name)
        moments = [r for r in rows if "/mu/" in r[0] or "/nu/" in r[0]]
        assert len(moments) == 2 * len(params), kind
        for name, shape, spec, shard in moments:
            param = name.split("/mu/" if "/mu/" in name else "/nu/")[1]
            assert (shape, spec) == params[param][:2], (kind, name)
        if kind == "vit":
            assert params["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"][1] == [None, "fsdp"]
        else:
            assert params["image_encoder/blocks_0/attn/qkv/kernel"][1] == [None, "fsdp"]
            assert params["image_encoder/pos_embed"][1] == []


def _config(**changes):
    import configs.vit_shapes as vit_shapes

    cfg = vit_shapes.get_config()
    cfg.update(changes)
    return cfg


def test_a_batch_that_does_not_split_over_data_and_fsdp_is_a_clear_error():
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1})
    assert parallel.check_global_batch(6, mesh) == 6
    fake = FakeMesh(data=2, fsdp=4)
    with pytest.raises(ValueError, match=r"batch_size 12 does not split over the mesh's batch axes \(data 2 × fsdp 4 = 8\)"):
        parallel.check_global_batch(12, fake)


@pytest.mark.parametrize("target, message", [
    ("tpu:v9:4x4", "expected tpu:GEN:TOPOLOGY"), ("gpu:8", "expected tpu:GEN:TOPOLOGY"),
    ("tpu:v5e:four", "expected tpu:GEN:TOPOLOGY"), ("cpu:0", "or cpu:N"),
])
def test_unknown_compile_targets_are_clear_errors(target, message):
    from train import plan

    with pytest.raises(ValueError, match="--compile_for") as e:
        plan.parse_target(target)
    assert message in str(e.value)


def test_compile_for_a_tpu_without_libtpu_is_a_clear_error():
    import importlib.util

    from train import plan

    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed here (the [tpu] extra)")
    with pytest.raises(ValueError, match=r"needs libtpu.*pip install 'vitsam\[tpu\]'"):
        plan.prepare_platform("tpu:v5e:2x2")


@pytest.mark.multihost  # two compiles, ~20 s: in the scale-out stage with the other plans
def test_the_plan_of_a_task_with_phases_is_that_of_its_last_step(tmp_path):
    """A curriculum (`Task.phase`): the plan compiles and counts the program of the last step's phase. Phase "b"
    adds a (B, P) × (P, 64) product of the flattened images with a constant: 2·B·P·64 FLOPs, no gradient."""
    import dataclasses

    import train_fixtures as fx
    from train import plan

    base, size, pixels = fx.task(), 16, fx.IMAGE * fx.IMAGE * 3
    extra = 2 * size * pixels * 64

    def loss_fn(params, batch, rng, phase):
        loss, aux = base.loss_fn(params, batch, rng)
        if phase == "b":
            loss = loss + 0.0 * jnp.sum(batch["image"].reshape(-1, pixels) @ jnp.ones((pixels, 64)))
        return loss, aux

    spec = lambda b: {"image": jax.ShapeDtypeStruct((b, fx.IMAGE, fx.IMAGE, 3), jnp.float32),  # noqa: E731
                      "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    flops = {}
    for last in ("a", "b"):
        task = dataclasses.replace(base, loss_fn=loss_fn, batch_spec=spec,
                                   phase=lambda step, last=last: "a" if step < 5 else last)
        flops[last] = plan.compile_plan(fx.config(total_steps=10, batch_size=size), tmp_path / last, "cpu:1",
                                        lambda cfg, task=task: task, status=lambda _: None)["flops_per_step"]
    assert flops["b"] - flops["a"] == extra


@pytest.mark.multihost  # a 10-20 s compile in a subprocess: in the scale-out stage
def test_compile_only_plan_for_eight_cpu_devices(tmp_path):
    """`--compile_for=cpu:8` with FSDP: no data is read (the data_dir does not exist), the plan's parameter bytes
    per device equal a count from the architecture (fsdp-sharded kernels in quarters), and it fits."""
    args = ["--config.model.width=64", "--config.model.depth=2", "--config.model.mlp_dim=128",
            "--config.model.num_heads=2", "--config.data.image_size=32", "--config.batch_size=16",
            "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.sharding_min_size=4096",
            f"--config.data.data_dir={tmp_path / 'no_data_here'}",
            "--config.optim.name=adamw"]   # the bounds below are AdamW's (two moments, no Newton-Schulz)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "train.vit", f"--workdir={tmp_path / 'w'}", "--compile_for=cpu:8",
                             *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "no_data_here").exists()
    plan = json.loads((tmp_path / "w" / "compile_plan.json").read_text())
    assert plan["target"] == "cpu:8" and plan["num_devices"] == 8 and plan["mesh"] == {"data": 2, "fsdp": 4}
    from vitsam.models import vit_variant

    model = vit_variant("Ti/16", num_classes=6, image_size=32, patch_size=16, width=64, depth=2, mlp_dim=128,
                        num_heads=2, pool="gap", posemb="sincos2d")
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    per_device = sum(4 * math.prod(x.shape) // (4 if naive_fsdp(x.shape, 4, 4096) != P() else 1)
                     for x in jax.tree.leaves(shapes))
    assert plan["per_device_bytes"]["params"] == per_device
    assert plan["per_device_bytes"]["optimizer"] >= 2 * per_device
    assert plan["fits"] is True and plan["per_device_bytes"]["total"] > 0
    # Model FLOPs: about 3 × the forward formula (the first layer has no input gradient).
    from vitsam import bench

    forward = bench.vit_flops(model, 16)
    assert 2.5 * forward < plan["flops_per_step"] <= 3 * forward
    assert "params / device" in result.stdout and "fits" in result.stdout


@pytest.mark.parametrize("env, launcher", [({"SLURM_NTASKS": "4"}, "SLURM"), ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
                                           ({"SLURM_NTASKS": "1"}, None), ({}, None)])
def test_launchers_of_several_processes_are_detected(monkeypatch, env, launcher):
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert parallel.detect_cluster() == launcher


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="127.0.0.1:1234"), "go together"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "--process_id 2 must be in 0 … 1"),
])
def test_incomplete_or_wrong_process_flags_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        parallel.initialize_distributed(**kwargs)
    assert message in str(e.value)


def test_a_lone_process_does_not_initialise_the_distributed_runtime(monkeypatch):
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed("127.0.0.1:1234", 1, 0) is False
    assert jax.process_count() == 1
