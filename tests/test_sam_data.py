"""SAM data: COCO RLE against hand-computed strings, polygons, the SA-1B and COCO readers on hand-written files,
and the aspect-preserving annotation iterator (padding, boxes, exact resume)."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from vitsam.data import rle
from vitsam.data.annotations import make_annotation_iterator
from vitsam.data.coco import CocoInstancesSource
from vitsam.data.sa1b import SA1BSource, write_annotation

# Worked by hand from the format: column-major runs, zeros first; 5-bit chunks + 48, 0x20 = more, 0x10 of the last
# chunk = sign, counts after the second stored as differences from the count two places before.
HAND = [
    # 2x3 mask [[0,1,1],[0,1,0]] read by columns: 0 0 | 1 1 | 1 0 -> runs 2, 3, 1
    (np.array([[0, 1, 1], [0, 1, 0]], bool), [2, 3, 1], "231"),
    # 13x1: 10 ones, a zero, 2 ones -> runs 0, 10, 1, 2; the 4th is stored as 2 - 10 = -8 -> chunk 24 -> "H"
    (np.array([[1]] * 10 + [[0]] + [[1]] * 2, bool), [0, 10, 1, 2], "0:1H"),
    # 105x1: 100 zeros, 5 ones: 100 = 4 + 3·32 -> chunks 4|0x20, 3 -> "T3"
    (np.array([[0]] * 100 + [[1]] * 5, bool), [100, 5], "T35"),
    # runs 1, 100, 2, 3: the 4th is 3 - 100 = -97 -> chunks 31|0x20 (more), 28 (sign set, ends) -> "oL"
    (np.array([[0]] + [[1]] * 100 + [[0]] * 2 + [[1]] * 3, bool), [1, 100, 2, 3], "1T32oL"),
    # 6x5 with the second column set: runs 6, 6, 18; 18 has bit 0x10 (the sign bit of a last chunk), so it takes
    # two chunks: 18|0x20 -> "b", then 0 -> "0"
    (np.eye(1, 5, 1, dtype=bool).repeat(6, axis=0), [6, 6, 18], "66b0"),
]
# (All five strings are also what pycocotools 2.0.11 `mask.encode` returns for these masks.)

# A polygon and its rasterization by pycocotools 2.0.11 (`frPyObjects`, 64x64), as a compressed RLE.
COCO_POLYGON = [59.46, 14.07, 51.23, 25.1, 39.56, 26.0, 30.67, 18.54, 29.41, 7.38, 54.35, -0.33]
COCO_POLYGON_RLE = "Wj11o1:F1N2O1O1O1N101O1N2O000O10000O1000O10O10000OO2O1O4K5L4K4Mf9"


@pytest.mark.parametrize("mask, counts, text", HAND)
def test_rle_matches_hand_encoded_examples(mask, counts, text):
    assert rle.mask_to_counts(mask) == counts
    assert rle.encode_counts(counts) == text
    assert rle.decode_counts(text) == counts
    assert rle.encode(mask) == {"size": list(mask.shape), "counts": text}
    np.testing.assert_array_equal(rle.decode({"size": list(mask.shape), "counts": text}), mask)
    np.testing.assert_array_equal(rle.decode({"size": list(mask.shape), "counts": text.encode()}), mask)
    np.testing.assert_array_equal(rle.decode({"size": list(mask.shape), "counts": counts}), mask)


def test_rle_round_trips_random_and_edge_masks():
    rng = np.random.default_rng(0)
    masks = [rng.random((h, w)) < p for h, w, p in [(7, 5, 0.5), (31, 17, 0.1), (64, 48, 0.9), (1, 1, 1.0)]]
    masks += [np.zeros((9, 4), bool), np.ones((9, 4), bool)]
    blob = np.zeros((300, 200), bool)
    blob[40:260, 30:170] = True  # long runs: multi-chunk counts
    masks.append(blob)
    for m in masks:
        counts = rle.mask_to_counts(m)
        assert sum(counts) == m.size and all(c >= 0 for c in counts)
        for compressed in (True, False):
            np.testing.assert_array_equal(rle.decode(rle.encode(m, compressed)), m)


def test_rle_errors_are_clear():
    with pytest.raises(ValueError, match="sum to 5, not 2x3"):
        rle.decode({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="invalid character"):
        rle.decode_counts("2 3")
    with pytest.raises(ValueError, match="truncated"):
        rle.decode_counts("T")  # a chunk that says more follow, then nothing
    with pytest.raises(ValueError, match="'size' and 'counts'"):
        rle.decode({"counts": "231"})


def test_polygons_rasterize_by_pixel_centres_like_pycocotools():
    m = rle.polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 10)
    expected = np.zeros((8, 10), bool)
    expected[1:4, 2:6] = True  # centres inside: columns 2…5, rows 1…3 (pycocotools gives the same)
    np.testing.assert_array_equal(m, expected)
    two = rle.decode_segmentation([[0, 0, 2, 0, 2, 2, 0, 2], [8, 6, 10, 6, 10, 8, 8, 8]], 8, 10)
    assert two.sum() == 8 and two[0, 0] and two[7, 9]  # a union of two 2x2 squares, one at the far corner
    ours = rle.polygons_to_mask([COCO_POLYGON], 64, 64)
    ref = rle.decode({"size": [64, 64], "counts": COCO_POLYGON_RLE})
    assert ref.sum() == 549
    assert (ours != ref).sum() <= 6  # a few boundary pixels of slanted edges may differ


def _write_image(path, h, w, color):
    Image.fromarray(np.full((h, w, 3), color, np.uint8)).save(path)


@pytest.fixture
def sa1b_dir(tmp_path):
    rng = np.random.default_rng(1)
    truth = {}
    for i, (h, w) in enumerate([(40, 60), (50, 30)]):
        stem = f"sa_{i + 1}"
        _write_image(tmp_path / f"{stem}.png", h, w, (10 * i, 100, 200))
        masks = np.zeros((3, h, w), bool)
        masks[0, 5:20, 10:40] = True
        masks[1] = rng.random((h, w)) < 0.3
        masks[2, -3:, -2:] = True
        write_annotation(tmp_path / f"{stem}.json", i + 1, f"{stem}.png", masks)
        truth[stem] = masks
    (tmp_path / "orphan.json").write_text("{}")  # a JSON without an image beside it is ignored
    return tmp_path, truth


def test_sa1b_reader_gives_images_and_decodable_masks(sa1b_dir):
    root, truth = sa1b_dir
    src = SA1BSource(root)
    assert len(src) == 2 and src.class_names is None
    rec = src[0]
    assert rec["image"].shape == (40, 60, 3) and rec["file_name"] == "sa_1.png"
    np.testing.assert_array_equal(rec["labels"], [-1, -1, -1])
    decoded = np.stack([rle.decode_segmentation(s, 40, 60) for s in rec["segmentations"]])
    np.testing.assert_array_equal(decoded, truth["sa_1"])
    data = json.loads((root / "sa_1.json").read_text())
    assert data["annotations"][0]["bbox"] == [10, 5, 30, 15] and data["annotations"][0]["area"] == 450
    assert len(SA1BSource(root, stop=-1)) == 1 and SA1BSource(root, start=-1)[0]["file_name"] == "sa_2.png"


def test_sa1b_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SA1BSource(tmp_path / "missing")
    with pytest.raises(ValueError, match="no SA-1B image / JSON pairs"):
        SA1BSource(tmp_path)
    _write_image(tmp_path / "a.png", 4, 4, 0)
    (tmp_path / "a.json").write_text(json.dumps({"image": {}, "annotations": [{"bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="has no 'segmentation'"):
        SA1BSource(tmp_path)[0]


def test_annotation_iterator_keeps_the_aspect_ratio_and_pads(sa1b_dir):
    root, truth = sa1b_dir
    it = make_annotation_iterator(SA1BSource(root), 2, 32, 4, train=False, process_index=0, process_count=1,
                                  num_threads=0)
    batch = next(it)
    assert batch["image"].shape == (2, 32, 32, 3) and batch["masks"].shape == (2, 4, 32, 32)
    # 40x60 -> longest side 32: 40 * 32 / 60 = 21.33 -> 21 rows; 50x30 -> 32 rows, 30 * 32 / 50 = 19.2 -> 19 columns
    np.testing.assert_array_equal(batch["input_size"], [[21, 32], [32, 19]])
    assert np.all(batch["image"][0, 21:] == 0) and np.all(batch["image"][1, :, 19:] == 0)
    assert np.all(batch["image"][0, :21, :, 1] == 100)
    np.testing.assert_array_equal(batch["mask_valid"], [[True, True, True, False]] * 2)
    assert not batch["masks"][0, :, 21:].any() and not batch["masks"][1, :, :, 19:].any()
    for b in range(2):
        for k in range(3):
            m = batch["masks"][b, k]
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            np.testing.assert_array_equal(batch["boxes"][b, k], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    # the first mask (rows 5-19, cols 10-39 of 40x60) scaled by 32/60 lands near rows 3-10, cols 5-21
    m0 = batch["masks"][0, 0]
    assert abs(m0.sum() - 450 * (32 / 60) ** 2) < 25
    np.testing.assert_array_equal(batch["labels"], [[-1, -1, -1, -1]] * 2)


def test_annotation_iterator_samples_masks_and_resumes_exactly(sa1b_dir):
    root, _ = sa1b_dir
    src = SA1BSource(root)
    kw = dict(train=True, seed=3, process_index=0, process_count=1, num_threads=0)
    it = make_annotation_iterator(src, 1, 24, 2, **kw)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    again = make_annotation_iterator(src, 1, 24, 2, **kw)
    again.set_state(state)
    for a, b in zip(rest, [next(again) for _ in range(3)]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert all(b["mask_valid"].sum() == 2 for b in first + rest)  # 2 of the 3 masks, drawn at random


def _annotated_records(n=10):
    """n in-memory annotation records of varying sizes, 3 or 4 RLE masks each (some under min_area=20)."""
    rng = np.random.default_rng(2)
    records = []
    for i in range(n):
        h, w = 20 + 3 * (i % 4), 30 - 2 * (i % 3)
        masks = rng.random((3 + i % 2, h, w)) < rng.uniform(0.01, 0.5, (3 + i % 2, 1, 1))
        records.append({"image": rng.integers(0, 256, (h, w, 3), np.uint8),
                        "segmentations": [rle.encode(m) for m in masks],
                        "labels": rng.integers(-1, 4, len(masks)).astype(np.int32)})
    return records


def _take(it, n):
    return list(itertools.islice(it, n))


def _concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_equal_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key])


def test_annotation_process_batches_concatenate_and_states_move():
    """Process i of P yields rows [i b, (i + 1) b) of the one-process batch of B = P b, bitwise, across epoch
    boundaries (10 examples, B = 4: one inside batch 2), and a state moves between process counts."""
    src = _annotated_records()

    def iterator(b, i, p):
        return make_annotation_iterator(src, b, 24, 2, train=True, seed=6, process_index=i, process_count=p,
                                        min_area=20, num_threads=0)

    reference = _take(iterator(4, 0, 1), 6)
    for p in (2, 4):
        per_process = [_take(iterator(4 // p, i, p), 6) for i in range(p)]
        _assert_equal_batches([_concat(parts) for parts in zip(*per_process)], reference)
    two = [iterator(2, i, 2) for i in range(2)]
    for _ in range(2):
        [next(it) for it in two]
    states = [json.loads(json.dumps(it.get_state())) for it in two]
    assert states[0] == states[1]
    one = iterator(4, 0, 1)
    one.set_state(states[0])
    _assert_equal_batches(_take(one, 4), reference[2:])


def test_one_process_annotation_streams_are_those_of_the_per_process_pipeline():
    """With one process, the training and eval streams of the commit whose streams were one per process."""
    import importlib.util
    import pathlib
    import subprocess
    import sys
    import tempfile

    from vitsam.data import pipeline

    commit = "8842c16bd69aae9b41e2a9909688f559bedb01c0"  # tests/test_data.py: PER_PROCESS_STREAMS
    modules = {}
    for name, path in (("pipeline", "vitsam/data/pipeline.py"), ("annotations", "vitsam/data/annotations.py")):
        try:
            text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=pathlib.Path(__file__).resolve().parents[1],
                                  capture_output=True, text=True, check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            pytest.skip(f"git show {commit[:8]}:{path} is not available here")
        file = pathlib.Path(tempfile.mkdtemp()) / f"{name}_per_process_streams.py"
        file.write_text(text)
        spec = importlib.util.spec_from_file_location(file.stem, file)
        modules[name] = sys.modules[file.stem] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    old = modules["annotations"]
    old.pipeline = modules["pipeline"]  # its own helpers, not today's
    assert pipeline is not old.pipeline
    src = _annotated_records()
    for train in (True, False):
        kw = dict(train=train, seed=1, process_index=0, process_count=1, min_area=20, num_threads=0)
        a = _take(old.make_annotation_iterator(src, 4, 24, 2, **kw), 4)  # eval: its 3 batches
        _assert_equal_batches(a, _take(make_annotation_iterator(src, 4, 24, 2, **kw), 4))


def _coco(tmp_path, extra_annotations=()):
    _write_image(tmp_path / "a.png", 10, 12, (1, 2, 3))
    _write_image(tmp_path / "b.png", 6, 5, (4, 5, 6))
    _write_image(tmp_path / "c.png", 6, 5, (7, 8, 9))
    crowd = np.zeros((10, 12), bool)
    crowd[:, :3] = True
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12},
                   {"id": 8, "file_name": "b.png", "height": 6, "width": 5},
                   {"id": 9, "file_name": "c.png", "height": 6, "width": 5}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "iscrowd": 0, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            {"id": 2, "image_id": 7, "category_id": 5, "iscrowd": 1,
             "segmentation": {"size": [10, 12], "counts": [0, 30, 90]}},
            {"id": 3, "image_id": 8, "category_id": 5, "iscrowd": 0,
             "segmentation": {"size": [6, 5], "counts": "66b0"}},  # runs 6, 6, 18
            *extra_annotations,
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reader_maps_categories_and_decodes_polygons_and_rle(tmp_path):
    src = CocoInstancesSource(_coco(tmp_path), tmp_path)
    assert src.class_names == ["cat", "dog"]
    assert len(src) == 2  # c.png has no annotation: dropped
    a = src[0]
    assert a["image_id"] == 7 and a["image"].shape == (10, 12, 3)
    np.testing.assert_array_equal(a["labels"], [1])  # the crowd annotation is skipped
    expected = np.zeros((10, 12), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(rle.decode_segmentation(a["segmentations"][0], 10, 12), expected)
    b = src[1]
    np.testing.assert_array_equal(b["labels"], [0])
    m = rle.decode_segmentation(b["segmentations"][0], 6, 5)
    assert m[:, 1].all() and m.sum() == 6  # runs 6, 6, 18 in a 6x5 mask: the second column
    with_crowd = CocoInstancesSource(_coco(tmp_path), tmp_path, skip_crowd=False, keep_empty=True)
    assert len(with_crowd) == 3
    np.testing.assert_array_equal(with_crowd[0]["labels"], [1, 0])
    crowd = rle.decode_segmentation(with_crowd[0]["segmentations"][1], 10, 12)
    assert crowd[:, :3].all() and crowd.sum() == 30
    batch = next(make_annotation_iterator(src, 2, 16, 2, train=False, process_index=0, process_count=1,
                                          num_threads=0))
    np.testing.assert_array_equal(batch["labels"], [[1, -1], [0, -1]])


def test_coco_reader_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no annotations, categories"):
        CocoInstancesSource(bad, tmp_path)
    with pytest.raises(FileNotFoundError):
        CocoInstancesSource(tmp_path / "missing.json", tmp_path)
    path = _coco(tmp_path, [{"id": 4, "image_id": 99, "category_id": 5, "segmentation": [[0, 0, 1, 0, 1, 1]]}])
    with pytest.raises(ValueError, match="unknown image 99"):
        CocoInstancesSource(path, tmp_path)
