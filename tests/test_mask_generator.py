"""`SamAutomaticMaskGenerator` ("segment everything") and `vitsam segment --everything`, against independent
references: hand-computed grids and crop boxes, naive NumPy formulas, a naive greedy NMS, and a naive
generator that prompts one point at a time through the public `SamPredictor.predict`.

All on the tiny SAM (128-px input) and 48 × 64 images, whose crops at layer 1 are all 32 × 40: with its real
(random) decoder, and as `BlobSam`, whose hand-made decoder draws blobs around the prompt point, so that the
filters, the NMS and the crop logic have distinct, sensible masks to work on.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vitsam import cli
from vitsam import mask_generator as mg
from vitsam import mask_ops as ops
from vitsam.convert import export
from vitsam.data import rle
from vitsam.data.sa1b import SA1BSource
from vitsam.models import sam_init, sam_variant
from vitsam.models.sam import processing
from vitsam.models.sam.sam import Sam
from vitsam.predictor import SamPredictor

H, W = 48, 64
OVERLAP = 512 / 1500


# ----------------------------------------------------------------------------- fixtures

def random_variables(model, seed):
    """Random variables in `sam_init`'s shapes (NumPy draws, nothing to compile), tilted so that the masks
    differ from point to point: zero-mean hypernetwork outputs, no bias on the last upscaling conv, strong
    point embeddings (plain random weights give all-empty or all-full masks)."""
    shapes = jax.eval_shape(lambda r: sam_init(model, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        r = rng.standard_normal(leaf.shape).astype(np.float32)
        if "scale" in name:
            return 1.0 + 0.1 * r
        if leaf.ndim == 1 and "embed" not in name:
            return 0.1 * r
        return r / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)) if leaf.ndim > 1 else r

    v = jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(draw(p, x), np.float32), shapes)
    decoder = v["params"]["mask_decoder"]
    for i in range(model.num_multimask_outputs + 1):
        last = decoder[f"hypernet_mlps_{i}"]["layers_2"]
        last["kernel"] = last["kernel"] - last["kernel"].mean(axis=1, keepdims=True)
        last["bias"] = last["bias"] - last["bias"].mean()
    decoder["upscale_conv2"]["bias"] = 0 * decoder["upscale_conv2"]["bias"]
    v["params"]["prompt_encoder"]["point_embeddings"] = 10 * v["params"]["prompt_encoder"]["point_embeddings"]
    return v


def make_image(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(50, 150, (H, W, 3)).astype(np.uint8)
    image[10:30, 15:40] = (220, 40, 40)
    image[30:45, 45:60] = (30, 200, 60)
    return image


class BlobSam(Sam):
    """The tiny SAM with a hand-made decoder whose masks are blobs around the prompt point: logits
    (r_c - distance to the point) / 4 in input-frame pixels, r_c = 12, 24, 48 for the three outputs, plus a
    texture from the image embedding (irregular edges), and a predicted IoU that varies with the point. Real
    image encoder, real pre- and post-processing: what the generator does after decoding is what is tested."""

    def decode_tokens(self, image_embeddings, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      text_ids=None, multimask_output=True):
        # "hypernetwork outputs" (N, C, 3): the point and the radius of each mask; "image tokens": the texture
        p = point_coords[:, 0].astype(jnp.float32)  # (N, 2) (x, y) in the input frame
        radii = jnp.array([6.0, 12.0, 24.0, 48.0])
        hyper = jnp.concatenate([jnp.broadcast_to(p[:, None], (len(p), 4, 2)),
                                 jnp.broadcast_to(radii[None, :, None], (len(p), 4, 1))], axis=-1)
        iou = 0.5 + 0.45 * jnp.sin(0.13 * p[:, :1] + 0.07 * p[:, 1:] + jnp.arange(4.0))
        texture = image_embeddings.mean(-1).reshape(len(image_embeddings), -1, 1)  # (1 or N, hw, 1)
        src = jnp.broadcast_to(texture, (len(p), *texture.shape[1:]))
        return (hyper[:, 1:], src, iou[:, 1:]) if multimask_output else (hyper[:, :1], src, iou[:, :1])

    def decode_masks(self, src, hyper, size):
        h = size[0]
        m = 4 * h
        centres = (jnp.arange(m) + 0.5) * (h * self.patch_size) / m
        dist = jnp.sqrt((centres[None, None, None, :] - hyper[:, :, 0, None, None]) ** 2
                        + (centres[None, None, :, None] - hyper[:, :, 1, None, None]) ** 2)  # (N, C, m, m)
        texture = jnp.tanh(jnp.repeat(jnp.repeat(src.reshape(-1, *size), 4, axis=1), 4, axis=2))
        return (hyper[:, :, 2, None, None] - dist) / 4 + 0.5 * texture[:, None]


@pytest.fixture(scope="module")
def tiny():
    """A real tiny SAM (random weights), its variables and a 48 x 64 image."""
    model = sam_variant("tiny", image_size=128, text=False)
    return model, random_variables(model, seed=1), make_image()


@pytest.fixture(scope="module")
def blobs(tiny):
    """`BlobSam` with the same fields and variables."""
    model, variables, image = tiny
    fields = {f: getattr(model, f) for f in model.__dataclass_fields__ if f not in ("parent", "name")}
    return BlobSam(**fields), variables, image


@pytest.fixture(scope="module")
def candidates(blobs):
    """The naive path's unfiltered candidates of BlobSam per crop, for crop layers 0 and 1 (6 points a side,
    3 at layer 1): {crop_n_layers: [(crop_box, [candidate dicts])]}."""
    model, variables, image = blobs
    predictor = SamPredictor(model, variables)
    out, cache = {}, {}
    for n_layers in (0, 1):
        crops = []
        boxes, layers = ops.generate_crop_boxes((H, W), n_layers, OVERLAP)
        for box, layer in zip(boxes, layers):
            key = (tuple(box), layer)
            if key not in cache:
                cache[key] = naive_crop_candidates(predictor, image, box, 6 // 2 ** layer)
            crops.append((box, cache[key]))
        out[n_layers] = crops
    return out


# ----------------------------------------------------------------------------- the naive reference

def naive_grid(n):
    """Cell centres of an n × n grid in [0, 1]², row by row."""
    return np.array([[(j + 0.5) / n, (i + 0.5) / n] for i in range(n) for j in range(n)])


def naive_stability(logits, offset):
    inter, union = np.sum(logits > offset), np.sum(logits > -offset)
    return np.float32(inter) / np.float32(union) if union else np.float32(np.nan)


def naive_box(mask):
    ys, xs = np.nonzero(mask)
    return [0, 0, 0, 0] if not len(ys) else [xs.min(), ys.min(), xs.max(), ys.max()]


def naive_nms(boxes, scores, thresh):
    """torchvision's greedy NMS, one box at a time: float32 IoU compared with the (double) threshold."""
    boxes = np.asarray(boxes, np.float32)
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))  # Python's sort is stable
    keep, dead = [], set()
    for a, i in enumerate(order):
        if i in dead:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            x0, y0 = np.maximum(boxes[i][:2], boxes[j][:2])
            x1, y1 = np.minimum(boxes[i][2:], boxes[j][2:])
            inter = np.float32(max(x1 - x0, 0)) * np.float32(max(y1 - y0, 0))
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            with np.errstate(invalid="ignore"):
                iou = inter / (area_i + area_j - inter)
            if float(iou) > thresh:
                dead.add(j)
    return keep


