"""Tests of the moving-shapes video generator, its TFDS builder and the TFDS video source."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vitsam.data import shapes
from vitsam.data.shapes_video import masks_from_segmentation, render_clip, segmentation_map

tfds = pytest.importorskip("tensorflow_datasets")

from vitsam.data import shapes_video_builder, sources  # noqa: E402  (needs the [data] extra)
from vitsam.data.video_source import TfdsVideoSource, VideoInfo, VideoSource  # noqa: E402

SMALL = "vitsam_shapes_video/small"


@pytest.fixture(scope="module")
def clips():
    return [render_clip(i) for i in range(300)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    shapes_video_builder.prepare_shapes_video(d, "small")
    return d


def _touches_border(mask):
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _adjacent(a, b):
    """Whether some pixel of mask a has a 4-neighbour in mask b."""
    return bool((a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any()
                or (a[:, 1:] & b[:, :-1]).any() or (a[:, :-1] & b[:, 1:]).any())


# ----------------------------------------------------------------------------- generator


def test_render_clip_is_deterministic():
    a, b = render_clip(5), render_clip(5)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    assert not np.array_equal(a.frames, render_clip(6).frames)
    assert not np.array_equal(a.frames, render_clip(5, seed=1).frames)
    k = len(a.labels)
    assert a.frames.shape == (12, 64, 64, 3) and a.frames.dtype == np.uint8
    assert a.masks.shape == (k, 12, 64, 64) and a.masks.dtype == bool
    assert a.object_ids.dtype == np.int32 and a.object_ids.tolist() == list(range(1, k + 1))
    assert a.labels.dtype == np.int64
    c = render_clip(0, image_size=48, num_frames=3, max_objects=1)
    assert c.frames.shape == (3, 48, 48, 3) and c.masks.shape == (1, 3, 48, 48)
    for bad in ({"image_size": 16}, {"num_frames": 0}, {"max_objects": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            render_clip(0, **bad)


def test_masks_are_exactly_the_visible_painted_pixels(clips):
    for clip in clips[:40]:
        frames, masks = clip.frames, clip.masks
        assert masks.sum(axis=0).max() <= 1  # disjoint on every frame
        colours = []
        for mask in masks:
            colour = frames[0][mask[0]][0]
            colours.append(colour.astype(float))
            # The painter draws later objects on top: what shows in an object's colour is its mask.
            np.testing.assert_array_equal((frames == colour).all(axis=-1), mask)
        for i in range(len(colours)):
            for j in range(i):
                assert np.linalg.norm(colours[i] - colours[j]) > 40
        uncovered = ~masks.any(axis=0)
        for t in range(1, len(frames)):  # the background stays still
            both = uncovered[0] & uncovered[t]
            np.testing.assert_array_equal(frames[t][both], frames[0][both])
        assert set(clip.labels.tolist()) <= set(range(len(shapes.CLASS_NAMES)))


def test_every_object_is_clearly_visible_on_frame_0(clips):
    assert min(int(c.masks[:, 0].sum(axis=(1, 2)).min()) for c in clips) >= 30
    assert {len(c.labels) for c in clips} == {1, 2, 3}
    for i in range(5):  # the minimum scales with the frame area
        assert render_clip(i, image_size=128, num_frames=4).masks[:, 0].sum(axis=(1, 2)).min() >= 120


def test_objects_leave_the_frame_and_come_back(clips):
    objects = left = 0
    for clip in clips:
        present = clip.masks.any(axis=(2, 3))
        for mask, shown in zip(clip.masks, present):
            objects += 1
            gone = [t for t in range(1, len(shown)) if shown[t - 1] and not shown[t]]
            # It vanished at the border, and shows again later in the clip.
            left += any(_touches_border(mask[t - 1]) and shown[t:].any() for t in gone)
    assert 0.1 * objects < left < 0.5 * objects


def test_objects_occlude_and_hide_behind_others(clips):
    multi = touching = hidden = 0
    for clip in clips:
        masks = clip.masks
        k, num_frames = masks.shape[:2]
        if k < 2:
            continue
        multi += 1
        touching += any(_adjacent(masks[a, t], masks[b, t])
                        for a in range(k) for b in range(a + 1, k) for t in range(num_frames))
        # An object that vanishes away from the border, next to an object in front of it.
        hidden += any(
            masks[a, t - 1].any() and not masks[a, t].any() and not _touches_border(masks[a, t - 1])
            and any(_adjacent(masks[a, t - 1], masks[b, t - 1]) for b in range(a + 1, k))
            for a in range(k) for t in range(1, num_frames))
    assert touching > 0.25 * multi
    assert hidden > 0.05 * multi


def test_objects_move(clips):
    moved, objects, steps = 0, 0, []
    for clip in clips:
        for mask in clip.masks:
            shown = [t for t in range(len(mask)) if mask[t].any()]
            centroids = {t: np.argwhere(mask[t]).mean(axis=0) for t in shown}
            objects += 1
            moved += np.linalg.norm(centroids[shown[-1]] - centroids[0]) >= 1.0
            steps += [np.linalg.norm(centroids[t] - centroids[t - 1]) for t in shown
                      if t - 1 in centroids]
    assert moved > 0.9 * objects
    assert 0.5 < np.median(steps) < 4.0  # a few pixels a frame


def test_segmentation_map_round_trip():
    clip = render_clip(3)
    seg = segmentation_map(clip.masks)
    assert seg.dtype == np.uint8 and seg.shape == clip.masks.shape[1:]
    for k, object_id in enumerate(clip.object_ids):
        assert (seg[clip.masks[k]] == object_id).all()
    assert (seg[~clip.masks.any(axis=0)] == 0).all()
    np.testing.assert_array_equal(masks_from_segmentation(seg, clip.object_ids), clip.masks)

    masks = np.zeros((3, 2, 4, 4), bool)
    masks[0, 0, 0, 0] = masks[1, 1, 2, 2] = True  # object 2 (id 9 below) only on frame 1
    seg = segmentation_map(masks, [3, 9, 4])
    assert seg[0, 0, 0] == 3 and seg[1, 2, 2] == 9 and seg.sum() == 12
    back = masks_from_segmentation(seg, [3, 9, 4])
    np.testing.assert_array_equal(back, masks)  # object 4 is declared but absent: empty masks
    masks[1, 0, 0, 0] = True
    with pytest.raises(ValueError, match="overlap on frame 0"):
        segmentation_map(masks)


def test_undeclared_object_id_is_a_clear_error():
    seg = np.zeros((8, 4, 4), np.uint8)
    seg[:, 0, 0] = 1
    seg[5, 1, 2] = 7
    with pytest.raises(ValueError) as e:
        masks_from_segmentation(seg, (1, 2))
    assert str(e.value) == "frame 5 holds object id 7, which the clip does not declare (ids 1, 2)"
    with pytest.raises(ValueError, match="^frame 5 holds object id 7,"):  # a video's frames 4 … 6
        masks_from_segmentation(seg[4:7], (1, 2), frame_numbers=[4, 5, 6])


# ----------------------------------------------------------------------------- builder, source


def test_prepared_clips_match_the_renderer(data_dir):
    builder = shapes_video_builder.prepare_shapes_video(data_dir, "small")
    for split, seed, count in (("train", 0, 48), ("test", 1, 16)):
        raw = builder.as_data_source(split)
        videos = TfdsVideoSource(raw)
        assert isinstance(videos, VideoSource) and len(videos) == count
        for i in (0, 7, count - 1):
            clip, video = render_clip(i, seed=seed, num_frames=8), videos.read(i)
            name = f"{split}/{i:05d}"
            assert video["name"] == name
            assert videos.info(i) == VideoInfo(name, 8, tuple(clip.object_ids.tolist()))
            assert video["frames"].dtype == np.uint8
            np.testing.assert_array_equal(video["frames"], clip.frames)
            assert video["masks"].dtype == bool
            np.testing.assert_array_equal(video["masks"], clip.masks)
            assert video["object_ids"].dtype == np.int64
            np.testing.assert_array_equal(video["object_ids"], clip.object_ids)
            np.testing.assert_array_equal(raw[i]["objects"]["label"], clip.labels)
    assert sources.class_names(raw, "objects/label") == list(shapes.CLASS_NAMES)
    assert sources.declared_num_classes(SMALL, data_dir, key="objects/label") == 6


def test_read_some_frames(data_dir):
    videos = TfdsVideoSource(sources.open_source(SMALL, "test", data_dir))
    full = videos.read(3)
    part = videos.read(3, frames=[5, 0, 5])
    np.testing.assert_array_equal(part["frames"], full["frames"][[5, 0, 5]])
    np.testing.assert_array_equal(part["masks"], full["masks"][:, [5, 0, 5]])
    np.testing.assert_array_equal(part["object_ids"], full["object_ids"])
    none = videos.read(3, frames=[])
    assert none["frames"].shape[0] == 0 and none["masks"].shape[:2] == (len(full["object_ids"]), 0)
    assert videos.read(-1)["name"] == "test/00015"
    with pytest.raises(ValueError, match="test/00003: frame 8 is out of range for its 8 frames"):
        videos.read(3, frames=[0, 8])
    with pytest.raises(IndexError):
        videos.info(16)
    assert TfdsVideoSource(sources.open_source(SMALL, "test[4:6]", data_dir), split="val").info(1).name == "val/00001"


def test_open_source_prepares_the_video_set_once(data_dir, tmp_path):
    videos = TfdsVideoSource(sources.open_source(SMALL, "test", tmp_path))
    np.testing.assert_array_equal(videos.read(2)["frames"], render_clip(2, seed=1, num_frames=8).frames)
    ours = data_dir / "vitsam_shapes_video" / "small" / "1.0.0"
    files = sorted(p for p in ours.iterdir() if "array_record" in p.name)
    assert len(files) == 2
    for p in files:  # byte-identical to the fixture's preparation
        assert (tmp_path / "vitsam_shapes_video" / "small" / "1.0.0" / p.name).read_bytes() == p.read_bytes()
    before = {p: p.stat().st_mtime_ns for p in files}
    sources.open_source(SMALL, "train", data_dir)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_prepare_and_read_without_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from vitsam.data import shapes_video, sources
        from vitsam.data.video_source import TfdsVideoSource
        videos = TfdsVideoSource(sources.open_source("{SMALL}", "test", {str(tmp_path)!r}))
        clip = shapes_video.render_clip(3, seed=1, num_frames=8)
        assert np.array_equal(videos.read(3)["masks"], clip.masks)
        assert "tensorflow" not in sys.modules  # never imported, whether installed or not
        print("ok", len(videos))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 16" in out.stdout
