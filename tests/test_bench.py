"""The benchmark harness: FLOP formulas (against docs/design.md's figures, the programs' own matmuls and XLA's cost
analysis), MFU arithmetic, well-formed records from end-to-end runs on tiny models, the `vitsam bench` command;
the PyTorch peers (parity marker) and the GPU paths (gpu marker)."""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitsam import bench, cli
from vitsam.models import sam_init, sam_variant, vit_variant

S = jax.ShapeDtypeStruct
# Wide enough that matmuls dominate XLA's count (which also counts elementwise work), small enough for CPU.
SMALL_VIT = dict(image_size=32, patch_size=8, width=128, depth=2, mlp_dim=512, num_heads=4)


# --- FLOP formulas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, gflop", [("B/16", 35), ("L/16", 123), ("H/14", 335)])
def test_vit_forward_flops_match_the_design_figures(variant, gflop):
    # docs/design.md: forward FLOPs (2 × MACs) at 224 px, per image.
    assert bench.vit_flops(vit_variant(variant)) / 1e9 == pytest.approx(gflop, rel=0.01)


@pytest.mark.parametrize("variant, tflop", [("vit_b", 0.97), ("vit_l", 3.0), ("vit_h", 5.9)])
def test_sam_encoder_flops_match_the_design_figures(variant, tflop):
    assert bench.sam_encoder_flops(sam_variant(variant)) / 1e12 == pytest.approx(tflop, rel=0.015)


def test_vit_b16_flops_by_hand():
    # 197 tokens, D 768, MLP 3072, 12 blocks; 196 patches of 16·16·3; a 768 -> 1000 head.
    n, d, m = 197, 768, 3072
    macs = 12 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) + 196 * 768 * d + d * 1000
    assert bench.vit_flops(vit_variant("B/16"), batch=8) == 8 * 2 * macs
    assert bench.train_flops(bench.vit_flops(vit_variant("B/16"))) == 3 * 2 * macs


def test_matmul_counter_on_known_operations():
    a, b = S((3, 5, 7), jnp.float32), S((7, 11), jnp.float32)
    assert bench.matmul_flops(lambda x, y: x @ y, a, b) == 2 * 3 * 5 * 7 * 11
    q, k = S((2, 9, 4, 8), jnp.float32), S((2, 6, 4, 8), jnp.float32)
    assert bench.matmul_flops(lambda q, k: jnp.einsum("bthd,bshd->bhts", q, k), q, k) == 2 * 2 * 4 * 9 * 6 * 8

    x = jnp.zeros((2, 8, 8, 5))
    conv = nn.Conv(6, (3, 3), padding="SAME")
    v = conv.init(jax.random.PRNGKey(0), x)
    assert bench.matmul_flops(conv.apply, v, x) == 2 * (2 * 8 * 8 * 6) * (3 * 3 * 5)
    # A 2×2 stride-2 transposed conv: every output pixel gets exactly one real input tap.
    up = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID")
    v = up.init(jax.random.PRNGKey(0), x)
    assert up.apply(v, x).shape == (2, 16, 16, 6)
    assert bench.matmul_flops(up.apply, v, x) == 2 * (2 * 16 * 16 * 6) * 5

    def scanned(c, xs):
        return jax.lax.scan(lambda c, x: (c @ x, None), c, xs)[0]

    assert bench.matmul_flops(scanned, S((4, 4), jnp.float32), S((10, 4, 4), jnp.float32)) == 10 * 2 * 4 ** 3


def _vit_abstract(model, batch):
    size = model.image_size
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0), S((1, size, size, 3), jnp.float32))
    return v, S((batch, size, size, 3), jnp.float32)


@pytest.mark.parametrize("overrides", [
    dict(SMALL_VIT),
    dict(SMALL_VIT, pool="gap", representation_size=48, num_classes=7),
    dict(SMALL_VIT, scan=True, remat=True),
    {},  # ViT-B/16 itself (traced, not run)
], ids=["tok", "gap+prelogits", "scan+remat", "B16"])
def test_vit_formula_equals_the_programs_matmuls(overrides):
    model = vit_variant("B/16", **overrides)
    v, x = _vit_abstract(model, 3)
    assert bench.vit_flops(model, 3) == bench.matmul_flops(model.apply, v, x)


