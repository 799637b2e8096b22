"""`vitsam serve`'s HTTP API through Starlette's test client (no network), with the tiny SAM and a tiny ViT.

References: `SamPredictor` called directly on the same image and prompts (the masks a request returns must be
its masks, pixel for pixel, including the previous result's logits fed back as mask input), the COCO RLE
decoder for the annotation file, Pillow for EXIF orientation, the ViT's own logits for the top-5.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient
from test_predictor import make_image, random_variables

from vitsam.data import rle
from vitsam.models import vit_variant
from vitsam.models.sam import sam_variant
from vitsam.predictor import SamPredictor
from vitsam.serve import create_app

H, W = 150, 230


def png(image: np.ndarray, fmt="PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def decode_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def drawn(url: str) -> np.ndarray:
    """A mask as the page draws it: the opaque pixels of the overlay PNG."""
    return decode_url(url)[..., 3] > 0


@pytest.fixture(scope="module")
def tiny():
    model = sam_variant("tiny")
    return model, random_variables(model, seed=3)


@pytest.fixture(scope="module")
def image():
    return make_image(H, W, seed=5)


@pytest.fixture(scope="module")
def reference(tiny, image):
    predictor = SamPredictor(*tiny)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def client(tiny):
    return TestClient(create_app(*tiny, "sam", cache_images=3, max_upload_bytes=200_000, max_pixels=500_000))


@pytest.fixture(scope="module")
def uploaded(client, image):
    r = client.post("/api/images?name=photo.png", content=png(image))
    assert r.status_code == 200, r.text
    return r.json()


def predict(client, image_id, **body):
    return client.post(f"/api/images/{image_id}/predict", json=body)


def test_page_script_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "/app.js" in page.text and "text/html" in page.headers["content-type"]
    script = client.get("/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    info = client.get("/api/info").json()
    assert info["kind"] == "sam" and info["text"] is True and info["examples"]


def test_upload_returns_the_size_and_the_image_as_held(client, uploaded, image):
    assert (uploaded["width"], uploaded["height"]) == (W, H) and uploaded["encode_ms"] > 0
    held = client.get(f"/api/images/{uploaded['image']}/image.png")
    assert held.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(held.content))), image)


def _check(answer, want):
    masks, iou, _ = want
    got = np.stack([drawn(u) for u in answer["masks"]])
    np.testing.assert_array_equal(got, masks)
    np.testing.assert_allclose(answer["iou"], iou, rtol=1e-6)
    assert answer["best"] == int(np.argmax(iou))


def test_prompts_give_the_predictors_masks(client, uploaded, reference):
    image_id = uploaded["image"]
    one = predict(client, image_id, points=[[60.5, 40, 1]]).json()  # one point: ambiguous, three candidates
    assert len(one["masks"]) == 3
    _check(one, reference.predict(point_coords=np.array([[60.5, 40]]), point_labels=np.array([1])))

    box = predict(client, image_id, box=[100, 70, 200, 140]).json()
    assert len(box["masks"]) == 1
    _check(box, reference.predict(box=np.array([100, 70, 200, 140]), multimask_output=False))

    both = predict(client, image_id, points=[[150, 100, 1], [120, 80, 0]], box=[100, 70, 200, 140]).json()
    _check(both, reference.predict(point_coords=np.array([[150, 100], [120, 80]]), point_labels=np.array([1, 0]),
                                   box=np.array([100, 70, 200, 140]), multimask_output=False))

    text = predict(client, image_id, text="a yellow circle").json()
    _check(text, reference.predict(text="a yellow circle"))

    # SAM's interactive loop: the picked candidate's low-res logits go back in with the next click.
    _, _, low = reference.predict(point_coords=np.array([[60.5, 40]]), point_labels=np.array([1]))
    again = predict(client, image_id, points=[[60.5, 40, 1], [30, 120, 0]],
                    mask_input={"result": one["result"], "index": 2}).json()
    _check(again, reference.predict(point_coords=np.array([[60.5, 40], [30, 120]]), point_labels=np.array([1, 0]),
                                    mask_input=low[2][None], multimask_output=False))


def test_bad_prompts_are_4xx_with_a_message(client, uploaded):
    image_id = uploaded["image"]
    cases = [
        (dict(), 400, "no prompt"),
        (dict(points=[[10, 10, 5]]), 400, "labels must be 1"),
        (dict(points=[[10, "a", 1]]), 400, "finite numbers"),
        (dict(points=[[10, 10]]), 400, "list of 3"),
        (dict(box=[1, 2, 3]), 400, "box must be a list of 4"),
        (dict(points=[[10, 10, 1]], colour="red"), 400, "unknown field"),
        (dict(points=[[10, 10, 1]], mask_input={"result": "nope", "index": 0}), 404, "unknown result"),
        (dict(points=[[10, 10, 1]], multimask="yes"), 400, "multimask"),
        (dict(points=[[W + 50, 10, 1]]), 400, "outside"),
    ]
    for body, status, words in cases:
        r = predict(client, image_id, **body)
        assert r.status_code == status and words in r.json()["error"], (body, r.status_code, r.text)
    r = client.post(f"/api/images/{image_id}/predict", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = predict(client, "no-such-image", points=[[10, 10, 1]])
    assert r.status_code == 404 and "upload it again" in r.json()["error"]
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd/image.png").status_code == 404


def test_bad_uploads_are_refused_and_the_server_keeps_serving(client, image, uploaded):
    data = png(image)
    cases = [
        (b"", 400, "empty"),
        (b"%PDF-1.4 not an image at all", 415, "not an image"),
        (data[: len(data) // 2], 400, "could not be decoded"),  # truncated
        (png(np.zeros((800, 800, 3), np.uint8)), 413, "limit of 500,000 px"),  # small file, many pixels
        (np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes(), 413, "limit of 200,000"),
    ]
    for body, status, words in cases:
        r = client.post("/api/images", content=body)
        assert r.status_code == status and words in r.json()["error"], (status, r.status_code, r.text)
    assert predict(client, uploaded["image"], points=[[20, 20, 1]]).status_code == 200


def test_a_decompression_bomb_is_refused_before_decoding(tiny):
    """A PNG whose header declares 20000 x 20000 px (400 Mpx, 1.2 GB as RGB) is refused from the header alone."""
    import struct
    import zlib

    client = TestClient(create_app(*tiny, "sam"))  # the default pixel limit, 40 Mpx
    for side in (20000, 7000):  # beyond Pillow's own bomb limit, and only beyond ours
        data = bytearray(png(np.zeros((1, side), bool)))
        ihdr = data.index(b"IHDR")  # length (4) + "IHDR" + width (4) + height (4) + ... + CRC over type + data
        data[ihdr + 8:ihdr + 12] = struct.pack(">I", side)
        data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
        r = client.post("/api/images", content=bytes(data))
        error = r.json()["error"]
        assert r.status_code == 413 and ("decompression bomb" in error or f"{side} x {side}" in error), error


def test_exif_orientation_is_applied(client, image):
    from PIL import ImageOps

    im = Image.fromarray(image)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    r = client.post("/api/images", content=png(image, fmt="JPEG", exif=exif, quality=95))
    answer = r.json()
    assert (answer["width"], answer["height"]) == (H, W)
    held = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{answer['image']}/image.png").content)))
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png(image, fmt="JPEG", exif=exif, quality=95)))))
    np.testing.assert_array_equal(held, want)


def test_the_image_cache_is_bounded(client, image):
    ids = [client.post("/api/images", content=png(np.roll(image, k, axis=1))).json()["image"] for k in range(4)]
    assert len(client.app.state.vitsam.images) == 3  # cache_images=3
    assert predict(client, ids[0], points=[[20, 20, 1]]).status_code == 404  # the oldest was dropped
    assert predict(client, ids[-1], points=[[20, 20, 1]]).status_code == 200


def test_concurrent_tabs_never_mix_images(tiny):
    """Two images, prompted at the same time through one app: each answer is its own image's predictor mask."""
    import httpx

    app = create_app(*tiny, "sam")
    images = [make_image(H, W, seed=11), make_image(W, H, seed=12)]  # landscape and portrait: a mix-up shows
    want = []
    for im in images:
        p = SamPredictor(*tiny)
        p.set_image(im)
        want.append(p.predict(point_coords=np.array([[40, 50]]), point_labels=np.array([1])))

    async def tab(client, im):
        image_id = (await client.post("/api/images", content=png(im))).json()["image"]
        answers = await asyncio.gather(*[client.post(f"/api/images/{image_id}/predict",
                                                     json={"points": [[40, 50, 1]]}) for _ in range(3)])
        return [a.json() for a in answers]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*(tab(client, im) for im in images))

    for answers, reference in zip(asyncio.run(main()), want):
        for answer in answers:
            _check(answer, reference)


