"""The `vitsam` console command: `vitsam figures`, `vitsam classify`, `vitsam segment`, … (`vitsam -h` lists them)."""

from __future__ import annotations

import argparse
import math
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
    if args.everything:
        return _segment_everything(args)
    given = [flag for flag, dest in _EVERYTHING_OPTIONS if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"{given[0]} needs --everything")
    import numpy as np
    from PIL import Image

    from vitsam.convert import load_model
    from vitsam.models.sam.text_encoder import split_words
    from vitsam.overlay import mask_image, overlay
    from vitsam.predictor import SamPredictor, check_prompts
    from vitsam.sam2_predictor import Sam2ImagePredictor

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
    if kind not in ("sam", "sam2"):
        raise ValueError(f"{args.checkpoint} holds a {kind} model, not a SAM or SAM 2")
    if texts and kind == "sam2":
        raise ValueError(f"--text needs a SAM with a text encoder, and {args.checkpoint} is a SAM 2: "
                         f"use --point or --box")
    if texts and not model.text:
        raise ValueError(f"--text needs a SAM with a text encoder, and {args.checkpoint} has none: "
                         f"use --point or --box")
    check_prompts(model, image.shape[:2], **prompts)  # e.g. a point outside the image

    predictor = (Sam2ImagePredictor if kind == "sam2" else SamPredictor)(model, variables)
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


