"""SAM's prompt encoder: points and boxes to sparse tokens, a low-res mask to a dense embedding.

Positions are encoded with random Fourier features (Tancik et al. 2020): a point (x, y) in [0, 1]² maps to
[sin(2π (2p − 1) G), cos(2π (2p − 1) G)] with G a fixed Gaussian (2, D/2) matrix. G is not trained; it lives
in the "constants" collection (the official code keeps it as a buffer), so optimizers see only "params".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Point labels (processing.py owns SAM's prompt vocabulary): as in the official SamPredictor (1 foreground,
# 0 background, -1 padding / not-a-point) and the box corners (2 top-left, 3 bottom-right).
from vitsam.models.sam.processing import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, PAD, POSITIVE  # noqa: F401
from vitsam.nn import get_activation


def fourier_features(coords: jnp.ndarray, gaussian: jnp.ndarray) -> jnp.ndarray:
    """Random Fourier encoding of coordinates in [0, 1]: (..., 2) -> (..., 2·F) for gaussian (2, F)."""
    proj = (2.0 * coords.astype(jnp.float32) - 1.0) @ gaussian.astype(jnp.float32)
    proj = 2.0 * np.pi * proj
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class PromptEncoder(nn.Module):
    """Embeds points, boxes and masks for the mask decoder (dimension `dim`).

    Parameters: `point_embeddings` (4, D) for labels 0, 1, 2, 3; `not_a_point_embed` (D,);
    `no_mask_embed` (D,); mask downscaling `mask_conv1` 2×2/2 (1 → C/4), `mask_norm1`, `mask_conv2`
    2×2/2 (C/4 → C), `mask_norm2`, `mask_conv3` 1×1 (C → D), with C = `mask_in_chans` and exact GELU.
    Constant: `pe_gaussian` (2, D/2) in the "constants" collection, drawn from N(0, `pe_scale`²) (the official
    `PositionEmbeddingRandom(scale)`, 1.0 in every released SAM). Two points d apart (as a fraction of the
    side) have encodings whose mean product is exp(−8π² pe_scale² d²) in expectation: half of its peak at
    d ≈ 0.094 / pe_scale, the precision to which the decoder can tell where a prompt point is. The scale acts
    only when the matrix is drawn: a loaded or converted model brings its own.
    """

    dim: int = 256
    mask_in_chans: int = 16
    pe_scale: float = 1.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.dim % 2:
            raise ValueError(f"prompt dim must be even (sin/cos pairs), got {self.dim}")
        if not self.pe_scale > 0:
            raise ValueError(f"pe_scale must be positive, got {self.pe_scale}")
        self.pe_gaussian = self.variable(
            "constants", "pe_gaussian",
            lambda: self.pe_scale * jax.random.normal(self.make_rng("params"), (2, self.dim // 2)))
        embed_init = nn.initializers.normal(1.0)  # torch.nn.Embedding's default
        self.point_embeddings = self.param("point_embeddings", embed_init, (4, self.dim), self.param_dtype)
        self.not_a_point_embed = self.param("not_a_point_embed", embed_init, (self.dim,), self.param_dtype)
        self.no_mask_embed = self.param("no_mask_embed", embed_init, (self.dim,), self.param_dtype)
        c = self.mask_in_chans
        conv = lambda f, k, name: nn.Conv(f, (k, k), strides=(k, k), padding="VALID", dtype=self.dtype,  # noqa: E731
                                          param_dtype=self.param_dtype, name=name)
        norm = lambda name: nn.LayerNorm(1e-6, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                         use_fast_variance=False, name=name)
        self.mask_conv1, self.mask_norm1 = conv(c // 4, 2, "mask_conv1"), norm("mask_norm1")
        self.mask_conv2, self.mask_norm2 = conv(c, 2, "mask_conv2"), norm("mask_norm2")
        self.mask_conv3 = conv(self.dim, 1, "mask_conv3")

    def dense_pe(self, h: int, w: int) -> jnp.ndarray:
        """The positional encoding of every cell centre of an h×w grid: (h, w, D)."""
        ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (h, w, 2) as (x, y)
        return fourier_features(grid, self.pe_gaussian.value)

    def embed_points(self, coords: jnp.ndarray, labels: jnp.ndarray, frame: tuple[int, int]) -> jnp.ndarray:
        """(N, P, 2) pixel (x, y) in the input frame (H, W), labels (N, P) -> (N, P, D).

        Label -1 gives the not-a-point embedding (its position is ignored); labels 0–3 add their embedding
        to the position encoding of the pixel centre.
        """
        h, w = frame
        xy = (coords.astype(jnp.float32) + 0.5) / jnp.array([w, h], jnp.float32)
        pe = fourier_features(xy, self.pe_gaussian.value)
        labels = labels[..., None]
        label_embed = jnp.take(self.point_embeddings, jnp.clip(labels[..., 0], 0, 3), axis=0).astype(jnp.float32)
        out = jnp.where(labels == PAD, self.not_a_point_embed.astype(jnp.float32), pe + label_embed)
        # Labels outside -1…3 get the position only (as unknown labels do in the official code).
        return jnp.where((labels < PAD) | (labels > BOX_BOTTOM_RIGHT), pe, out)

    def embed_boxes(self, boxes: jnp.ndarray, frame: tuple[int, int]) -> jnp.ndarray:
        """(N, 4) boxes x0, y0, x1, y1 -> two corner tokens (N, 2, D) (labels 2 and 3)."""
        corners = boxes.reshape(-1, 2, 2)
        labels = jnp.broadcast_to(jnp.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]), corners.shape[:2])
        return self.embed_points(corners, labels, frame)

    def embed_masks(self, masks: jnp.ndarray) -> jnp.ndarray:
        """Low-res mask logits (N, 4h, 4w, 1) -> dense embedding (N, h, w, D)."""
        gelu = get_activation("gelu")
        x = gelu(self.mask_norm1(self.mask_conv1(masks)))
        x = gelu(self.mask_norm2(self.mask_conv2(x)))
        return self.mask_conv3(x)

    def no_mask(self, n: int, h: int, w: int) -> jnp.ndarray:
        """The dense embedding when no mask is given: (n, h, w, D)."""
        return jnp.broadcast_to(self.no_mask_embed.astype(jnp.float32), (n, h, w, self.dim))

    def __call__(self, coords, labels, boxes, masks, grid: tuple[int, int], frame: tuple[int, int]):
        """Touches every parameter (used at init): returns (points, boxes, dense, no-mask, dense PE)."""
        n = coords.shape[0]
        return (self.embed_points(coords, labels, frame), self.embed_boxes(boxes, frame), self.embed_masks(masks),
                self.no_mask(n, *grid), self.dense_pe(*grid))