@pytest.mark.parametrize("variant", ["tiny", "vit_b"])
def test_sam_formulas_equal_the_programs_matmuls(variant):
    # vit_b exercises the 64 -> 70 window padding and the 64×64 global relative-position terms.
    model = sam_variant(variant)
    v = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    size, grid = model.image_size, model.embedding_size
    images = S((2, size, size, 3), jnp.float32)
    assert bench.sam_encoder_flops(model, 2) == bench.matmul_flops(
        lambda v, x: model.apply(v, x, method=model.encode_image), v, images)
    n = 5
    args = (S((n, grid, grid, model.prompt_dim), jnp.float32), S((n, 1, 2), jnp.float32), S((n, 1), jnp.int32))
    assert bench.sam_decoder_flops(model, n) == bench.matmul_flops(
        lambda v, e, c, l: model.apply(v, e, c, l, method=model.decode), v, *args)


# --- MFU and peaks ----------------------------------------------------------------------------------------


def test_peak_lookup_and_mfu_arithmetic():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4)
    assert bench.peak_tflops("NVIDIA H200", "bfloat16") == pytest.approx(989.4)
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756.0)
    assert bench.peak_tflops("cpu", "float32") is None
    assert bench.peak_tflops("TPU v4", "float32") is None
    # ViT-B/16 bf16 train step, batch 256, in 0.1 s on an H100: 3 · 35.13 GFLOP · 256 / 0.1 s / 989.4 TFLOP/s.
    flops = bench.train_flops(bench.vit_flops(vit_variant("B/16"), 256))
    assert bench.mfu(flops, 0.1, 989.4) == pytest.approx(3 * 35.127656448e9 * 256 / 0.1 / 989.4e12)
    assert bench.mfu(flops, 0.1, None) is None


def test_matmul_reference_is_measured():
    assert 0 < bench.matmul_tflops("float32", 256, iters=2) < 1e4


# --- the harness end to end on tiny models ----------------------------------------------------------------

ITERS, REPEATS = 2, 2


@pytest.fixture(scope="module")
def records():
    cases = [
        bench.vit_case("B/16", 2, "float32", "einsum", "forward", **SMALL_VIT),
        bench.vit_case("B/16", 2, "bfloat16", "xla", "train", **SMALL_VIT),
        bench.vit_case("B/16", 2, "bfloat16", "cudnn", "forward", **SMALL_VIT),
        bench.sam_encoder_case("tiny", 1),
        bench.sam_decoder_case("tiny", 3),
    ]
    return bench.run_group(cases, warmup=1, iters=ITERS, repeats=REPEATS, peak=50.0)


def test_records_are_well_formed(records):
    fwd, train, cudnn, enc, dec = records
    for r in (fwd, train, enc, dec):
        assert "error" not in r and "skipped" not in r, r
        assert len(r["times_s"]) == ITERS * REPEATS and len(r["round_medians_s"]) == REPEATS
        assert r["step_s"] == pytest.approx(float(np.median(r["times_s"])))
        assert 0 < r["min_s"] <= r["step_s"]
        assert r["compile_s"] > 0 and r["executable_bytes"] > 0
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["tflops_per_s"] * 1e12 * r["step_s"] == pytest.approx(r["flops"])
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 50.0)
        assert r["device"] == jax.devices()[0].device_kind
        json.dumps(bench.jsonable(r))
    assert (fwd["mode"], fwd["impl"], fwd["unit"]) == ("forward", "vitsam/einsum", "images")
    assert (train["mode"], train["dtype"], train["kernel"]) == ("train", "bfloat16", "xla")
    assert dec["unit"] == "prompts" and dec["batch"] == 3
    if jax.default_backend() != "gpu":
        assert "NVIDIA GPU" in cudnn["skipped"] and "step_s" not in cudnn


def test_record_flops_are_the_formulas_and_close_to_xla(records):
    fwd, train, _, enc, dec = records
    vit = vit_variant("B/16", **SMALL_VIT)
    assert fwd["flops"] == bench.vit_flops(vit, 2)
    assert train["flops"] == 3 * bench.vit_flops(vit, 2)
    assert enc["flops"] == bench.sam_encoder_flops(sam_variant("tiny"), 1)
    assert dec["flops"] == bench.sam_decoder_flops(sam_variant("tiny"), 3)
    # XLA also counts softmax, norms, activations (and in a train step the optimizer's per-parameter
    # arithmetic, large beside a tiny batch): a little above the model FLOPs.
    for r, high in ((fwd, 1.15), (train, 1.25), (enc, 1.15)):
        assert 1.0 <= r["flops_xla"] / r["flops"] <= high, (r["impl"], r["mode"], r["flops_xla"] / r["flops"])


