"""`--compile_for=tpu:v5e:2x2`: both trainers compile their real train step for 4 TPU v5e chips on this CPU host
(libtpu, no TPU, no data, no weights) and report per-device bytes that match the shardings the rules give.

Needs the [tpu] extra: marker `tpu`, run with `pytest -m tpu`.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from test_sharding import naive_fsdp

pytestmark = pytest.mark.tpu

REPO = Path(__file__).resolve().parent.parent
KEYS = {"target", "num_devices", "mesh", "per_device_bytes", "device_memory_bytes", "fits", "flops_per_step",
        "xla_flops"}


def plan(trainer, workdir, args):
    pytest.importorskip("libtpu")
    result = subprocess.run([sys.executable, "-m", f"train.{trainer}", f"--workdir={workdir}",
                             "--compile_for=tpu:v5e:2x2", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((Path(workdir) / "compile_plan.json").read_text())
    assert KEYS <= set(out) and {"params", "optimizer", "temporaries", "total"} <= set(out["per_device_bytes"])
    assert out["num_devices"] == 4 and out["device_kind"].startswith("TPU v5")
    assert out["device_memory_bytes"] == 16 * 2**30 and out["fits"] is True
    return out


def sharded_bytes(shapes, n, min_size):
    return sum(4 * math.prod(x.shape) // (n if naive_fsdp(x.shape, n, min_size) != P() else 1)
               for x in jax.tree.leaves(shapes))


def test_small_vit_plan_for_tpu_v5e_2x2(tmp_path):
    args = ["--config.model.width=64", "--config.model.depth=2", "--config.model.mlp_dim=128",
            "--config.model.num_heads=2", "--config.data.image_size=32", "--config.batch_size=32",
            "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.sharding_min_size=4096",
            "--config.optim.name=adamw"]   # the bounds below are AdamW's (two moments, no Newton-Schulz)
    out = plan("vit", tmp_path, args)
    assert out["mesh"] == {"data": 1, "fsdp": 4} and out["per_device_batch"] == 8
    from vitsam import bench
    from vitsam.models import vit_variant

    model = vit_variant("Ti/16", num_classes=6, image_size=32, patch_size=16, width=64, depth=2, mlp_dim=128,
                        num_heads=2, pool="gap", posemb="sincos2d")
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    assert out["per_device_bytes"]["params"] == sharded_bytes(shapes, 4, 4096)
    assert out["per_device_bytes"]["optimizer"] >= 2 * out["per_device_bytes"]["params"]
    forward = bench.vit_flops(model, 32)
    assert 2.5 * forward < out["flops_per_step"] <= 3 * forward


def test_tiny_sam_plan_for_tpu_v5e_2x2(tmp_path):
    from test_multihost import SAM_MODEL

    args = [*(f"--config.model.{k}={v}" for k, v in SAM_MODEL.items()), "--config.data.image_size=32",
            "--config.data.max_masks=2", "--config.batch_size=4", "--config.sim.num_rounds=2",
            "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.sharding_min_size=1024"]
    out = plan("sam", tmp_path, args)
    from vitsam.models import sam_init, sam_variant

    model = sam_variant("tiny", **SAM_MODEL)
    shapes = jax.eval_shape(lambda: sam_init(model, jax.random.PRNGKey(0)))["params"]
    assert out["per_device_bytes"]["params"] == sharded_bytes(shapes, 2, 1024)
    assert out["flops_per_step"] > 0 and out["xla_flops"] > 0


def test_a_step_too_big_for_the_chip_is_a_plan_that_does_not_fit(tmp_path):
    """XLA refuses to compile a step whose temporaries exceed a v5e chip's HBM: the plan still comes out, with
    fits false, the refusal and the temporaries it names (16,384 images of 224 px per chip)."""
    pytest.importorskip("libtpu")
    args = ["--config.model.width=64", "--config.model.depth=2", "--config.model.mlp_dim=128",
            "--config.model.num_heads=2", "--config.data.image_size=224", "--config.batch_size=65536",
            "--config.mesh.data=4"]
    result = subprocess.run([sys.executable, "-m", "train.vit", f"--workdir={tmp_path}", "--compile_for=tpu:v5e:2x2",
                             *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "compile_plan.json").read_text())
    assert out["fits"] is False and "RESOURCE_EXHAUSTED" in out["compiler_refusal"]
    assert out["per_device_bytes"]["temporaries"] > 16 * 2**30
    assert out["per_device_bytes"]["batch"] == 16384 * (224 * 224 * 3 + 1) * 4  # images and labels
    assert "fits                  NO" in result.stdout
