"""The `vitsam` console command: `vitsam figures`, `vitsam classify`, … (`vitsam -h` lists them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    written.append(figures.attention_figure(
        out / "attention.png", model, variables, image,
        title=f"class-token attention: {source}"))
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


def _read_image(path):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SystemExit(f"vitsam: no such image: {path}") from None
    except OSError as e:
        raise SystemExit(f"vitsam: cannot read image {path}: {e}") from None


def _add_vit_args(p, default_variant="Ti/16"):
    p.add_argument("--checkpoint", help="a training workdir, a `vitsam convert` folder, or a ViT .npz/.pth/.safetensors")
    p.add_argument("--variant", default=default_variant,
                   help="without --checkpoint: a random ViT of this variant (Ti/16, S/16, B/16, B/32, L/16, H/14)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
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
    p.add_argument("--top", type=int, default=5)
    _add_vit_args(p)
    p.set_defaults(func=_classify)

    p = sub.add_parser("convert", help="import official weights (SAM .pth, ViT .npz / timm) into an orbax folder")
    p.add_argument("src", help="sam_vit_*.pth, a vit_jax / big_vision .npz, or a timm .pth / .safetensors")
    p.add_argument("dst", help="destination folder (loads with --checkpoint, vitsam.convert.load_model)")
    p.add_argument("--image-size", type=int, help="ViT: resample the position table to this resolution")
    p.add_argument("--num-classes", type=int, help="ViT: a fresh zero head with this many classes")
    p.set_defaults(func=_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:  # bad input: one clear line
        print(f"vitsam {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
