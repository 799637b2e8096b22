"""Interactive SAM 2 on still images: encode an image once, then answer many prompts against its features.

    predictor = Sam2ImagePredictor(model, variables)       # a vitsam.models.sam2.Sam2
    predictor.set_image(image)                              # uint8 (H, W, 3) RGB; runs the image encoder once
    masks, iou, low_res = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    # masks (3, H, W) bool, iou (3,), low_res (3, 256, 256) logits (feed low_res[i][None] back as mask_input)

The interface is `vitsam.SamPredictor`'s (batched prompt sets with a leading N, several images with
`set_images` and `image_index`, the same prompt checks and one-line errors), plus `return_logits`. The
processing is the official `SAM2ImagePredictor`'s (sam2 1.1.0, defaults mask_threshold=0, no hole filling):

- Pre-processing (`SAM2Transforms`): the uint8 image / 255 is resized to S × S, ignoring its aspect ratio
  (torchvision `Resize((S, S))` of a float tensor, which antialiases: bilinear with the triangle filter stretched
  when shrinking, `interpolate.resize_linear_aa`), then normalized with the ImageNet mean and std.
- Prompts: (x, y) pixels of the original image -> pixels of the S × S input, x / W · S and y / H · S. A box
  becomes two corner points labelled 2 and 3, placed before the clicks.
- The stride-16 features get the no-memory embedding (`Sam2.no_memory`) once, in `set_image`.
- Post-processing: the low-res logits (C, 4h, 4w) are resized straight to the original (H, W) (bilinear, half-pixel
  centres, no antialiasing, as `F.interpolate`) and thresholded at `mask_threshold`; the returned low-res logits
  are clamped to ±32.

Compiles: pre-processing once per image size, the encoder once per encoder batch size, the decoder once per
prompt structure (which of points / box / mask are given, multimask or not) and bucket (N prompt sets and P
points padded up to powers of two, as `SamPredictor`), post-processing once per bucket and image size.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.models.sam import processing
from vitsam.models.sam.interpolate import resize_linear_aa
from vitsam.predictor import _check_image, _pad_rows, bucket, check_prompts

# torchvision's Normalize in SAM2Transforms (images in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
LOW_RES_CLAMP = 32.0


def preprocess(image: jnp.ndarray, image_size: int) -> jnp.ndarray:
    """uint8 RGB image (H, W, 3) -> model input (S, S, 3) float32: / 255, antialiased bilinear resize to S × S
    (aspect ratio not kept), (x − mean) / std. Equals the official `SAM2Transforms` to float32 rounding."""
    x = image.astype(jnp.float32) / 255.0
    with jax.default_matmul_precision("float32"):  # the resize is a matmul: no bfloat16 / TF32 on accelerators
        x = resize_linear_aa(resize_linear_aa(x, image_size, axis=0), image_size, axis=1)
    return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


class Sam2ImagePredictor:
    """Cached image features + jitted, bucketed prompt decoding for a `vitsam.models.sam2.Sam2`.

    Args:
      model, variables: a `Sam2` and its variables ({"params", "constants"}).
      mask_threshold: logits above it are in the mask (the official default 0).
      max_prompts: prompt sets decoded per call of the jitted decoder; larger batches run in chunks
        (bounds memory: the full-size masks are max_prompts × C × H × W).
      encode_batch: images encoded per call of the jitted encoder by `set_images`.
    """

    def __init__(self, model, variables: dict, *, mask_threshold: float = 0.0, max_prompts: int = 64,
                 encode_batch: int = 4):
        self.model = model
        self.variables = variables
        self.mask_threshold = float(mask_threshold)
        self.max_prompts = bucket(max_prompts)
        self.encode_batch = max(int(encode_batch), 1)
        self.image_size = model.image_size
        self.reset_image()

    # ------------------------------------------------------------------ images

    def reset_image(self) -> None:
        """Forget the cached images and features."""
        self._features: list[tuple[jax.Array, tuple[jax.Array, jax.Array]]] = []
        self._original_sizes: list[tuple[int, int]] = []

    @property
    def is_image_set(self) -> bool:
        return bool(self._features)

    @property
    def num_images(self) -> int:
        return len(self._features)

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the first image (`original_sizes` lists all)."""
        self._require_image(0)
        return self._original_sizes[0]

    @property
    def original_sizes(self) -> list[tuple[int, int]]:
        return list(self._original_sizes)

    def set_image(self, image) -> None:
        """Encode one uint8 RGB image (H, W, 3) and cache its features (replaces earlier images)."""
        self.set_images([_check_image(image)])

    def set_images(self, images) -> None:
        """Encode several uint8 RGB images — a list of (H_i, W_i, 3) or an array (B, H, W, 3) — in batches of
        `encode_batch`, and cache their features; `predict(..., image_index=i)` then prompts image i."""
        if isinstance(images, (np.ndarray, jax.Array)) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("set_images expects a non-empty list of uint8 (H, W, 3) images or a (B, H, W, 3) array")
        images = [_check_image(im, f"image {i}") for i, im in enumerate(images)]
        inputs = [_preprocess(im, self.image_size) for im in images]
        features = []
        for start in range(0, len(inputs), self.encode_batch):
            chunk = inputs[start:start + self.encode_batch]
            rows = min(bucket(len(chunk)), self.encode_batch)  # padded with copies, dropped below
            features += _encode(self.model, self.variables, tuple(chunk + chunk[:1] * (rows - len(chunk))))[:len(chunk)]
        self._features = features
        self._original_sizes = [tuple(int(d) for d in im.shape[:2]) for im in images]

    def get_image_embedding(self, image_index: int = 0) -> jax.Array:
        """The cached stride-16 features of an image, with the no-memory embedding added (as the official
        `get_image_embedding`): (h, w, D), (64, 64, 256) at 1024 px."""
        self._require_image(image_index)
        return self._features[image_index][0]

    def _require_image(self, image_index: int) -> None:
        if not self._features:
            raise RuntimeError("no image set: call set_image(image) before predicting")
        if not 0 <= image_index < len(self._features):
            raise IndexError(f"image_index {image_index} out of range: {len(self._features)} image(s) set")

    # ------------------------------------------------------------------ prompts

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output: bool = True,
                return_logits: bool = False, image_index: int = 0):
        """Masks for one prompt or a batch of N prompt sets, in (x, y) pixels of the original image.

        Single: point_coords (P, 2) with point_labels (P,) (1 foreground, 0 background, -1 padding), box (4,)
        x0, y0, x1, y1, mask_input (1, m, m) or (m, m) low-res logits (a previous `low_res`). Batched: a leading N
        on each given prompt. Returns numpy arrays masks (C, H, W) bool (float32 logits with `return_logits`),
        iou (C,) float32, low_res (C, m, m) float32 in [-32, 32] — each with a leading N when batched.
        C = 3 with `multimask_output`, else 1; m = 4h = `model.mask_input_size`.
        """
        self._require_image(image_index)
        prompts, batched = check_prompts(self.model, self._original_sizes[image_index], point_coords, point_labels,
                                         box, mask_input)
        n = next(len(v) for v in prompts.values())
        outs = []
        for start in range(0, n, self.max_prompts):
            chunk = {k: v[start:start + self.max_prompts] for k, v in prompts.items()}
            outs.append(self._predict_chunk(chunk, bool(multimask_output), bool(return_logits), image_index))
        masks, iou, low = (np.concatenate(x) if len(x) > 1 else x[0] for x in zip(*outs))
        if not batched:
            return masks[0], iou[0], low[0]
        return masks, iou, low

    def _predict_chunk(self, prompts: dict, multimask_output: bool, return_logits: bool, image_index: int):
        n = next(len(v) for v in prompts.values())
        rows = bucket(n)
        args = {}
        original = self._original_sizes[image_index]
        coords, labels = input_points(prompts, original, self.image_size)
        if coords is not None:
            p = bucket(coords.shape[1])
            coords = np.pad(coords, ((0, 0), (0, p - coords.shape[1]), (0, 0)))
            labels = np.pad(labels, ((0, 0), (0, p - labels.shape[1])), constant_values=processing.PAD)
            args["point_coords"], args["point_labels"] = _pad_rows(coords, rows), _pad_rows(labels, rows, -1)
        if "mask_input" in prompts:
            args["mask_input"] = _pad_rows(prompts["mask_input"], rows)
        pix_feat, high_res = self._features[image_index]
        low, iou = _decode(self.model, self.variables, pix_feat, high_res, **args, multimask_output=multimask_output)
        masks, low = _postprocess(low, original, np.float32(self.mask_threshold), return_logits)
        # Transfer whole buckets and slice on the host: slicing on device would compile once per n.
        return np.asarray(masks)[:n], np.asarray(iou, np.float32)[:n], np.asarray(low, np.float32)[:n]


