"""`vitsam serve` in a real browser: Debian's chromium + chromedriver, driven by selenium (nothing downloaded).

A tiny SAM trained briefly on the shapes dataset (random weights give one mask wherever one clicks) is served by
`vitsam serve` on a free local port; the test uploads a built-in example through the page, clicks, drags a
box and presses "Segment everything", and checks what the page drew against `SamPredictor` and
`SamAutomaticMaskGenerator` run here on the same checkpoint, image and prompt coordinates.

Marker `browser`; run with: pytest -m browser   (needs the [serve] extra, selenium, and
`apt-get install chromium chromium-driver`; skips with the reason where they are missing). Set
VITSAM_SCREENSHOT=path.png to save a screenshot of the page after the box prompt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium / chromedriver on PATH: apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

EXAMPLE = "shapes-1"
TRAIN_STEPS = 800


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SAM trained for 800 steps (`configs/sam_shapes.py`, ~4 min on 2 cores; its masks follow the
    click, 1-point mIoU ~0.3), or the checkpoint
    at $VITSAM_BROWSER_CHECKPOINT."""
    from vitsam.data.shapes_builder import prepare_shapes

    if os.environ.get("VITSAM_BROWSER_CHECKPOINT"):
        return Path(os.environ["VITSAM_BROWSER_CHECKPOINT"])

    data = tmp_path_factory.mktemp("tfds")
    prepare_shapes(data, "small")
    work = tmp_path_factory.mktemp("sam")
    subprocess.run([sys.executable, "-m", "train.sam", f"--workdir={work}", f"--config.total_steps={TRAIN_STEPS}",
                    "--config.data.name=vitsam_shapes/small", f"--config.data.data_dir={data}",
                    "--config.data.eval_split=test[:8]", f"--config.checkpoint_every={TRAIN_STEPS}",
                    f"--config.eval_every={TRAIN_STEPS}", "--config.eval.clicks=1"],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=1800)
    return work


@pytest.fixture(scope="module")
def server(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "vitsam.cli", "serve", "--checkpoint", str(checkpoint),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import urllib.request

    deadline = time.time() + 120
    while True:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, "vitsam serve did not answer within 120 s"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5).read()
            break
        except OSError:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def reference(checkpoint):
    from vitsam.convert import load_model
    from vitsam.predictor import SamPredictor
    from vitsam.serve.app import example_image

    model, variables, _ = load_model(checkpoint)
    image = example_image(EXAMPLE)
    predictor = SamPredictor(model, variables)
    predictor.set_image(image)
    return model, variables, image, predictor


def wait(driver, condition: str, timeout: float = 120):
    """Poll a JavaScript expression until it is truthy; fail with the page's status line."""
    deadline = time.time() + timeout
    while not driver.execute_script(f"return Boolean({condition})"):
        status = driver.execute_script("return document.getElementById('status').textContent")
        assert "error" not in driver.execute_script("return document.getElementById('status').className"), status
        assert time.time() < deadline, f"timed out waiting for {condition}; status: {status!r}"
        time.sleep(0.1)


def at(driver, x: float, y: float):
    """The offset from the prompts canvas' centre of image pixel (x, y) (selenium offsets from the centre)."""
    rect = driver.execute_script("const c = document.getElementById('prompts'); const r = c.getBoundingClientRect();"
                                 "return [r.width, r.height, c.width, c.height];")
    w, h, cw, ch = rect
    return round((x + 0.5) * w / cw - w / 2), round((y + 0.5) * h / ch - h / 2)


def drawn_mask(driver) -> np.ndarray:
    """The mask layer as the page drew it: alpha > 0, (H, W) bool."""
    text = driver.execute_script(
        "const c = document.getElementById('mask');"
        "const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = ''; for (let i = 3; i < a.length; i += 4) s += a[i] > 0 ? '1' : '0';"
        "return [c.height, c.width, s];")
    h, w, bits = text
    return np.frombuffer(bits.encode(), np.uint8).reshape(h, w) == ord("1")


def last_step(driver) -> dict:
    return json.loads(driver.execute_script(
        "const s = window.vitsam.history[window.vitsam.history.length - 1];"
        "return JSON.stringify({points: s.points, box: s.box, picked: s.picked, iou: s.iou});"))


def click(driver, x, y, right=False):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "prompts")
    dx, dy = at(driver, x, y)
    chain = ActionChains(driver).move_to_element_with_offset(canvas, dx, dy)
    (chain.context_click() if right else chain.click()).perform()