def test_one_case_at_a_time_gives_the_same_records():
    cases = [bench.vit_case("B/16", 1, "float32", k, **dict(SMALL_VIT, depth=1)) for k in ("einsum", "cudnn")]
    recs = bench.run_group(cases, warmup=1, iters=2, repeats=2, interleave=False)
    assert [r["kernel"] for r in recs] == ["einsum", "cudnn"]
    assert len(recs[0]["times_s"]) == 4 and recs[0]["step_s"] > 0
    assert "skipped" in recs[1] or jax.default_backend() == "gpu"


def test_markdown_table_has_a_row_per_record_and_the_ratio_column(records):
    torch_like = dict(records[0], framework="torch", impl="timm", step_s=records[0]["step_s"] * 2)
    table = bench.markdown_table(list(records) + [torch_like])
    lines = table.splitlines()
    assert len(lines) == 2 + len(records) + 1
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "2.00× (timm)" in lines[2]  # the vitsam forward row against a peer twice as slow
    assert "NVIDIA GPU" in table or jax.default_backend() == "gpu"


def test_train_step_learns():
    model = vit_variant("B/16", num_classes=4, **dict(SMALL_VIT, depth=1))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((4, 32, 32, 3), np.float32))
    labels = jnp.asarray([0, 1, 2, 3])
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images)["params"]
    step, opt_state = bench.adamw_train_step(model, params, lr=1e-3)
    step = jax.jit(step, donate_argnums=(0, 1))
    losses = []
    for _ in range(12):
        params, opt_state, loss = step(params, opt_state, images, labels)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(math.log(4), rel=0.05)  # a zero-initialised head
    assert losses[-1] < 0.5 * losses[0]


