"""Interactive SAM: encode an image once, then answer many prompts against the cached embedding.

    predictor = SamPredictor(model, variables)
    predictor.set_image(image)                      # uint8 (H, W, 3) RGB; runs the image encoder once
    masks, iou, low_res = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    # masks (3, H, W) bool, iou (3,), low_res (3, 256, 256) logits (feed low_res[i][None] back as mask_input)

    # batched: N prompt sets for the same image in one call
    masks, iou, low_res = predictor.predict(box=np.array([[10, 20, 200, 300], [50, 60, 90, 120]]))  # (2, 3, H, W)

    # several images: one batched encoder call, then prompts per image
    predictor.set_images([image_a, image_b])
    predictor.predict(point_coords=..., point_labels=..., image_index=1)

Coordinates are (x, y) pixels of the original image, as in the official `SamPredictor`. Points have labels
1 (foreground), 0 (background), 2 / 3 (box corners: a box equals its corners with these labels) and -1
(padding, ignored). A single prompt is unbatched: point_coords (P, 2), point_labels (P,), box (4,),
text a string, mask_input (1, m, m) or (m, m); a batch of N prompt sets adds a leading N: (N, P, 2), (N, P),
(N, 4), a list of N strings, (N, m, m); all given prompts must agree. m = `model.mask_input_size`.
Each prompt set needs a real prompt (not only padding points, not a text without words), and mask_input
must be finite. `check_prompts(model, (H, W), ...)` runs these checks without an image embedding, e.g.
before the slow encoder.

Compiles: the image encoder compiles once per encoder batch size (images are resized and padded to the fixed
S × S input first; the cheap pre-processing compiles once per image size). The decoder compiles once per
prompt structure (which of points / box / mask / text are given, multimask or not) and per bucket: N prompt
sets and P points per set are padded up to powers of two (padding rows are dropped, padding points carry the
label -1, which the model ignores), so calls with, say, 5, 6 or 7 boxes share one compiled program. The
post-processing compiles once per bucket and image size.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam import processing
from vitsam.models.sam.text_encoder import split_words

_LABELS = (-1, 0, 1, 2, 3)
_NO_TEXT_ENCODER = "this model has no text encoder: text prompts need a Sam built with text=True"


def bucket(n: int) -> int:
    """The padded size for n items: the next power of two (1, 2, 4, 8, …)."""
    return 1 << max(n - 1, 0).bit_length()


def _pad_rows(x: np.ndarray, rows: int, value=0) -> np.ndarray:
    """Pad axis 0 of x to `rows` with `value`."""
    return np.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1), constant_values=value)


class SamPredictor:
    """Cached image embeddings + jitted, bucketed prompt decoding for a `vitsam.models.Sam`.

    Args:
      model, variables: a `Sam` and its variables ({"params", "constants"}).
      max_prompts: prompt sets decoded per call of the jitted decoder; larger batches run in chunks
        (bounds memory: the full-size masks are max_prompts × C × H × W).
      encode_batch: images encoded per call of the jitted encoder by `set_images`.
    """

    def __init__(self, model, variables: dict, *, max_prompts: int = 64, encode_batch: int = 4):
        self.model = model
        self.variables = variables
        self.max_prompts = bucket(max_prompts)
        self.encode_batch = max(int(encode_batch), 1)
        self.image_size = model.image_size
        self.reset_image()

    # ------------------------------------------------------------------ images

    def reset_image(self) -> None:
        """Forget the cached images and embeddings."""
        self._embeddings: list[jax.Array] = []
        self._original_sizes: list[tuple[int, int]] = []
        self._input_sizes: list[tuple[int, int]] = []

    @property
    def is_image_set(self) -> bool:
        return bool(self._embeddings)

    @property
    def num_images(self) -> int:
        return len(self._embeddings)

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the first image (`original_sizes` lists all)."""
        self._require_image(0)
        return self._original_sizes[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """(new_h, new_w), the first image's size after resizing (`input_sizes` lists all)."""
        self._require_image(0)
        return self._input_sizes[0]

    @property
    def original_sizes(self) -> list[tuple[int, int]]:
        return list(self._original_sizes)

    @property
    def input_sizes(self) -> list[tuple[int, int]]:
        return list(self._input_sizes)

    def set_image(self, image) -> None:
        """Encode one uint8 RGB image (H, W, 3) and cache its embedding (replaces earlier images).

        Returns once the encoder is dispatched (JAX is asynchronous); `predict` waits for it as needed."""
        image = _check_image(image)
        self.set_images([image])

    def set_images(self, images) -> None:
        """Encode several uint8 RGB images — a list of (H_i, W_i, 3) or an array (B, H, W, 3) — in batches
        of `encode_batch`, and cache their embeddings; `predict(..., image_index=i)` then prompts image i."""
        if isinstance(images, (np.ndarray, jax.Array)) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("set_images expects a non-empty list of uint8 (H, W, 3) images or a (B, H, W, 3) array")
        images = [_check_image(im, f"image {i}") for i, im in enumerate(images)]
        inputs = [_preprocess(im, self.image_size) for im in images]
        embeddings = []
        for start in range(0, len(inputs), self.encode_batch):
            chunk = inputs[start:start + self.encode_batch]
            rows = min(bucket(len(chunk)), self.encode_batch)  # padded with copies, dropped below
            padded = tuple(chunk + chunk[:1] * (rows - len(chunk)))
            embeddings += _encode(self.model, self.variables, padded)[:len(chunk)]
        self._embeddings = embeddings
        self._original_sizes = [tuple(int(d) for d in im.shape[:2]) for im in images]
        self._input_sizes = [processing.resized_shape(*size, self.image_size) for size in self._original_sizes]

    def get_image_embedding(self, image_index: int = 0) -> jax.Array:
        """The cached embedding of an image: (h, w, D), (64, 64, 256) for the 1024-px models."""
        self._require_image(image_index)
        return self._embeddings[image_index]

    def _require_image(self, image_index: int) -> None:
        if not self._embeddings:
            raise RuntimeError("no image set: call set_image(image) before predicting")
        if not 0 <= image_index < len(self._embeddings):
            raise IndexError(f"image_index {image_index} out of range: {len(self._embeddings)} image(s) set")

    # ------------------------------------------------------------------ prompts

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, text=None,
                multimask_output: bool = True, image_index: int = 0):
        """Masks for one prompt or a batch of N prompt sets (see the module docstring for shapes).

        Returns numpy arrays: masks (C, H, W) bool, iou_predictions (C,) float32, low_res_logits (C, m, m)
        float32 — with a leading N when the prompts are batched. C = 3 with `multimask_output`, else 1.
        """
        if text is not None and not self.model.text:
            raise ValueError(_NO_TEXT_ENCODER)
        self._require_image(image_index)
        prompts, batched = check_prompts(self.model, self._original_sizes[image_index], point_coords, point_labels,
                                         box, mask_input, text)
        n = next(len(v) for v in prompts.values())
        masks, ious, lows = [], [], []
        for start in range(0, n, self.max_prompts):
            chunk = {k: v[start:start + self.max_prompts] for k, v in prompts.items()}
            m, iou, low = self._predict_chunk(chunk, bool(multimask_output), image_index)
            masks.append(m)
            ious.append(iou)
            lows.append(low)
        masks, ious, lows = (np.concatenate(x) if len(x) > 1 else x[0] for x in (masks, ious, lows))
        if not batched:
            return masks[0], ious[0], lows[0]
        return masks, ious, lows

    def _predict_chunk(self, prompts: dict, multimask_output: bool, image_index: int):
        n = next(len(v) for v in prompts.values())
        rows = bucket(n)
        args = {}
        if "point_coords" in prompts:
            coords, labels = prompts["point_coords"], prompts["point_labels"]
            p = bucket(coords.shape[1])
            coords = np.pad(coords, ((0, 0), (0, p - coords.shape[1]), (0, 0)))
            labels = np.pad(labels, ((0, 0), (0, p - labels.shape[1])), constant_values=-1)
            args["point_coords"], args["point_labels"] = _pad_rows(coords, rows), _pad_rows(labels, rows, -1)
        for key in ("box", "mask_input", "text_ids"):
            if key in prompts:
                args[key] = _pad_rows(prompts[key], rows)
        original, resized = self._original_sizes[image_index], self._input_sizes[image_index]
        scale = np.array([resized[1] / original[1], resized[0] / original[0]], np.float32)  # (x, y)
        low, iou = _decode(self.model, self.variables, self._embeddings[image_index], scale, **args,
                           multimask_output=multimask_output)
        masks = _postprocess(low, resized, original, self.image_size)
        # Transfer whole buckets and slice on the host: slicing on device would compile once per n.
        return np.asarray(masks)[:n], np.asarray(iou)[:n], np.asarray(low, np.float32)[:n]


