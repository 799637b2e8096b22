"""Writing exported programs: input specs with symbolic dimensions, the StableHLO and ONNX files, the
metadata (`metadata.json`, also in each ONNX file's metadata_props) and the generated README.md."""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ONNX_OPSET = 18
_ONNX_SINGLE_FILE_BYTES = 1_800_000_000  # protobuf files stop at 2 GiB: larger weights go to NAME.onnx.data


def _io(name, shape, dtype, doc):
    return {"name": name, "shape": list(shape), "dtype": dtype, "doc": doc}


def describe_sam(model, *, max_side: int, onnx_points: int, dtype: str, source: str) -> dict:
    g, d, m = model.embedding_size, model.prompt_dim, model.mask_input_size
    fields = {k: getattr(model, k) for k in ("image_size", "patch_size", "encoder_dim", "encoder_depth",
                                              "encoder_heads", "prompt_dim")}
    return {
        "kind": "sam", "source": source, "dtype": dtype, "model": fields, "max_side": max_side,
        "onnx_points": onnx_points,
        "programs": {
            "image_encoder": {
                "inputs": [_io("images", ("B", "H", "W", 3), "uint8",
                               f"RGB images of any size, H, W <= {max_side} (resized and normalised inside)")],
                "outputs": [_io("image_embeddings", ("B", g, g, d), "float32", "image embeddings (NHWC)")],
            },
            "prompt_decoder": {
                "inputs": [
                    _io("image_embeddings", (1, g, g, d), "float32", "one image's embedding (image_encoder output)"),
                    _io("point_coords", ("N", "P", 2), "float32", "(x, y) pixels of the original image; "
                        f"N prompt sets of P points (ONNX: P = {onnx_points} slots)"),
                    _io("point_labels", ("N", "P"), "int32", "1 foreground, 0 background, -1 padding (ignored)"),
                    _io("boxes", ("N", 4), "float32", "x0, y0, x1, y1 pixels of the original image"),
                    _io("has_box", ("N",), "float32", "1: use the row's box, 0: ignore it"),
                    _io("mask_input", ("N", m, m), "float32", "low-res mask logits (a previous low_res_masks[:, c])"),
                    _io("has_mask_input", ("N",), "float32", "1: use the row's mask_input, 0: ignore it"),
                    _io("original_size", ("H", "W", 0), "uint8",
                        "np.empty((H, W, 0), np.uint8): its shape is the original image's size"),
                ],
                "outputs": [
                    _io("masks", ("N", 4, "H", "W"), "bool", "masks at the original size; index 0: single-mask "
                        "output, 1-3: the three masks for ambiguous prompts"),
                    _io("iou_predictions", ("N", 4), "float32", "predicted IoU of each mask"),
                    _io("low_res_masks", ("N", 4, m, m), "float32", "low-res mask logits"),
                ],
            },
        },
    }


def describe_vit(model, *, class_names, dtype: str, source: str) -> dict:
    s = model.image_size
    fields = {k: getattr(model, k) for k in ("image_size", "patch_size", "width", "depth", "num_heads",
                                              "num_classes")}
    return {
        "kind": "vit", "source": source, "dtype": dtype, "model": fields, "class_names": class_names,
        "programs": {
            "classifier": {
                "inputs": [_io("images", ("B", s, s, 3), "uint8",
                               f"RGB images resized to {s}x{s} (mapped to [-1, 1] inside)")],
                "outputs": [_io("logits", ("B", model.num_classes), "float32",
                                "class logits (names in metadata.json, 'class_names')")],
            },
        },
    }


def input_specs(description: dict, program: str, fmt: str, constraints=()) -> list:
    """jax.ShapeDtypeStruct per input, the named dimensions symbolic (one scope per program); ONNX fixes P."""
    import jax
    import jax.numpy as jnp
    from jax import export

    inputs = description["programs"][program]["inputs"]
    names = sorted({d for spec in inputs for d in spec["shape"] if isinstance(d, str)})
    if fmt == "onnx" and "P" in names:
        names.remove("P")
    symbols = dict(zip(names, export.symbolic_shape(", ".join(names), constraints=constraints))) if names else {}
    if fmt == "onnx":
        symbols["P"] = description.get("onnx_points")
    return [jax.ShapeDtypeStruct(tuple(symbols.get(d, d) for d in spec["shape"]), jnp.dtype(spec["dtype"]))
            for spec in inputs]


def write_stablehlo(fn, args, path: Path, platforms) -> Path:
    import jax
    from jax import export

    exported = export.export(jax.jit(fn), platforms=list(platforms))(*args)
    path.write_bytes(exported.serialize())
    return path


