"""Click-to-mask latency of `vitsam serve` in a real browser (chromium via selenium), SAM vit_b architecture.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/serve_latency.py --clicks 20 --out benchmarks/cpu_serve_latency.json

The app (`vitsam.serve.create_app`, vit_b with random weights from `sam_init`, seeded) runs under uvicorn in
this process on a free local port; headless chromium opens the page and uploads a 1024 x 768 image through the
file field twice (the first upload compiles the encoder; the second's encoder time, reported by the server, and
its upload-to-image-shown time on the page are what every later upload costs). Then, per round: Reset, one click (three candidates, multimask), a second click (two points and the
first answer's logits as mask input, one mask). Two warm-up rounds compile the decoder's programs; the timed
rounds give, per kind of click, the median of the page's time from the click to the mask drawn (fetch, PNG
decoding, drawing) and of the server's decoder time (prompt encoder + mask decoder + masks at the original
size). Needs the [browser] extra and chromium + chromium-driver (apt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np

from vitsam.bench.report import environment
from vitsam.models.sam import sam_init, sam_variant
from vitsam.serve import create_app

IMAGE_HW = (768, 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait(driver, condition: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not driver.execute_script(f"return Boolean({condition})"):
        if "error" in driver.execute_script("return document.getElementById('status').className"):
            raise RuntimeError(driver.execute_script("return document.getElementById('status').textContent"))
        if time.time() > deadline:
            raise TimeoutError(condition)
        # Each poll costs chromedriver and chromium CPU time; the times reported are measured inside the page and
        # the server, so a coarse poll only keeps the poller off the 2 cores the decoder runs on.
        time.sleep(0.1)


def click(driver, x: float, y: float) -> tuple[float, float]:
    """Click image pixel (x, y); wait for the mask; (page click-to-drawn ms, server decoder ms)."""
    from selenium.webdriver.common.action_chains import ActionChains

    steps = driver.execute_script("return window.vitsam.history.length")
    w, h, cw, ch = driver.execute_script(
        "const c = document.getElementById('prompts'); const r = c.getBoundingClientRect();"
        "return [r.width, r.height, c.width, c.height];")
    canvas = driver.find_element("id", "prompts")
    ActionChains(driver).move_to_element_with_offset(canvas, round((x + 0.5) * w / cw - w / 2),
                                                     round((y + 0.5) * h / ch - h / 2)).click().perform()
    wait(driver, f"window.vitsam.history.length === {steps + 1} && !window.vitsam.busy")
    return tuple(driver.execute_script("return [window.vitsam.lastRoundTripMs, window.vitsam.lastDecoderMs]"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="vit_b", help="SAM architecture (default vit_b)")
    p.add_argument("--clicks", type=int, default=20, help="timed rounds (each: a first and a second click)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    from PIL import Image

    env = environment()
    env.update(date=datetime.date.today().isoformat(), processor=platform.processor(),
               browser=os.popen("chromium --version 2>/dev/null").read().strip())
    model = sam_variant(args.variant)
    app = create_app(model, sam_init(model, jax.random.PRNGKey(0)), "sam", source=f"{args.variant}, random weights")
    port = free_port()
    server, thread = start_server(app, port)
    driver = browser()
    rng = np.random.default_rng(0)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait(driver, "window.vitsam.info")
        uploads = []  # the first compiles the encoder; the second is what every later upload costs
        with tempfile.TemporaryDirectory() as tmp:
            yy, xx = np.mgrid[:IMAGE_HW[0], :IMAGE_HW[1]]
            image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
            for k, picture in enumerate((image[:, ::-1], image)):
                path = Path(tmp) / f"photo{k}.png"
                Image.fromarray(np.ascontiguousarray(picture)).save(path)
                driver.find_element("id", "file").send_keys(str(path))
                wait(driver, f"window.vitsam.image && window.vitsam.image.name === 'photo{k}.png' && "
                             "!window.vitsam.busy")
                uploads.append(driver.execute_script(
                    "return [window.vitsam.image.encode_ms, window.vitsam.lastEncodeRoundTripMs]"))
        (first_encode_ms, _), (encode_ms, upload_ms) = uploads
        times = {"first click": [], "second click": []}
        for round_ in range(args.clicks + 2):
            driver.find_element("id", "reset").click()
            x, y = rng.uniform(50, IMAGE_HW[1] - 50), rng.uniform(50, IMAGE_HW[0] - 50)
            first = click(driver, x, y)
            second = click(driver, x + rng.uniform(-40, 40), y + rng.uniform(-40, 40))
            if round_ >= 2:  # two warm-up rounds: the decoder's programs compile
                times["first click"].append(first)
                times["second click"].append(second)
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)

    results = [{"case": name, "page_ms_median": statistics.median(t[0] for t in ts),
                "server_decoder_ms_median": statistics.median(t[1] for t in ts), "clicks": len(ts),
                "page_ms": [t[0] for t in ts], "server_decoder_ms": [t[1] for t in ts]}
               for name, ts in times.items()]
    env["loadavg_end"] = list(os.getloadavg())
    print(f"{args.variant}, random weights, a {IMAGE_HW[1]} x {IMAGE_HW[0]} image; encoder {encode_ms:.0f} ms "
          f"(server), upload to image shown {upload_ms:.0f} ms (page); the first upload, compiling the encoder, "
          f"{first_encode_ms:.0f} ms\n")
    print("| click | click to mask drawn (page), median | decoder (server), median | clicks |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['page_ms_median']:.0f} ms | {r['server_decoder_ms_median']:.0f} ms | "
              f"{r['clicks']} |")
    print(f"\n- {env['date']}, {env.get('cpu')}, {env.get('cpus_usable')} usable cores, load average at start "
          f"{'/'.join(f'{v:.1f}' for v in env['loadavg'])}, at end {'/'.join(f'{v:.1f}' for v in env['loadavg_end'])}")
    print(f"- {env['browser']}, jax {env['versions'].get('jax')}")
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": env, "variant": args.variant, "image_hw": IMAGE_HW,
                                              "encode_ms": encode_ms, "upload_ms": upload_ms,
                                              "first_encode_ms": first_encode_ms,
                                              "results": results}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