# The jitted steps are module-level with the model as a static argument, so predictors of equal models
# (e.g. the same checkpoint loaded twice) share compiled programs.
_preprocess = jax.jit(processing.preprocess, static_argnums=1)
_postprocess = jax.jit(processing.postprocess_masks, static_argnums=(1, 2, 3))


@partial(jax.jit, static_argnums=0)
def _encode(model, variables, inputs):
    """A tuple of B model inputs (S, S, 3) -> a tuple of B embeddings (h, w, D), one encoder call."""
    return tuple(model.apply(variables, jnp.stack(inputs), method=model.encode_image))


@partial(jax.jit, static_argnames=("model", "multimask_output"))
def _decode(model, variables, embedding, scale, point_coords=None, point_labels=None, box=None, mask_input=None,
            text_ids=None, *, multimask_output: bool):
    """embedding (h, w, D), scale (2,) original -> input frame, prompts with N rows (in original pixels)
    -> low-res logits (N, C, m, m), IoU predictions (N, C)."""
    emb = embedding[None]  # shared by the N prompt sets
    if point_coords is not None:
        point_coords = point_coords * scale
    if box is not None:
        box = (box.reshape(-1, 2, 2) * scale).reshape(-1, 4)
    if mask_input is not None:
        mask_input = mask_input[..., None]
    return model.apply(variables, emb, point_coords, point_labels, box, mask_input, text_ids, multimask_output,
                       method=model.decode)