def write_onnx(fn, args, path: Path, program: str, description: dict) -> Path:
    import logging

    import onnx
    from jax2onnx import to_onnx

    spec = description["programs"][program]
    for name in ("jax2onnx", "onnx_ir"):  # hundreds of lines about value types it skips
        logging.getLogger(name).setLevel(logging.ERROR)
    model = to_onnx(fn, args, opset=ONNX_OPSET, model_name=program,
                    input_names=[i["name"] for i in spec["inputs"]], output_names=[o["name"] for o in spec["outputs"]])
    entry = model.metadata_props.add()
    entry.key, entry.value = "vitsam", json.dumps(description)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes < _ONNX_SINGLE_FILE_BYTES:
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, path)
    else:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
        onnx.checker.check_model(str(path), full_check=True)
    return path


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def write_readme(path: Path, description: dict) -> None:
    """OUT_DIR/README.md: what each file is, inputs and outputs, and how to run it without vitsam."""
    kind = description["kind"]
    lines = [f"# Exported {'SAM' if kind == 'sam' else 'ViT'} ({description['dtype']})", ""]
    if description.get("source"):
        lines += [f"Exported by `vitsam export` from `{description['source']}`.", ""]
    lines += ["Files: " + ", ".join(f"`{name}.{ext}`" for name in description["programs"]
                                    for ext in description["formats"]) + ", `metadata.json` (all of this as data).",
              "Named dimensions are symbolic (any size); numbers are fixed.", ""]
    if "stablehlo" in description["formats"]:
        lines += [f"StableHLO (`jax.export`, lowered for {', '.join(description['platforms'])}): "
                  "`jax.export.deserialize(open(f, 'rb').read()).call(*inputs)` with jax alone.", ""]
    if "onnx" in description["formats"]:
        lines += [f"ONNX opset {ONNX_OPSET} (converted with jax2onnx); a `NAME.onnx.data` file next to a model "
                  "holds its weights when they pass 1.8 GB.", ""]
    for program, spec in description["programs"].items():
        lines += [f"## {program}", "", "| | name | shape | dtype | meaning |", "|---|---|---|---|---|"]
        for role, items in (("in", spec["inputs"]), ("out", spec["outputs"])):
            lines += [f"| {role} | `{i['name']}` | {_shape(i['shape'])} | {i['dtype']} | {i['doc']} |" for i in items]
        lines.append("")
    if kind == "sam":
        p = description["onnx_points"]
        lines += [
            "Point slots the prompt set does not use take label -1 (padding); a box is given as `boxes` with "
            "`has_box` 1. The ONNX decoder has a fixed number of point slots "
            f"({p}): pad with label -1.", "",
            "## Example (onnxruntime)", "", "```python",
            "import numpy as np, onnxruntime as ort",
            "from PIL import Image",
            "image = np.asarray(Image.open('photo.jpg').convert('RGB'))",
            "encoder = ort.InferenceSession('image_encoder.onnx')",
            "decoder = ort.InferenceSession('prompt_decoder.onnx')",
            "(emb,) = encoder.run(None, {'images': image[None]})",
            f"coords = np.zeros((1, {p}, 2), np.float32); labels = np.full((1, {p}), -1, np.int32)",
            "coords[0, 0], labels[0, 0] = (500, 375), 1  # one foreground click",
            "m = decoder.get_inputs()[5].shape[-1]",
            "masks, iou, low_res = decoder.run(None, {"
            "'image_embeddings': emb, 'point_coords': coords, 'point_labels': labels,",
            "    'boxes': np.zeros((1, 4), np.float32), 'has_box': np.zeros(1, np.float32),",
            "    'mask_input': np.zeros((1, m, m), np.float32), 'has_mask_input': np.zeros(1, np.float32),",
            "    'original_size': np.empty((*image.shape[:2], 0), np.uint8)})",
            "best = masks[0, 1 + iou[0, 1:].argmax()]  # the best of the three masks for a single click",
            "```", ""]
    else:
        s = description["model"]["image_size"]
        lines += [
            "## Example (onnxruntime)", "", "```python",
            "import json, numpy as np, onnxruntime as ort",
            "from PIL import Image",
            f"image = np.asarray(Image.open('photo.jpg').convert('RGB').resize(({s}, {s}), Image.BICUBIC))",
            "classifier = ort.InferenceSession('classifier.onnx')",
            "(logits,) = classifier.run(None, {'images': image[None]})",
            "names = json.load(open('metadata.json'))['class_names']",
            "top = int(logits[0].argmax())",
            "print(names[top] if names else top, logits[0, top])",
            "```", ""]
    path.write_text("\n".join(lines))