def test_keep_everything_and_the_annotation_file(client, image):
    image_id = client.post("/api/images?name=../../shapes 1.png", content=png(image)).json()["image"]
    one = predict(client, image_id, points=[[60, 40, 1]]).json()
    assert client.post(f"/api/images/{image_id}/keep", json={"result": one["result"], "index": 1}).json() == {"kept": 1}
    bad = client.post(f"/api/images/{image_id}/keep", json={"result": one["result"], "index": 3})
    assert bad.status_code == 400
    # No filtering by predicted IoU or stability, so that the random-weight model yields masks to compare.
    everything = client.post(f"/api/images/{image_id}/everything",
                             json={"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0}).json()
    assert everything["count"] > 0
    overlay = decode_url(everything["overlay"])
    assert overlay.shape == (H, W, 4)
    assert client.post(f"/api/images/{image_id}/everything", json={"points_per_side": 500}).status_code == 400

    r = client.get(f"/api/images/{image_id}/annotations.json")
    assert r.headers["content-disposition"] == 'attachment; filename="shapes_1.json"'  # no path from the client
    record = r.json()
    assert record["image"]["width"] == W and record["image"]["height"] == H
    annotations = record["annotations"]
    assert len(annotations) == 1 + everything["count"]
    kept = rle.decode(annotations[0]["segmentation"])
    np.testing.assert_array_equal(kept, drawn(one["masks"][1]))
    download = client.get(f"/api/images/{image_id}/results/{one['result']}/1.png")
    assert download.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(download.content))), np.where(kept, 255, 0))
    assert client.get(f"/api/images/{image_id}/results/{one['result']}/7.png").status_code == 400
    assert client.get(f"/api/images/{image_id}/results/nope/0.png").status_code == 404
    assert annotations[0]["area"] == int(kept.sum())
    assert all(a["segmentation"]["size"] == [H, W] for a in annotations)
    union = np.any([rle.decode(a["segmentation"]) for a in annotations[1:]], axis=0)
    np.testing.assert_array_equal(overlay[..., 3] > 0, union)  # the overlay is opaque exactly where some mask is
    for field, value in (("pred_iou_thresh", 2), ("colour", 1)):
        r = client.post(f"/api/images/{image_id}/everything", json={field: value})
        assert r.status_code == 400 and field in r.json()["error"]

    assert client.post(f"/api/images/{image_id}/reset").json() == {"kept": 0}
    assert client.get(f"/api/images/{image_id}/annotations.json").json()["annotations"] == []


