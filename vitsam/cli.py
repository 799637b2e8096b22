"""The `vitsam` console command: `vitsam figures`, `vitsam classify`, `vitsam segment`, … (`vitsam -h` lists them)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# Light imports only (argparse, the bench options): `vitsam --help` and argument errors must not wait for
# JAX; each command imports what it runs.
from vitsam.bench.cli import add_arguments as add_bench_arguments


def _figures(args) -> int:
    import jax

    from vitsam import figures
    from vitsam.models import vit_variant

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [figures.encoding_figure(out / "encoding.png", args.tokens, args.dim),
               figures.similarity_figure(out / "similarity.png", args.tokens, args.dim)]
    model, variables, source = _vit_for(args, vit_variant, jax)
    image = _read_image(args.image)
    if args.checkpoint:  # the title names the model, not the folder it was read from
        source = (f"trained ViT, {model.depth} layers × {model.num_heads} heads, width {model.width}, "
                  f"{model.patch_size}-px patches, {model.image_size}-px input")
    written.append(figures.attention_figure(out / "attention.png", model, variables, image,
                                            title=f"attention: {source}"))
    for path in written:
        print(path)
    return 0


def _classify(args) -> int:
    import jax
    import numpy as np
    from PIL import Image

    from vitsam.models import vit_variant

    model, variables, source = _vit_for(args, vit_variant, jax)
    names = _class_names(args.checkpoint)
    size = model.image_size
    image = Image.fromarray(_read_image(args.image)).resize((size, size), Image.BICUBIC)
    x = np.asarray(image, np.float32)[None] / 127.5 - 1.0
    logits = np.asarray(jax.jit(model.apply)(variables, x))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"{source}, input {size}x{size}")
    for i in np.argsort(-probs)[: args.top]:
        name = names[i] if names else f"class {int(i)}"
        print(f"  {name:>12}  p={probs[i]:.4f}  logit={logits[i]:+.4f}")
    return 0


def _class_names(checkpoint):
    import json

    spec = Path(checkpoint or "", "model.json")
    if checkpoint and spec.exists():
        return json.loads(spec.read_text()).get("class_names")
    return None


def _convert(args) -> int:
    from vitsam.convert import convert

    overrides = {k: v for k, v in (("image_size", args.image_size), ("num_classes", args.num_classes)) if v}
    dst, timings = convert(args.src, args.dst, **overrides)
    print(f"wrote {dst}")
    print("  " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return 0


def _segment(args) -> int:
    import numpy as np
    from PIL import Image

    from vitsam.convert import load_model
    from vitsam.models.sam.text_encoder import split_words
    from vitsam.overlay import mask_image, overlay
    from vitsam.predictor import SamPredictor, check_prompts

    # Every check that needs no image embedding runs first: the image encoder takes up to a minute.
    points = [_numbers(text, "--point", (2, 3), "x,y[,label]") for text in args.point]
    labels = [1 if len(p) == 2 else p[2] for p in points]
    if any(label not in (0, 1) for label in labels):
        raise ValueError(f"--point labels must be 1 (foreground) or 0 (background), got {labels}")
    boxes = [_numbers(text, "--box", (4,), "x0,y0,x1,y1") for text in args.box]
    texts = list(args.text)
    for text in texts:
        if not split_words(text):
            raise ValueError(f"--text {text!r} is empty (no letters or digits): give a phrase such as 'a red square'")
    if not (points or boxes or texts):
        raise ValueError("no prompt: give --point x,y[,label] (repeatable), --box x0,y0,x1,y1 or --text TEXT")
    # One prompt set per box / text; the points (one set) and a single box or text go with every set.
    n = max(len(boxes), len(texts), 1)
    for flag, items in (("--box", boxes), ("--text", texts)):
        if len(items) not in (0, 1, n):
            raise ValueError(f"got {len(items)} {flag} prompts for {n} prompt sets: give one or {n}")
    prompts = {}
    if points:
        prompts["point_coords"] = np.broadcast_to(np.array([p[:2] for p in points], np.float32), (n, len(points), 2))
        prompts["point_labels"] = np.broadcast_to(np.array(labels, np.int32), (n, len(points)))
    if boxes:
        prompts["box"] = np.broadcast_to(np.array(boxes, np.float32), (n, 4))
    if texts:
        prompts["text"] = texts * n if len(texts) == 1 else texts

    out = Path(args.out)
    _check_out_folder(out)
    image = _read_image(args.image)
    model, variables, kind = load_model(args.checkpoint)
    if kind != "sam":
        raise ValueError(f"{args.checkpoint} holds a {kind} model, not a SAM")
    if texts and not model.text:
        raise ValueError(f"--text needs a SAM with a text encoder, and {args.checkpoint} has none: "
                         f"use --point or --box")
    check_prompts(model, image.shape[:2], **prompts)  # e.g. a point outside the image

    predictor = SamPredictor(model, variables)
    predictor.set_image(image)
    # Ambiguous prompts (one point, or a class name alone: `train.sam` trains text on the three candidates)
    # get three masks by default, the rest one.
    ambiguous = not boxes and len(points) + bool(texts) == 1
    multimask = ambiguous if args.multimask is None else args.multimask
    masks, iou, _ = predictor.predict(**prompts, multimask_output=multimask)  # (n, C, H, W), (n, C)

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for c in range(masks.shape[1]):
            path = out / (f"mask_{c}.png" if n == 1 else f"mask_{i}_{c}.png")
            mask_image(masks[i, c]).save(path)
            print(f"{path}  predicted IoU {iou[i, c]:.3f}")
    best = masks[np.arange(n), iou.argmax(axis=1)]
    picture = overlay(image, best, points=[p[:2] for p in points] or None, labels=labels or None,
                      boxes=boxes or None)
    Image.fromarray(picture).save(out / "overlay.png")
    print(f"{out / 'overlay.png'}  (the best mask of each prompt set, with the prompts)")
    return 0


def _numbers(text: str, flag: str, counts: tuple[int, ...], form: str) -> list[float]:
    """'1,2.5,3' -> [1.0, 2.5, 3.0], or a ValueError naming the flag and the expected form."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise ValueError(f"{flag} expects {form} (numbers separated by commas), got {text!r}")
    return values


