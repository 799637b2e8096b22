"""Tests of the shapes generator, its TFDS builder, the transforms and the grain pipelines."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from vitsam.data import shapes, transforms

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from vitsam.data import pipeline, shapes_builder  # noqa: E402  (needs the [data] extra)

SMALL = "vitsam_shapes/small"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    shapes_builder.prepare_shapes(d, "small")
    return d


@pytest.fixture(scope="module")
def train_src(data_dir):
    return pipeline.open_source(SMALL, "train", data_dir)


@pytest.fixture(scope="module")
def test_src(data_dir):
    return pipeline.open_source(SMALL, "test", data_dir)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal_batches(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b))


# ----------------------------------------------------------------------------- generator


def test_render_is_deterministic():
    a, b = shapes.render_example(5), shapes.render_example(5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.image, shapes.render_example(6).image)
    assert not np.array_equal(a.image, shapes.render_example(5, seed=1).image)
    c = shapes.render_example(np.random.default_rng([0, 5]))
    np.testing.assert_array_equal(a.image, c.image)


@pytest.mark.parametrize("name, area", [
    ("circle", np.pi),
    ("ring", np.pi * (1 - 0.55**2)),
    ("square", 2.0),  # circumradius 1: side sqrt(2)
    ("triangle", 3 * np.sqrt(3) / 4),
    ("star", 10 * 0.5 * 0.45 * np.sin(np.pi / 5)),  # 10 triangles (1, 0.45, 36 degrees)
    ("cross", 2 * 2 * 0.6 - 0.6**2),  # two 2 x 0.6 bars minus their overlap
])
def test_shape_mask_area_matches_geometry(name, area):
    radius = 25.0
    mask = shapes.shape_mask(name, (40.0, 40.0), radius, angle=0.3, image_size=80)
    assert abs(mask.sum() / (area * radius**2) - 1) < 0.02


def test_render_masks_boxes_labels():
    for index in range(60):
        ex = shapes.render_example(index)
        k = len(ex.labels)
        assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
        assert ex.masks.shape == (k, 64, 64) and ex.masks.dtype == bool
        assert ex.boxes.shape == (k, 4) and 1 <= k <= 4
        assert ex.masks.sum(axis=0).max() == 1  # disjoint
        areas = ex.masks.sum(axis=(1, 2))
        assert (areas > 0).all()
        assert ex.label == ex.labels[np.argmax(areas)] == ex.labels[0]
        assert set(ex.labels.tolist()) <= set(range(len(shapes.CLASS_NAMES)))
        background = ex.image[~ex.masks.any(axis=0)].astype(float).mean(axis=0)
        for mask, box in zip(ex.masks, ex.boxes):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            colours = np.unique(ex.image[mask], axis=0)
            assert len(colours) == 1  # the mask is exactly the painted shape
            assert np.linalg.norm(colours[0] - background) > 90  # contrast with the background


# ----------------------------------------------------------------------------- builder


def test_prepared_dataset_matches_generator(train_src, test_src):
    assert len(train_src) == 512 and len(test_src) == 128
    assert pipeline.class_names(train_src) == list(shapes.CLASS_NAMES)
    assert pipeline.num_classes(train_src) == 6
    for src, seed in ((train_src, 0), (test_src, 1)):
        for index in (0, 17, len(src) - 1):
            record, ex = src[index], shapes.render_example(index, seed=seed)
            np.testing.assert_array_equal(record["image"], ex.image)
            assert record["label"] == ex.label
            np.testing.assert_array_equal(record["objects"]["label"], ex.labels)
            masks = np.stack(record["objects"]["mask"])[..., 0] > 0
            np.testing.assert_array_equal(masks, ex.masks)
            x0, y0, x1, y1 = ex.boxes.T
            np.testing.assert_allclose(np.stack(record["objects"]["bbox"]),
                                       np.stack([y0, x0, y1, x1], -1) / 64, atol=1e-6)


def test_prepare_is_a_noop_and_deterministic(data_dir, tmp_path):
    version_dir = data_dir / "vitsam_shapes" / "small" / "1.0.0"
    files = sorted(p for p in version_dir.iterdir() if "array_record" in p.name)
    assert len(files) == 2
    before = {p: p.stat().st_mtime_ns for p in files}
    shapes_builder.prepare_shapes(data_dir, "small")
    assert {p: p.stat().st_mtime_ns for p in files} == before
    shapes_builder.prepare_shapes(tmp_path, "small")
    other = tmp_path / "vitsam_shapes" / "small" / "1.0.0"
    for p in files:
        assert (other / p.name).read_bytes() == p.read_bytes()


def test_prepare_and_read_without_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow_datasets as tfds
        from vitsam.data import shapes, shapes_builder
        shapes_builder.prepare_shapes({str(tmp_path)!r}, "small")
        src = tfds.data_source("{SMALL}", split="test", data_dir={str(tmp_path)!r})
        assert np.array_equal(src[3]["image"], shapes.render_example(3, seed=1).image)
        assert "tensorflow" not in sys.modules  # never imported, whether installed or not
        print("ok", len(src))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 128" in out.stdout


# ----------------------------------------------------------------------------- transforms


def test_transforms_shapes_dtypes_and_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    out = transforms.random_resized_crop(image, rng, 32, scale=(0.3, 1.0))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert transforms.resize_center_crop(image, 40, 0.875).shape == (40, 40, 3)
    flipped = transforms.horizontal_flip(image)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    assert flipped[5, 0, 1] == image[5, 79, 1]
    norm = transforms.normalize(np.array([0, 255, 127.5]).astype(np.uint8))
    np.testing.assert_allclose(norm, [-1.0, 1.0, 127 / 127.5 - 1])
    assert transforms.to_rgb(image[..., :1]).shape == (48, 80, 3)
    # A full-image crop at the original size is the identity.
    square = image[:, :48]
    np.testing.assert_array_equal(
        transforms.random_resized_crop(square, rng, 48, scale=(1, 1), ratio=(1, 1)), square)
    np.testing.assert_array_equal(transforms.resize_center_crop(square, 48), square)
    assert transforms.center_crop_box(48, 80, 0.5) == (28.0, 12.0, 52.0, 36.0)


def test_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(1)
    for _ in range(200):
        x0, y0, x1, y1 = transforms.sample_crop_box(rng, 60, 90, scale=(0.2, 0.7),
                                                    ratio=(0.5, 2.0))
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 and x1 <= 90 + 1e-9 and 0 <= y0 and y1 <= 60 + 1e-9
        assert 0.2 - 1e-9 <= w * h / (60 * 90) <= 0.7 + 1e-9
        assert 0.5 - 1e-9 <= w / h <= 2.0 + 1e-9


def test_resize_center_crop_takes_the_centre():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 26:74] = 255  # white around the central 40 x 40 square (30:70), black sides
    np.testing.assert_array_equal(transforms.resize_center_crop(image, 20), 255)


# ----------------------------------------------------------------------------- pipeline


def _train_iter(src, seed=0, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    return pipeline.make_iterator(src, 32, 64, train=True, seed=seed, **kw)


def test_train_batches(train_src):
    batch = next(_train_iter(train_src))
    assert batch["image"].shape == (32, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].dtype == np.int32 and batch["mask"].all()
    labels = np.array([train_src[i]["label"] for i in batch["index"]])
    np.testing.assert_array_equal(batch["label"], labels)


def test_rotate90_and_permute_channels_apply_one_of_the_24_transforms(train_src):
    import itertools

    # A full-image crop, no flip: each output must be rot90(source, k)[..., perm] for some k and channel order.
    it = _train_iter(train_src, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, rotate90=True,
                     permute_channels=True)
    seen = set()
    for batch in _take(it, 2):
        for image, index in zip(batch["image"], batch["index"]):
            source = transforms.normalize(train_src[int(index)]["image"])
            matches = [(k, perm) for k in range(4) for perm in itertools.permutations(range(3))
                       if np.allclose(np.rot90(source, k)[..., list(perm)], image, atol=1e-6)]
            assert matches, f"example {index} is not a rotation + channel permutation of its source"
            seen.update(matches)
    assert {k for k, _ in seen} == {0, 1, 2, 3} and len({p for _, p in seen}) == 6


@pytest.mark.parametrize("rotate90, permute_channels", [(False, False), (True, True)])
def test_batched_augmentation_equals_the_per_image_pil_path(train_src, rotate90, permute_channels):
    """The whole-batch crop / resize / flip (matrix products) against one PIL call per image, with the same seed:
    the same examples, and images equal to within PIL's rounding (one grey level, 2 / 255 after normalizing)."""
    kw = dict(crop_scale=(0.3, 1.0), rotate90=rotate90, permute_channels=permute_channels)
    batched = _take(_train_iter(train_src, batch_augment=True, **kw), 2)
    per_image = _take(_train_iter(train_src, batch_augment=False, **kw), 2)
    for a, b in zip(batched, per_image):
        assert a.keys() == b.keys()
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["label"], b["label"])
        assert a["image"].dtype == np.float32 and a["image"].shape == b["image"].shape
        np.testing.assert_allclose(a["image"], b["image"], atol=1 / 127.5 + 1e-6)
        levels = lambda x: np.rint(x * 127.5 + 127.5)  # noqa: E731  back to grey levels
        assert np.mean(levels(a["image"]) != levels(b["image"])) < 0.3
    # The default picks the batched path for vitsam_shapes' fixed 64 x 64 images.
    assert _equal_batches(_take(_train_iter(train_src, **kw), 2), batched)