def naive_crop_candidates(predictor, image, crop_box, n_per_side):
    """Every (point, multimask output) of one crop through `SamPredictor.predict`, one point at a time."""
    x0, y0, x1, y1 = crop_box
    crop = image[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    height, width = image.shape[:2]
    predictor.set_image(crop)
    found = []
    for px, py in naive_grid(n_per_side) * [w, h]:
        masks, iou, low = predictor.predict(point_coords=[[px, py]], point_labels=[1])
        logits = np.asarray(processing.postprocess_logits(low, predictor.input_size, (h, w), predictor.image_size))
        np.testing.assert_array_equal(logits > 0, masks)
        for c in range(3):
            full = np.zeros((height, width), bool)
            full[y0:y1, x0:x1] = masks[c]
            bx0, by0, bx1, by1 = naive_box(masks[c])
            found.append(dict(mask=full, logits=logits[c], iou=float(iou[c]), point=[px + x0, py + y0],
                              box=[bx0 + x0, by0 + y0, bx1 + x0, by1 + y0], crop_box=list(crop_box)))
    return found


def naive_generate(crops, pred_iou_thresh, stability_thresh, box_nms_thresh, crop_nms_thresh, offset=1.0):
    """The official algorithm, step by step, on the naive candidates."""
    W, H = crops[0][0][2:]  # the first crop is the whole image
    kept = []
    for crop_box, cands in crops:
        survivors = []
        for cand in cands:
            stab = naive_stability(cand["logits"], offset)
            if pred_iou_thresh > 0 and not cand["iou"] > np.float32(pred_iou_thresh):
                continue
            if stability_thresh > 0 and not stab >= np.float32(stability_thresh):
                continue
            near = [abs(b - c) <= 20 and abs(b - o) > 20
                    for b, c, o in zip(cand["box"], crop_box, [0, 0, W, H])]
            if any(near):
                continue
            survivors.append(dict(cand, stability=stab))
        keep = naive_nms([s["box"] for s in survivors], [s["iou"] for s in survivors], box_nms_thresh)
        kept += [survivors[i] for i in keep]
    if len(crops) > 1:
        areas = [(c["crop_box"][2] - c["crop_box"][0]) * (c["crop_box"][3] - c["crop_box"][1]) for c in kept]
        keep = naive_nms([c["box"] for c in kept], [np.float32(1) / np.float32(a) for a in areas], crop_nms_thresh)
        kept = [kept[i] for i in keep]
    return kept


def threshold_between(values, q):
    """A threshold halfway between two neighbouring distinct values near quantile q (no ties at the cut)."""
    v = np.unique(np.asarray([x for x in values if np.isfinite(x)], np.float64))
    i = min(max(int(q * len(v)), 1), len(v) - 1)
    return float((v[i - 1] + v[i]) / 2)


NOISE = 1e-4  # logits this close to a threshold may land on either side: the batched decoder rounds differently


def assert_same_annotations(anns, expected, offset=1.0):
    """The generator's annotations equal the naive ones: the same masks in the same order, up to float noise
    (pixels whose logit is within NOISE of 0 may differ, and the stability score accordingly)."""
    assert len(anns) == len(expected)
    for a, e in zip(anns, expected):
        H, W = e["mask"].shape
        np.testing.assert_allclose(a["point_coords"], [e["point"]], rtol=1e-12)  # linspace vs (j + 0.5) / n
        cb = e["crop_box"]
        assert a["crop_box"] == [cb[0], cb[1], cb[2] - cb[0], cb[3] - cb[1]]
        logits = np.full((H, W), -np.inf, np.float32)
        logits[cb[1]:cb[3], cb[0]:cb[2]] = e["logits"]
        diff = a["segmentation"] != e["mask"]
        assert (np.abs(logits[diff]) < NOISE).all() and diff.sum() <= 3
        box = naive_box(e["mask"]) if not diff.any() else naive_box(a["segmentation"])
        assert a["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        assert not diff.any() or abs(np.array(e["box"]) - [box[0], box[1], box[2], box[3]]).max() <= 1
        assert a["area"] == int(a["segmentation"].sum())
        np.testing.assert_allclose(a["predicted_iou"], e["iou"], rtol=1e-4, atol=1e-5)
        inter = [np.sum(e["logits"] > offset + s * NOISE) for s in (1, -1)]
        union = [np.sum(e["logits"] > -offset + s * NOISE) for s in (1, -1)]
        if union[1] == 0:
            assert np.isnan(a["stability_score"])
        else:
            low, high = inter[0] / union[1], (inter[1] / union[0] if union[0] else 1.0)
            assert low - 1e-6 <= a["stability_score"] <= high + 1e-6
            if inter[0] == inter[1] and union[0] == union[1]:
                assert a["stability_score"] == e["stability"]


# ----------------------------------------------------------------------------- grids, crops, scores

def test_point_grids_hand_computed():
    np.testing.assert_allclose(ops.build_point_grid(1), [[0.5, 0.5]])
    np.testing.assert_allclose(ops.build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    np.testing.assert_allclose(ops.build_point_grid(5), naive_grid(5), atol=1e-15)
    grids = ops.build_all_layer_point_grids(8, 3, 2)
    assert [len(g) for g in grids] == [64, 16, 4, 1]
    assert [len(g) for g in ops.build_all_layer_point_grids(6, 1, 4)] == [36, 1]  # int(6 / 4) = 1


def test_crop_boxes_hand_computed():
    boxes, layers = ops.generate_crop_boxes((H, W), 1, OVERLAP)
    # overlap int(512/1500 · 48) = 16; crop width ceil((16 + 64) / 2) = 40, height ceil((16 + 48) / 2) = 32
    assert boxes == [[0, 0, 64, 48], [0, 0, 40, 32], [0, 16, 40, 48], [24, 0, 64, 32], [24, 16, 64, 48]]
    assert layers == [0, 1, 1, 1, 1]
    boxes, layers = ops.generate_crop_boxes((H, W), 2, OVERLAP)
    # layer 2: overlap int(0.3413 · 48 · 0.5) = 8; width ceil((3 · 8 + 64) / 4) = 22, height ceil(72 / 4) = 18
    layer2 = [b for b, l in zip(boxes, layers) if l == 2]
    xs, ys = [0, 14, 28, 42], [0, 10, 20, 30]
    assert layer2 == [[x, y, x + 22, y + 18] for x in xs for y in ys]
    assert len(boxes) == 1 + 4 + 16
    boxes, _ = ops.generate_crop_boxes((51, 31), 1, 0.0)  # no overlap, odd sides: the last crops are clipped
    assert boxes[1:] == [[0, 0, 16, 26], [0, 26, 16, 51], [16, 0, 31, 26], [16, 26, 31, 51]]
    assert ops.generate_crop_boxes((7, 9), 0, OVERLAP) == ([[0, 0, 9, 7]], [0])


def test_stability_score_matches_naive_formula():
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((5, 13, 17)).astype(np.float32)
    logits[4] = -5.0  # empty at -offset: 0 / 0
    for offset in (0.0, 0.5, 1.0, 2.5):
        got = np.asarray(ops.stability_score(logits, 0.0, offset))
        want = [naive_stability(x, offset) for x in logits]
        np.testing.assert_allclose(got, want, rtol=1e-7, equal_nan=True)
    assert np.isnan(got[4])


@pytest.mark.parametrize("original", [(48, 64), (32, 40), (300, 97), (7, 5)])
def test_upscale_logits_equals_the_predictors_postprocessing(original):
    rng = np.random.default_rng(0)
    low = 4 * rng.standard_normal((3, 32, 32)).astype(np.float32)
    input_size = processing.resized_shape(*original, 128)
    want = np.asarray(processing.postprocess_logits(low, input_size, original, 128))
    got = np.asarray(mg.upscale_logits(low, input_size, original, 128))
    assert got.shape == want.shape == (3, *original)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_masks_to_boxes_inclusive_and_empty():
    masks = np.zeros((4, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True
    masks[2, 0, 0] = masks[2, 9, 5] = True
    got = np.asarray(ops.masks_to_boxes(masks))
    assert got.tolist() == [naive_box(m) for m in masks] == [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 5, 9], [0, 0, 0, 0]]
    assert ops.mask_to_box_np(masks[0]).tolist() == [3, 2, 8, 4] and ops.mask_to_box_np(masks[3]).tolist() == [0] * 4


def test_box_near_crop_edge_hand_cases():
    crop, image = [100, 50, 400, 300], [0, 0, 400, 300]  # the crop's right and bottom edges are the image's
    boxes = np.array([[50, 50, 150, 150],   # crop frame; image x 150..250, y 100..200: inside
                      [0, 60, 50, 100],     # x0 = 100: on the crop's left edge, not an image edge
                      [60, 60, 299, 249],   # x1 = 399, y1 = 299: at the image's edges: kept
                      [20, 100, 60, 140],   # x0 = 120: 20 px from the crop's edge (atol inclusive): dropped
                      [21, 100, 60, 140],   # x0 = 121: kept
                      [50, 5, 60, 40]])     # y0 = 55: near the crop's top edge: dropped
    got = np.asarray(ops.box_near_crop_edge(boxes, crop, image)).tolist()
    assert got == [False, True, False, True, False, True]
    full = np.asarray(ops.box_near_crop_edge(np.array([[0, 0, 0, 0], [0, 0, 63, 47]]), image, image))
    assert full.tolist() == [False, False]  # the whole image: its edges are image edges


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_device_nms_equals_naive_greedy(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    n = 60
    xy = rng.uniform(0, 50, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 25, (n, 2))], axis=1).astype(np.float32)
    boxes[5] = boxes[7] = [3, 3, 3, 9]  # zero area: IoU 0 / 0 suppresses nothing
    scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)  # many ties: first index wins
    got = ops.nms_indices(boxes, scores, thresh)
    assert got.tolist() == naive_nms(boxes, scores, thresh)
    valid = rng.uniform(size=64) < 0.7  # the fixed-size form: invalid rows take no part
    padded = np.concatenate([boxes, boxes[:4]])
    pscores = np.concatenate([scores, scores[:4]])
    order, keep = (np.asarray(x) for x in ops.nms(padded, pscores, valid, np.float32(thresh)))
    rows = np.flatnonzero(valid)
    assert order[keep].tolist() == [int(rows[i]) for i in naive_nms(padded[rows], pscores[rows], thresh)]
    assert ops.nms_indices(np.zeros((0, 4)), np.zeros(0), thresh).tolist() == []


def test_nms_threshold_compares_like_a_double():
    # IoU 0.5 exactly (float32): not above 0.5, and above 0.49999999999 although float32(that) == 0.5
    boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], np.float32)  # inter 2, union 4
    assert ops.nms_indices(boxes, np.array([1, 0]), 0.5).tolist() == [0, 1]
    assert ops.nms_indices(boxes, np.array([1, 0]), 0.49999999999).tolist() == [0]


