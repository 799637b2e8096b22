"""The state and request handlers of `vitsam serve` for one loaded model (`vitsam.serve.web` routes HTTP to them).

HTTP API (JSON unless said otherwise; errors are {"error": message} with a 4xx status):
  GET  /                               the page (index.html, app.js)
  GET  /api/info                       {"kind": "sam" | "vit", "text": bool, "examples": [...], limits}
  POST /api/images                     body: the image file's bytes -> {"image": id, "width", "height",
                                       "encode_ms"} (SAM: the image encoder has run; ViT: + "top": top-5
                                       classes, "rollout": attention-rollout PNG data URL)
  POST /api/examples/{name}            the same for a built-in example image
  GET  /api/images/{id}/image.png      the image as the server holds it (upright RGB)
  POST /api/images/{id}/predict        SAM prompts {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1],
                                       "text": str, "mask_input": {"result": id, "index": c}, "multimask": bool}
                                       -> {"result": id, "masks": [PNG data URL: the mask in MASK_RGBA on
                                       transparent], "iou": [...], "best": c, "decoder_ms"}; only the prompt
                                       encoder and mask decoder run
  GET  /api/images/{id}/results/{result}/{c}.png   mask c of a result, black and white (255 inside)
  POST /api/images/{id}/keep           {"result": id, "index": c}: add that mask to the image's annotations
  POST /api/images/{id}/everything     {"points_per_side": 32, "pred_iou_thresh": 0.88,
                                       "stability_score_thresh": 0.95} -> the automatic mask generator's masks:
                                       {"count", "overlay": RGBA PNG data URL, "everything_ms"}
  GET  /api/images/{id}/annotations.json   kept + "everything" masks as an SA-1B annotation file (COCO RLE)
  POST /api/images/{id}/reset          forget the kept and "everything" masks

Coordinates are pixels of the image as shown (EXIF orientation applied), x right, y down. Labels: 1 foreground,
0 background. Ids are random; an image dropped from the bounded cache answers 404 (upload it again).
The model work of a request runs in a worker thread (Starlette's thread pool), one request at a time per image.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from pathlib import Path

import numpy as np

from vitsam.serve.store import LRU, ImageEntry, new_id
from vitsam.serve.uploads import BadUpload

PAGE = Path(__file__).parent / "page"
EXAMPLES = {f"shapes-{i}": i for i in (1, 2, 3)}  # built-in examples: procedural shapes scenes (seed 7)
EXAMPLE_SIZE = 320


def example_image(name: str) -> np.ndarray:
    """A built-in example (H, W, 3) uint8, rendered (vitsam.data.shapes): no file, same pixels everywhere."""
    from vitsam.data.shapes import render_example

    if name not in EXAMPLES:
        raise BadUpload(404, f"no example {name!r}: the examples are {', '.join(EXAMPLES)}")
    return render_example(EXAMPLES[name], EXAMPLE_SIZE, seed=7).image


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) uint8 / bool (True -> 255), (H, W, 3) or (H, W, 4) uint8 -> PNG file bytes."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype == bool:
        array = np.where(array, 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG file bytes -> "data:image/png;base64,..."."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_data_url(image: np.ndarray) -> str:
    """`png_bytes` as a data URL."""
    return data_url(png_bytes(image))


MASK_RGBA = (30, 144, 255, 128)  # how the page shows the current mask


def mask_overlay_png(mask: np.ndarray, rgba=MASK_RGBA) -> bytes:
    """Mask (H, W) bool -> a two-colour palette PNG: transparent outside, `rgba` inside. The page draws it as is
    (no per-pixel work in the browser); it is ~5 ms to encode at 1024 x 768."""
    from PIL import Image

    mask = np.asarray(mask, bool)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.astype(np.uint8).tobytes())
    im.putpalette([0, 0, 0, *rgba[:3]])
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", transparency=bytes([0, rgba[3]]))
    return buffer.getvalue()


def colored_masks(masks, alpha: int = 140) -> np.ndarray:
    """Masks (K, H, W) bool -> an RGBA overlay (H, W, 4) uint8: mask k in `mask_color(k)`, the largest drawn
    first so that small masks stay visible, outlines opaque."""
    from vitsam.mask_generator import mask_color
    from vitsam.overlay import mask_boundary

    masks = np.asarray(masks, bool)
    out = np.zeros((*masks.shape[1:], 4), np.uint8)
    for k in np.argsort(-masks.sum(axis=(1, 2)), kind="stable"):
        color = mask_color(int(k))
        out[masks[k]] = (*color, alpha)
        out[mask_boundary(masks[k])] = (*color, 255)
    return out


def _number_list(value, length: int | None, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise BadUpload(400, f"{what} must be a list of {length} numbers, got {json.dumps(value)[:80]}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadUpload(400, f"{what} must hold finite numbers, got {json.dumps(value)[:80]}")
        out.append(float(v))
    return out


class App:
    """The server's state and request handlers (no HTTP here: `create_app` routes requests to these)."""

    def __init__(self, model, variables: dict, kind: str, *, class_names=None, cache_images: int = 8,
                 max_upload_bytes: int = 20 << 20, max_pixels: int = 40_000_000, source: str = ""):
        if kind not in ("sam", "vit"):
            raise ValueError(f"vitsam serve runs a SAM or a ViT, not a {kind!r} model")
        import jax
        import jax.numpy as jnp

        self.model, self.kind, self.source = model, kind, source
        self.variables = jax.tree.map(jnp.asarray, variables)  # on the device once, shared by every image
        self._vit_logits = jax.jit(model.apply) if kind == "vit" else None  # compiled once, not per upload
        self.class_names = list(class_names) if class_names else None
        self.images = LRU(cache_images)
        self.max_upload_bytes, self.max_pixels = int(max_upload_bytes), int(max_pixels)
        self._everything_lock = threading.Lock()  # one automatic-mask run at a time (it is the heaviest request)

    # ------------------------------------------------------------------ images

    def info(self) -> dict:
        return {"kind": self.kind, "text": bool(self.kind == "sam" and self.model.text),
                "examples": list(EXAMPLES), "max_upload_bytes": self.max_upload_bytes,
                "max_pixels": self.max_pixels, "source": self.source,
                "classes": len(self.class_names) if self.class_names else None}

    def add_image(self, image: np.ndarray, name: str) -> dict:
        """Encode (SAM) or classify (ViT) an image and keep it under a new id."""
        start = time.perf_counter()
        entry = ImageEntry(image=image, name=name)
        answer = {}
        if self.kind == "sam":
            from vitsam.predictor import SamPredictor

            entry.predictor = SamPredictor(self.model, self.variables)
            entry.predictor.set_image(image)
            entry.predictor.get_image_embedding().block_until_ready()
        else:
            answer = self._classify(image)
            entry.answer = answer
        image_id = new_id()
        self.images.put(image_id, entry)
        h, w = entry.size
        return {"image": image_id, "width": w, "height": h, "name": name,
                "encode_ms": round(1000 * (time.perf_counter() - start), 1), **answer}

    def entry(self, image_id: str) -> ImageEntry:
        entry = self.images.get(image_id)
        if entry is None:
            raise BadUpload(404, "unknown image (the server keeps the most recent "
                                 f"{self.images.capacity}): upload it again")
        return entry

    def _classify(self, image: np.ndarray) -> dict:
        """Top-5 classes and the attention rollout of the class token (or of all tokens), as a heat map."""
        from PIL import Image

        from vitsam.figures import attention_rollout, vit_attention_maps

        size = self.model.image_size
        shown = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
        x = shown.astype(np.float32) / 127.5 - 1.0
        logits = np.asarray(self._vit_logits(self.variables, x[None]))[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = [{"class": int(i), "name": self.class_names[i] if self.class_names else f"class {int(i)}",
                "p": float(probs[i])} for i in np.argsort(-probs)[:5]]
        grid = size // self.model.patch_size
        rollout = attention_rollout(vit_attention_maps(self.model, self.variables, x))
        heat = rollout[0, 1:] if self.model.pool == "tok" else rollout.mean(axis=0)
        heat = heat[-grid * grid:].reshape(grid, grid)
        heat = (heat - heat.min()) / max(heat.max() - heat.min(), 1e-12)
        h, w = image.shape[:2]
        alpha = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR))
        overlay = np.zeros((h, w, 4), np.uint8)
        overlay[..., 0], overlay[..., 3] = 255, (alpha.astype(np.float32) * 0.7).astype(np.uint8)
        return {"top": top, "rollout": png_data_url(overlay)}

    # ------------------------------------------------------------------ prompts

    def _require_sam(self) -> None:
        if self.kind != "sam":
            raise BadUpload(400, "this server runs a ViT classifier: prompts need a SAM checkpoint")

    def prompts(self, body: dict, entry: ImageEntry) -> tuple[dict, bool]:
        """The request's prompts as `SamPredictor.predict` keywords, and whether to ask for three masks."""
        if not isinstance(body, dict):
            raise BadUpload(400, "the request body must be a JSON object")
        unknown = set(body) - {"points", "box", "text", "mask_input", "multimask"}
        if unknown:
            raise BadUpload(400, f"unknown field(s) {sorted(unknown)}: use points, box, text, mask_input, multimask")
        kwargs = {}
        points = body.get("points") or []
        if not isinstance(points, list):
            raise BadUpload(400, "points must be a list of [x, y, label]")
        if points:
            rows = [_number_list(p, 3, "each point") for p in points]
            labels = [int(r[2]) for r in rows]
            if any(r[2] not in (0, 1) for r in rows):
                raise BadUpload(400, f"point labels must be 1 (foreground) or 0 (background), got {labels}")
            kwargs["point_coords"] = np.array([r[:2] for r in rows], np.float32)
            kwargs["point_labels"] = np.array(labels, np.int32)
        if body.get("box") is not None:
            kwargs["box"] = np.array(_number_list(body["box"], 4, "box"), np.float32)
        text = body.get("text")
        if text is not None and text != "":
            if not isinstance(text, str) or len(text) > 200:
                raise BadUpload(400, "text must be a string of at most 200 characters")
            if not self.model.text:
                raise BadUpload(400, "this SAM has no text encoder: use points or a box")
            kwargs["text"] = text
        if not kwargs:
            raise BadUpload(400, "no prompt: give points, a box or a text")
        mask_input = body.get("mask_input")
        if mask_input is not None:
            if not isinstance(mask_input, dict) or set(mask_input) != {"result", "index"}:
                raise BadUpload(400, 'mask_input must be {"result": id, "index": c}')
            kwargs["mask_input"] = self._low_res(entry, mask_input)[None]
        multimask = body.get("multimask")
        if multimask is None:  # ambiguous prompts (one point, or a text alone) get three candidates
            multimask = "box" not in kwargs and "mask_input" not in kwargs and len(points) + ("text" in kwargs) == 1
        elif not isinstance(multimask, bool):
            raise BadUpload(400, "multimask must be true, false or null")
        return kwargs, multimask

    def _result(self, entry: ImageEntry, ref: dict):
        result = entry.results.get(str(ref.get("result")))
        index = ref.get("index")
        if result is None:
            raise BadUpload(404, "unknown result id (the server keeps each image's last "
                                 f"{entry.results.capacity} results)")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(result[2]):
            raise BadUpload(400, f"index must be an integer in 0 … {len(result[2]) - 1}, got {index!r}")
        return result, index

    def _low_res(self, entry: ImageEntry, ref: dict) -> np.ndarray:
        (low_res, _, _), index = self._result(entry, ref)
        return low_res[index]

    def predict(self, image_id: str, body: dict) -> dict:
        self._require_sam()
        entry = self.entry(image_id)
        from vitsam.predictor import check_prompts

        kwargs, multimask = self.prompts(body, entry)
        try:
            check_prompts(self.model, entry.size, **kwargs)
        except ValueError as e:
            raise BadUpload(400, str(e)) from None
        with entry.lock:
            start = time.perf_counter()
            masks, iou, low_res = entry.predictor.predict(**kwargs, multimask_output=multimask)
            elapsed = time.perf_counter() - start
        result_id = new_id()
        entry.results.put(result_id, (low_res, masks, iou))
        return {"result": result_id, "masks": [data_url(mask_overlay_png(m)) for m in masks],
                "iou": [float(v) for v in iou], "best": int(np.argmax(iou)),
                "decoder_ms": round(1000 * elapsed, 1)}

    def mask_png(self, image_id: str, result_id: str, index: str) -> bytes:
        """One mask of a result as a black and white PNG (255 inside), for download."""
        entry = self.entry(image_id)
        (_, masks, _), index = self._result(entry, {"result": result_id, "index": int(index)})
        return png_bytes(masks[index])

    def keep(self, image_id: str, body: dict) -> dict:
        """Add a result's mask to the image's annotations."""
        self._require_sam()
        entry = self.entry(image_id)
        if not isinstance(body, dict):
            raise BadUpload(400, 'the request body must be {"result": id, "index": c}')
        (_, masks, iou), index = self._result(entry, body)
        with entry.lock:
            entry.kept.append({"mask": masks[index], "predicted_iou": float(iou[index])})
            count = len(entry.kept)
        return {"kept": count}

    def everything(self, image_id: str, body: dict) -> dict:
        """The automatic mask generator on the whole image; its masks replace the previous run's."""
        self._require_sam()
        entry = self.entry(image_id)
        from vitsam.mask_generator import SamAutomaticMaskGenerator

        body = body or {}
        unknown = set(body) - {"points_per_side", "pred_iou_thresh", "stability_score_thresh"}
        if unknown:
            raise BadUpload(400, f"unknown field(s) {sorted(unknown)}: use points_per_side, pred_iou_thresh, "
                                 "stability_score_thresh")
        n = body.get("points_per_side", 32)
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 64:
            raise BadUpload(400, f"points_per_side must be an integer in 2 … 64, got {n!r}")
        thresholds = {}
        for name, default in (("pred_iou_thresh", 0.88), ("stability_score_thresh", 0.95)):
            value = body.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise BadUpload(400, f"{name} must be a number in [0, 1], got {value!r}")
            thresholds[name] = float(value)
        start = time.perf_counter()
        with self._everything_lock:
            generator = SamAutomaticMaskGenerator(self.model, self.variables, points_per_side=n, **thresholds)
            records = generator.generate(entry.image)
        elapsed = time.perf_counter() - start
        with entry.lock:
            entry.everything = records
        masks = np.array([r["segmentation"] for r in records], bool).reshape(-1, *entry.size)
        return {"count": len(records), "overlay": png_data_url(colored_masks(masks)),
                "everything_ms": round(1000 * elapsed, 1)}

    def annotations(self, image_id: str) -> dict:
        """Kept masks, then the "everything" masks, as an SA-1B annotation file (COCO RLE)."""
        from vitsam.mask_generator import sa1b_record
        from vitsam.mask_ops import mask_to_box_np

        entry = self.entry(image_id)
        h, w = entry.size
        records = []
        with entry.lock:
            for kept in entry.kept:
                x0, y0, x1, y1 = (int(v) for v in mask_to_box_np(kept["mask"]))
                records.append({"segmentation": kept["mask"], "area": int(kept["mask"].sum()),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "predicted_iou": kept["predicted_iou"],
                                "stability_score": math.nan, "point_coords": [], "crop_box": [0, 0, w, h]})
            records.extend(entry.everything)
        return sa1b_record(records, 0, entry.name, h, w)

    def reset(self, image_id: str) -> dict:
        entry = self.entry(image_id)
        with entry.lock:
            entry.kept, entry.everything = [], []
        return {"kept": 0}