def _bench(args) -> int:
    from vitsam.bench.cli import run_cli

    return run_cli(args)


def _vit_for(args, vit_variant, jax):
    """The ViT to run: from --checkpoint (a training workdir, a converted folder or an official file),
    else randomly initialised (seeded; the head too, so the logits are not all zero)."""
    if args.checkpoint:
        from vitsam.convert import load_model

        model, variables, kind = load_model(args.checkpoint)
        if kind != "vit":
            raise ValueError(f"{args.checkpoint} holds a {kind} model, not a ViT")
        return model, variables, f"ViT from {args.checkpoint}"
    model = vit_variant(args.variant, num_classes=args.num_classes, image_size=args.image_size, head_zero_init=False)
    shape = (1, model.image_size, model.image_size, 3)
    variables = jax.jit(model.init)(jax.random.PRNGKey(args.seed), jax.numpy.zeros(shape))
    return model, variables, f"ViT-{args.variant}, random init (seed {args.seed})"


def _check_out_folder(out: Path) -> None:
    """A ValueError now, rather than after the slow work, if --out cannot become a folder to write in (its
    nearest existing path must be a writable folder). Creates nothing."""
    existing = next(p for p in (out, *out.parents) if p.exists())  # exists() is False below a file
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under the file {existing}"
        raise ValueError(f"--out {out} {where}: give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write in {existing} (permission denied)")


def _read_image(path):
    """An image file -> (H, W, 3) uint8 RGB as displayed (`vitsam.images.read_image`), or a one-line exit."""
    from vitsam.images import read_image

    try:
        return read_image(path)
    except FileNotFoundError:
        raise SystemExit(f"vitsam: no such image: {path}") from None
    except OSError as e:
        raise SystemExit(f"vitsam: cannot read image {path}: {e}") from None


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_vit_args(p, default_variant="Ti/16"):
    p.add_argument("--checkpoint", help="a training workdir, a `vitsam convert` folder, or a ViT .npz/.pth/.safetensors")
    p.add_argument("--variant", default=default_variant,
                   help="without --checkpoint: a random ViT of this variant (Ti/16, S/16, B/16, B/32, L/16, H/14)")
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--num-classes", type=_positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitsam", description="Vision Transformers and SAM in JAX / Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("figures", help="the lecture's pictures: encoding matrix, P·Pᵀ, ViT attention maps (PNG)")
    p.add_argument("--out", default="figures", help="output folder")
    p.add_argument("--tokens", type=int, default=50, help="positions in the encoding picture")
    p.add_argument("--dim", type=int, default=128, help="token dimension in the encoding picture")
    p.add_argument("--image", default="examples/shapes.png", help="image for the attention maps")
    _add_vit_args(p)
    p.set_defaults(func=_figures)

    p = sub.add_parser("classify", help="run a ViT on an image and print the top classes")
    p.add_argument("image")
    p.add_argument("--top", type=_positive_int, default=5, help="how many classes to print")
    _add_vit_args(p)
    p.set_defaults(func=_classify)

    p = sub.add_parser("convert", help="import official weights (SAM .pth, ViT .npz / timm) into an orbax folder")
    p.add_argument("src", help="sam_vit_*.pth, a vit_jax / big_vision .npz, or a timm .pth / .safetensors")
    p.add_argument("dst", help="destination folder (loads with --checkpoint, vitsam.convert.load_model)")
    p.add_argument("--image-size", type=_positive_int, help="ViT: resample the position table to this resolution")
    p.add_argument("--num-classes", type=_positive_int, help="ViT: a fresh zero head with this many classes")
    p.set_defaults(func=_convert)

    p = sub.add_parser("segment", help="segment an image with SAM from point / box / text prompts (PNG masks, overlay)")
    p.add_argument("image")
    p.add_argument("--checkpoint", required=True,
                   help="a `vitsam convert` folder, a SAM training workdir, or an official sam_vit_*.pth")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a point in image pixels, label 1 (foreground, default) or 0 (background); repeatable")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="a box in image pixels; repeat for several objects (one prompt set each)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="a text prompt (models with a text encoder); repeat for several objects")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--multimask", dest="multimask", action="store_true", default=None,
                       help="three candidate masks per prompt set (default for the ambiguous prompts: a single "
                            "point, or text alone)")
    group.add_argument("--single", dest="multimask", action="store_false",
                       help="one mask per prompt set (default for boxes and several points)")
    p.add_argument("--out", default="segment", help="output folder")
    p.set_defaults(func=_segment)

    p = sub.add_parser("bench", help="time ViT / SAM (compile, step, images/s, FLOPs, MFU, memory), vs PyTorch peers")
    add_bench_arguments(p)
    p.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"vitsam {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            return args.func(args)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, NotImplementedError) as e:
            # bad input, or a missing optional package: one clear line
            print(f"vitsam {args.command}: error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
