"""Numerical parity with the official segment-anything (PyTorch) and the completeness of the checkpoint key map.

Run with: pytest -m parity tests/test_sam_parity.py -s   (needs the [parity] extra: torch, segment-anything)
The full vit_b comparison takes about 3 minutes on 2 shared CPU cores (much of it XLA compiling the
12 decoder variants); the rest of the file about 30 s.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.parity

segment_anything = pytest.importorskip("segment_anything")
torch = pytest.importorskip("torch")

from segment_anything.modeling.image_encoder import get_rel_pos  # noqa: E402

from vitsam.bench.torch_peers import official_sam  # noqa: E402
from vitsam.convert import infer_sam_config, load_sam_checkpoint, sam_state_dict_to_variables  # noqa: E402
from vitsam.models import sam_init, sam_variant  # noqa: E402
from vitsam.models.sam.image_encoder import relative_position_table  # noqa: E402

# An official SAM of a non-standard size (fast on CPU; exercises variant inference and window padding 16 -> 18):
# vit_b's prompt encoder and decoder behind a 256-px, 3-block encoder.
SMALL = dict(image_size=256, encoder_dim=64, encoder_depth=3, encoder_heads=2, global_attn_indexes=(1,), window_size=6)
MAX_REL_ERR = 1e-4


def rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give EVERY tensor random values (the default init leaves pos_embed, rel_pos and biases at zero and the
    LayerNorms at identity, which would hide mapping bugs). Scales keep activations O(1) so that attention
    stays well conditioned and fp32 differences reflect the implementation, not chaos."""
    gen = torch.Generator().manual_seed(seed)
    norms = ("norm", "neck.1", "neck.3", "output_upscaling.1", "mask_downscaling.1", "mask_downscaling.4")
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.startswith("pixel_"):
                continue
            r = torch.randn(t.shape, generator=gen)
            if "gaussian" in name:
                t.copy_(r)
            elif t.ndim == 1 and any(n in name for n in norms):
                t.copy_(1 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            elif "rel_pos" in name or "pos_embed" in name or name.endswith("bias"):
                t.copy_(0.1 * r)
            elif name.endswith(("_embed.weight", "_token.weight", "mask_tokens.weight")) or ".point_embeddings." in name:
                t.copy_(r)  # embeddings: torch's N(0, 1)
            else:
                t.copy_(r / np.sqrt(np.prod(t.shape[1:])))


def prompt_cases(size: int, n: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (n, 4, 2)).astype(np.float32)
    labels = np.array([[1, 0, 1, 0], [1, 1, 0, 1]], np.int64)[:n]  # several points, negatives included
    boxes = (np.array([[10, 20, 200, 150], [30, 40, 100, 220]], np.float32) * size / 256)[:n]
    masks = (3.0 * rng.standard_normal((n, 1, size // 4, size // 4))).astype(np.float32)
    return {
        "points": (points, labels, None, None),
        "one_point": (points[:, :1], labels[:, :1], None, None),
        "box": (None, None, boxes, None),
        "points+box": (points, labels, boxes, None),
        "points+mask": (points, labels, None, masks),
        "box+mask": (None, None, boxes, masks),
    }


def compare(official, model, variables, image_size: int, seed: int = 0, cases=None, modes=(True, False)):
    """Encoder + decoder outputs of both implementations on the same image and prompts: name -> rel. error."""
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref_emb = official.image_encoder(x)
    emb = jax.jit(lambda v, im: model.apply(v, im, method=model.encode_image))(
        variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    errors = {"image_embedding": rel_err(emb, ref_emb.numpy().transpose(0, 2, 3, 1))}

    decode = jax.jit(lambda v, *a, mm: model.apply(v, *a, multimask_output=mm, method=model.decode),
                     static_argnames="mm")
    as_jnp = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    for name, (pts, labels, boxes, masks) in prompt_cases(image_size).items():
        if cases is not None and name not in cases:
            continue
        n = len(pts if pts is not None else boxes)
        for multimask in modes:
            with torch.no_grad():
                sparse, dense = official.prompt_encoder(
                    points=None if pts is None else (torch.from_numpy(pts), torch.from_numpy(labels)),
                    boxes=None if boxes is None else torch.from_numpy(boxes),
                    masks=None if masks is None else torch.from_numpy(masks))
                ref_logits, ref_iou = official.mask_decoder(
                    image_embeddings=ref_emb, image_pe=official.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            logits, iou = decode(variables, jnp.broadcast_to(emb, (n,) + emb.shape[1:]), as_jnp(pts), as_jnp(labels),
                                 as_jnp(boxes), None if masks is None else jnp.asarray(masks.transpose(0, 2, 3, 1)),
                                 None, mm=multimask)
            tag = f"{name}/{'multi' if multimask else 'single'}"
            errors[f"logits {tag}"] = rel_err(logits, ref_logits.numpy())
            errors[f"iou {tag}"] = rel_err(iou, ref_iou.numpy())
    return errors


def _report(title: str, errors: dict[str, float]) -> None:
    print(f"\n{title}: max rel. error {max(errors.values()):.2e}")
    for k, v in errors.items():
        print(f"  {k:28s} {v:.2e}")


def test_vit_b_parity(tmp_path):
    """Official vit_b, every tensor random, saved as .pth, imported with load_sam_checkpoint, compared in fp32."""
    start = time.time()
    torch.manual_seed(0)
    official = official_sam("vit_b")
    randomize_(official)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(official.state_dict(), path)

    model, variables = load_sam_checkpoint(path)
    assert model == sam_variant("vit_b")
    errors = compare(official, model, variables, 1024)
    _report(f"vit_b parity ({time.time() - start:.0f} s)", errors)
    assert max(errors.values()) < MAX_REL_ERR, errors


def test_small_config_parity_and_conv_transpose_layout():
    """A non-standard official config (256 px, 3 blocks, window 6 padding 16→18): inferred and matched.
    Also shows the test's power: without the spatial flip of the ConvTranspose kernels the logits disagree."""
    torch.manual_seed(0)
    official = official_sam("vit_b", **SMALL)
    randomize_(official, seed=1)
    state = {k: v.numpy() for k, v in official.state_dict().items()}
    model, variables = sam_state_dict_to_variables(state)
    assert (model.image_size, model.encoder_dim, model.encoder_depth, model.encoder_heads, model.window_size,
            tuple(model.global_attn_indexes)) == (256, 64, 3, 2, 6, (1,))
    errors = compare(official, model, variables, 256, seed=1)
    _report("small-config parity", errors)
    assert max(errors.values()) < MAX_REL_ERR, errors

    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    for name in ("upscale_conv1", "upscale_conv2"):
        k = params["mask_decoder"][name]["kernel"]
        params["mask_decoder"][name]["kernel"] = jnp.flip(k, (0, 1))  # i.e. PyTorch's layout without the flip
    unflipped = compare(official, model, dict(variables, params=params), 256, seed=1, cases=["points"], modes=[True])
    assert unflipped["logits points/multi"] > 1e-2


def test_unexpected_keys_are_listed():
    official = official_sam("vit_b", **dict(SMALL, encoder_depth=2))
    state = {k: v.numpy() for k, v in official.state_dict().items()}
    state["mask_decoder.extra_head.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="mask_decoder.extra_head.weight"):
        sam_state_dict_to_variables(state)  # strict by default: unused keys are an error
    with pytest.warns(UserWarning, match="mask_decoder.extra_head.weight"):
        sam_state_dict_to_variables(state, strict=False)


@pytest.mark.parametrize("table_len,size", [(127, 32), (127, 80), (27, 14), (27, 9)])
def test_relative_tables_match_official_get_rel_pos(table_len, size):
    table = torch.randn(table_len, 16, generator=torch.Generator().manual_seed(table_len + size))
    ref = get_rel_pos(size, size, table).numpy()
    np.testing.assert_allclose(relative_position_table(jnp.asarray(table.numpy()), size), ref, rtol=1e-6, atol=1e-6)


def _meta_shapes(name: str) -> dict:
    """Official state-dict shapes of a variant, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        official = official_sam(name)
    return {k: jax.ShapeDtypeStruct(tuple(v.shape), jnp.float32) for k, v in official.state_dict().items()
            if not k.startswith("pixel_")}


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_key_map_is_complete(name):
    """Every official key consumed, every variable filled, all shapes equal (shapes only, via eval_shape)."""
    shapes = _meta_shapes(name)
    assert sam_variant(name) == sam_variant(name, **{k: v for k, v in infer_sam_config(shapes).items()})
    model = sam_variant(name)
    converted = jax.eval_shape(lambda sd: sam_state_dict_to_variables(sd, model)[1], shapes)  # strict
    expected = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    flat_converted = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(converted)}
    flat_expected = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    assert flat_converted.keys() == flat_expected.keys()
    for k, v in flat_expected.items():
        assert (flat_converted[k].shape, flat_converted[k].dtype) == (v.shape, v.dtype), k
    n_official = sum(int(np.prod(s.shape)) for s in shapes.values())
    assert n_official == sum(int(np.prod(v.shape)) for v in flat_expected.values())


def test_missing_key_and_shape_mismatch_errors():
    shapes = _meta_shapes("vit_b")
    model = sam_variant("vit_b")
    missing = dict(shapes)
    del missing["mask_decoder.iou_token.weight"]
    with pytest.raises(KeyError, match="mask_decoder.iou_token.weight"):
        jax.eval_shape(lambda sd: sam_state_dict_to_variables(sd, model)[1], missing)
    wrong = dict(shapes)
    wrong["image_encoder.blocks.3.attn.proj.weight"] = jax.ShapeDtypeStruct((768, 700), jnp.float32)
    with pytest.raises(ValueError, match=r"image_encoder\.blocks\.3\.attn\.proj\.weight \(768, 700\).*\(768, 768\)"):
        jax.eval_shape(lambda sd: sam_state_dict_to_variables(sd, model)[1], wrong)