def input_points(prompts: dict, original_size: tuple[int, int], image_size: int):
    """`check_prompts`' output for an image of `original_size` (H, W) -> the decoder's points in pixels of the
    S × S input: coords (N, P, 2) float32 and labels (N, P) int32, box corners (labels 2, 3) before the clicks as
    in the official `_predict`; (None, None) without points or box. x / W · S and y / H · S in float32, the
    official `transform_coords` operation for operation."""
    h, w = original_size
    size, scale = np.array([w, h], np.float32), np.float32(image_size)
    coords, labels = [], []
    if "box" in prompts:
        boxes = prompts["box"]
        coords.append(boxes.reshape(-1, 2, 2))
        corner_labels = [processing.BOX_TOP_LEFT, processing.BOX_BOTTOM_RIGHT]
        labels.append(np.broadcast_to(np.array(corner_labels, np.int32), (len(boxes), 2)))
    if "point_coords" in prompts:
        coords.append(prompts["point_coords"])
        labels.append(prompts["point_labels"])
    if not coords:
        return None, None
    coords = np.concatenate(coords, axis=1).astype(np.float32)
    return coords / size * scale, np.concatenate(labels, axis=1).astype(np.int32)


# Module-level jitted steps with the model static: predictors of equal models share compiled programs.
_preprocess = jax.jit(preprocess, static_argnums=1)


