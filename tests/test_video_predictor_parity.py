"""`Sam2VideoPredictor` against the official `SAM2VideoPredictor` (`pytest -m parity`): an official hiera_t at
256 px with random weights, the same 8 JPEG frames from a folder, clicks on frame 0 for two objects, forward
propagation, a correction click on frame 4, propagation again forward and in reverse; every returned mask
logit map compared."""

import numpy as np
import pytest

pytestmark = pytest.mark.parity

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_fixtures import official_and_ours  # noqa: E402

from vitsam.video_predictor import Sam2VideoPredictor  # noqa: E402

SIZE = 256
FRAMES, HEIGHT, WIDTH = 8, 120, 160


def moving_shapes(tmp_path):
    """8 JPEG frames: a smooth background, a disc moving right and a square moving down."""
    from PIL import Image

    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for t in range(FRAMES):
        img = np.stack([60 + 40 * np.sin(xx / 17.0), 80 + 30 * np.cos(yy / 13.0), 100 + 0 * xx], -1)
        img[(yy - 50) ** 2 + (xx - 30 - 8 * t) ** 2 < 300] = (230, 40, 40)
        img[(abs(yy - 20 - 6 * t) < 12) & (abs(xx - 120) < 12)] = (30, 200, 60)
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"{t}.jpg", quality=95)
    return tmp_path


def stored_bf16_used_as_float32(official):
    """The official predictor stores memories in bfloat16 and, on a GPU, attends to them under bfloat16 autocast;
    on a CPU without autocast its float32 attention refuses bfloat16 inputs. Keep the bfloat16 rounding and hand
    the memories on as float32, as vitsam does."""
    run_frame, run_memory = official._run_single_frame_inference, official._run_memory_encoder

    def frame(*args, **kwargs):
        out, masks = run_frame(*args, **kwargs)
        if out["maskmem_features"] is not None:
            out["maskmem_features"] = out["maskmem_features"].float()
        return out, masks

    def memory(*args, **kwargs):
        features, pos = run_memory(*args, **kwargs)
        return features.float(), pos

    official._run_single_frame_inference, official._run_memory_encoder = frame, memory


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    official, model, variables = official_and_ours(SIZE, video=True)
    stored_bf16_used_as_float32(official)
    ours = Sam2VideoPredictor(model, variables, fill_hole_area=0)  # the official skips hole filling on CPU
    return official, ours, moving_shapes(tmp_path_factory.mktemp("frames"))


def compare(theirs, ours, what):
    theirs = theirs.numpy() if hasattr(theirs, "numpy") else np.asarray(theirs)
    assert ours.shape == theirs.shape, what
    scale = max(np.abs(theirs).max(), 1e-6)
    assert np.abs(ours - theirs).max() / scale < 1e-3, what
    assert np.mean((ours > 0) == (theirs > 0)) >= 0.999, what


def test_video_predictor_matches_official(predictors):
    official, ours, folder = predictors
    s_off = official.init_state(video_path=str(folder))
    s_our = ours.init_state(folder)
    assert (s_our.video_height, s_our.video_width, s_our.num_frames) == (HEIGHT, WIDTH, FRAMES)

    clicks = [(0, 1, [[30.0, 50.0]], [1]), (0, 2, [[120.0, 20.0], [60.0, 100.0]], [1, 0])]
    with torch.inference_mode():
        for frame, obj, pts, labs in clicks:
            _, ids_off, m_off = official.add_new_points_or_box(s_off, frame, obj, points=np.array(pts, np.float32),
                                                               labels=np.array(labs, np.int32))
            _, ids_our, m_our = ours.add_new_points_or_box(s_our, frame, obj, points=pts, labels=labs)
            assert ids_our == list(ids_off)
            compare(m_off, m_our, f"click on frame {frame}, object {obj}")

        def propagate(**kw):
            got_off = list(official.propagate_in_video(s_off, **kw))
            got_our = list(ours.propagate_in_video(s_our, progress=False, **kw))
            assert [f for f, _, _ in got_our] == [f for f, _, _ in got_off]
            for (f, _, m_off), (_, _, m_our) in zip(got_off, got_our):
                compare(m_off, m_our, f"frame {f} ({kw})")
            return got_our

        forward = propagate()
        assert len(forward) == FRAMES
        # The correction: a negative click for object 2 on frame 4 (a tracked frame: its mask logits go in too).
        _, _, m_off = official.add_new_points_or_box(s_off, 4, 2, points=np.array([[90.0, 40.0]], np.float32),
                                                     labels=np.array([0], np.int32), clear_old_points=False)
        _, _, m_our = ours.add_new_points_or_box(s_our, 4, 2, points=[[90.0, 40.0]], labels=[0],
                                                 clear_old_points=False)
        compare(m_off, m_our, "correction on frame 4")
        propagate()
        propagate(start_frame_idx=FRAMES - 1, reverse=True)
        # A new conditioning frame in the middle for object 1, then tracking both ways from it.
        official.add_new_points_or_box(s_off, 5, 1, box=np.array([60, 30, 110, 75], np.float32))
        ours.add_new_points_or_box(s_our, 5, 1, box=[60, 30, 110, 75])
        propagate(start_frame_idx=5, max_frame_num_to_track=3)
        propagate(start_frame_idx=5, reverse=True)