def test_cli_bench_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["bench", "--model", "vit:Ti/16", "--image-size", "32", "--set", "patch_size=8", "--set", "depth=1",
            "--batch", "1,2", "--kernel", "einsum,cudnn", "--iters", "2", "--warmup", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    env, results = data["environment"], data["results"]
    assert env["command"].startswith("vitsam bench --model vit:Ti/16 --batch 1,2")
    assert len(env["loadavg"]) == 3 and env["device_kind"] == jax.devices()[0].device_kind
    assert env["versions"]["jax"] == jax.__version__
    assert [(r["batch"], r["kernel"]) for r in results] == [(1, "einsum"), (1, "cudnn"), (2, "einsum"), (2, "cudnn")]
    assert results[0]["overrides"] == {"patch_size": 8, "depth": 1} and results[0]["step_s"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| model | mode | batch |" in md and "load average" in md
    assert "| vit:Ti/16 | forward | 2 | float32 | vitsam/einsum |" in capsys.readouterr().out


def test_bad_requests_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="unknown model"):
        bench.parse_model("resnet:50")
    with pytest.raises(ValueError, match="SAM part"):
        bench.parse_model("sam:vit_b:neck")
    with pytest.raises(ValueError, match="unknown SAM variant"):
        bench.parse_model("sam:vit_x")
    with pytest.raises(ValueError, match="unknown dtype"):
        bench.vit_case("B/16", 1, "float16")
    with pytest.raises(ValueError, match="forward pass only"):
        bench.sweep_cases("sam:vit_b", "train", 1, "float32", ["einsum"])
    assert cli.main(["bench", "--model", "vit:B/99x"]) == 2
    assert "unknown ViT variant" in capsys.readouterr().err


def test_only_torch_peers_imports_torch_and_only_inside_its_functions():
    # So that `import vitsam.bench` works without the [parity] extra (checked on the source: here torch may
    # be installed, or imported already by another test).
    import ast
    from pathlib import Path

    def torch_imports(nodes):
        roots = set()
        for node in nodes:
            for n in ast.walk(node):
                if isinstance(n, ast.Import):
                    roots |= {a.name.split(".")[0] for a in n.names}
                elif isinstance(n, ast.ImportFrom) and n.module:
                    roots.add(n.module.split(".")[0])
        return roots & {"torch", "timm", "segment_anything"}

    for path in Path(bench.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not torch_imports(top_level), path.name
        assert bool(torch_imports(tree.body)) == (path.name == "torch_peers.py"), path.name


# --- the automatic mask generator case (amg) --------------------------------------------------------------

AMG_TINY = dict(image_size=64)  # the tiny SAM at 64 px: a 4 x 4 embedding, 16 x 16 low-res masks
AMG_FEW = dict(points_per_side=2, points_per_batch=4)


def test_amg_case_is_listed_with_its_peer():
    assert bench.parse_model("sam:vit_b:amg") == ("sam", "vit_b", "amg")
    (ours,) = bench.sweep_cases("sam:vit_b:amg", "forward", 1, "float32", ["einsum"])
    ours_too, peer = bench.sweep_cases("sam:vit_b:amg", "forward", 1, "float32", ["einsum"], torch=True)
    for case, framework, impl in ((ours, "vitsam", "vitsam/einsum"), (ours_too, "vitsam", "vitsam/einsum"),
                                  (peer, "torch", "segment-anything")):
        r = case.record
        assert (r["framework"], r["impl"], r["model"], r["mode"], r["batch"]) == (framework, impl, "sam:vit_b:amg",
                                                                                   "generate", 1)
        assert r["image_size"] == 1024 and r["flops"] == bench.amg_flops(sam_variant("vit_b"))
    image = bench.amg_image(64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and len(np.unique(image.reshape(-1, 3), axis=0)) > 2
    np.testing.assert_array_equal(image, bench.amg_image(64))


def test_amg_flops_by_hand():
    m = sam_variant("vit_b")
    enc = bench.sam_encoder_flops(m, 1)

    def dec(n):
        return bench.sam_decoder_flops(m, n)

    assert bench.amg_flops(m) == enc + dec(1024)  # 32 x 32 prompts on the whole image
    assert bench.amg_flops(m) / 1e12 == pytest.approx(0.97 + 3.71, abs=0.01)
    # one crop layer, half the points a side there: the image + 4 crops of 16 x 16 prompts each
    assert bench.amg_flops(m, crop_n_layers=1, crop_n_points_downscale_factor=2) == 5 * enc + dec(1024) + 4 * dec(256)


def test_amg_bad_requests(capsys):
    with pytest.raises(ValueError, match="one image"):
        bench.sweep_cases("sam:vit_b:amg", "forward", 2, "float32", ["einsum"])
    with pytest.raises(ValueError, match="float32 only"):
        bench.sam_amg_case("vit_b", "bfloat16")
    with pytest.raises(ValueError, match="valid: encoder, decoder, amg"):
        bench.parse_model("sam:vit_b:everything")
    assert cli.main(["bench", "--model", "sam:vit_b:amg", "--batch", "1,4"]) == 2
    assert "--batch 1 --dtype float32), got batch 1,4" in capsys.readouterr().err
    assert cli.main(["bench", "--model", "sam:vit_b:amg", "--amg", "pred_iou_thresh=2"]) == 2
    assert "pred_iou_thresh must be a number between 0 and 1, got 2" in capsys.readouterr().err
    assert cli.main(["bench", "--model", "sam:vit_b:amg", "--amg", "points_per_sid=8"]) == 2
    err = capsys.readouterr().err
    assert "--amg: " in err and "'points_per_sid'" in err


def test_harness_reports_the_phases_of_the_timed_calls_only():
    calls = []

    def build():
        phases = {"encoder": [], "rest": []}

        def step():
            calls.append(None)
            phases["encoder"].append(len(calls))  # warm-up calls 1, 2; timed calls 3, 4, 5
            phases["rest"].append(10.0)

        return bench.Runner(step, phases=phases, finish=lambda: {"masks": 7})

    record = dict(framework="vitsam", impl="fake", model="fake:amg", mode="generate", batch=1, dtype="float32",
                  unit="images")
    (rec,) = bench.run_group([bench.Case(record, build)], warmup=2, iters=3, repeats=1)
    assert len(calls) == 5 and len(rec["times_s"]) == 3
    assert rec["phases_s"] == {"encoder": 4, "rest": 10.0} and rec["masks"] == 7
    table = bench.phase_table([rec, dict(record, impl="no phases", step_s=1.0)]).splitlines()
    assert table[0] == "| model | impl | step s | encoder s | rest s | masks returned |" and len(table) == 3
    assert table[2].startswith("| fake:amg | fake |") and table[2].endswith("| 4.00 | 10.00 | 7 |")
    assert bench.phase_table([dict(record, step_s=1.0)]) == ""


@pytest.mark.slow
def test_amg_case_runs_generate_on_the_tiny_sam():
    """The case end to end (about 7 s of CPU, mostly compiling the generator's functions)."""
    picture = bench.amg_image(48, seed=1)[:, :40]
    case = bench.sam_amg_case("tiny", image=picture, generator_options=dict(AMG_FEW, pred_iou_thresh=0,
                                                                            stability_score_thresh=0), **AMG_TINY)
    (rec,) = bench.run_group([case], warmup=0, iters=1, repeats=2)
    assert "error" not in rec, rec
    assert rec["model"] == "sam:tiny:amg" and len(rec["times_s"]) == 2 and rec["compile_s"] > 0
    assert set(rec["phases_s"]) == {"encoder", "rest"} and 0 < rec["phases_s"]["encoder"] < rec["step_s"]
    assert rec["masks"] >= 1  # the filters off: the NMS keeps at least one
    assert rec["flops"] == bench.amg_flops(sam_variant("tiny", **AMG_TINY), **AMG_FEW)


# --- the host CPU, and each contender in its own process ---------------------------------------------------

AMD_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
physical id\t: 0
siblings\t: 2
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 sha_ni vaes vpclmulqdq

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
physical id\t: 0
siblings\t: 2
core id\t\t: 1
cpu cores\t: 2
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 sha_ni vaes vpclmulqdq
"""

# Sapphire Rapids, 2 cores with 2 hyper-threads each.
INTEL_FLAGS = ("fpu sse sse2 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 "
               "amx_bf16 amx_tile amx_int8")
INTEL_CPUINFO = "\n\n".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
    f"model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nphysical id\t: 0\nsiblings\t: 4\n"
    f"core id\t\t: {i // 2}\ncpu cores\t: 2\nflags\t\t: {INTEL_FLAGS}" for i in range(4)) + "\n"


def test_cpuinfo_parser_names_the_model_cores_and_extensions(tmp_path):
    amd = bench.parse_cpuinfo(AMD_CPUINFO)
    assert (amd["model"], amd["family"], amd["model_id"]) == ("AMD EPYC 7B13", "25", "1")
    assert (amd["physical_cores"], amd["logical_cores"]) == (2, 2)
    assert [f for f, on in amd["isa"].items() if on] == ["avx", "avx2", "fma"]
    assert list(amd["isa"]) == list(bench.ISA_FLAGS)
    intel = bench.parse_cpuinfo(INTEL_CPUINFO)
    assert intel["model"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert (intel["physical_cores"], intel["logical_cores"]) == (2, 4)
    assert all(intel["isa"].values())
    arm = bench.parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\n\nprocessor\t: 1\nFeatures\t: fp asimd\n")
    assert arm == dict(model=None, family=None, model_id=None, logical_cores=2, physical_cores=None, isa={})
    line = bench.cpu_summary(dict(amd, usable_cores=2))
    assert line == ("AMD EPYC 7B13 (family 25 model 1), 2 physical / 2 logical cores (2 usable); avx avx2 fma, "
                    "no avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16")
    assert bench.cpu_summary(dict(arm, usable_cores=2)).endswith("; extensions unknown")
    (tmp_path / "cpuinfo").write_text(INTEL_CPUINFO)
    assert bench.cpu_info(tmp_path / "cpuinfo")["physical_cores"] == 2
    here = bench.cpu_info(tmp_path / "missing")  # no /proc/cpuinfo: platform's answer
    assert here["logical_cores"] and here["isa"] == {} and here["usable_cores"] >= 1
    assert bench.tuned_threads(dict(intel, usable_cores=4)) == 2 and bench.tuned_threads(dict(arm, usable_cores=3)) == 3


def test_worker_env_leaves_out_the_thread_settings():
    base = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HOME": "/h",
            "XLA_FLAGS": "--x", "PYTHONPATH": "/p"}
    env = bench.worker_env(base=base)
    assert not set(env) & set(bench.THREAD_ENV_VARS)
    assert env["HOME"] == "/h" and env["XLA_FLAGS"] == "--x" and env["PYTHONPATH"].endswith(":/p")
    assert (env["PYTHONPATH"].split(":")[0] + "/vitsam/bench/processes.py").endswith("vitsam/bench/processes.py")
    tuned = bench.worker_env(3, base=base)
    assert tuned["OMP_NUM_THREADS"] == tuned["MKL_NUM_THREADS"] == "3" and "OMP_WAIT_POLICY" not in tuned


def test_rounds_alternate_and_the_medians_and_spread_are_numpys(monkeypatch):
    assert bench.round_orders(2, 4) == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert bench.round_orders(3, 2) == [[0, 1, 2], [2, 1, 0]] and bench.round_orders(1, 2) == [[0], [0]]
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    record = dict(model="vit:fake", mode="forward", batch=4, dtype="float32", unit="images", flops=2e9)
    cases = [bench.Case(dict(record, framework="vitsam", impl="vitsam/einsum", kernel="einsum"), None),
             bench.Case(dict(record, framework="vitsam", impl="vitsam/cudnn", kernel="cudnn"), None, skip="no GPU"),
             bench.Case(dict(record, framework="torch", impl="timm", kernel=None), None)]
    rng = np.random.default_rng(0)
    calls = []

    def launch(spec, env):
        calls.append((spec["impl"], spec["threads"], env.get("OMP_NUM_THREADS"), "OMP_WAIT_POLICY" in env))
        assert json.loads(json.dumps(spec)) == spec and spec["group"]["overrides"] == "{'depth': 1}"
        if len(calls) == 4:  # the tuned peer's second round
            return {"error": "RuntimeError: out of memory"}
        scale = 0.1 if spec["impl"].startswith("vitsam") else 0.3 if spec["threads"] is None else 0.2
        return dict(cases[spec["index"]].record, times_s=list(scale + rng.uniform(0, 0.01, 3)),
                    compile_s=float(len(calls)), device="cpu", torch_threads=spec["threads"] or 2)

    group = dict(spec="vit:fake", overrides={"depth": 1})
    n = bench.tuned_threads(bench.cpu_info())
    recs = bench.run_group_in_processes(group, cases, warmup=1, iters=3, rounds=3, peer_tuned=True, peak=None,
                                        launch=launch)
    assert [c[:3] for c in calls] == [("vitsam/einsum", None, None), ("timm", None, None), ("timm", n, str(n)),
                                      ("timm", n, str(n)), ("timm", None, None), ("vitsam/einsum", None, None),
                                      ("vitsam/einsum", None, None), ("timm", None, None)]  # tuned: failed
    assert not any(c[3] for c in calls)  # OMP_WAIT_POLICY reached no worker
    ours, skipped, timm, tuned = recs
    assert skipped["skipped"] == "no GPU" and "step_s" not in skipped
    assert tuned["impl"] == "timm tuned" and tuned["error"].startswith("round 2: RuntimeError")
    for rec, compiles in ((ours, [1, 6, 7]), (timm, [2, 5, 8])):
        rounds = np.reshape(rec["times_s"], (3, 3))
        medians = np.median(rounds, axis=1)
        assert rec["step_s"] == pytest.approx(np.median(rounds))
        assert rec["round_medians_s"] == pytest.approx(medians)
        assert rec["round_spread_s"] == pytest.approx([medians.min(), medians.max()])
        assert rec["compile_s"] == np.median(compiles) and rec["compile_s_rounds"] == compiles
        assert (rec["process"], rec["rounds"], rec["setting"]) == ("own", 3, "default")
        assert rec["throughput_per_s"] == pytest.approx(4 / rec["step_s"])
    table = bench.markdown_table(recs).splitlines()
    assert "| rounds ms |" in table[0] and "vs torch tuned" not in table[0]
    assert f"| {timm['step_s'] / ours['step_s']:.2f}× (timm) |" in table[2]
    lo, hi = ours["round_spread_s"]
    assert f"| {lo * 1e3:.2f}–{hi * 1e3:.2f} |" in table[2]
    timed_tuned = dict(timm, impl="timm tuned", setting="tuned", step_s=timm["step_s"] / 2)
    table = bench.markdown_table([ours, timm, timed_tuned]).splitlines()
    assert table[0].endswith("| vs torch | vs torch tuned |")
    assert all(line.count("|") == table[0].count("|") for line in table)
    ratio = timm["step_s"] / ours["step_s"]
    assert f"| {ratio:.2f}× (timm) | {ratio / 2:.2f}× (timm tuned) |" in table[2]


def test_xla_flags_rows_run_vitsam_with_the_flags_appended(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    record = dict(model="vit:fake", mode="forward", batch=2, dtype="float32", unit="images", flops=1e9)
    cases = [bench.Case(dict(record, framework="vitsam", impl="vitsam/einsum", kernel="einsum"), None),
             bench.Case(dict(record, framework="torch", impl="timm", kernel=None), None)]
    seen = []

    def launch(spec, env):
        seen.append((spec["impl"], env.get("XLA_FLAGS")))
        return dict(cases[spec["index"]].record, times_s=[0.1, 0.2, 0.3], compile_s=1.0, device="cpu")

    extra = "--xla_cpu_experimental_ynn_fusion_type="
    recs = bench.run_group_in_processes(dict(spec="vit:fake"), cases, warmup=0, iters=3, rounds=2, peak=None,
                                        xla_flags=extra, launch=launch)
    both = f"--xla_cpu_enable_fast_math=false {extra}"
    assert seen == [("vitsam/einsum", "--xla_cpu_enable_fast_math=false"), ("vitsam/einsum", both),
                    ("timm", "--xla_cpu_enable_fast_math=false"),
                    ("timm", "--xla_cpu_enable_fast_math=false"), ("vitsam/einsum", both),
                    ("vitsam/einsum", "--xla_cpu_enable_fast_math=false")]
    assert [(r["impl"], r["setting"], r.get("xla_flags")) for r in recs] == [
        ("vitsam/einsum", "default", None), ("vitsam/einsum +flags", "xla_flags", extra), ("timm", "default", None)]
    assert recs[1]["step_s"] == pytest.approx(0.2)
    assert bench.worker_env(base={}, xla_flags=extra)["XLA_FLAGS"] == extra


def test_process_mode_flags_are_clear_errors(capsys):
    for argv, message in (
            (["--torch", "--repeats", "2"], "in own processes use --rounds"),
            (["--no-same-process", "--interleave"], "--interleave applies to --same-process runs"),
            (["--same-process", "--rounds", "2"], "in one process use --repeats"),
            (["--same-process", "--torch", "--peer-tuned"], "--peer-tuned needs each contender in its own process"),
            (["--peer-tuned"], "--peer-tuned adds rows of the PyTorch peers at a tuned setting: add --torch"),
            (["--no-same-process", "--rounds", "0"], "--rounds must be at least 1, got 0"),
            (["--same-process", "--xla-flags=--xla_cpu_use_onednn=true"],
             "--xla-flags needs each contender in its own process"),
            (["--no-same-process", "--xla-flags", "use_onednn"], "--xla-flags expects XLA flags such as")):
        assert cli.main(["bench", "--model", "vit:Ti/16", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_cli_bench_in_own_processes_end_to_end(tmp_path, monkeypatch):
    """One tiny ViT contender, 2 rounds: 2 worker processes (a few seconds each)."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out = tmp_path / "own.json"
    argv = ["bench", "--model", "vit:Ti/16", "--image-size", "32", "--set", "patch_size=8", "--set", "depth=1",
            "--batch", "1", "--warmup", "1", "--iters", "2", "--no-same-process", "--rounds", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    env, (rec,) = data["environment"], data["results"]
    assert env["processes"] == "own" and env["rounds"] == 2 and env["thread_env_removed"] == ["OMP_WAIT_POLICY"]
    assert "--no-same-process" in env["command"] and "--rounds 2" in env["command"]
    assert env["cpu_info"] == rec["cpu_info"] and rec["cpu_info"]["logical_cores"] >= 1
    assert "error" not in rec, rec
    assert (rec["process"], rec["rounds"], rec["impl"], rec["worker_env"]) == ("own", 2, "vitsam/einsum", {})
    assert len(rec["times_s"]) == 4 and len(rec["round_medians_s"]) == 2 and len(rec["compile_s_rounds"]) == 2
    assert rec["step_s"] == pytest.approx(float(np.median(rec["times_s"]))) and rec["overrides"]["depth"] == 1
    md = out.with_suffix(".md").read_text()
    assert md.splitlines()[2].startswith("CPU: ") and "| rounds ms |" in md and "each contender in its own" in md


# --- PyTorch peers (pytest -m parity) ---------------------------------------------------------------------


@pytest.mark.parity
def test_timm_peer_is_the_same_size_as_vitsam():
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from vitsam.params import abstract_init, count_params

    model = vit_variant("B/16")
    v = abstract_init(model, S((1, 224, 224, 3), jnp.float32))
    timm_model = TimmViT(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                         num_classes=1000)
    assert count_params(v["params"]) == sum(p.numel() for p in timm_model.parameters()) == 86_567_656


@pytest.mark.parity
def test_sdpa_attention_peer_equals_the_official_attention():
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    encoder = bench.official_sam("tiny").image_encoder
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "rel_pos" in name:
                p.copy_(0.1 * torch.randn_like(p))  # the default zeros would hide the relative-position term
        x = torch.randn(1, 3, 256, 256)
        ref = encoder(x)
        bench.use_sdpa_attention(encoder)
        out = encoder(x)
    assert out.shape == ref.shape == (1, 64, 16, 16)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parity
def test_torch_peers_run_on_the_same_problem():
    pytest.importorskip("timm")
    pytest.importorskip("segment_anything")
    tiny_vit = dict(image_size=32, patch_size=8, width=32, depth=1, mlp_dim=64, num_heads=2)
    cases = [bench.timm_vit_case("Ti/16", 2, "float32", "forward", **tiny_vit),
             bench.timm_vit_case("Ti/16", 2, "bfloat16", "train", **tiny_vit),
             bench.torch_sam_encoder_case("tiny", 1, "bfloat16", sdpa=True),
             bench.torch_sam_decoder_case("tiny", 3)]
    recs = bench.run_group(cases, warmup=1, iters=2)
    for r in recs:
        assert "error" not in r, r
        assert r["framework"] == "torch" and r["step_s"] > 0 and r["torch_threads"] >= 1
    vit = vit_variant("Ti/16", **tiny_vit)
    assert recs[0]["flops"] == bench.vit_flops(vit, 2) and recs[1]["flops"] == 3 * bench.vit_flops(vit, 2)
    assert recs[0]["timm_fused_attn"] is True
    assert recs[2]["impl"] == "segment-anything+sdpa"
    assert recs[3]["flops"] == bench.sam_decoder_flops(sam_variant("tiny"), 3)


@pytest.mark.parity
def test_amg_peer_runs_the_same_model_and_finds_the_same_masks():
    """Both generators on the same (converted) random weights and image, the filters off: as many masks on
    both sides."""
    pytest.importorskip("segment_anything")
    options = dict(AMG_FEW, pred_iou_thresh=0, stability_score_thresh=0)
    picture = bench.amg_image(48, seed=1)[:, :40]
    shared = bench.SharedSam("tiny", **AMG_TINY)
    cases = [bench.sam_amg_case("tiny", variables=shared.variables, image=picture, generator_options=options,
                                **AMG_TINY),
             bench.torch_sam_amg_case("tiny", shared=shared, image=picture, generator_options=options, **AMG_TINY)]
    ours, theirs = bench.run_group(cases, warmup=0, iters=1)
    for r in (ours, theirs):
        assert "error" not in r, r
        assert set(r["phases_s"]) == {"encoder", "rest"} and r["masks"] >= 1
    assert ours["masks"] == theirs["masks"] and ours["flops"] == theirs["flops"]


@pytest.mark.parity
def test_timm_peer_in_own_processes_at_its_defaults(tmp_path, monkeypatch):
    """vitsam and timm (default and tuned) on a tiny ViT, 2 rounds: 6 worker processes (~35 s on 2 busy cores)."""
    pytest.importorskip("timm")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out = tmp_path / "own.json"
    argv = ["bench", "--model", "vit:Ti/16", "--image-size", "32", "--set", "patch_size=8", "--set", "depth=1",
            "--batch", "1", "--warmup", "1", "--iters", "2", "--torch", "--peer-tuned", "--rounds", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    ours, timm, tuned = data["results"]
    assert [r["impl"] for r in data["results"]] == ["vitsam/einsum", "timm", "timm tuned"]
    for r in (ours, timm, tuned):
        assert "error" not in r and len(r["times_s"]) == 4, r
    n = bench.tuned_threads(bench.cpu_info())
    assert timm["worker_env"] == {} and tuned["worker_env"] == {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
    assert tuned["torch_threads"] == tuned["tuned_threads"] == n and data["environment"]["torch_threads"] >= 1
    assert "| vs torch | vs torch tuned |" in out.with_suffix(".md").read_text()


@pytest.mark.parity
@pytest.mark.slow
def test_compiled_bf16_peers_run():
    # The GPU peers (bf16 + SDPA + torch.compile), exercised on the CPU with tiny models (about a minute of
    # compilation; needs a C++ compiler for torch.compile's CPU backend).
    pytest.importorskip("timm")
    pytest.importorskip("segment_anything")
    tiny_vit = dict(image_size=32, patch_size=8, width=32, depth=1, mlp_dim=64, num_heads=2)
    cases = [bench.timm_vit_case("Ti/16", 2, "bfloat16", "train", compile=True, **tiny_vit),
             bench.torch_sam_encoder_case("tiny", 1, "bfloat16", sdpa=True, compile=True),
             bench.torch_sam_decoder_case("tiny", 2, "bfloat16", compile=True)]
    recs = bench.run_group(cases, warmup=1, iters=2)
    assert [r["impl"] for r in recs] == ["timm+compile", "segment-anything+sdpa+compile", "segment-anything+compile"]
    for r in recs:
        assert "error" not in r, r
        assert r["step_s"] > 0


# --- GPU paths (pytest -m gpu) ----------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_bf16_cudnn_and_compiled_peers():
    if jax.default_backend() != "gpu":
        pytest.skip("needs an NVIDIA GPU")
    cases = bench.sweep_cases("vit:B/16", "train", 32, "bfloat16", ["xla", "cudnn"], torch=bench.torch_available())
    cases += bench.sweep_cases("sam:vit_b", "forward", 1, "bfloat16", ["cudnn"], torch=bench.torch_available())
    recs = bench.run_group(cases, warmup=2, iters=3)
    for r in recs:
        assert "error" not in r and "skipped" not in r, r
        assert r["mfu"] is not None and 0 < r["mfu"] < 1
        assert (r.get("executable_bytes") or r.get("device_peak_bytes")) > 0
    if bench.torch_available():
        assert any(r["impl"] == "timm+compile" for r in recs)
        assert any(r["impl"] == "segment-anything+sdpa+compile" for r in recs)