def test_resize_batch_matches_pil_when_shrinking_and_for_non_square_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 50, 80, 3)).astype(np.uint8)
    boxes = np.array([transforms.sample_crop_box(rng, 50, 80, (0.08, 1.0)) for _ in range(6)])
    for size in (16, 96):  # shrinking (antialiased) and enlarging
        expected = np.stack([transforms.resize(im, (size, size), box=tuple(b)) for im, b in zip(images, boxes)])
        got = transforms.resize_batch(images, boxes, size)
        assert got.shape == (6, size, size, 3) and got.dtype == np.float32
        assert np.abs(np.rint(got) - expected).max() <= 1


def test_flip_rotate_box_moves_the_crop_with_the_image():
    """Cropping the flipped and turned image at the moved box equals flipping and turning the crop."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(30, 44, 3)).astype(np.uint8)
    for flip in (False, True):
        for k in range(4):
            box = transforms.sample_crop_box(rng, 30, 44, (0.2, 0.6))
            crop = transforms.resize(image, (12, 12), box=box)
            expected = np.rot90(crop[:, ::-1] if flip else crop, k)
            turned = np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, k))
            moved = transforms.flip_rotate_box(box, 30, 44, flip, k)
            got = transforms.resize(turned, (12, 12), box=moved)
            assert np.abs(got.astype(int) - expected).max() <= 1, (flip, k)


def test_batch_augment_needs_one_image_shape():
    wide = pipeline.InMemorySource({"image": np.zeros((2, 8, 9, 3), np.uint8), "label": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="square"):
        pipeline.make_iterator(wide, 1, 8, train=True, batch_augment=True, rotate90=True, process_index=0,
                               process_count=1)
    ragged = pipeline.InMemorySource({"image": [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)],
                                      "label": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="one declared shape"):
        pipeline.make_iterator(ragged, 1, 8, train=True, batch_augment=True, process_index=0, process_count=1)
    batch = next(pipeline.make_iterator(ragged, 2, 8, train=True, process_index=0, process_count=1))  # per image
    assert batch["image"].shape == (2, 8, 8, 3)


def test_train_order_is_deterministic_per_seed(train_src):
    a = _take(_train_iter(train_src, seed=0), 3)
    b = _take(_train_iter(train_src, seed=0, num_threads=0, prefetch=0), 3)
    c = _take(_train_iter(train_src, seed=1), 3)
    assert _equal_batches(a, b)
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_epochs_cover_the_data_and_reshuffle(train_src):
    it = _train_iter(train_src, num_epochs=2)
    batches = list(it)
    assert len(batches) == 2 * 512 // 32
    epoch1 = np.concatenate([b["index"] for b in batches[:16]])
    epoch2 = np.concatenate([b["index"] for b in batches[16:]])
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(512))
    np.testing.assert_array_equal(np.sort(epoch2), np.arange(512))
    assert not np.array_equal(epoch1, epoch2)
    assert not np.array_equal(epoch1, np.arange(512))


def test_get_state_set_state_resumes_exactly(train_src):
    reference = _take(_train_iter(train_src), 6)
    it = _train_iter(train_src)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    restored = _train_iter(train_src)
    restored.set_state(state)
    assert _equal_batches(_take(restored, 3), reference[3:])


def _small_source(kind, n=36):
    """n synthetic examples: "fixed" images of one declared shape (augmentation drawn per global batch), "ragged"
    ones of varying sizes (per example, by stream position)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, n)
    if kind == "fixed":
        return pipeline.InMemorySource({"image": rng.integers(0, 256, (n, 20, 20, 3), np.uint8), "label": labels})
    images = [rng.integers(0, 256, (16 + i % 5, 18 + i % 3, 3), np.uint8) for i in range(n)]
    return pipeline.InMemorySource({"image": images, "label": labels})


