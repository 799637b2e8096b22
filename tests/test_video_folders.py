"""DAVIS, YouTube-VOS and SA-V folders (tiny synthetic ones) read as VideoSources."""

import json

import numpy as np
import pytest
from PIL import Image

from vitsam.data import rle
from vitsam.data.video_folders import DavisSource, SavSource, read_label_png, read_video_frames
from vitsam.data.video_source import VideoInfo, VideoSource

H, W = 24, 32


def _frame(k: int) -> np.ndarray:
    """A smooth frame that tells frame k from the others after lossy coding."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.full((H, W), 20 * k + 30), 4 * x + 40, 6 * y + 30], -1).astype(np.uint8)


def _save_jpeg(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _save_palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels, np.uint8).tobytes())
    im.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
    im.save(path)


def _labels(k: int) -> np.ndarray:
    """Object 1 moves right, object 2 stays, object 3 only on frame 2, a void band on frame 1."""
    labels = np.zeros((H, W), np.uint8)
    labels[2:10, 2 + k:12 + k] = 1
    labels[14:22, 20:30] = 2
    if k == 2:
        labels[0:3, 25:31] = 3
    if k == 1:
        labels[12, :] = 255
    return labels


def _expected_masks(ids, ks):
    return np.stack([np.stack([_labels(k) == i for k in ks]) for i in ids])


@pytest.fixture
def davis(tmp_path):
    root = tmp_path / "DAVIS"
    for seq in ("bear", "cows"):
        for k in range(4):
            _save_jpeg(root / "JPEGImages" / "480p" / seq / f"{k:05d}.jpg", _frame(k))
            _save_palette_png(root / "Annotations" / "480p" / seq / f"{k:05d}.png", _labels(k))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("bear\ncows\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text("cows\n")
    return root


def test_palette_png_reads_ids_and_void_as_background(tmp_path):
    _save_palette_png(tmp_path / "a.png", _labels(1))
    labels = read_label_png(tmp_path / "a.png")
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[12] == 0).all()


def test_davis_reads_frames_masks_and_ids(davis):
    source = DavisSource(davis)
    assert isinstance(source, VideoSource)
    assert source.layout == "davis" and len(source) == 2
    assert source.info(0) == VideoInfo("bear", 4, (1, 2, 3))
    assert source.info(-1).name == "cows"
    sample = source.read(0)
    assert sample["name"] == "bear"
    assert sample["frames"].shape == (4, H, W, 3) and sample["frames"].dtype == np.uint8
    assert np.abs(sample["frames"].astype(int) - np.stack([_frame(k) for k in range(4)])).max() <= 8
    assert sample["masks"].dtype == bool and sample["masks"].shape == (3, 4, H, W)
    np.testing.assert_array_equal(sample["masks"], _expected_masks([1, 2, 3], range(4)))
    assert sample["object_ids"].dtype == np.int64 and sample["object_ids"].tolist() == [1, 2, 3]
    assert not sample["masks"][:, 1, 12].any()  # void is background


def test_davis_frame_subsets_split_and_sequences(davis):
    source = DavisSource(davis, split="val")
    assert source.names == ["cows"]
    sample = source.read(0, frames=[3, 1])
    assert sample["frames"].shape == (2, H, W, 3)
    np.testing.assert_array_equal(sample["masks"], _expected_masks([1, 2, 3], [3, 1]))
    assert np.abs(sample["frames"][0].astype(int) - _frame(3)).max() <= 8
    assert DavisSource(davis, sequences=["bear"]).names == ["bear"]
    with pytest.raises(FileNotFoundError, match=r"^sequence 'owl' has no frame folder .*480p/owl$"):
        DavisSource(davis, sequences=["owl"])
    with pytest.raises(ValueError, match="cows: frame position 4 is out of range for its 4 annotated frames"):
        source.read(0, frames=[4])


def test_davis_errors(davis, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DavisSource(tmp_path / "nowhere")
    (davis / "ImageSets" / "2017" / "train.txt").write_text("bear\nzebra\n")
    with pytest.raises(FileNotFoundError, match=r"train.txt: sequence 'zebra' has no frame folder"):
        DavisSource(davis)
    with pytest.raises(FileNotFoundError, match="no list of the 'test' sequences"):
        DavisSource(davis, split="test")
    (davis / "Annotations" / "480p" / "cows" / "00002.png").unlink()
    source = DavisSource(davis, split="val")
    with pytest.raises(ValueError, match=r"DAVIS sequence cows: frame 00002.jpg has no annotation .*00002.png"):
        source.info(0)
    _save_palette_png(davis / "Annotations" / "480p" / "cows" / "00002.png", np.zeros((H, W + 2), np.uint8))
    source = DavisSource(davis, split="val")
    assert source.info(0).num_frames == 4
    with pytest.raises(ValueError, match=r"00002.png: the annotation is 24x34, its frame 00002.jpg is 24x32"):
        source.read(0, frames=[2])


@pytest.fixture
def youtube_vos(tmp_path):
    root = tmp_path / "ytvos"
    for vid in ("a1b2", "c3d4"):
        for k in range(10):
            _save_jpeg(root / "train" / "JPEGImages" / vid / f"{k:05d}.jpg", _frame(k))
        for k in (0, 5):
            _save_palette_png(root / "train" / "Annotations" / vid / f"{k:05d}.png", _labels(k % 4))
    return root


def test_youtube_vos_reads_annotated_frames(youtube_vos):
    source = DavisSource(youtube_vos)
    assert source.layout == "youtube_vos" and source.names == ["a1b2", "c3d4"]
    assert source.info(1) == VideoInfo("c3d4", 2, (1, 2))
    assert source.frame_names(1) == ["00000", "00005"]
    sample = source.read(1, frames=[1])
    assert np.abs(sample["frames"][0].astype(int) - _frame(5)).max() <= 8
    np.testing.assert_array_equal(sample["masks"], _expected_masks([1, 2], [1]))


def test_youtube_vos_needs_an_annotated_frame(youtube_vos):
    for png in (youtube_vos / "train" / "Annotations" / "c3d4").iterdir():
        png.unlink()
    source = DavisSource(youtube_vos, layout="youtube_vos")
    assert source.info(0).num_frames == 2
    with pytest.raises(ValueError, match="YouTube-VOS video c3d4: no frame has an annotation"):
        source.info(1)
    with pytest.raises(FileNotFoundError, match="neither a DAVIS folder"):
        DavisSource(youtube_vos, split="valid")


def _sav_masks(t: int) -> np.ndarray:
    """Two masklets on annotated frame t; the second is absent on frame 1."""
    masks = np.zeros((2, H, W), bool)
    masks[0, 3 + t:9 + t, 4:14] = True
    if t != 1:
        masks[1, 12:20, 2 * t:2 * t + 9] = True
    return masks


def _write_sav(root, name, num_video_frames=9, masks=_sav_masks, kind="manual", mp4=True):
    from vitsam.tracking import write_video

    root.mkdir(parents=True, exist_ok=True)
    if mp4:
        write_video([_frame(k) for k in range(num_video_frames)], root / f"{name}.mp4", fps=24)
    annotated = range(0, num_video_frames, 4)
    data = {"video_id": name, "video_frame_count": float(num_video_frames), "video_height": float(H),
            "video_width": float(W), "masklet": [[rle.encode(m) for m in masks(t)] for t in range(len(annotated))],
            "masklet_id": [0, 1], "masklet_num": 2, "masklet_type": [kind, kind]}
    (root / f"{name}_{kind}.json").write_text(json.dumps(data))
    return data


def test_sav_reads_mp4_frames_and_rle_masks(tmp_path):
    _write_sav(tmp_path, "sav_000001")
    source = SavSource(tmp_path)
    assert isinstance(source, VideoSource)
    assert len(source) == 1 and source.info(0) == VideoInfo("sav_000001", 3, (0, 1))
    sample = source.read(0)
    assert sample["frames"].shape == (3, H, W, 3) and sample["masks"].shape == (2, 3, H, W)
    for t, k in enumerate((0, 4, 8)):  # annotated frame t is video frame 4t
        assert np.abs(sample["frames"][t].astype(int) - _frame(k)).mean() < 4
    np.testing.assert_array_equal(sample["masks"], np.stack([_sav_masks(t) for t in range(3)], axis=1))
    assert sample["object_ids"].tolist() == [0, 1]
    subset = source.read(0, frames=[2, 0])
    np.testing.assert_array_equal(subset["frames"], sample["frames"][[2, 0]])
    np.testing.assert_array_equal(subset["masks"], sample["masks"][:, [2, 0]])


def test_sav_auto_annotations_and_jpeg_frames(tmp_path):
    _write_sav(tmp_path, "sav_000002", kind="auto", mp4=False)
    for k in (0, 4, 8):
        _save_jpeg(tmp_path / "JPEGImages_24fps" / "sav_000002" / f"{k:05d}.jpg", _frame(k))
    with pytest.raises(ValueError, match=r"no SA-V annotation files \(\*_manual.json\)"):
        SavSource(tmp_path)
    source = SavSource(tmp_path, annotations="auto")
    sample = source.read(0, frames=[1])
    assert np.abs(sample["frames"][0].astype(int) - _frame(4)).max() <= 8
    np.testing.assert_array_equal(sample["masks"][:, 0], _sav_masks(1))
    (tmp_path / "JPEGImages_24fps" / "sav_000002" / "00008.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="sav_000002: annotated frame 2 needs .*00008.jpg"):
        source.read(0, frames=[2])


def test_sav_null_masklet_entry_is_an_empty_mask(tmp_path):
    data = _write_sav(tmp_path, "sav_000003")
    data["masklet"][0][1] = None
    (tmp_path / "sav_000003_manual.json").write_text(json.dumps(data))
    masks = SavSource(tmp_path).read(0, frames=[0])["masks"]
    assert not masks[1].any() and masks[0, 0].any()


def test_sav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SavSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="annotations must be"):
        SavSource(tmp_path, annotations="both")
    data = _write_sav(tmp_path, "sav_000001")
    data["masklet"][1] = data["masklet"][1][:1]
    (tmp_path / "sav_000001_manual.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sav_000001: annotated frame 1 lists 1 masklets, the video declares 2"):
        SavSource(tmp_path).info(0)

    _write_sav(tmp_path, "sav_000001", masks=lambda t: np.zeros((2, H + 1, W), bool))
    with pytest.raises(ValueError, match="sav_000001: annotated frame 0, masklet 0: an RLE of 25x32 for a 24x32 frame"):
        SavSource(tmp_path).read(0, frames=[0])

    _write_sav(tmp_path, "sav_000001")
    (tmp_path / "sav_000001.mp4").unlink()
    _write_sav(tmp_path, "sav_000001", num_video_frames=6, mp4=True)  # annotations for 9 frames, a video of 6
    data = json.loads((tmp_path / "sav_000001_manual.json").read_text())
    data["masklet"].append(data["masklet"][0])
    (tmp_path / "sav_000001_manual.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sav_000001.mp4: frame 8 was asked for, the video has 6 frames"):
        SavSource(tmp_path).read(0, frames=[2])

    (tmp_path / "sav_000001.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="SA-V video sav_000001: neither .*sav_000001.mp4 nor a frame folder"):
        SavSource(tmp_path)


def test_read_video_frames_in_any_order(tmp_path):
    from vitsam.tracking import write_video

    write_video([_frame(k) for k in range(5)], tmp_path / "v.mp4", fps=24)
    frames = read_video_frames(tmp_path / "v.mp4", [3, 0, 3])
    assert len(frames) == 3 and frames[0].shape == (H, W, 3)
    np.testing.assert_array_equal(frames[0], frames[2])
    assert np.abs(frames[1].astype(int) - _frame(0)).mean() < 4
    assert read_video_frames(tmp_path / "v.mp4", []) == []
