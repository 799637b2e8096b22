"""Sam2VideoPredictor on the tiny SAM 2: inputs and their errors, hole filling against a naive flood fill,
objects tracked independently of each other in one batch, compiled steps reused across frames and videos. Parity with the
official predictor: test_video_predictor_parity.py (`pytest -m parity`)."""

from collections import deque

import jax
import numpy as np
import pytest
from PIL import Image

from vitsam.models.sam2.sam2 import sam2_init, sam2_variant
from vitsam.video_predictor import Sam2VideoPredictor, fill_holes, load_video


@pytest.fixture(scope="module")
def predictor():
    model = sam2_variant("tiny")
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda r: sam2_init(model, r), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(s.dtype), shapes)
    return Sam2VideoPredictor(model, variables, fill_hole_area=0)


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(6, 40, 56, 3), dtype=np.uint8)


def naive_fill(logits, max_area):
    """Flood fill of each 8-connected background region; regions of at most max_area pixels become 0.1."""
    out = logits.copy()
    h, w = logits.shape
    seen = np.zeros((h, w), bool)
    for y0 in range(h):
        for x0 in range(w):
            if seen[y0, x0] or logits[y0, x0] > 0:
                continue
            region, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and logits[ny, nx] <= 0:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            if len(region) <= max_area:
                for y, x in region:
                    out[y, x] = 0.1
    return out


def test_fill_holes_matches_a_naive_flood_fill():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 24, 20)).astype(np.float32) + 0.8  # mostly foreground with small holes
    got = fill_holes(logits, 8)
    for m, g in zip(logits, got):
        np.testing.assert_array_equal(g, naive_fill(m, 8))
    assert (got != logits).any()


def test_load_video_inputs(tmp_path, video):
    frames, h, w = load_video(video, 32)
    assert frames.shape == (6, 32, 32, 3) and (h, w) == (40, 56)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in (0, 1, 2, 10):  # 10 after 2: ordered by number, not by name
        Image.fromarray(np.full((40, 56, 3), t * 20, np.uint8)).save(folder / f"{t}.png")
    frames, h, w = load_video(folder, 32)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 20, 40, 200]
    Image.fromarray(np.zeros((30, 56, 3), np.uint8)).save(folder / "11.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_video(folder, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no frames"):
        load_video(empty, 32)
    with pytest.raises(FileNotFoundError):
        load_video(tmp_path / "missing.mp4", 32)
    with pytest.raises(ValueError, match="empty"):
        load_video(np.zeros((0, 8, 8, 3), np.uint8), 32)
    with pytest.raises(ValueError, match="uint8"):
        load_video(np.zeros((2, 8, 8, 3), np.float32), 32)


def test_bad_prompts(predictor, video):
    with pytest.raises(TypeError, match="init_state"):
        predictor.add_new_points_or_box(None, 0, 1, points=[[1, 2]], labels=[1])
    state = predictor.init_state(video)
    with pytest.raises(ValueError, match="no object"):
        next(predictor.propagate_in_video(state))
    with pytest.raises(IndexError, match="out of range"):
        predictor.add_new_points_or_box(state, 6, 1, points=[[1, 2]], labels=[1])
    with pytest.raises(ValueError, match="together"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 2]])
    with pytest.raises(ValueError, match="labels"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 2]], labels=[5])
    with pytest.raises(ValueError, match="box"):
        predictor.add_new_points_or_box(state, 0, 1, box=[1, 2, 3])
    with pytest.raises(KeyError, match="unknown object id 7"):
        predictor.clear_all_prompts_in_frame(state, 0, 7)
    with pytest.raises(KeyError, match="cannot remove object id 7"):
        predictor.remove_object(state, 7, strict=True)
    assert predictor.remove_object(state, 7) == ([], [])
    with pytest.raises(ValueError, match="2-D"):
        predictor.add_new_mask(state, 0, 1, np.zeros((2, 3, 4)))


def test_objects_are_tracked_independently_without_recompiling(predictor, video):
    """Object 1's masks do not depend on other objects sharing its batch, and a second video of the same size
    reuses the compiled steps: programs are compiled per slot-count bucket, not per frame or per video."""
    def track(objects):
        state = predictor.init_state(video)
        for obj, (x, y) in objects.items():
            _, ids, masks = predictor.add_new_points_or_box(state, 1, obj, points=[[x, y]], labels=[1])
            assert masks.shape == (len(ids), 1, 40, 56)
        predictor.add_new_mask(state, 3, 1, np.pad(np.ones((10, 10), bool), ((5, 25), (20, 26))))
        out = {f: m for f, _, m in predictor.propagate_in_video(state, progress=False)}
        back = {f: m for f, _, m in predictor.propagate_in_video(state, start_frame_idx=1, reverse=True,
                                                                 progress=False)}
        return state, out, back

    state, alone, alone_back = track({1: (10, 12)})
    assert sorted(alone) == [1, 2, 3, 4, 5] and list(alone_back) == [1, 0]
    assert set(state.objects[1].outputs["cond"]) == {1, 3}
    # The recent-memory slots seen: 0 (frame 2), 1 (frame 4), 2 (frame 5), 4 (frame 0 in reverse: frames 2, 4, 5),
    # and the prompt's step without memory.
    compiled = predictor._track._cache_size()
    assert compiled <= 5
    track({1: (10, 12)})
    assert predictor._track._cache_size() == compiled
    _, together, together_back = track({1: (10, 12), 2: (40, 30), 3: (5, 35)})
    for f in alone:
        np.testing.assert_allclose(together[f][0], alone[f][0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(together_back[0][0], alone_back[0][0], atol=1e-4, rtol=1e-4)
