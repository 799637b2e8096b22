"""`vitsam track` with a tiny random SAM 2 exported to an orbax folder, on a 4-frame 64x48 clip: mask PNGs and
overlay.mp4, both tracking directions, the prompt parser, write_video, and the bad inputs' one-line errors."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from PIL import Image

from vitsam import cli
from vitsam.convert import export
from vitsam.models import sam_init, sam_variant
from vitsam.models.sam2.sam2 import sam2_init, sam2_variant
from vitsam.tracking import FramePrompt, parse_prompts, video_fps, write_video
from vitsam.video_predictor import read_video_file

T, H, W = 4, 48, 64


def random_variables(model, init, scale=0.05):
    """Variables in `init`'s shapes, drawn with numpy (no RNG kernels to compile)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda r: init(model, r), jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(s.dtype), shapes)


def clip_frames():
    """A red square moving right over a smooth background: (T, H, W, 3) uint8."""
    yy, xx = np.mgrid[:H, :W]
    background = np.stack([xx * 2, yy * 3, np.full_like(xx, 120)], -1)
    frames = np.repeat(background[None], T, 0).astype(np.uint8)
    for t in range(T):
        frames[t, 12:32, 10 + 6 * t:30 + 6 * t] = (220, 40, 40)
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{"sam2", "sam", "mp4", "folder"}: the checkpoints and the clip as a video file and a folder of PNGs."""
    root = tmp_path_factory.mktemp("track")
    model = sam2_variant("tiny")
    export(model, random_variables(model, sam2_init), root / "sam2", kind="sam2")
    sam = sam_variant("tiny")
    export(sam, random_variables(sam, sam_init), root / "sam", kind="sam")
    frames = clip_frames()
    write_video(frames, root / "clip.mp4", fps=10)
    (root / "frames").mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "frames" / f"{t}.png")
    return {"sam2": root / "sam2", "sam": root / "sam", "mp4": root / "clip.mp4", "folder": root / "frames"}


def read_mask(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_track_writes_masks_and_overlay_forward_and_backward(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["track", str(files["mp4"]), "--checkpoint", str(files["sam2"]), "--point", "2,25,20",
                     "--point", "2,5,5,0", "--box", "2,40,2,63,20,2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "tracked 2 objects (ids 1, 2) through 4 frames of 64x48" in printed
    assert "forward from frame 2 and backward to frame 0" in printed
    for obj_id in (1, 2):  # prompts on frame 2 give masks on frames 0 … 3
        assert sorted(p.name for p in (out / "masks" / str(obj_id)).iterdir()) == [f"{t:05d}.png" for t in range(T)]
        for t in range(T):
            mode, mask = read_mask(out / "masks" / str(obj_id) / f"{t:05d}.png")
            assert mode == "L" and mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    overlay = read_video_file(out / "overlay.mp4")
    assert overlay.shape == (T, H, W, 3)
    assert video_fps(out / "overlay.mp4") == 10  # the input video's frame rate


def test_track_frame_folder_forward_only_without_video(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["track", str(files["folder"]), "--checkpoint", str(files["sam2"]), "--box", "0,10,12,30,32",
                     "--no-video", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tracked 1 object (ids 1) through 4 frames" in printed and "forward from frame 0:" in printed
    assert sorted(p.name for p in (out / "masks" / "1").iterdir()) == [f"{t:05d}.png" for t in range(T)]
    assert not (out / "overlay.mp4").exists() and not (out / "overlay.gif").exists()


def test_track_gif_shows_the_written_masks_over_the_frames(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["track", str(files["folder"]), "--checkpoint", str(files["sam2"]), "--point", "0,20,22",
                     "--no-video", "--gif", "--fps", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"and {out / 'overlay.gif'}")
    assert not (out / "overlay.mp4").exists()
    frames = clip_frames()
    with Image.open(out / "overlay.gif") as gif:
        assert (gif.n_frames, gif.size, gif.info["loop"], gif.info["duration"]) == (T, (W, H), 0, 250)
        for t in range(T):
            gif.seek(t)
            shown = np.asarray(gif.convert("RGB")).astype(int)
            mask = read_mask(out / "masks" / "1" / f"{t:05d}.png")[1] > 0
            # Outside the mask and away from the click drawn on frame 0 the frame shows through unchanged (up to
            # the GIF's 256-colour palette); inside, it is tinted with the object's colour.
            yy, xx = np.mgrid[:H, :W]
            outside = ~mask & (np.hypot(yy - 22, xx - 20) > 5)
            if outside.any():
                assert np.abs(shown[outside] - frames[t][outside]).mean() < 8
            if mask.any():
                assert np.abs(shown[mask] - frames[t][mask]).mean() > 20


def test_track_from_masks_takes_them_as_the_frames_result(files, tmp_path, capsys):
    """An id-valued annotation (DAVIS layout: objects 3 and 5) and a 0 / 255 mask given as object 7, on frame 1."""
    ids = np.zeros((H, W), np.uint8)
    ids[12:32, 16:36] = 3      # the red square on frame 1
    ids[36:46, 40:60] = 5
    ids[32, 16:36] = 255       # DAVIS's void label on the square's edge: background, not an object
    annotation = Image.fromarray(ids).convert("P")  # indexed, as DAVIS stores them
    annotation.save(tmp_path / "ann.png")
    binary = np.zeros((H, W), bool)
    binary[2:10, 2:30] = True
    Image.fromarray(np.where(binary, 255, 0).astype(np.uint8)).save(tmp_path / "m,7.png")  # a comma in the name
    out = tmp_path / "out"
    assert cli.main(["track", str(files["folder"]), "--checkpoint", str(files["sam2"]), "--no-video",
                     "--mask", f"1,{tmp_path / 'ann.png'}", "--mask", f"1,{tmp_path / 'm,7.png'},7",
                     "--out", str(out)]) == 0
    assert "tracked 3 objects (ids 3, 5, 7) through 4 frames" in capsys.readouterr().out
    for obj_id, given in ((3, ids == 3), (5, ids == 5), (7, binary)):
        # frame 1 is the given mask (up to the round trip through the model's 128 x 128 grid); every frame written
        mask = read_mask(out / "masks" / str(obj_id) / "00001.png")[1] > 0
        assert (mask & given).sum() / (mask | given).sum() > 0.9
        assert sorted(q.name for q in (out / "masks" / str(obj_id)).iterdir()) == [f"{t:05d}.png" for t in range(T)]


def test_bad_mask_prompts(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "empty.png")
    small = np.zeros((H - 8, W), np.uint8)
    small[:4, :4] = 1
    Image.fromarray(small).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not an image")
    for points, masks, message in [
        ([], ["0"], "--mask expects F,path[,obj]"),
        ([], ["a,x.png"], "--mask expects F,path[,obj]"),
        ([], ["-1,x.png"], "the frame index must be a whole number >= 0"),
        ([], [f"0,{tmp_path / 'nope.png'}"], "no file at"),
        ([], [f"0,{tmp_path / 'rgb.png'}"], "an annotation must be an indexed-palette or greyscale PNG"),
        ([], [f"0,{tmp_path / 'rgb.png'},2"], "is a RGB image; expected a single-channel"),
        ([], [f"0,{tmp_path / 'empty.png'}"], "is empty (no nonzero pixel)"),
        ([], [f"0,{tmp_path / 'text.png'}"], "is not an image"),
        ([], [f"0,{tmp_path / 'small.png'}", f"0,{tmp_path / 'small.png'}"], "object 1 already has a mask on frame 0"),
        (["0,3,3"], [f"0,{tmp_path / 'small.png'}"], "object 1 on frame 0 has a --mask and clicks or a box"),
    ]:
        with pytest.raises(ValueError) as e:
            parse_prompts(points, (), masks)
        assert message in str(e.value) and "\n" not in str(e.value)
    from vitsam.tracking import check_prompts_fit
    with pytest.raises(ValueError, match=r"--mask on frame 0 is 64x40 \(width x height\), but the video is 64x48"):
        check_prompts_fit(parse_prompts((), (), [f"0,{tmp_path / 'small.png'}"]), T, H, W)


def test_parse_prompts():
    prompts = parse_prompts(["3,10,20", "0,1.5,2,0,7", "3,11,21,0"], ["3,1,2,30,40,2", "0,0,0,5,5,7"])
    assert list(prompts) == [0, 3] and list(prompts[3]) == [1, 2]
    assert prompts[0] == {7: FramePrompt(points=[(1.5, 2.0)], labels=[0], box=(0.0, 0.0, 5.0, 5.0))}
    assert prompts[3][1] == FramePrompt(points=[(10.0, 20.0), (11.0, 21.0)], labels=[1, 0], box=None)
    assert prompts[3][2] == FramePrompt(points=[], labels=[], box=(1.0, 2.0, 30.0, 40.0))
    for points, boxes, message in [
        (["10,20"], [], "--point expects F,x,y[,label][,obj]"),
        (["0,a,2"], [], "--point expects F,x,y[,label][,obj]"),
        (["0,1,nan"], [], "--point expects"),
        (["1.5,1,2"], [], "the frame index must be a whole number >= 0, got 1.5"),
        (["-1,1,2"], [], "the frame index must be a whole number >= 0"),
        (["0,1,2,7"], [], "the label must be 1 (foreground) or 0 (background), got 7"),
        (["0,1,2,1,0.5"], [], "the object id must be a whole number"),
        ([], ["0,1,2,3"], "--box expects F,x0,y0,x1,y1[,obj]"),
        ([], ["0,5,2,3,4"], "expected x0 <= x1 and y0 <= y1"),
        ([], ["0,1,2,3,4", "0,1,2,5,6"], "object 1 has two boxes on frame 0"),
        ([], [], "no prompt"),
    ]:
        with pytest.raises(ValueError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            parse_prompts(points, boxes)


def test_write_video_round_trip(tmp_path):
    frames = clip_frames()
    assert write_video(iter(frames), tmp_path / "a.mp4", fps=12.5) == T
    back = read_video_file(tmp_path / "a.mp4")
    assert back.shape == frames.shape and video_fps(tmp_path / "a.mp4") == 12.5
    assert np.abs(back.astype(int) - frames).mean() < 6  # lossy (yuv420p), but close
    odd = frames[:2, :47, :63]  # an odd size is padded by one edge pixel
    write_video(odd, tmp_path / "odd.mp4")
    back = read_video_file(tmp_path / "odd.mp4")
    assert back.shape == (2, 48, 64, 3) and np.abs(back[:, :47, :63].astype(int) - odd).mean() < 6
    with pytest.raises(ValueError, match="no frames to write"):
        write_video([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="must all be uint8"):
        write_video([frames[0], frames[1, :10]], tmp_path / "sizes.mp4")


def track_error(files, capsys, args, video=None):
    assert cli.main(["track", str(video or files["folder"]), "--checkpoint", str(files["sam2"]), *args]) == 2
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after any progress bar
    assert err.startswith("vitsam track: error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--point", "2,10"], "--point expects F,x,y[,label][,obj]"),
    (["--box", "2,1,2,3"], "--box expects F,x0,y0,x1,y1[,obj]"),
    ([], "no prompt: give --point"),
    (["--point", "4,10,10"], "a prompt is on frame 4, but the video has 4 frames (0 … 3)"),
    (["--point", "1,70,10"], "--point (70, 10) on frame 1 lies outside the 64x48"),
    (["--box", "1,0,0,10,50"], "lies outside the 64x48"),
    (["--point", "0,1,1", "--fps", "0"], "--fps must be a positive number"),
])
def test_bad_prompts(files, tmp_path, capsys, args, message):
    assert message in track_error(files, capsys, [*args, "--out", str(tmp_path)])


def test_bad_videos_and_checkpoints(files, tmp_path, capsys, monkeypatch):
    prompt = ["--point", "0,1,1", "--out", str(tmp_path / "out")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no frames" in track_error(files, capsys, prompt, empty)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(sizes / "0.png")
    Image.fromarray(np.zeros((H, W - 2, 3), np.uint8)).save(sizes / "1.png")
    assert "frames of different sizes" in track_error(files, capsys, prompt, sizes)
    (tmp_path / "broken.mp4").write_bytes(b"")
    assert "not a readable video" in track_error(files, capsys, prompt, tmp_path / "broken.mp4")
    assert "no video file or frame folder at" in track_error(files, capsys, prompt, tmp_path / "nope.mp4")

    assert cli.main(["track", str(files["folder"]), "--checkpoint", str(files["sam"]), *prompt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitsam track: error:") and err.count("\n") == 1
    assert "holds a SAM 1 model, not a SAM 2: tracking needs a SAM 2 checkpoint" in err

    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    assert "reading video files needs PyAV: pip install 'vitsam[video]'" in track_error(files, capsys, prompt,
                                                                                       files["mp4"])
    assert "writing overlay.mp4 needs PyAV: pip install 'vitsam[video]'" in track_error(files, capsys, prompt)