# ----------------------------------------------------------------------------- small regions

def test_remove_small_regions_hand_built():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False          # a 4-px hole
    mask[15:17, 15:18] = True       # a 6-px island
    mask[12, 12] = True             # touches the square only diagonally: 8-connected, part of it
    filled, changed = ops.remove_small_regions(mask, 5, "holes")
    assert changed and filled[5:7, 5:7].all() and (filled ^ mask).sum() == 4
    cleaned, changed = ops.remove_small_regions(filled, 7, "islands")
    assert changed and not cleaned[15:17, 15:18].any() and cleaned[12, 12] and (cleaned ^ filled).sum() == 6
    assert not ops.remove_small_regions(mask, 4, "holes")[1]  # 4 px is not below 4
    assert not ops.remove_small_regions(mask, 6, "islands")[1]
    few = np.zeros((10, 10), bool)
    few[0, 0] = few[5:7, 5:7] = True  # every island small: the largest stays
    kept, changed = ops.remove_small_regions(few, 100, "islands")
    assert changed and kept.sum() == 4 and kept[5:7, 5:7].all()
    with pytest.raises(ValueError, match="mode"):
        ops.remove_small_regions(mask, 5, "both")


def test_postprocess_small_regions_prefers_unchanged_masks():
    clean = np.zeros((20, 20), bool)
    clean[2:12, 2:12] = True
    dirty = clean.copy()
    dirty[5:7, 5:7] = False
    dirty[15:17, 15:18] = True
    other = np.zeros((20, 20), bool)
    other[14:19, 0:6] = True
    keep, new, changed = ops.postprocess_small_regions([dirty, other, clean], 8, 0.7)
    assert changed.tolist() == [True, False, False]
    np.testing.assert_array_equal(new[0], clean)  # repaired into a duplicate of `clean` ...
    assert keep.tolist() == [1, 2]                 # ... which wins the NMS (score 1 against 0)


