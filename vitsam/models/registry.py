"""The model kinds vitsam knows, in one place: per kind its Linen class, variants, how to build and initialise
one, how to recognise and load an official checkpoint, and which fields change training but not parameters.

    kind = registry.get("sam")
    model = kind.build("vit_b", dtype=jnp.bfloat16)
    variables = kind.init(model, jax.random.PRNGKey(0))

Adding a model kind means adding one `ModelKind` to `KINDS`; checkpoints (`vitsam.checkpoint.load_trained`),
`vitsam.convert.load_model`, the trainers and the benchmarks look kinds up here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One kind of model.

    name: the kind's name in `model.json` ("vit", "sam").
    module: the flax.linen Module class; `module(**fields)` rebuilds a model from its saved fields.
    variants: the named variants `build` accepts.
    build(variant, **overrides) -> Module.
    init(model, rng) -> variables (a dict with "params", and any other collection the kind saves).
    training_fields: fields that change how a model trains or runs, not its parameters (a fine-tuning config may
      set them on a loaded checkpoint).
    official_suffixes: file suffixes of the official checkpoints `load_official` reads.
    is_official(path) -> bool: whether a file of one of those suffixes holds this kind (may open it).
    load_official(path, **overrides) -> (model, variables).
    """

    name: str
    module: type
    variants: tuple[str, ...]
    build: Callable[..., Any]
    init: Callable[[Any, Any], dict]
    training_fields: tuple[str, ...]
    official_suffixes: tuple[str, ...]
    is_official: Callable[[Path], bool]
    load_official: Callable[..., tuple[Any, dict]]


def _vit_init(model, rng) -> dict:
    return model.init(rng, jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32))


def _load_vit(path, **overrides):
    from vitsam.convert.vit import load_vit_checkpoint

    return load_vit_checkpoint(path, **overrides)


def _is_sam_pth(path: Path) -> bool:
    from vitsam.convert.weight_files import torch_state_keys

    return any(k.startswith("image_encoder.") for k in torch_state_keys(path))


def _is_sam2_pt(path: Path) -> bool:
    from vitsam.convert.weight_files import torch_state_keys

    return any(k.startswith(("image_encoder.trunk.", "memory_attention.")) for k in torch_state_keys(path))


def _load_sam2(path, **overrides):
    from vitsam.convert.sam2 import load_sam2_checkpoint

    return load_sam2_checkpoint(path, **overrides)


def _load_sam(path, **overrides):
    from vitsam.convert.sam import load_sam_checkpoint

    return load_sam_checkpoint(path, **overrides)


def _kinds() -> dict[str, ModelKind]:
    from vitsam.models.sam import SAM_VARIANTS, Sam, sam_init, sam_variant
    from vitsam.models.sam2 import SAM2_VARIANTS, Sam2, sam2_init, sam2_variant
    from vitsam.models.vit import VARIANTS, VisionTransformer, vit_variant

    sam = ModelKind(
        name="sam", module=Sam, variants=tuple(SAM_VARIANTS), build=sam_variant, init=sam_init,
        training_fields=("drop_path", "dtype", "remat", "attention_impl", "attention_query_rows"),
        official_suffixes=(".pth",), is_official=_is_sam_pth, load_official=_load_sam)
    vit = ModelKind(
        name="vit", module=VisionTransformer, variants=tuple(VARIANTS), build=vit_variant, init=_vit_init,
        training_fields=("dropout", "drop_path", "dtype", "remat", "attention_impl"),
        official_suffixes=(".pth", ".pt", ".bin", ".npz", ".safetensors"), is_official=lambda path: True,
        load_official=_load_vit)
    sam2 = ModelKind(
        name="sam2", module=Sam2, variants=tuple(SAM2_VARIANTS), build=sam2_variant, init=sam2_init,
        training_fields=("dtype", "multimask_output_for_tracking"), official_suffixes=(".pt", ".pth"),
        is_official=_is_sam2_pt,
        load_official=_load_sam2)
    # The order official files are tried in: SAM 2 (whose keys also start with image_encoder.), then SAM, then
    # any ViT file.
    return {"sam2": sam2, "sam": sam, "vit": vit}


_KINDS: dict[str, ModelKind] | None = None


def kinds() -> dict[str, ModelKind]:
    """{name: ModelKind} (built on first use: the model modules import jax and flax)."""
    global _KINDS
    if _KINDS is None:
        _KINDS = _kinds()
    return _KINDS


def get(name: str) -> ModelKind:
    try:
        return kinds()[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; known: {', '.join(sorted(kinds()))}") from None


def kind_of_file(path) -> ModelKind:
    """The kind whose official checkpoint format `path` (a file) is; a ValueError when none reads it."""
    path = Path(path)
    for kind in kinds().values():
        if path.suffix in kind.official_suffixes and kind.is_official(path):
            return kind
    suffixes = sorted({s for k in kinds().values() for s in k.official_suffixes})
    raise ValueError(f"unrecognised checkpoint {path}: expected a folder or one of {', '.join(suffixes)}")
