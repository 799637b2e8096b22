"""Recall of the automatic mask generator on held-out vitsam_shapes images: the share of ground-truth instances
(every shape of each image) that one of the generated masks covers with IoU >= 0.5.

    python benchmarks/amg_recall.py --checkpoint /tmp/sam_shapes --images 200

The images are the test split's first N (`shapes.render_example(i, 64, seed=1)`, the builder's test stream),
never seen in training; each is segmented at its own 64 px (the tiny SAM's input size) with every option set
below, and the masks are compared with the instance masks the image was drawn from.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from vitsam.convert import load_model
from vitsam.data import shapes
from vitsam.mask_generator import SamAutomaticMaskGenerator
from vitsam.mask_ops import instance_recall

TEST_SEED = 1  # vitsam.data.shapes_builder.SPLIT_SEEDS["test"]
OPTION_SETS = {
    "official defaults": {},
    "thresholds 0.5 / 0.8": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8},
    "+ 1 crop layer": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8, "crop_n_layers": 1},
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a train.sam workdir or a `vitsam convert` folder")
    p.add_argument("--images", type=int, default=200, help="held-out test images (default 200)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a mask needs to find an instance (default 0.5)")
    args = p.parse_args(argv)

    model, variables, kind = load_model(args.checkpoint)
    if kind != "sam":
        raise SystemExit(f"{args.checkpoint} holds a {kind} model, not a SAM")
    examples = [shapes.render_example(i, model.image_size, seed=TEST_SEED) for i in range(args.images)]
    rows = []
    for name, options in OPTION_SETS.items():
        generator = SamAutomaticMaskGenerator(model, variables, **options)
        found = total = masks = 0
        main_found = 0
        start = time.perf_counter()
        for ex in tqdm(examples, desc=name, leave=False):
            predicted = [a["segmentation"] for a in generator.generate(ex.image)]
            predicted = np.stack(predicted) if predicted else np.zeros((0, *ex.image.shape[:2]), bool)
            hits, best = instance_recall(predicted, ex.masks, args.iou)
            found, total, masks = found + hits, total + len(ex.masks), masks + len(predicted)
            main_found += int(best[0] >= args.iou)  # the first mask is the image's main shape
        seconds = (time.perf_counter() - start) / len(examples)
        small = total - len(examples)  # every image has one main shape; the rest are the smaller ones
        rows.append((name, found / total, main_found / len(examples), (found - main_found) / small if small else 0.0,
                     masks / len(examples), seconds))
    print(f"\n{args.images} held-out images, {sum(len(e.masks) for e in examples)} instances; "
          f"recall at IoU >= {args.iou}:\n")
    print("| options | recall, all shapes | main shapes | smaller shapes | masks per image | s per image |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, recall, main_recall, small_recall, per_image, seconds in rows:
        print(f"| {name} | {recall:.3f} | {main_recall:.3f} | {small_recall:.3f} | {per_image:.1f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
