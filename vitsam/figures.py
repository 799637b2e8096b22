"""The lecture's pictures: the sinusoidal encoding matrix, its similarity matrix P·Pᵀ, and ViT attention maps.

matplotlib is imported inside the functions (the `viz` extra), so importing vitsam does not need it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vitsam.nn import sinusoidal_encoding


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("figures need matplotlib: pip install 'vitsam[viz]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def encoding_figure(path, num_tokens: int = 50, dim: int = 128) -> Path:
    """The (num_tokens, dim) sinusoidal encoding matrix P as a heat map (the lecture shows 50 × 128)."""
    plt = _pyplot()
    enc = np.asarray(sinusoidal_encoding(num_tokens, dim))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    im = ax.imshow(enc, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set(xlabel="dimension i", ylabel="position t",
           title=f"Sinusoidal positional encoding, {num_tokens} tokens × D = {dim}")
    fig.colorbar(im, ax=ax, label="p_t(i)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def similarity_figure(path, num_tokens: int = 50, dim: int = 128) -> Path:
    """The position similarity matrix K = P·Pᵀ: each entry depends only on the offset between positions."""
    plt = _pyplot()
    enc = np.asarray(sinusoidal_encoding(num_tokens, dim), np.float64)
    sim = enc @ enc.T
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(sim, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="position", ylabel="position", title="Position similarity K = P·Pᵀ")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def vit_attention_maps(model, variables, image: np.ndarray) -> np.ndarray:
    """Per-layer attention maps of a ViT on one image: (depth, heads, N, N).

    `image` is a preprocessed (H, W, C) float array. The model is cloned with `sow_weights=True`
    (the einsum kernel), and the maps are read from the "intermediates" collection.
    """
    probe = model.clone(sow_weights=True)
    _, state = jax.jit(lambda v, x: probe.apply(v, x, mutable=["intermediates"]))(variables, jnp.asarray(image)[None])
    blocks = state["intermediates"]["Transformer"]
    if "encoderblock" in blocks:  # scanned: stacked on a leading depth axis
        maps = blocks["encoderblock"]["MultiHeadDotProductAttention_0"]["attention_weights"][0]
        maps = np.asarray(maps)[:, 0]
    else:
        maps = np.stack([np.asarray(blocks[f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]["attention_weights"][0][0])
                         for i in range(len(blocks))])
    return maps


def attention_rollout(maps: np.ndarray) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): the product over layers of (head-mean A + I)/2, rows renormalized.

    maps: (depth, heads, N, N) -> (N, N).
    """
    n = maps.shape[-1]
    rollout = np.eye(n)
    for layer in maps:
        a = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(n)
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def attention_figure(path, model, variables, image_uint8: np.ndarray, title: str = "") -> Path:
    """Attention over the image patches: the last layer's heads and the rollout over layers, for the class
    token (pool "tok") or averaged over all tokens (pool "gap")."""
    plt = _pyplot()
    size = model.image_size
    from PIL import Image

    shown = np.asarray(Image.fromarray(image_uint8).convert("RGB").resize((size, size), Image.BICUBIC))
    x = shown.astype(np.float32) / 127.5 - 1.0
    maps = vit_attention_maps(model, variables, x)
    grid = size // model.patch_size
    if model.pool == "tok":  # what the class token attends to
        last = maps[-1][:, 0, 1:].reshape(-1, grid, grid)  # (heads, grid, grid)
        rollout = attention_rollout(maps)[0, 1:].reshape(grid, grid)
    else:  # average pooling: the attention each patch receives, averaged over the queries
        last = maps[-1].mean(axis=1).reshape(-1, grid, grid)
        rollout = attention_rollout(maps).mean(axis=0).reshape(grid, grid)
    heads = min(len(last), 6)
    fig, axes = plt.subplots(1, heads + 2, figsize=(2.4 * (heads + 2), 2.8))
    axes[0].imshow(shown)
    axes[0].set_title("image")
    panels = [(rollout, "rollout, all layers")] + [(last[h], f"last layer, head {h}") for h in range(heads)]
    for ax, (m, name) in zip(axes[1:], panels):
        ax.imshow(shown)
        ax.imshow(m, cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="bilinear")
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