# ----------------------------------------------------------------------------- generate vs the naive path

def generator(fixture, **kw):
    model, variables, _ = fixture
    kw = dict(dict(points_per_side=6, points_per_batch=8), **kw)
    return mg.SamAutomaticMaskGenerator(model, variables, **kw)

def test_instance_recall_equals_a_pixel_loop():
    """Recall at IoU 0.5 against a loop over truth × predicted masks counting pixels one by one."""
    rng = np.random.default_rng(3)
    truth = rng.random((5, 9, 11)) < 0.3
    predicted = np.concatenate([truth[:3] ^ (rng.random((3, 9, 11)) < 0.1), rng.random((4, 9, 11)) < 0.3])
    best = []
    for t in truth:
        ious = []
        for p in predicted:
            inter = sum(bool(t[i, j] and p[i, j]) for i in range(9) for j in range(11))
            union = sum(bool(t[i, j] or p[i, j]) for i in range(9) for j in range(11))
            ious.append(inter / union)
        best.append(max(ious))
    found, got = ops.instance_recall(predicted, truth, 0.5)
    np.testing.assert_allclose(got, best)
    assert found == sum(b >= 0.5 for b in best) and 3 <= found < 5
    assert ops.instance_recall(predicted[:0], truth)[0] == 0 and ops.instance_recall(predicted, truth[:0])[0] == 0