def check_prompts(model, original_size: tuple[int, int], point_coords=None, point_labels=None, box=None,
                  mask_input=None, text=None) -> tuple[dict, bool]:
    """Validate and normalize `predict`'s prompts for an image of `original_size` (H, W) and a `Sam` model
    -> ({name: array with a leading N}, batched), or a one-line ValueError.

    Needs no image embedding, so callers can check prompts before the (slow) image encoder runs.
    """
    h, w = original_size
    m = model.mask_input_size
    out, batched = {}, {}

    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords = np.asarray(point_coords, np.float64)
        labels = np.asarray(point_labels)
        if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
            raise ValueError(f"point_coords must be (P, 2) or (N, P, 2) (x, y) pixels, got shape {coords.shape}")
        if labels.shape != coords.shape[:-1]:
            raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords "
                             f"{coords.shape}, got {labels.shape}")
        if coords.shape[-2] == 0:
            raise ValueError("point_coords holds no points")
        if not np.all(np.isin(labels, _LABELS)):
            bad = sorted(set(np.asarray(labels).ravel().tolist()) - set(_LABELS))
            raise ValueError(f"point labels must be 1 (foreground), 0 (background), 2 / 3 (box corners) or "
                             f"-1 (padding), got {bad}")
        real = labels != -1
        if not np.all(np.isfinite(coords[real])):
            raise ValueError("point_coords must be finite")
        outside = real & ((coords[..., 0] < 0) | (coords[..., 0] > w) | (coords[..., 1] < 0) | (coords[..., 1] > h))
        if np.any(outside):
            x, y = coords[outside][0]
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} (width x height) image; "
                             f"coordinates are (x, y) pixels of the original image")
        batched["point_coords"] = coords.ndim == 3
        out["point_coords"] = np.asarray(coords.reshape(-1, *coords.shape[-2:]), np.float32)
        out["point_labels"] = labels.reshape(-1, labels.shape[-1]).astype(np.int32)

    if box is not None:
        boxes = np.asarray(box, np.float64)
        if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
            raise ValueError(f"box must be (4,) or (N, 4) as x0, y0, x1, y1, got shape {boxes.shape}")
        b = boxes.reshape(-1, 4)
        if not np.all(np.isfinite(b)):
            raise ValueError("box must be finite")
        inverted = (b[:, 0] > b[:, 2]) | (b[:, 1] > b[:, 3])
        if np.any(inverted):
            raise ValueError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, "
                             f"got {b[inverted][0].tolist()}")
        outside = np.any(b < 0, axis=1) | (b[:, 2] > w) | (b[:, 3] > h)
        if np.any(outside):
            raise ValueError(f"box {b[outside][0].tolist()} lies outside the {w}x{h} (width x height) image; "
                             f"coordinates are (x, y) pixels of the original image")
        batched["box"] = boxes.ndim == 2
        out["box"] = b.astype(np.float32)

    if text is not None:
        if not model.text:
            raise ValueError(_NO_TEXT_ENCODER)
        if isinstance(text, str):
            texts, batched["text"] = [text], False
        elif isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
            texts, batched["text"] = list(text), True
        else:
            raise ValueError("text must be a string or a non-empty list of strings")
        for i, t in enumerate(texts):
            if not split_words(t):  # the tokenizer would give only padding ids: no prompt at all
                what = f"text[{i}]" if batched["text"] else "text"
                raise ValueError(f"{what} {t!r} is empty (no letters or digits): give a phrase such as 'a red square'")
        out["text_ids"] = np.asarray(model.tokenize(texts), np.int32)

    if mask_input is not None:
        mask = np.asarray(mask_input, np.float32)
        if mask.shape[-2:] != (m, m) or mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
            raise ValueError(f"mask_input must be low-res logits ({m}, {m}), (1, {m}, {m}), (N, {m}, {m}) or "
                             f"(N, 1, {m}, {m}) (e.g. a previous low_res_logits), got shape {mask.shape}")
        if mask.ndim == 2:
            mask_batched, mask = False, mask[None]
        elif mask.ndim == 4:
            mask_batched, mask = True, mask[:, 0]
        else:  # (k, m, m): batched if the other prompts are, or if k > 1 when it is the only prompt
            others = set(batched.values())
            mask_batched = others == {True} or (not others and mask.shape[0] > 1)
            if not mask_batched and mask.shape[0] != 1:
                raise ValueError(f"a single prompt takes mask_input (1, {m}, {m}) or ({m}, {m}), "
                                 f"got shape {mask.shape}")
        if not np.all(np.isfinite(mask)):
            raise ValueError("mask_input must be finite low-res logits, got NaN or inf values")
        batched["mask_input"] = mask_batched
        out["mask_input"] = mask

    if not out:
        raise ValueError("no prompt given: pass point_coords + point_labels, box, mask_input or text")
    if len(set(batched.values())) > 1:
        kinds = ", ".join(f"{k} {'batched' if v else 'single'}" for k, v in batched.items())
        raise ValueError(f"mix of single and batched prompts ({kinds}); give all with a leading N or none")
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batched prompts disagree on N: {sizes}")
    if min(sizes.values()) == 0:
        raise ValueError("the batch of prompts is empty (N = 0)")
    is_batched = next(iter(batched.values()))
    if set(out) == {"point_coords", "point_labels"}:  # points are the only prompt: each set needs a real one
        padding_only = np.all(out["point_labels"] == processing.PAD, axis=1)
        if np.any(padding_only):
            what = f"prompt set {int(np.argmax(padding_only))}" if is_batched else "the prompt"
            raise ValueError(f"{what} has only padding points (label -1): give a point labelled 1 (foreground) or "
                             f"0 (background), a box, text or mask_input")
    return out, is_batched


def _check_image(image, what: str = "image") -> np.ndarray:
    """A uint8 RGB (H, W, 3) array, or a clear error."""
    if not isinstance(image, (np.ndarray, jax.Array)):
        raise ValueError(f"{what} must be a uint8 (H, W, 3) RGB array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (values 0-255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (grayscale: stack it to 3 channels)" if image.ndim == 2 else \
            " (RGBA: drop the alpha channel)" if image.ndim == 3 and image.shape[-1] == 4 else ""
        raise ValueError(f"{what} must be (H, W, 3) RGB, got shape {tuple(image.shape)}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(image.shape)}")
    return np.asarray(image)