# --everything's options: (flag, argparse dest, SamAutomaticMaskGenerator keyword = dest).
_EVERYTHING_OPTIONS = (("--points-per-side", "points_per_side"), ("--points-per-batch", "points_per_batch"),
                       ("--pred-iou-thresh", "pred_iou_thresh"), ("--stability-score-thresh", "stability_score_thresh"),
                       ("--crop-n-layers", "crop_n_layers"), ("--min-mask-region-area", "min_mask_region_area"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _segment_everything(args) -> int:
    """`vitsam segment IMAGE --everything`: every mask of an image (or of each image in a folder) as PNGs, an
    overlay and an SA-1B annotation file (`vitsam.data.sa1b.SA1BSource` reads the folder back)."""
    for flag, given in (("--point", args.point), ("--box", args.box), ("--text", args.text)):
        if given:
            raise ValueError(f"--everything prompts with a grid of points over the whole image: drop {flag}")
    if args.multimask is not None:
        raise ValueError("--everything always decodes three masks per grid point: drop --multimask / --single")
    options = {dest: getattr(args, dest) for _, dest in _EVERYTHING_OPTIONS if getattr(args, dest) is not None}
    source = Path(args.image)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder {source}")
        stems = [p.stem for p in paths]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise ValueError(f"images in {source} share the name {twice[0]!r} (one JSON per name): rename one")
    elif source.exists():
        paths = [source]
    else:
        raise SystemExit(f"vitsam: no such image: {source}")
    out = Path(args.out)
    _check_out_folder(out)

    import json

    from PIL import Image
    from tqdm import tqdm

    from vitsam.convert import load_model
    from vitsam.mask_generator import SamAutomaticMaskGenerator, check_options, overlay_masks, sa1b_record
    from vitsam.overlay import mask_image

    check_options(**options)  # before the slow checkpoint load
    model, variables, kind = load_model(args.checkpoint)
    if kind == "sam2":
        raise ValueError(f"--everything runs the automatic mask generator, which takes SAM 1 models, and "
                         f"{args.checkpoint} is a SAM 2: prompt it with --point / --box, or use a SAM checkpoint")
    if kind != "sam":
        raise ValueError(f"{args.checkpoint} holds a {kind} model, not a SAM")
    generator = SamAutomaticMaskGenerator(model, variables, **options)
    folder = len(paths) > 1 or source.is_dir()
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for image_id, path in enumerate(tqdm(paths, desc="segment everything", unit="image", disable=not folder)):
        image = _read_image(path)
        _warn_if_rotated(path)
        annotations = generator.generate(image)
        masks_dir = out / path.stem if folder else out
        masks_dir.mkdir(parents=True, exist_ok=True)
        for i, ann in enumerate(annotations):
            mask_image(ann["segmentation"]).save(masks_dir / f"mask_{i:03d}.png")
        masks = [ann["segmentation"] for ann in annotations]
        Image.fromarray(overlay_masks(image, masks)).save(masks_dir / "overlay.png")
        record = sa1b_record(annotations, image_id, path.name, *image.shape[:2])
        (out / f"{path.stem}.json").write_text(json.dumps(record, allow_nan=False))
        pngs = f"{masks_dir / 'mask_000.png'} … mask_{len(annotations) - 1:03d}.png, " if annotations else ""
        summary.append(f"{out / f'{path.stem}.json'}  {len(annotations)} masks ({pngs}{masks_dir / 'overlay.png'})")
    for line in summary:
        print(line)
    return 0


def _warn_if_rotated(path) -> None:
    """Masks follow the upright picture (EXIF orientation applied); SA1BSource reads the stored pixel order."""
    import warnings

    from PIL import Image

    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
    if orientation not in (0, 1):
        warnings.warn(f"{path} has an EXIF orientation ({orientation}): the masks follow the upright picture, and "
                      f"SA1BSource reads the stored pixel order; save the image upright to train on it")


def _numbers(text: str, flag: str, counts: tuple[int, ...], form: str) -> list[float]:
    """'1,2.5,3' -> [1.0, 2.5, 3.0], or a ValueError naming the flag and the expected form."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} expects {form} (numbers separated by commas), got {text!r}")
    return values


def _track(args) -> int:
    from vitsam.tracking import parse_prompts, track

    prompts = parse_prompts(args.point, args.box, args.mask)  # before the slow checkpoint and video loads
    _check_out_folder(Path(args.out))
    print(track(args.checkpoint, args.video, prompts, args.out, write_overlay=not args.no_video, fps=args.fps,
                gif=args.gif))
    return 0


def _export(args) -> int:
    from vitsam.export import export_checkpoint

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"no such checkpoint: {args.checkpoint}")
    export_checkpoint(args.checkpoint, args.out_dir, formats=formats, dtype=args.dtype, platforms=platforms,
                      max_side=args.max_side, onnx_points=args.onnx_points, overwrite=args.overwrite)
    return 0


def _serve(args) -> int:
    from vitsam.extras import missing_package_message

    try:
        import uvicorn

        from vitsam.serve import create_app_for_checkpoint
    except ModuleNotFoundError as e:
        message = missing_package_message(e)
        raise ImportError(message or str(e)) from None
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"no such checkpoint: {args.checkpoint}")
    print(f"loading {args.checkpoint} ...", flush=True)
    app = create_app_for_checkpoint(args.checkpoint, cache_images=args.cache_images,
                                    max_upload_bytes=int(args.max_upload_mb * (1 << 20)))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vitsam serve: open http://{host}:{args.port}/  (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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


def _int_at_least(least: int):
    """An argparse type: an integer of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
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

    p = sub.add_parser("convert", help="import official weights (SAM .pth, SAM 2 .pt, ViT .npz / timm) into an orbax "
                                       "folder")
    p.add_argument("src", help="sam_vit_*.pth, sam2*_hiera_*.pt, a vit_jax / big_vision .npz, or a timm .pth / "
                               ".safetensors")
    p.add_argument("dst", help="destination folder (loads with --checkpoint, vitsam.convert.load_model)")
    p.add_argument("--image-size", type=_positive_int, help="ViT: resample the position table to this resolution")
    p.add_argument("--num-classes", type=_positive_int, help="ViT: a fresh zero head with this many classes")
    p.set_defaults(func=_convert)

    p = sub.add_parser("segment", help="segment an image with SAM or SAM 2 from point / box / text prompts, or "
                                       "everything in it (--everything, SAM) (PNG masks, overlay)")
    p.add_argument("image")
    p.add_argument("--checkpoint", required=True,
                   help="a `vitsam convert` folder, a SAM training workdir, an official sam_vit_*.pth, or an "
                        "official SAM 2 sam2*_hiera_*.pt (prompts only: no --text, no --everything)")
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
    everything = p.add_argument_group(
        "segment everything", "--everything: SAM's automatic mask generator (a grid of point prompts, filtered and "
        "de-duplicated); IMAGE may be a folder. Writes mask_000.png …, overlay.png and IMAGE_STEM.json (SA-1B "
        "format); for a folder, DIR/STEM.json and the PNGs in DIR/STEM/. The defaults are segment-anything's.")
    everything.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    everything.add_argument("--points-per-side", metavar="N", type=_positive_int,
                            help="grid points along a side (default 32)")
    everything.add_argument("--points-per-batch", metavar="N", type=_positive_int,
                            help="prompts decoded together (default 64)")
    everything.add_argument("--pred-iou-thresh", metavar="X", type=_unit_float,
                            help="keep masks with predicted IoU above this (default 0.88; 0: off)")
    everything.add_argument("--stability-score-thresh", metavar="X", type=_unit_float,
                            help="keep masks with stability score at least this (default 0.95; 0: off)")
    everything.add_argument("--crop-n-layers", metavar="N", type=_non_negative_int,
                            help="layers of image crops (layer i: 2^i x 2^i crops) besides the whole image (default 0)")
    everything.add_argument("--min-mask-region-area", metavar="PIXELS", type=_non_negative_int,
                            help="fill holes and remove islands below this many pixels (default 0: off)")
    p.add_argument("--out", default="segment", help="output folder")
    p.set_defaults(func=_segment)

    p = sub.add_parser("track", help="track objects through a video with SAM 2 from point / box / mask prompts on any "
                                     "frames (mask PNGs per object and frame, overlay.mp4)",
                       description="Tracks forward from the earliest prompted frame to the end and, if that is not "
                                   "frame 0, backward from it to frame 0, so every frame gets a mask of every object. "
                                   "Writes OUT/masks/<obj>/<frame:05d>.png and OUT/overlay.mp4.")
    p.add_argument("video", help="a video file (.mp4, .mov, .avi, .mkv, .webm; needs the [video] extra) or a folder "
                                 "of JPEG / PNG frames named by frame number")
    p.add_argument("--checkpoint", required=True,
                   help="an official SAM 2 sam2*_hiera_*.pt or its `vitsam convert` folder")
    p.add_argument("--point", action="append", default=[], metavar="F,X,Y[,LABEL][,OBJ]",
                   help="a point on frame F in video pixels, label 1 (foreground, default) or 0 (background), for "
                        "object OBJ (default 1); repeatable")
    p.add_argument("--box", action="append", default=[], metavar="F,X0,Y0,X1,Y1[,OBJ]",
                   help="a box on frame F in video pixels for object OBJ (default 1); repeatable")
    p.add_argument("--mask", action="append", default=[], metavar="F,PATH[,OBJ]",
                   help="a mask PNG of the video's size on frame F: its values are object ids, 0 the background (a "
                        "DAVIS / YouTube-VOS annotation), or with OBJ its nonzero pixels are object OBJ; repeatable")
    p.add_argument("--fps", type=float, help="frame rate of overlay.mp4 (default: the video's, 30 for a folder)")
    p.add_argument("--no-video", action="store_true", help="no overlay.mp4 (the mask PNGs, and overlay.gif with --gif)")
    p.add_argument("--gif", action="store_true", help="also write OUT/overlay.gif, the overlay as a looping animated "
                                                      "GIF (for short clips: its frames are held in memory)")
    p.add_argument("--out", default="track", help="output folder")
    p.set_defaults(func=_track)

    p = sub.add_parser("export", help="export a SAM (image encoder, prompt decoder) or a ViT (classifier) as "
                                      "StableHLO and ONNX, to run without vitsam")
    p.add_argument("checkpoint", help="an official sam_vit_*.pth or ViT file, a `vitsam convert` folder or a "
                                      "training workdir")
    p.add_argument("out_dir", help="output folder (a README.md there describes the files)")
    p.add_argument("--format", default="stablehlo,onnx", help="comma-separated: stablehlo, onnx (default both)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16: weights and compute")
    p.add_argument("--platforms", default="cpu", help="StableHLO targets, comma-separated: cpu, cuda, rocm, tpu")
    p.add_argument("--max-side", type=_positive_int, default=4096,
                   help="SAM: the largest image side the exported encoder accepts (default 4096)")
    p.add_argument("--onnx-points", type=_positive_int, default=16,
                   help="SAM: point slots of the ONNX prompt decoder (pad with label -1; default 16)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="the interactive web app: segment (SAM) or classify (ViT) images in the browser")
    p.add_argument("--checkpoint", required=True, help="an official sam_vit_*.pth or ViT file, a `vitsam convert` "
                                                        "folder or a training workdir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--cache-images", type=_positive_int, default=8,
                   help="images (with their embeddings) kept in memory; older ones are dropped (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MiB (default 20)")
    p.set_defaults(func=_serve)

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