def test_generate_equals_naive_predictor_loop_real_decoder(tiny):
    """The real (random) decoder, batched, against one predict call per point: every candidate, in order."""
    model, variables, image = tiny
    predictor = SamPredictor(model, variables)
    crops = [([0, 0, W, H], naive_crop_candidates(predictor, image, [0, 0, W, H], 4))]
    everything = naive_generate(crops, 0, 0, 1.0, 0.7)
    assert len(everything) == 48  # thresholds off, NMS off: every candidate
    assert len({c["mask"].tobytes() for c in everything}) > 20  # the masks differ from point to point
    anns = generator(tiny, points_per_side=4, points_per_batch=6, pred_iou_thresh=0, stability_score_thresh=0,
                     box_nms_thresh=1.0).generate(image)
    assert_same_annotations(anns, everything)


def test_generate_equals_naive_predictor_loop_one_crop(blobs, candidates):
    crops = candidates[0]
    ious = [c["iou"] for c in crops[0][1]]
    stabs = [naive_stability(c["logits"], 1.0) for c in crops[0][1]]
    settings = dict(pred_iou_thresh=threshold_between(ious, 0.3), stability_score_thresh=threshold_between(stabs, 0.2),
                    box_nms_thresh=0.5)
    expected = naive_generate(crops, settings["pred_iou_thresh"], settings["stability_score_thresh"], 0.5, 0.7)
    assert 5 < len(expected) < 0.5 * len(crops[0][1])  # every filter and the NMS drop some
    assert_same_annotations(generator(blobs, **settings).generate(blobs[2]), expected)
    everything = naive_generate(crops, 0, 0, 1.0, 0.7)
    assert_same_annotations(generator(blobs, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
                            .generate(blobs[2]), everything)


def test_generate_equals_naive_predictor_loop_with_crops(blobs, candidates):
    crops = candidates[1]
    ious = [c["iou"] for _, cands in crops for c in cands]
    stabs = [naive_stability(c["logits"], 1.0) for _, cands in crops for c in cands]
    iou_thresh, stab_thresh = threshold_between(ious, 0.2), threshold_between(stabs, 0.1)
    expected = naive_generate(crops, iou_thresh, stab_thresh, 0.7, 0.5)
    assert len({tuple(c["crop_box"]) for c in expected}) > 2  # masks of several crops survive
    gen = generator(blobs, pred_iou_thresh=iou_thresh, stability_score_thresh=stab_thresh, crop_n_layers=1,
                    crop_nms_thresh=0.5, crop_n_points_downscale_factor=2)
    assert [len(g) for g in gen.point_grids] == [36, 9]
    assert_same_annotations(gen.generate(blobs[2]), expected)


@pytest.mark.slow
def test_generate_equals_naive_predictor_loop_at_scale(blobs):
    """A 480 x 640 image, the 256-px tiny model, 16 points a side (256 and 4 x 256 prompts, batches of 64), one crop
    layer, the official thresholds scaled to BlobSam's scores: about a minute on 2 CPU cores."""
    fields = {f: getattr(blobs[0], f) for f in blobs[0].__dataclass_fields__ if f not in ("parent", "name")}
    model = BlobSam(**dict(fields, image_size=256))
    variables = random_variables(sam_variant("tiny", text=False), seed=2)
    image = np.random.default_rng(7).integers(0, 255, (480, 640, 3)).astype(np.uint8)
    predictor = SamPredictor(model, variables)
    boxes, _ = ops.generate_crop_boxes((480, 640), 1, OVERLAP)
    crops = [(box, naive_crop_candidates(predictor, image, box, 16)) for box in boxes]
    expected = naive_generate(crops, 0.5, 0.4, 0.7, 0.7)
    assert len(expected) > 20 and len({tuple(c["crop_box"]) for c in expected}) > 2
    gen = mg.SamAutomaticMaskGenerator(model, variables, points_per_side=16, crop_n_layers=1, pred_iou_thresh=0.5,
                                       stability_score_thresh=0.4)
    assert_same_annotations(gen.generate(image), expected)


def test_output_modes_rle_round_trip(blobs):
    kw = dict(pred_iou_thresh=0.3, stability_score_thresh=0.3)
    binary = generator(blobs, **kw).generate(blobs[2])
    assert len(binary) > 3
    coco = generator(blobs, output_mode="coco_rle", **kw).generate(blobs[2])
    plain = generator(blobs, output_mode="uncompressed_rle", **kw).generate(blobs[2])
    for b, c, p in zip(binary, coco, plain, strict=True):
        assert b["segmentation"].dtype == bool and b["segmentation"].shape == (H, W)
        assert isinstance(c["segmentation"]["counts"], str) and c["segmentation"]["size"] == [H, W]
        assert isinstance(p["segmentation"]["counts"], list)
        np.testing.assert_array_equal(rle.decode(c["segmentation"]), b["segmentation"])
        np.testing.assert_array_equal(rle.decode(p["segmentation"]), b["segmentation"])
        assert sum(p["segmentation"]["counts"][1::2]) == b["area"]  # the official area_from_rle
        assert {k: v for k, v in b.items() if k != "segmentation"} == \
            {k: v for k, v in c.items() if k != "segmentation"}
        assert set(b) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score",
                          "crop_box"}