def inside_point(mask: np.ndarray) -> tuple[int, int]:
    """A pixel of the mask far from its border (x, y)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(np.argmax(depth), mask.shape)
    return int(x), int(y)


def test_click_box_and_everything_in_a_real_browser(server, browser, reference):
    from selenium.webdriver.common.action_chains import ActionChains

    from vitsam.data.shapes import render_example
    from vitsam.mask_generator import SamAutomaticMaskGenerator
    from vitsam.serve.app import EXAMPLE_SIZE, EXAMPLES

    model, variables, image, predictor = reference
    shapes = render_example(EXAMPLES[EXAMPLE], EXAMPLE_SIZE, seed=7)
    main_shape = shapes.masks[0]
    driver = browser
    driver.get(server)
    wait(driver, "window.vitsam && window.vitsam.info")  # the page defines window.vitsam as its script runs
    driver.find_element("xpath", f"//button[text()='{EXAMPLE}']").click()
    wait(driver, "window.vitsam.image && !window.vitsam.busy")

    # A click on the main shape: the drawn mask is SamPredictor's best mask for the coordinates the page sent.
    x, y = inside_point(main_shape)
    started = time.perf_counter()
    click(driver, x, y)
    wait(driver, "window.vitsam.history.length === 1 && !window.vitsam.busy")
    round_trip = time.perf_counter() - started
    step = last_step(driver)
    (px, py, label), = step["points"]
    assert label == 1 and abs(px - (x + 0.5)) <= 1 and abs(py - (y + 0.5)) <= 1
    masks, iou, _ = predictor.predict(point_coords=np.array([[px, py]]), point_labels=np.array([1]))
    assert step["picked"] == int(np.argmax(iou))
    first = drawn_mask(driver)
    assert first.shape == image.shape[:2]
    assert np.mean(first == masks[step["picked"]]) >= 0.99
    print(f"click to mask drawn: {1000 * round_trip:.0f} ms (selenium), "
          f"{driver.execute_script('return window.vitsam.lastRoundTripMs'):.0f} ms (page)")

    # Reset, then a click on the background: another mask.
    driver.find_element("id", "reset").click()
    background = ~np.any(shapes.masks, axis=0)
    bx, by = inside_point(background)
    click(driver, bx, by)
    wait(driver, "window.vitsam.history.length === 1 && !window.vitsam.busy")
    step = last_step(driver)
    (qx, qy, _), = step["points"]
    masks, iou, _ = predictor.predict(point_coords=np.array([[qx, qy]]), point_labels=np.array([1]))
    second = drawn_mask(driver)
    assert np.mean(second == masks[step["picked"]]) >= 0.99
    assert np.sum(second != first) >= 100, "a click elsewhere drew the same mask"

    # Reset, then a box dragged around the main shape.
    driver.find_element("id", "reset").click()
    rows, cols = np.nonzero(main_shape)
    x0, y0, x1, y1 = cols.min() - 3, rows.min() - 3, cols.max() + 3, rows.max() + 3
    canvas = driver.find_element("id", "prompts")
    (ax, ay), (bx2, by2) = at(driver, x0, y0), at(driver, x1, y1)
    ActionChains(driver).move_to_element_with_offset(canvas, ax, ay).click_and_hold() \
        .move_by_offset((bx2 - ax) // 2, (by2 - ay) // 2).move_by_offset(bx2 - ax - (bx2 - ax) // 2,
                                                                          by2 - ay - (by2 - ay) // 2) \
        .release().perform()
    wait(driver, "window.vitsam.history.length === 1 && !window.vitsam.busy")
    step = last_step(driver)
    assert step["points"] == [] and step["box"] is not None
    assert np.allclose(step["box"], [x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5], atol=1.5)
    masks, _, _ = predictor.predict(box=np.array(step["box"]), multimask_output=False)
    assert np.mean(drawn_mask(driver) == masks[0]) >= 0.99
    if os.environ.get("VITSAM_SCREENSHOT"):
        driver.save_screenshot(os.environ["VITSAM_SCREENSHOT"])

    # Segment everything: the coloured layer covers exactly the generator's masks.
    driver.find_element("id", "everything").click()
    wait(driver, "window.vitsam.everythingCount !== undefined && !window.vitsam.busy", timeout=300)
    records = SamAutomaticMaskGenerator(model, variables).generate(image)
    assert driver.execute_script("return window.vitsam.everythingCount") == len(records)
    text = driver.execute_script(
        "const c = document.getElementById('everything-layer');"
        "const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = ''; for (let i = 3; i < a.length; i += 4) s += a[i] > 0 ? '1' : '0'; return s;")
    layer = (np.frombuffer(text.encode(), np.uint8) == ord("1")).reshape(image.shape[:2])
    union = np.any([r["segmentation"] for r in records], axis=0) if records else np.zeros(image.shape[:2], bool)
    assert np.mean(layer == union) >= 0.99
