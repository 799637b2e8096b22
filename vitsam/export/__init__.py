"""Whole-model export: SAM's image encoder and prompt decoder, a ViT classifier, as StableHLO and ONNX.

    from vitsam.convert import load_model
    from vitsam.export import export_sam, export_vit
    model, variables, kind = load_model("sam_vit_b_01ec64.pth")
    export_sam(model, variables, "sam_vit_b_export")   # image_encoder.{stablehlo,onnx}, prompt_decoder.*, README.md

Or `vitsam export CKPT OUT_DIR`. The programs and their inputs are described in `vitsam.export.programs`;
the generated OUT_DIR/README.md lists them with their shapes for the exported model.

StableHLO: `jax.export` of the jitted program, serialized (`Exported.serialize`); `jax.export.deserialize`
reloads it and `.call(...)` runs it with jax alone, on any of the lowered platforms. Symbolic dimensions:
images (B, H, W), prompts (N, P), the original size (H, W).

ONNX: converted with jax2onnx (opset 18), checked with `onnx.checker`. jax2onnx 0.17 loses a symbolic token
count through concatenation (the decoder's 5 + P tokens) and builds a wrong Reshape, so the ONNX decoder has a
fixed number of point slots (`onnx_points`, padding label -1, which changes nothing); everything else is symbolic.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from vitsam.export import files
from vitsam.export.files import FORMATS, PLATFORMS

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_SIDE = 4096
DEFAULT_ONNX_POINTS = 16

__all__ = ["DTYPES", "FORMATS", "PLATFORMS", "export_checkpoint", "export_sam", "export_vit"]


def _check_options(formats, dtype, platforms) -> tuple[tuple[str, ...], tuple[str, ...]]:
    formats = tuple(formats)
    platforms = tuple(platforms)
    for name, given, valid in (("format", formats, FORMATS), ("platform", platforms, PLATFORMS)):
        if not given:
            raise ValueError(f"no {name} given; choose from {', '.join(valid)}")
        unknown = [g for g in given if g not in valid]
        if unknown:
            raise ValueError(f"unknown {name} {unknown[0]!r}; choose from {', '.join(valid)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if "onnx" in formats and dtype != "float32":
        # jax2onnx 0.17.1 emits Conv nodes with float16 / bfloat16 inputs and float32 weights, which onnx refuses.
        raise ValueError(f"ONNX export is float32 only (jax2onnx cannot convert the {dtype} convolutions); "
                         f"use --format stablehlo for {dtype}")
    if "onnx" in formats:
        _require_onnx()
    return formats, platforms


def _require_onnx():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the export extra ({e.name} is missing): pip install -e '.[export]' "
                          f"&& pip install --no-deps jax2onnx==0.17.1 (README, 'Export'), or use --format stablehlo") \
            from None


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; give a folder to export into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose another folder or pass overwrite "
                                  f"(--overwrite)")
        if not (out_dir / "metadata.json").is_file():
            raise FileExistsError(f"{out_dir} is not an earlier export (no metadata.json): overwrite replaces "
                                  f"only those; choose another folder")


def _cast(model, variables, dtype: str):
    """The model computing in `dtype` with its floating parameters stored in it (float32: unchanged)."""
    if dtype == "float32":
        return model, variables
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    params = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                          variables["params"])
    return model.clone(dtype=dt, param_dtype=dt), {**variables, "params": params}


def _atomic_out_dir(out_dir: Path, write) -> Path:
    """Run write(tmp_dir), then move tmp_dir to out_dir (replacing it): a crash or an export error leaves any
    earlier out_dir as it was and no half-written folder."""
    out_dir = Path(out_dir).absolute()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():  # an empty folder or an earlier export (`_check_out_dir`)
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir


def export_sam(model, variables: dict, out_dir, *, formats=FORMATS, dtype: str = "float32", platforms=("cpu",),
               max_side: int = DEFAULT_MAX_SIDE, onnx_points: int = DEFAULT_ONNX_POINTS, overwrite: bool = False,
               source: str = "", log=print) -> dict:
    """Export a `Sam` as `image_encoder` and `prompt_decoder` (see `vitsam.export.programs`) into `out_dir`.

    formats: "stablehlo" and / or "onnx"; dtype: the computation and weight dtype ("float32", "bfloat16",
    "float16"; inputs and outputs keep theirs); platforms: StableHLO lowering targets ("cpu", "cuda", "rocm",
    "tpu"); max_side: the largest image side the encoder accepts; onnx_points: point slots of the ONNX decoder.
    Returns {program: {format: path}}.
    """
    from vitsam.export import programs

    formats, platforms = _check_options(formats, dtype, platforms)
    if max_side < 1 or onnx_points < 1:
        raise ValueError(f"max_side and onnx_points must be positive, got {max_side} and {onnx_points}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    model, variables = _cast(model, variables, dtype)
    # The CPU-friendly row-chunked global attention is chosen at trace time from the default backend: keep it
    # for a CPU-only StableHLO file; ONNX and other platforms get attention over all rows at once.
    unchunked = model.clone(attention_query_rows=0)
    stablehlo_model = model if platforms == ("cpu",) else unchunked
    description = files.describe_sam(model, max_side=max_side, onnx_points=onnx_points, dtype=dtype,
                                     source=source)
    constraints = (f"H <= {max_side}", f"W <= {max_side}")
    progs = {
        "image_encoder": ({"stablehlo": programs.sam_image_encoder(stablehlo_model, variables, max_side),
                           "onnx": programs.sam_image_encoder(unchunked, variables, max_side)}, constraints),
        "prompt_decoder": (dict.fromkeys(FORMATS, programs.sam_prompt_decoder(model, variables)), ()),
    }
    return _write_all(progs, out_dir, formats, platforms, description, log)


def export_vit(model, variables: dict, out_dir, *, formats=FORMATS, dtype: str = "float32", platforms=("cpu",),
               class_names=None, overwrite: bool = False, source: str = "", log=print) -> dict:
    """Export a `VisionTransformer` as `classifier` (uint8 images (B, S, S, 3) -> logits (B, classes)) into
    `out_dir`, the class names (if given) in the metadata. Options as `export_sam`."""
    from vitsam.export import programs

    formats, platforms = _check_options(formats, dtype, platforms)
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a head of {model.num_classes} classes")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    model, variables = _cast(model, variables, dtype)
    description = files.describe_vit(model, class_names=class_names, dtype=dtype, source=source)
    progs = {"classifier": (dict.fromkeys(FORMATS, programs.vit_classifier(model, variables)), ())}
    return _write_all(progs, out_dir, formats, platforms, description, log)


def _write_all(progs: dict, out_dir: Path, formats, platforms, description: dict, log) -> dict:
    """progs {name: ({format: function}, symbolic-dimension constraints)}: each program in each format, metadata.json and
    README.md, into out_dir (atomically). Returns {name: {format: path}}."""
    description = {**description, "formats": list(formats), "platforms": list(platforms)}
    written = {}

    def write(tmp: Path):
        for name, (functions, constraints) in progs.items():
            for fmt in formats:
                fn = functions[fmt]
                start = time.perf_counter()
                args = files.input_specs(description, name, fmt, constraints)
                if fmt == "stablehlo":
                    path = files.write_stablehlo(fn, args, tmp / f"{name}.stablehlo", platforms)
                else:
                    path = files.write_onnx(fn, args, tmp / f"{name}.onnx", name, description)
                size = sum(p.stat().st_size for p in tmp.glob(path.name + "*"))
                written.setdefault(name, {})[fmt] = path.name
                log(f"{name}: {fmt}, {size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s")
        (tmp / "metadata.json").write_text(json.dumps(description, indent=1) + "\n")
        files.write_readme(tmp / "README.md", description)

    final = _atomic_out_dir(out_dir, write)
    log(f"wrote {final}")
    return {name: {fmt: final / file for fmt, file in by_fmt.items()} for name, by_fmt in written.items()}


def export_checkpoint(checkpoint, out_dir, **options) -> dict:
    """Export any checkpoint vitsam reads (an official SAM .pth or ViT file, a converted folder, a trainer's
    workdir): SAM -> `export_sam`, ViT -> `export_vit` (class names from the folder's model.json)."""
    from vitsam.convert import load_model

    out_dir = Path(out_dir)
    _check_options(options.get("formats", FORMATS), options.get("dtype", "float32"),
                   options.get("platforms", ("cpu",)))
    _check_out_dir(out_dir, options.get("overwrite", False))  # before the (slow) checkpoint load
    model, variables, kind = load_model(checkpoint)
    source = str(checkpoint)
    if kind == "sam":
        options.pop("class_names", None)
        return export_sam(model, variables, out_dir, source=source, **options)
    if kind == "vit":
        for key in ("max_side", "onnx_points"):
            options.pop(key, None)
        spec = Path(checkpoint, "model.json")
        names = json.loads(spec.read_text()).get("class_names") if spec.is_file() else None
        return export_vit(model, variables, out_dir, source=source, class_names=names, **options)
    raise ValueError(f"{checkpoint} holds a {kind} model; export supports SAM and ViT checkpoints")