def test_min_mask_region_area_leaves_no_small_regions(tiny):
    from scipy import ndimage

    area = 40
    kw = dict(points_per_side=4, points_per_batch=6, pred_iou_thresh=0, stability_score_thresh=0)
    plain = generator(tiny, **kw).generate(tiny[2])
    anns = generator(tiny, min_mask_region_area=area, **kw).generate(tiny[2])
    assert anns
    originals = {a["point_coords"][0][0] * 1000 + a["point_coords"][0][1] + a["predicted_iou"]: a for a in plain}
    changed = 0
    eight = np.ones((3, 3), int)
    for ann in anns:
        m = ann["segmentation"]
        box = naive_box(m)
        assert ann["area"] == m.sum() and ann["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        for region in (m, ~m):  # no island, no hole below `area` (a lone island stays however small)
            labels, n = ndimage.label(region, structure=eight)
            sizes = np.bincount(labels.ravel())[1:]
            assert (region is m and n == 1) or (sizes >= area).all()
        before = originals[ann["point_coords"][0][0] * 1000 + ann["point_coords"][0][1] + ann["predicted_iou"]]
        changed += not np.array_equal(before["segmentation"], m)
    assert changed  # the random decoder's masks are speckled: some needed repair


def test_same_size_images_reuse_the_compiled_functions(blobs):
    gen = generator(blobs, pred_iou_thresh=0.3, stability_score_thresh=0.3, crop_n_layers=1)
    gen.generate(blobs[2])
    compiled = (mg._attend_points, mg._masks_of, mg._filter_candidates, ops.nms)
    sizes = [f._cache_size() for f in compiled]
    other = gen.generate(make_image(seed=5))
    assert [f._cache_size() for f in compiled] == sizes
    assert isinstance(other, list)


def test_top_level_attribute():
    import vitsam

    assert vitsam.SamAutomaticMaskGenerator is mg.SamAutomaticMaskGenerator


@pytest.mark.parametrize("kw, message", [
    (dict(points_per_side=0), "points_per_side must be a whole number >= 1"),
    (dict(points_per_batch=0), "points_per_batch must be a whole number >= 1"),
    (dict(points_per_batch=-3), "points_per_batch must be"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh must be a number between 0 and 1"),
    (dict(stability_score_thresh=-0.1), "stability_score_thresh must be"),
    (dict(box_nms_thresh=2), "box_nms_thresh must be"),
    (dict(crop_nms_thresh=float("nan")), "crop_nms_thresh must be"),
    (dict(crop_n_layers=-1), "crop_n_layers must be a whole number >= 0"),
    (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio must be"),
    (dict(output_mode="polygons"), "unknown output_mode 'polygons'"),
    (dict(min_mask_region_area=-5), "min_mask_region_area must be"),
    (dict(stability_score_offset=float("inf")), "stability_score_offset must be"),
    (dict(point_grids=[ops.build_point_grid(2)]), "exactly one of points_per_side and point_grids"),
    (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
    (dict(points_per_side=None, point_grids=[ops.build_point_grid(2)], crop_n_layers=1), "crop_n_layers + 1 = 2 grids"),
    (dict(points_per_side=None, point_grids=[np.array([[0.5, 1.5]])]), "must lie in [0, 1]"),
    (dict(points_per_side=2, crop_n_layers=1, crop_n_points_downscale_factor=4), "leaves no points in crop layer 1"),
])
def test_bad_options_are_one_line_value_errors(tiny, kw, message):
    model, variables, _ = tiny
    with pytest.raises(ValueError) as e:
        mg.SamAutomaticMaskGenerator(model, variables, **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_point_grids_option_equals_points_per_side(blobs):
    a = generator(blobs, pred_iou_thresh=0.3, stability_score_thresh=0.3).generate(blobs[2])
    model, variables, image = blobs
    b = mg.SamAutomaticMaskGenerator(model, variables, points_per_side=None, point_grids=[naive_grid(6)],
                                     points_per_batch=8, pred_iou_thresh=0.3, stability_score_thresh=0.3)
    b = b.generate(image)
    assert len(a) > 3 and len(a) == len(b)
    np.testing.assert_allclose([x["point_coords"] for x in a], [x["point_coords"] for x in b], rtol=1e-12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["segmentation"], y["segmentation"])


def test_overlay_masks_colours_each_mask():
    image = np.full((20, 30, 3), 100, np.uint8)
    big = np.zeros((20, 30), bool)
    big[2:18, 2:28] = True
    small = np.zeros((20, 30), bool)
    small[8:12, 10:14] = True
    picture = mg.overlay_masks(image, [big, small])
    assert picture.shape == (20, 30, 3) and picture.dtype == np.uint8
    assert mg.mask_color(0) != mg.mask_color(1)
    assert tuple(picture[2, 15]) == mg.mask_color(0) and tuple(picture[8, 11]) == mg.mask_color(1)  # outlines
    inner = np.round(0.5 * (0.5 * 100 + 0.5 * np.array(mg.mask_color(0))) + 0.5 * np.array(mg.mask_color(1)))
    np.testing.assert_array_equal(picture[10, 11], inner)  # the small mask drawn over the large one
    assert tuple(picture[0, 0]) == (100, 100, 100)


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("everything")
    model, variables, image = tiny
    export(model, variables, root / "ckpt", kind="sam")
    Image.fromarray(image).save(root / "photo.png")
    return root / "ckpt", root / "photo.png"


EVERYTHING = ["--everything", "--points-per-side", "6", "--points-per-batch", "8", "--pred-iou-thresh", "0.3",
              "--stability-score-thresh", "0.3"]


def test_cli_everything_writes_masks_overlay_and_sa1b_json(blobs, exported, tmp_path, capsys, monkeypatch):
    import vitsam.convert

    ckpt, photo = exported
    out = tmp_path / "out"
    loaded = []
    monkeypatch.setattr(vitsam.convert, "load_model", lambda path: loaded.append(path) or (*blobs[:2], "sam"))
    assert cli.main(["segment", str(photo), "--checkpoint", str(ckpt), *EVERYTHING, "--crop-n-layers", "1",
                     "--out", str(out)]) == 0
    assert loaded == [str(ckpt)] and "photo.json" in capsys.readouterr().out
    anns = generator(blobs, pred_iou_thresh=0.3, stability_score_thresh=0.3, crop_n_layers=1).generate(blobs[2])
    assert len(anns) > 5
    assert sorted(p.name for p in out.glob("mask_*.png")) == [f"mask_{i:03d}.png" for i in range(len(anns))]
    for i, ann in enumerate(anns):
        with Image.open(out / f"mask_{i:03d}.png") as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im) == 255, ann["segmentation"])
    with Image.open(out / "overlay.png") as im:
        assert im.mode == "RGB" and im.size == (W, H)
        np.testing.assert_array_equal(np.asarray(im), mg.overlay_masks(blobs[2], [a["segmentation"] for a in anns]))

    data = json.loads((out / "photo.json").read_text())
    assert data["image"] == {"image_id": 0, "width": W, "height": H, "file_name": "photo.png"}
    assert len(data["annotations"]) == len(anns)
    for i, (rec, ann) in enumerate(zip(data["annotations"], anns)):
        assert rec["id"] == i and isinstance(rec["segmentation"]["counts"], str)
        for key in ("bbox", "area", "point_coords", "crop_box"):
            assert rec[key] == ann[key]
        assert rec["predicted_iou"] == pytest.approx(ann["predicted_iou"])
        assert rec["stability_score"] == pytest.approx(ann["stability_score"])

    shutil.copy(photo, out / "photo.png")  # the image beside its JSON: an SA-1B folder
    (sample,) = SA1BSource(out)
    np.testing.assert_array_equal(sample["image"], blobs[2])
    assert len(sample["segmentations"]) == len(anns) and (sample["labels"] == -1).all()
    for seg, ann in zip(sample["segmentations"], anns):
        np.testing.assert_array_equal(rle.decode_segmentation(seg, H, W), ann["segmentation"])


def test_cli_everything_on_a_folder(tiny, exported, tmp_path, capsys):
    """The real load path: an exported checkpoint (the real random decoder)."""
    ckpt, photo = exported
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo, folder / "a.png")
    Image.fromarray(make_image(seed=3)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    assert cli.main(["segment", str(folder), "--checkpoint", str(ckpt), *EVERYTHING, "--points-per-side", "4",
                     "--points-per-batch", "6", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                     "--out", str(folder)]) == 0  # the later flags win
    captured = capsys.readouterr()
    assert "a.json" in captured.out and "b.json" in captured.out and "segment everything" in captured.err  # tqdm
    for stem in ("a", "b"):
        data = json.loads((folder / f"{stem}.json").read_text())
        assert (folder / stem / "overlay.png").exists()
        assert len(list((folder / stem).glob("mask_*.png"))) == len(data["annotations"]) >= 1
    anns = generator(tiny, points_per_side=4, points_per_batch=6, pred_iou_thresh=0,
                     stability_score_thresh=0).generate(tiny[2])
    masks = [rle.decode(a["segmentation"]) for a in json.loads((folder / "a.json").read_text())["annotations"]]
    np.testing.assert_array_equal(masks, [a["segmentation"] for a in anns])
    source = SA1BSource(folder)  # --out = the image folder: readable as SA-1B data as it is
    assert [source[i]["file_name"] for i in range(len(source))] == ["a.png", "b.png"]


@pytest.mark.parametrize("args, message", [
    (["--everything", "--point", "5,5"], "prompts with a grid of points over the whole image: drop --point"),
    (["--everything", "--box", "1,2,3,4"], "drop --box"),
    (["--everything", "--text", "cat"], "drop --text"),
    (["--everything", "--single"], "drop --multimask / --single"),
    (["--point", "5,5", "--points-per-side", "4"], "--points-per-side needs --everything"),
])
def test_cli_everything_bad_combinations(exported, tmp_path, args, message, capsys):
    ckpt, photo = exported
    assert cli.main(["segment", str(photo), "--checkpoint", str(ckpt), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitsam segment: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_everything_needs_a_sam_checkpoint(exported, tmp_path, capsys):
    import jax.numpy as jnp

    from vitsam.models import vit_variant

    model = vit_variant("Ti/16", num_classes=3, image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32,
                        num_heads=2)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    export(model, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes), tmp_path / "vit", kind="vit")
    _, photo = exported
    assert cli.main(["segment", str(photo), "--checkpoint", str(tmp_path / "vit"), "--everything",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds a vit model, not a SAM" in err and err.count("\n") == 1  # one line
    assert not (tmp_path / "o").exists()  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["segment", str(empty), "--checkpoint", str(tmp_path / "vit"), "--everything"]) == 2
    assert "no images" in capsys.readouterr().err