@partial(jax.jit, static_argnums=0)
def _encode(model, variables, inputs):
    """A tuple of B model inputs (S, S, 3) -> a tuple of B (pix_feat (h, w, D), (high_res (4h, 4w, D/8),
    (2h, 2w, D/4))), pix_feat with the no-memory embedding added."""
    feats = model.apply(variables, jnp.stack(inputs), method=model.encode_image)
    pix = model.apply(variables, feats.vision, method=model.no_memory)
    s0, s1 = feats.high_res
    return tuple((pix[i], (s0[i], s1[i])) for i in range(len(inputs)))


@partial(jax.jit, static_argnames=("model", "multimask_output"))
def _decode(model, variables, pix_feat, high_res, point_coords=None, point_labels=None, mask_input=None, *,
            multimask_output: bool):
    """One image's features (pix_feat (h, w, D), high_res), N prompt rows in pixels of the S × S input
    -> low-res logits (N, C, 4h, 4w), IoU (N, C)."""
    high = tuple(x[None] for x in high_res)  # shared by the N prompt sets
    masks, iou, _, _ = model.apply(variables, pix_feat[None], high, point_coords, point_labels, mask_input,
                                   multimask_output, method=model.decode)
    return masks, iou


@partial(jax.jit, static_argnums=(1, 3))
def _postprocess(low_res, original_size, threshold, return_logits: bool):
    """Low-res logits (N, C, 4h, 4w) -> (masks (N, C, H, W) bool, or float32 logits with `return_logits`;
    low-res logits clamped to ±32)."""
    logits = processing.resize_bilinear(low_res, original_size)
    masks = logits if return_logits else logits > threshold
    return masks, jnp.clip(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP)
