"""Propagation speed of `Sam2VideoPredictor` against the official `SAM2VideoPredictor` on the same weights and frames.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sam2_track.py --variants hiera_t hiera_b+ --objects 1 3 \
        --out benchmarks/cpu_sam2_track.json

Per variant: our model with random weights (`sam2_init`, seeded) and the official model (`sam2` 1.1.0,
`build_sam2_video_predictor` at 1024 px) loaded with the same weights (`sam2_variables_to_state_dict`); one
video of `--frames` synthetic 640 x 480 JPEG frames. Per object count: both predictors get one click per object
on frame 0, then `propagate_in_video` runs once to warm up (ours over the whole video: it compiles a step per
memory-slot count the first frames need; the official over 3 frames: first-run allocations), then over the
whole video `--repeats` times, the two predictors in turn so that load from elsewhere falls on both.
Each timed run tracks frames 1 … F-1 (frame 0, a conditioning frame, is reused) and includes the image encoder
of every frame, the memory attention, the heads, the memory encoder and the masks at the video's size. The
table gives frames per second from the median run and the ratio to the official predictor.

The official predictor runs on a CPU as its builder makes it, except that it skips hole filling there (no CUDA
extension), so ours runs with fill_hole_area=0 too, and its stored bfloat16 memories are handed on as float32
(its float32 attention on a CPU refuses bfloat16 inputs; on a GPU it runs under bfloat16 autocast).
PyTorch uses all usable cores (torch.set_num_threads), XLA its default (all cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np


def make_frames(folder: Path, count: int, height: int = 480, width: int = 640) -> None:
    from PIL import Image

    yy, xx = np.mgrid[:height, :width]
    for t in range(count):
        img = np.stack([80 + 60 * np.sin(xx / 40.0), 90 + 50 * np.cos(yy / 30.0), 120 + 0 * xx], -1)
        img[(yy - 200) ** 2 + (xx - 120 - 20 * t) ** 2 < 60 ** 2] = (230, 40, 40)
        img[(abs(yy - 80 - 15 * t) < 40) & (abs(xx - 480) < 40)] = (30, 200, 60)
        img[(abs(yy - 380) < 30) & (abs(xx - 300 - 10 * t) < 70)] = (40, 60, 220)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{t}.jpg", quality=95)


CLICKS = [(120, 200), (480, 80), (300, 380)]  # one per object, on frame 0 (the shapes above)


def official_predictor(variant: str, state_dict: dict):
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    name = {"hiera_t": "t", "hiera_s": "s", "hiera_b+": "b+", "hiera_l": "l"}[variant]
    predictor = build_sam2_video_predictor(f"configs/sam2.1/sam2.1_hiera_{name}.yaml", None, device="cpu")
    predictor.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    predictor.eval()
    run_frame, run_memory = predictor._run_single_frame_inference, predictor._run_memory_encoder

    def frame(*args, **kwargs):  # bfloat16 memories as float32 (see the module docstring)
        out, masks = run_frame(*args, **kwargs)
        if out["maskmem_features"] is not None:
            out["maskmem_features"] = out["maskmem_features"].float()
        return out, masks

    def memory(*args, **kwargs):
        features, pos = run_memory(*args, **kwargs)
        return features.float(), pos

    predictor._run_single_frame_inference, predictor._run_memory_encoder = frame, memory
    return predictor


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["hiera_t", "hiera_b+"])
    p.add_argument("--objects", nargs="+", type=int, default=[1, 3])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-official", action="store_true", help="time vitsam only")
    p.add_argument("--out", default=None, help="write results here (.json and .md)")
    args = p.parse_args(argv)
    if max(args.objects) > len(CLICKS):
        p.error(f"at most {len(CLICKS)} objects")

    import torch

    from vitsam.bench.report import environment, environment_markdown, jsonable
    from vitsam.convert.sam2 import sam2_variables_to_state_dict
    from vitsam.models.sam2 import sam2_init, sam2_variant
    from vitsam.video_predictor import Sam2VideoPredictor

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    env = environment()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_frames(folder, args.frames)
        for variant in args.variants:
            model = sam2_variant(variant)
            variables = jax.jit(lambda r: sam2_init(model, r))(jax.random.PRNGKey(0))
            ours = Sam2VideoPredictor(model, variables, fill_hole_area=0)
            runners = {"vitsam": ours}
            if not args.no_official:
                runners["sam2 (official)"] = official_predictor(variant, sam2_variables_to_state_dict(variables,
                                                                                                    model))
            for count in args.objects:
                states, times = {}, {name: [] for name in runners}
                for name, pred in runners.items():
                    with torch.inference_mode():
                        state = pred.init_state(video_path=str(folder)) if name != "vitsam" else \
                            pred.init_state(folder)
                        for obj in range(count):
                            pred.add_new_points_or_box(state, 0, obj + 1, points=np.array([CLICKS[obj]], np.float32),
                                                       labels=np.array([1], np.int32))
                    states[name] = state
                for round_ in range(args.repeats + 1):  # round 0 warms up
                    for name, pred in runners.items():
                        kwargs = {} if name != "vitsam" else {"progress": False}
                        if round_ == 0 and name != "vitsam":
                            kwargs["max_frame_num_to_track"] = 2
                        start = time.perf_counter()
                        with torch.inference_mode():
                            for _, _, masks in pred.propagate_in_video(states[name], **kwargs):
                                np.asarray(masks)
                        seconds = time.perf_counter() - start
                        if round_:
                            times[name].append(seconds)
                        print(f"{variant} objects={count} {name} round {round_}: {seconds:.1f} s", flush=True)
                for name, runs in times.items():
                    median = statistics.median(runs)
                    records.append(dict(variant=variant, objects=count, impl=name, runs_s=runs,
                                        frames=args.frames - 1, seconds=median, fps=(args.frames - 1) / median))
    env["loadavg_end"] = list(os.getloadavg())
    env["torch_threads"] = torch.get_num_threads()
    env["versions"]["sam2"] = _version("sam2")
    lines = ["| variant | objects | impl | s per run (median) | frames/s | vs official |", "|---|---|---|---|---|---|"]
    for r in records:
        ref = next((x for x in records if x["variant"] == r["variant"] and x["objects"] == r["objects"]
                    and x["impl"] != "vitsam"), None)
        ratio = f"{ref['seconds'] / r['seconds']:.2f}×" if ref else "—"
        lines.append(f"| {r['variant']} | {r['objects']} | {r['impl']} | {r['seconds']:.1f} | {r['fps']:.2f} "
                     f"| {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        import json

        out = Path(args.out)
        out.write_text(json.dumps({"environment": jsonable(env), "results": jsonable(records)}, indent=1) + "\n")
        out.with_suffix(".md").write_text(f"# Benchmark: {out.stem}\n\n{table}\n\n{environment_markdown(env)}\n")


def _version(dist: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
