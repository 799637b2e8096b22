"""J and F against a naive NumPy reference of the DAVIS definitions (loops, scipy's binary dilation)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from vitsam.video_metrics import (boundary_f, boundary_map, boundary_precision_recall, boundary_radius, disk,
                                  jf_summary, region_similarity)


def ref_boundary(seg: np.ndarray) -> np.ndarray:
    """DAVIS's seg2bmap, pixel by pixel: compare with the right, bottom and bottom-right neighbours; the last row
    only with the right one, the last column only with the bottom one, never the bottom-right corner."""
    h, w = seg.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1:
                out[y, x] = seg[y, x] != seg[y + 1, x]
            else:
                out[y, x] = (seg[y, x] != seg[y, x + 1]) or (seg[y, x] != seg[y + 1, x]) or (
                    seg[y, x] != seg[y + 1, x + 1])
    return out


def ref_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    i, j = np.mgrid[-r:r + 1, -r:r + 1]
    structure = i ** 2 + j ** 2 <= r ** 2
    pb, gb = ref_boundary(pred), ref_boundary(gt)
    pd = ndimage.binary_dilation(pb, structure=structure)
    gd = ndimage.binary_dilation(gb, structure=structure)
    n_p, n_g = pb.sum(), gb.sum()
    if n_p == 0 and n_g == 0:
        p, rc = 1.0, 1.0
    elif n_p == 0:
        p, rc = 1.0, 0.0
    elif n_g == 0:
        p, rc = 0.0, 1.0
    else:
        p, rc = (pb & gd).sum() / n_p, (gb & pd).sum() / n_g
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def ref_j(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = sum(1 for a, b in zip(pred.ravel(), gt.ravel()) if a and b)
    union = sum(1 for a, b in zip(pred.ravel(), gt.ravel()) if a or b)
    return 1.0 if union == 0 else inter / union


def blobs(rng, shape, n):
    """n random masks: smoothed noise thresholded (blobs, holes, masks touching the edges) and rectangles."""
    out = []
    for k in range(n):
        if k % 3 == 2:
            m = np.zeros(shape, bool)
            y0, x0 = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
            m[y0:y0 + rng.integers(1, shape[0]), x0:x0 + rng.integers(1, shape[1])] = True
        else:
            noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.5, 4))
            m = noise > rng.uniform(-0.05, 0.1)
        out.append(m)
    return np.stack(out)


def test_boundary_map_matches_seg2bmap():
    rng = np.random.default_rng(0)
    masks = np.concatenate([blobs(rng, (17, 23), 6), rng.random((3, 17, 23)) > 0.5])
    got = np.asarray(boundary_map(masks))
    for m, b in zip(masks, got):
        np.testing.assert_array_equal(b, ref_boundary(m))
    one = np.zeros((5, 6), bool)
    one[4, 5] = True  # only the bottom-right pixel: never a boundary itself; its left and top neighbours are
    np.testing.assert_array_equal(np.argwhere(np.asarray(boundary_map(one))), [[3, 4], [3, 5], [4, 4]])
    assert not np.asarray(boundary_map(np.ones((2, 7, 9), bool))).any()


@pytest.mark.parametrize("shape, bound_th", [((40, 56), 0.008), ((40, 56), 0.05), ((33, 47), 2), ((120, 160), 0.008),
                                             ((31, 29), 1)])
def test_f_and_j_match_the_reference(shape, bound_th):
    rng = np.random.default_rng(sum(shape))
    pred, gt = blobs(rng, shape, 6).reshape(2, 3, *shape), blobs(rng, shape, 6).reshape(2, 3, *shape)
    pred[1, 2] = gt[1, 2] ^ (rng.random(shape) < 0.02)  # a near match
    f = np.asarray(boundary_f(pred, gt, bound_th))
    j = np.asarray(region_similarity(pred, gt))
    assert f.shape == j.shape == (2, 3) and f.dtype == j.dtype == np.float32
    for idx in np.ndindex(2, 3):
        assert f[idx] == pytest.approx(ref_f(pred[idx], gt[idx], bound_th), abs=1e-6)
        assert j[idx] == pytest.approx(ref_j(pred[idx], gt[idx]), abs=1e-6)
    assert (0 <= j).all() and (j <= 1).all() and (0 <= f).all() and (f <= 1).all()


def test_radius_and_disk():
    assert boundary_radius(480, 854) == 8  # DAVIS 480p: ceil(0.008 * 979.7)
    assert boundary_radius(40, 56) == 1 and boundary_radius(40, 56, 0.05) == 4 and boundary_radius(9, 9, 3) == 3
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(8).shape == (17, 17) and disk(8).sum() == sum(1 for i in range(-8, 9) for j in range(-8, 9)
                                                               if i * i + j * j <= 64)


def test_radius_is_the_matching_distance():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    for shift, expected in ((3, 1.0), (4, None)):
        pred = np.roll(gt, shift, axis=1)
        f = float(boundary_f(pred, gt, bound_th=3))
        assert f == pytest.approx(ref_f(pred, gt, 3), abs=1e-6)
        if expected is not None:
            assert f == expected
        else:
            assert f < 1


def test_empty_and_full_masks():
    empty, full = np.zeros((12, 14), bool), np.ones((12, 14), bool)
    some = np.zeros((12, 14), bool)
    some[3:8, 4:9] = True
    assert float(boundary_f(empty, empty)) == 1.0 and float(region_similarity(empty, empty)) == 1.0
    assert float(boundary_f(some, empty)) == 0.0 and float(boundary_f(empty, some)) == 0.0
    assert float(region_similarity(some, empty)) == 0.0
    p, r = boundary_precision_recall(empty, some)
    assert (float(p), float(r)) == (1.0, 0.0)
    p, r = boundary_precision_recall(some, empty)
    assert (float(p), float(r)) == (0.0, 1.0)
    # DAVIS counts boundary pixels, and a frame-filling mask has none: F(full, empty) = 1, as in the reference.
    assert float(boundary_f(full, empty)) == ref_f(full, empty) == 1.0
    assert float(region_similarity(full, empty)) == 0.0 and float(region_similarity(full, full)) == 1.0


def test_invariances():
    rng = np.random.default_rng(3)
    a, b = blobs(rng, (36, 44), 8), blobs(rng, (36, 44), 8)
    has_boundary = np.asarray(boundary_map(a)).any(axis=(-2, -1))
    np.testing.assert_array_equal(np.asarray(boundary_f(a, a))[has_boundary], 1.0)
    np.testing.assert_array_equal(np.asarray(region_similarity(a, a)), 1.0)
    np.testing.assert_allclose(np.asarray(boundary_f(a, b)), np.asarray(boundary_f(b, a)), atol=1e-7)
    np.testing.assert_allclose(np.asarray(region_similarity(a, b)), np.asarray(region_similarity(b, a)), atol=1e-7)
    p_ab, r_ab = boundary_precision_recall(a, b)
    p_ba, r_ba = boundary_precision_recall(b, a)
    np.testing.assert_allclose(np.asarray(p_ab), np.asarray(r_ba), atol=1e-7)  # swapping swaps P and R
    np.testing.assert_allclose(np.asarray(r_ab), np.asarray(p_ba), atol=1e-7)
    # leading axes broadcast: one ground truth against several predictions
    np.testing.assert_allclose(np.asarray(boundary_f(a, b[0])), [ref_f(m, b[0]) for m in a], atol=1e-6)


def test_jit_and_float_inputs():
    rng = np.random.default_rng(5)
    a, b = blobs(rng, (30, 38), 4), blobs(rng, (30, 38), 4)
    f = jax.jit(boundary_f, static_argnames="bound_th")(jnp.asarray(a, jnp.float32), jnp.asarray(b), bound_th=0.05)
    np.testing.assert_allclose(np.asarray(f), np.asarray(boundary_f(a, b, 0.05)), atol=1e-7)
    j = jax.jit(region_similarity)(a, b)
    np.testing.assert_allclose(np.asarray(j), [ref_j(x, y) for x, y in zip(a, b)], atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        boundary_f(a, b[:, :-1])


def test_jf_summary():
    j = np.array([[0.9, 0.8, 0.4, 1.0], [0.2, 0.6, 0.7, 0.0]], np.float32)
    f = np.array([[0.7, 0.6, 0.6, 1.0], [0.4, 0.4, 0.9, 0.0]], np.float32)
    s = {k: float(v) for k, v in jf_summary(j, f).items()}
    assert s["J"] == pytest.approx((j[0].mean() + j[1].mean()) / 2)
    assert s["F"] == pytest.approx((f[0].mean() + f[1].mean()) / 2)
    assert s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)
    assert s["J_recall"] == pytest.approx((3 / 4 + 2 / 4) / 2) and s["F_recall"] == pytest.approx((4 / 4 + 1 / 4) / 2)
    valid = np.array([[False, True, True, False], [False, False, False, False]])  # object 2: no valid frame
    s = {k: float(v) for k, v in jax.jit(jf_summary)(j, f, valid).items()}
    assert s["J"] == pytest.approx(0.6) and s["F"] == pytest.approx(0.6) and s["J_recall"] == pytest.approx(0.5)
