"""Latency of the exported SAM programs (`vitsam export`) against our JAX path and segment-anything's decoder ONNX.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/export_latency.py --repeats 5 --out benchmarks/cpu_export_latency.json

One run: the SAM architecture (`--variant`, random weights from `sam_init`, seeded) is exported with
`export_sam` (StableHLO and ONNX, float32, CPU) into a temporary folder, segment-anything's `SamOnnxModel`
(`return_single_mask=True`, opset 17, as its ONNX notebook) gets the same weights (`sam_variables_to_state_dict`)
and is exported beside it; then, on one 1024 x 768 uint8 image and one foreground click, these are timed:

- image encoder (uint8 image -> embedding, pre-processing included): onnxruntime on image_encoder.onnx, the
  StableHLO file reloaded with `jax.export.deserialize` (called through one `jax.jit`), and
  `SamPredictor.set_image` (waited for with `block_until_ready` on the embedding);
- prompt decoder (one prompt set, N = 1, masks at the original size on the host): onnxruntime on
  prompt_decoder.onnx (its fixed `onnx_points` slots, the rest padding), the StableHLO decoder (P = 1),
  `SamPredictor.predict` (multimask, the official default), and segment-anything's decoder ONNX in onnxruntime
  with the notebook's inputs (the click and a padding point in the 1024-px frame, mask_input zeros,
  has_mask_input 0, orig_im_size).

Each case is called once to warm up (compiles, first-run allocations); then the cases of a group are called in
turn, `--repeats` rounds for the encoder and 10 x `--repeats` for the decoder, so that load from elsewhere falls
on all of them alike. The table gives the median wall time of the timed calls and its ratio to onnxruntime on
our ONNX file. onnxruntime runs with its default session options (its thread count is printed); XLA with its
default (all cores).

What the cases differ in: our decoders return all 4 masks at the original size (bool), segment-anything's
export with `return_single_mask` one (float logits), `SamPredictor.predict` the 3 multimask ones. The ONNX encoder
attends over the whole grid at once (`attention_query_rows=0`); the CPU-only StableHLO encoder, like
`SamPredictor` on a CPU, one head and a chunk of grid rows of queries at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from jax import export

from vitsam.bench.report import environment
from vitsam.convert import sam_variables_to_state_dict
from vitsam.export import export_sam
from vitsam.models.sam import sam_init, sam_variant
from vitsam.predictor import SamPredictor

IMAGE_HW = (768, 1024)  # a 1024 x 768 landscape photo
CLICK = (500.0, 375.0)  # (x, y), the official notebooks' click
DECODER_ROUNDS_PER_REPEAT = 10


def export_official_decoder(official, path: Path) -> None:
    """segment-anything's decoder ONNX, as scripts/export_onnx_model.py and notebooks/onnx_model_example.ipynb
    build it (`dynamo=False`: torch's TorchScript exporter, which needs no onnxscript)."""
    import torch
    from segment_anything.utils.onnx import SamOnnxModel

    onnx_model = SamOnnxModel(official, return_single_mask=True)
    dim, grid = official.prompt_encoder.embed_dim, official.prompt_encoder.image_embedding_size
    dummy = {
        "image_embeddings": torch.randn(1, dim, *grid, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *[4 * g for g in grid], dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(onnx_model, tuple(dummy.values()), str(path), export_params=True, opset_version=17,
                          do_constant_folding=True, input_names=list(dummy),
                          output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                          dynamo=False)


def onnx_session(path: Path):
    """An onnxruntime CPU session with default options, and the threads it started (+1: the calling thread
    works in the intra-op pool too); None where /proc/self/task is not there to count them."""
    import onnxruntime as ort

    tasks = Path("/proc/self/task")
    before = len(list(tasks.iterdir())) if tasks.is_dir() else None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    threads = len(list(tasks.iterdir())) - before + 1 if before is not None else None
    return session, threads


def time_cases(cases: dict, rounds: int) -> dict[str, list[float]]:
    """One warm-up call per case, then `rounds` rounds calling each case once: {case: seconds per call}."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="vit_b", help="SAM architecture (default vit_b)")
    p.add_argument("--repeats", type=int, default=5,
                   help=f"timed encoder calls per case; the decoder gets {DECODER_ROUNDS_PER_REPEAT}x (default 5)")
    p.add_argument("--seed", type=int, default=0, help="weights, image (default 0)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from vitsam.bench.torch_peers import official_sam

    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # jax2onnx's serializer warns hundreds of times
    env = environment()
    env.update(date=datetime.date.today().isoformat(), processor=platform.processor(),
               versions={**env["versions"], "onnxruntime": ort.__version__, "onnx": _version("onnx"),
                         "jax2onnx": _version("jax2onnx")})
    model = sam_variant(args.variant)
    variables = sam_init(model, jax.random.PRNGKey(args.seed))
    official = official_sam(args.variant)
    official.load_state_dict({k: torch.from_numpy(v) for k, v in sam_variables_to_state_dict(variables, model).items()})

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = export_sam(model, variables, Path(tmp) / "export", log=lambda line: print("  " + line))
        export_s = time.perf_counter() - start
        official_onnx = Path(tmp) / "segment_anything_decoder.onnx"
        start = time.perf_counter()
        export_official_decoder(official, official_onnx)
        official_export_s = time.perf_counter() - start
        sizes = {f.name: f.stat().st_size for f in sorted((Path(tmp) / "export").iterdir())}
        sizes[official_onnx.name] = official_onnx.stat().st_size

        encoder_onnx, ort_threads = onnx_session(paths["image_encoder"]["onnx"])
        decoder_onnx, _ = onnx_session(paths["prompt_decoder"]["onnx"])
        official_decoder, _ = onnx_session(official_onnx)
        encoder_hlo = jax.jit(export.deserialize(paths["image_encoder"]["stablehlo"].read_bytes()).call)
        decoder_hlo = jax.jit(export.deserialize(paths["prompt_decoder"]["stablehlo"].read_bytes()).call)
    env["onnxruntime_threads"] = ort_threads

    image = np.random.default_rng(args.seed).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    predictor = SamPredictor(model, variables)

    def set_image():
        predictor.set_image(image)
        predictor.get_image_embedding().block_until_ready()

    print(f"image encoder, one {IMAGE_HW[1]} x {IMAGE_HW[0]} image, {args.repeats} rounds ...")
    encoder_times = time_cases({
        "onnxruntime (ours)": lambda: encoder_onnx.run(None, {"images": image[None]}),
        "StableHLO (jax)": lambda: encoder_hlo(image[None]).block_until_ready(),
        "SamPredictor.set_image (jax)": set_image,
    }, args.repeats)

    embedding = encoder_onnx.run(None, {"images": image[None]})[0]  # (1, h, w, D)
    slots = decoder_onnx.get_inputs()[1].shape[1]
    m = model.mask_input_size

    def ours(points: int) -> dict:
        coords = np.zeros((1, points, 2), np.float32)
        labels = np.full((1, points), -1, np.int32)
        coords[0, 0], labels[0, 0] = CLICK, 1
        return {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                "boxes": np.zeros((1, 4), np.float32), "has_box": np.zeros(1, np.float32),
                "mask_input": np.zeros((1, m, m), np.float32), "has_mask_input": np.zeros(1, np.float32),
                "original_size": np.empty((*IMAGE_HW, 0), np.uint8)}

    onnx_inputs, hlo_inputs = ours(slots), list(ours(1).values())
    # The official notebook's inputs: the click plus a padding point, in the resized (1024-px) frame.
    coords = np.array([[CLICK, (0.0, 0.0)]], np.float32)
    official_inputs = {
        "image_embeddings": np.ascontiguousarray(embedding.transpose(0, 3, 1, 2)),
        "point_coords": ResizeLongestSide(model.image_size).apply_coords(coords, IMAGE_HW).astype(np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, m, m), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(IMAGE_HW, np.float32),
    }
    click, label = np.array([CLICK], np.float32), np.array([1], np.int32)
    decoder_rounds = DECODER_ROUNDS_PER_REPEAT * args.repeats
    print(f"prompt decoder, one click, {decoder_rounds} rounds ...")
    decoder_times = time_cases({
        "onnxruntime (ours)": lambda: decoder_onnx.run(None, onnx_inputs),
        "StableHLO (jax)": lambda: [np.asarray(x) for x in decoder_hlo(*hlo_inputs)],
        "SamPredictor.predict (jax)": lambda: predictor.predict(point_coords=click, point_labels=label),
        "segment-anything ONNX (onnxruntime)": lambda: official_decoder.run(None, official_inputs),
    }, decoder_rounds)

    results = []
    for group, times in (("image encoder", encoder_times), ("prompt decoder", decoder_times)):
        reference = statistics.median(times["onnxruntime (ours)"])
        for case, seconds in times.items():
            median = statistics.median(seconds)
            results.append({"group": group, "case": case, "median_s": median,
                            "vs_onnxruntime_ours": median / reference, "calls": len(seconds), "times_s": seconds})
    env["loadavg_end"] = list(os.getloadavg())

    print(f"\nexport: {export_s:.0f} s (export_sam: both programs, StableHLO + ONNX), segment-anything's decoder "
          f"ONNX {official_export_s:.1f} s\n")
    print("| file | size |\n|---|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 1e6:.1f} MB |")
    print(f"\n{args.variant}, random weights, one {IMAGE_HW[1]} x {IMAGE_HW[0]} image, one click; median wall time "
          "after a warm-up call; the ratio is the median over onnxruntime's on our file (< 1: faster)\n")
    print("| program | runtime | median | vs onnxruntime (ours) | calls |\n|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['group']} | {r['case']} | {_ms(r['median_s'])} | {r['vs_onnxruntime_ours']:.2f}x | "
              f"{r['calls']} |")
    v = env["versions"]
    print(f"\n- {env['date']}, {env['cpu']} (platform.processor: {env['processor'] or '-'}), "
          f"{env['cpus_usable']} usable cores, load average (1, 5, 15 min) {_load(env['loadavg'])} at start, "
          f"{_load(env['loadavg_end'])} at end")
    print(f"- jax {v['jax']}, onnxruntime {v['onnxruntime']}, torch {v['torch']}, onnx {v['onnx']}, "
          f"jax2onnx {v['jax2onnx']}, segment-anything {v['segment-anything']}")
    print(f"- onnxruntime threads (default session options): {ort_threads}; XLA: its default; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    if args.out:
        record = {"environment": env, "variant": args.variant, "image_hw": IMAGE_HW, "export_s": export_s,
                  "official_export_s": official_export_s, "file_bytes": sizes, "onnx_point_slots": slots,
                  "results": results}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {args.out}")


def _ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _load(loadavg) -> str:
    return "/".join(f"{x:.1f}" for x in loadavg)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