def _concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


_AUGMENT = dict(crop_scale=(0.3, 1.0), rotate90=True, permute_channels=True)


@pytest.mark.parametrize("kind, batch_augment", [("fixed", None), ("fixed", False), ("ragged", None)])
def test_process_batches_concatenate_to_the_one_process_batch(kind, batch_augment):
    """Global batch j is a function of (seed, j) only: process i of P yields rows [i b, (i + 1) b) of what one
    process with batch B = P b yields, bitwise, across epoch boundaries (36 examples, B = 8: one falls inside a
    batch), and every process count stops after the same num_epochs * n // B batches."""
    src = _small_source(kind)

    def batches(b, i, p):
        return list(pipeline.make_iterator(src, b, 16, train=True, seed=5, num_epochs=2, process_index=i,
                                           process_count=p, batch_augment=batch_augment, num_threads=0, **_AUGMENT))

    reference = batches(8, 0, 1)
    assert len(reference) == 2 * 36 // 8
    for p in (2, 4):
        per_process = [batches(8 // p, i, p) for i in range(p)]
        assert _equal_batches([_concat(parts) for parts in zip(*per_process)], reference)
    with pytest.raises(ValueError, match="cannot fill one global batch of 40"):
        pipeline.make_iterator(src, 10, 16, train=True, process_index=0, process_count=4)


@pytest.mark.parametrize("kind", ["fixed", "ragged"])
def test_state_is_the_same_on_every_process_and_moves_across_process_counts(kind):
    src = _small_source(kind)

    def iterator(b, i, p):
        return pipeline.make_iterator(src, b, 16, train=True, seed=2, process_index=i, process_count=p,
                                      num_threads=0, **_AUGMENT)

    two = [iterator(4, i, 2) for i in range(2)]
    for _ in range(3):
        [next(it) for it in two]
    states = [json.loads(json.dumps(it.get_state())) for it in two]
    assert states[0] == states[1]
    continued = [_concat([next(it) for it in two]) for _ in range(4)]  # across the epoch boundary at 36
    one = iterator(8, 0, 1)
    one.set_state(states[0])
    assert _equal_batches(_take(one, 4), continued)
    four = [iterator(2, i, 4) for i in range(4)]  # and back: one process's state, four processes
    for it in four:
        it.set_state(states[0])
    assert _equal_batches([_concat([next(it) for it in four]) for _ in range(4)], continued)


def _module_at(commit, path, name):
    """The module `path` as of `commit`, loaded under `name`; skips where git or the commit is unavailable."""
    import importlib.util
    import pathlib
    import tempfile

    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git show {commit[:8]}:{path} is not available here")
    file = pathlib.Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# The last commit whose training streams were one per process: with one process, the streams must not have moved
# (the recipes' published results were measured on them). Eval streams did not change either.
PER_PROCESS_STREAMS = "8842c16bd69aae9b41e2a9909688f559bedb01c0"


def test_one_process_streams_are_those_of_the_per_process_pipeline(train_src, test_src):
    old = _module_at(PER_PROCESS_STREAMS, "vitsam/data/pipeline.py", "pipeline_per_process_streams")
    kw = dict(train=True, seed=3, process_index=0, process_count=1, num_threads=0)
    small = _small_source("fixed")
    for batch_augment in (None, False):  # the whole-batch resize and PIL, both drawing from the batch's rng
        a = _take(old.make_iterator(small, 8, 16, batch_augment=batch_augment, **kw, **_AUGMENT), 6)
        b = _take(pipeline.make_iterator(small, 8, 16, batch_augment=batch_augment, **kw, **_AUGMENT), 6)
        assert _equal_batches(a, b)
    a = _take(old.make_iterator(train_src, 16, 64, **kw, **_AUGMENT), 2)  # a TFDS-declared image shape
    assert _equal_batches(a, _take(pipeline.make_iterator(train_src, 16, 64, **kw, **_AUGMENT), 2))
    instances = _instance_subset(test_src, 10)
    a = _take(old.make_instance_iterator(instances, 4, 32, 3, **kw), 4)  # an epoch boundary inside batch 2
    assert _equal_batches(a, _take(pipeline.make_instance_iterator(instances, 4, 32, 3, **kw), 4))
    kw["train"] = False
    a = list(old.make_instance_iterator(instances, 4, 32, 3, **kw))
    assert _equal_batches(a, list(pipeline.make_instance_iterator(instances, 4, 32, 3, **kw)))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_counts_each_example_once(test_src, process_count):
    seen, num_batches = [], set()
    for p in range(process_count):
        batches = list(pipeline.make_iterator(test_src, 50, 64, train=False, process_index=p,
                                              process_count=process_count))
        num_batches.add(len(batches))
        for b in batches:
            assert b["image"].shape == (50, 64, 64, 3)
            seen.extend(b["index"][b["mask"]].tolist())
            np.testing.assert_array_equal(
                b["label"], [test_src[i]["label"] for i in b["index"]])
    assert len(num_batches) == 1  # every process runs the same number of steps
    assert sorted(seen) == list(range(128))
    if process_count == 1:  # eval images are the stored ones, normalized
        b = next(pipeline.make_iterator(test_src, 4, 64, train=False, process_index=0,
                                        process_count=1))
        np.testing.assert_allclose(b["image"][2], test_src[2]["image"] / 127.5 - 1, atol=1e-6)


def test_worker_processes_give_the_same_batches(train_src):
    a = _take(_train_iter(train_src), 2)
    it = _train_iter(train_src, worker_count=1)
    b = _take(it, 2)
    json.dumps(it.get_state())
    it.close()
    assert _equal_batches(a, b)


def test_cache_in_memory_gives_the_same_batches(test_src):
    cached = pipeline.cache_in_memory(test_src)
    assert cached.columns["image"].shape == (128, 64, 64, 3)
    kw = dict(train=False, process_index=0, process_count=1)
    a = list(pipeline.make_iterator(test_src, 40, 64, **kw))
    b = list(pipeline.make_iterator(cached, 40, 64, **kw))
    assert _equal_batches(a, b)
    assert pipeline.class_names(cached) == list(shapes.CLASS_NAMES)


def test_cached_instances_give_the_same_batches(test_src):
    """Nested features (objects with a varying number of masks) cache per example; the SAM trainer's
    batches from the cache equal those decoded from the array_record files."""
    cached = pipeline.cache_in_memory(test_src, ("image", "objects", "label"))
    assert isinstance(cached.columns["objects"], list) and len(cached.columns["objects"]) == 128
    kw = dict(train=True, seed=3, flip=True, process_index=0, process_count=1, num_threads=0)
    a = _take(pipeline.make_instance_iterator(test_src, 8, 64, 4, **kw), 3)
    b = _take(pipeline.make_instance_iterator(cached, 8, 64, 4, **kw), 3)
    assert _equal_batches(a, b)
    assert sum(int(x["mask_valid"].sum()) for x in a) > 3 * 8  # distractors are in there too


def _instance_subset(source, n):
    """The first n examples of a vitsam_shapes source, in memory (its dataset_info kept for the features)."""
    records = [source[i] for i in range(n)]
    return pipeline.InMemorySource({"image": np.stack([r["image"] for r in records]),
                                    "objects": [r["objects"] for r in records],
                                    "label": np.array([r["label"] for r in records])}, source.dataset_info)


def test_instance_process_batches_concatenate_and_states_move(test_src):
    """make_instance_iterator: process i of P yields rows [i b, (i + 1) b) of the one-process batch of B = P b,
    bitwise, across epoch boundaries (20 examples, B = 8), and a state moves between process counts."""
    src = _instance_subset(test_src, 20)

    def iterator(b, i, p):
        return pipeline.make_instance_iterator(src, b, 32, 3, train=True, seed=4, process_index=i, process_count=p,
                                               num_threads=0)

    reference = _take(iterator(8, 0, 1), 6)
    for p in (2, 4):
        per_process = [_take(iterator(8 // p, i, p), 6) for i in range(p)]
        assert _equal_batches([_concat(parts) for parts in zip(*per_process)], reference)
    two = [iterator(4, i, 2) for i in range(2)]
    for _ in range(2):
        [next(it) for it in two]
    states = [json.loads(json.dumps(it.get_state())) for it in two]
    assert states[0] == states[1]
    one = iterator(8, 0, 1)
    one.set_state(states[0])
    assert _equal_batches(_take(one, 4), reference[2:6])
    with pytest.raises(ValueError, match="cannot fill one global batch of 24"):
        pipeline.make_instance_iterator(src, 6, 32, 3, train=True, process_index=0, process_count=4)


def test_instance_iterator(test_src):
    it = pipeline.make_instance_iterator(test_src, 8, 64, max_masks=3, train=True, seed=0,
                                         process_index=0, process_count=1)
    for batch in _take(it, 3):
        assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["masks"].shape == (8, 3, 64, 64) and batch["masks"].dtype == bool
        assert batch["boxes"].shape == (8, 3, 4) and batch["labels"].dtype == np.int32
        for i, index in enumerate(batch["index"]):
            ex = shapes.render_example(int(index), seed=1)
            n = min(3, len(ex.labels))
            np.testing.assert_array_equal(batch["mask_valid"][i], np.arange(3) < n)
            np.testing.assert_array_equal(batch["labels"][i, :n], ex.labels[:n])
            assert (batch["labels"][i, n:] == -1).all() and not batch["masks"][i, n:].any()
            flipped = not np.array_equal(batch["image"][i], ex.image)
            if flipped:
                np.testing.assert_array_equal(batch["image"][i], ex.image[:, ::-1])
            for k in range(n):
                expected = ex.masks[k][:, ::-1] if flipped else ex.masks[k]
                np.testing.assert_array_equal(batch["masks"][i, k], expected)
                ys, xs = np.nonzero(expected)
                np.testing.assert_array_equal(
                    batch["boxes"][i, k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_instance_iterator_resizes(test_src):
    batch = next(pipeline.make_instance_iterator(test_src, 4, 32, max_masks=4, train=False,
                                                 process_index=0, process_count=1))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["masks"].shape == (4, 4, 32, 32)
    for masks, valid, boxes in zip(batch["masks"], batch["mask_valid"], batch["boxes"]):
        assert valid[0]
        for mask, box in zip(masks[valid], boxes[valid]):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


# ----------------------------------------------------------------------------- other datasets


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class VitsamTestVarsize(tfds.core.GeneratorBasedBuilder):
    """Like cifar10 / oxford_iiit_pet: images of varying sizes, a label, an extra mask image."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(0)
        for i in range(n):
            h, w = 20 + 3 * i, 50 - i
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            yield i, {"image": _png(image), "label": i % 3,
                      "segmentation_mask": _png(np.zeros((h, w), np.uint8))}


def test_generic_dataset_with_varying_image_sizes(tmp_path):
    VitsamTestVarsize(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    src = pipeline.open_source("vitsam_test_varsize", "train", tmp_path)
    assert pipeline.num_classes(src) == 3
    for train in (True, False):
        it = pipeline.make_iterator(src, 8, 24, train=train, process_index=0, process_count=1,
                                    eval_crop_fraction=0.875)
        batch = next(it)
        assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.float32
        np.testing.assert_array_equal(batch["label"], [src[i]["label"] for i in batch["index"]])
    with pytest.raises(ValueError, match="objects/mask"):
        pipeline.make_instance_iterator(src, 2, 24, 2, train=False, process_index=0,
                                        process_count=1)


def test_missing_dataset_or_split_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        pipeline.open_source("no_such_dataset_xyz", "train", tmp_path)
    with pytest.raises(ValueError, match="validation"):
        pipeline.open_source(SMALL, "validation", data_dir)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pipeline.open_source("mnist", "train", tmp_path)  # registered, not here, no download
    assert not os.path.exists(tmp_path / "downloads")


def test_a_training_iterator_keeps_numpys_blas_on_one_thread(train_src):
    """The batched resize's last bits depend on the BLAS thread count: the count must not move between batches
    (it did when each prefetch thread set and restored a limit of its own), so it is fixed once per process."""
    import threadpoolctl

    def blas_threads():
        return [c.num_threads for c in threadpoolctl.ThreadpoolController().lib_controllers if c.user_api == "blas"]

    a, b = _train_iter(train_src, crop_scale=(0.3, 1.0)), _train_iter(train_src, crop_scale=(0.3, 1.0))
    assert blas_threads() and set(blas_threads()) == {1}
    batches = [next(it) for _ in range(3) for it in (a, b)]  # two iterators' prefetch threads at work together
    assert set(blas_threads()) == {1}
    assert _equal_batches(batches[0::2], batches[1::2])