def test_examples(client):
    r = client.post("/api/examples/shapes-1")
    assert r.status_code == 200 and r.json()["width"] == 320
    r = client.post("/api/examples/shapes-9")
    assert r.status_code == 404 and "no example" in r.json()["error"]
    r = client.post("/api/examples/..%2Fsecret")
    assert r.status_code == 404 and "error" in r.json()


def test_a_vit_gives_its_top5_and_the_attention_rollout(image):
    model = vit_variant("Ti/16", num_classes=7, image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64,
                        num_heads=2)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    names = [f"thing {i}" for i in range(7)]
    client = TestClient(create_app(model, variables, "vit", class_names=names))
    assert client.get("/api/info").json()["kind"] == "vit"
    answer = client.post("/api/images", content=png(image)).json()
    x = np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC), np.float32)[None] / 127.5 - 1.0
    logits = np.asarray(model.apply(variables, x))[0]
    assert [t["class"] for t in answer["top"]] == list(np.argsort(-logits)[:5])
    assert [t["name"] for t in answer["top"]] == [names[i] for i in np.argsort(-logits)[:5]]
    p = np.exp(logits - logits.max())
    np.testing.assert_allclose([t["p"] for t in answer["top"]], np.sort(p / p.sum())[::-1][:5], rtol=1e-4)
    heat = decode_url(answer["rollout"])
    assert heat.shape == (H, W, 4) and heat[..., 3].max() > heat[..., 3].min()
    r = predict(client, answer["image"], points=[[10, 10, 1]])
    assert r.status_code == 400 and "SAM" in r.json()["error"]


def test_the_command_line_refuses_a_missing_checkpoint(capsys):
    from vitsam import cli

    assert cli.main(["serve", "--checkpoint", "/no/such/ckpt"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert cli.main(["serve", "--checkpoint", "/no/such/ckpt", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be positive" in capsys.readouterr().err


def test_json_limit_and_unknown_routes(client, uploaded):
    big = json.dumps({"points": [[1, 1, 1]] * 10000})
    r = client.post(f"/api/images/{uploaded['image']}/predict", content=big)
    assert r.status_code == 413
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "no such page" in r.json()["error"]


def test_the_command_line_serves_a_checkpoint_over_http(tiny, tmp_path):
    """`vitsam serve` on a converted checkpoint: uvicorn on a free local port, the address printed, the page and
    the API answering over real HTTP; Ctrl+C (SIGINT) stops it."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from vitsam.convert import export as write_checkpoint

    write_checkpoint(*tiny, tmp_path / "ckpt", kind="sam")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vitsam.cli", "serve", "--checkpoint", str(tmp_path / "ckpt"),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.communicate()[1][-2000:]
            assert time.time() < deadline, "the server did not answer within 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert info["kind"] == "sam" and info["source"] == str(tmp_path / "ckpt")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"/app.js" in r.read()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/images", data=png(make_image(40, 60)),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            assert json.loads(r.read())["width"] == 60
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
    assert server.returncode == 0, err[-2000:]
