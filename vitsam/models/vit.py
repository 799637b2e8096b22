"""Vision Transformer classifier (Dosovitskiy et al. 2020) built from `vitsam.nn`.

images (B, H, W, C) -> patches (B, H/P·W/P, D) -> [class token; patches] + positions -> encoder
-> final norm -> head on the class token (or on the mean of the patch tokens) -> logits (B, num_classes).

Parameter names follow big_vision / vit_jax: `embedding` (conv kernel (P, P, C, D)), `cls` (1, 1, D),
`pos_embedding` (1, N+1, D) including the class token's position as in vit_jax and timm,
`Transformer/encoderblock_{i}` (or `Transformer/encoderblock` stacked when scanned),
`Transformer/encoder_norm`, optional `pre_logits`, `head`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from vitsam.nn import Encoder, PatchEmbedding, sinusoidal_encoding, sinusoidal_encoding_2d

# name -> (width D, depth, mlp dim, heads); the patch size is the number after the slash.
SIZES = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
VARIANTS = ("Ti/16", "S/16", "B/16", "B/32", "L/16", "H/14")
POSEMBS = ("learn", "sincos1d", "sincos2d")
POOLS = ("tok", "gap")


class VisionTransformer(nn.Module):
    """ViT: NHWC images (B, H, W, C) -> logits (B, num_classes) in float32; C = 3 (RGB), or the channels of
    a loaded patch kernel.

    `apply(variables, images, train=True, rngs={"dropout": key})` enables dropout and stochastic depth.
    The learned position table is sized for `image_size`; other sizes need a resampled table
    (the checkpoint importers do that).
    """

    num_classes: int = 1000
    patch_size: int = 16
    patch_formulation: str = "conv"  # "dense": patchify + one matmul, the same parameters (faster on CPU)
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    image_size: int = 224
    posemb: str = "learn"
    pool: str = "tok"
    representation_size: int | None = None
    activation: str | Callable = "gelu"
    dropout: float = 0.0
    drop_path: float = 0.0
    attention_impl: str = "einsum"
    scan: bool = False
    remat: bool = False
    sow_weights: bool = False
    head_zero_init: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def setup_check(self):
        if self.posemb not in POSEMBS:
            raise ValueError(f"unknown posemb {self.posemb!r}; valid: {POSEMBS}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; valid: {POOLS}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by the number of heads {self.num_heads}")

    def _input_channels(self) -> int:
        """Channels C the model takes: those of its patch kernel (P, P, C, D) once it has parameters, else 3
        (RGB, what `init` builds). Static, so the check in `__call__` costs nothing under jit."""
        kernel = self.variables.get("params", {}).get("embedding", {}).get("kernel")
        return 3 if kernel is None else kernel.shape[2]

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        self.setup_check()
        channels = self._input_channels()
        if images.ndim != 4 or images.shape[-1] != channels:
            hint = " (add the batch axis: images[None])" if images.ndim == 3 and images.shape[-1] == channels else ""
            raise ValueError(f"ViT expects NHWC images (B, H, W, {channels}), got shape {tuple(images.shape)}{hint}")
        b, h, w, _ = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        dtype = self.dtype or jnp.float32
        x = PatchEmbedding(self.patch_size, self.width, formulation=self.patch_formulation, dtype=dtype,
                           param_dtype=self.param_dtype, name="embedding")(images.astype(dtype))
        gh, gw = x.shape[1], x.shape[2]
        x = x.reshape(b, gh * gw, self.width)

        if self.posemb == "sincos2d":
            x = x + sinusoidal_encoding_2d(gh, gw, self.width, dtype).reshape(1, gh * gw, self.width)
        if self.pool == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, self.width)), x], axis=1)
        n = x.shape[1]
        if self.posemb == "learn":
            grid = self.image_size // self.patch_size
            expected = grid * grid + (self.pool == "tok")
            if n != expected:
                raise ValueError(
                    f"images of {h}x{w} give {n} tokens but the learned position table is sized for "
                    f"image_size={self.image_size} ({expected} tokens); pass image_size={h} or resample the table")
            pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, n, self.width), self.param_dtype)
            x = x + pos.astype(dtype)
        elif self.posemb == "sincos1d":
            x = x + sinusoidal_encoding(n, self.width, dtype)[None]

        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = Encoder(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
            dropout=self.dropout, drop_path=self.drop_path, attention_impl=self.attention_impl, scan=self.scan,
            remat=self.remat, sow_weights=self.sow_weights, dtype=dtype, param_dtype=self.param_dtype,
            name="Transformer",
        )(x, deterministic=not train)

        x = x[:, 0] if self.pool == "tok" else x.mean(axis=1)
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=dtype, param_dtype=self.param_dtype,
                                  name="pre_logits")(x))
        head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
        logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=dtype, param_dtype=self.param_dtype,
                          name="head")(x)
        return logits.astype(jnp.float32)


def decode_variant(name: str) -> dict:
    """"B/16" -> the size fields of that variant (width, depth, mlp_dim, num_heads, patch_size)."""
    if name not in VARIANTS:
        size, _, patch = name.partition("/")
        if not (size in SIZES and patch.isdigit() and int(patch) > 0):
            raise ValueError(f"unknown ViT variant {name!r}; valid: {', '.join(VARIANTS)}")
    size, patch = name.split("/")
    width, depth, mlp_dim, heads = SIZES[size]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, patch_size=int(patch))


def vit_variant(name: str, num_classes: int = 1000, **overrides) -> VisionTransformer:
    """A ViT by variant name ("Ti/16", "S/16", "B/16", "B/32", "L/16", "H/14"; any size with another
    patch, e.g. "S/8", also works). `overrides` replace any field of `VisionTransformer`."""
    fields = decode_variant(name)
    fields.update(num_classes=num_classes, **overrides)
    unknown = set(fields) - set(VisionTransformer.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise TypeError(f"unknown VisionTransformer field(s): {sorted(unknown)}")
    return VisionTransformer(**fields)
