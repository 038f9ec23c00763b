"""The browser app driven from a real headless Chromium (Debian's, through Playwright): the demo
pair, the slider, the correspondence explorer's highlight, a corrupt upload's message and the
good request after it. Set TTSR_APP_SCREENSHOT=docs/app.png to refresh the README's screenshot.
"""

import io
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_LR = REPO / "assets" / "demo" / "lr" / "0.png"
DEMO_REF = REPO / "assets" / "demo" / "ref" / "0.png"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; no browser is downloaded
# Generous: the first request compiles the model, on a machine that other jobs may share.
REQUEST_TIMEOUT_MS = 180_000
START_TIMEOUT_S = 180


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def server():
  port = _free_port()
  url = f"http://127.0.0.1:{port}/"
  process = subprocess.Popen([sys.executable, "-m", "ttsr_jax.app", "--port", str(port)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      try:
        urllib.request.urlopen(url, timeout=5)
        break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          process.kill()
          pytest.fail(f"the app did not start:\n{process.communicate()[0]}")
        time.sleep(1)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)


def _fetch(page, src: str) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _upload(page, element: str, path: pathlib.Path) -> None:
  """Replaces the file of an upload box and waits for the upload to finish."""
  clear = page.locator(f"#{element} button[aria-label=Clear]")
  if clear.count():
    clear.click()
  page.locator(f"#{element} input[type=file]").set_input_files(str(path))
  page.locator(f'#{element} td.filename[aria-label="{path.name}"]').wait_for()


def _run(page, image: pathlib.Path) -> None:
  _upload(page, "image", image)
  page.click("#run")


def _explore(page, fraction_x: float, fraction_y: float) -> tuple[np.ndarray, str]:
  """Clicks the output at a fraction of its displayed size; returns the highlighted reference
  and the explanation."""
  before = page.locator("#ref_view img").get_attribute("src")
  output = page.locator("#output img")
  box = output.bounding_box()
  output.click(position={"x": box["width"] * fraction_x, "y": box["height"] * fraction_y})
  page.wait_for_function("s => document.querySelector('#ref_view img').src != s", arg=before,
                         timeout=30_000)
  return _fetch(page, page.locator("#ref_view img").get_attribute("src")), \
      page.locator("#explanation").inner_text()


def _check_highlight(reference: np.ndarray, explanation: str) -> None:
  """The red outline on the reference surrounds exactly the patch the explanation names."""
  match = re.search(r"x (\d+)-(\d+), y (\d+)-(\d+)", explanation)
  assert match, explanation
  left, right, top, bottom = map(int, match.groups())
  red = np.all(reference == (255, 0, 0), axis=-1)
  rows, cols = np.nonzero(red)
  assert red.any()
  # The 2-pixel outline lies just outside the patch, clipped by the image's borders.
  height, width = red.shape
  assert rows.min() == max(top - 2, 0) and rows.max() == min(bottom + 2, height - 1)
  assert cols.min() == max(left - 2, 0) and cols.max() == min(right + 2, width - 1)


@pytest.mark.slow  # starts a server and a browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium "
                    "(apt-get install chromium), as .ci/run installs it")
def test_app_in_a_browser(server, tmp_path):
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(DEMO_LR.read_bytes()[:300])
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(server)
    _upload(page, "refs", DEMO_REF)
    _run(page, DEMO_LR)
    page.wait_for_selector("#output img", timeout=REQUEST_TIMEOUT_MS)
    lr_h, lr_w = Image.open(DEMO_LR).size[::-1]
    assert f"LR {lr_w} x {lr_h} -> output {4 * lr_w} x {4 * lr_h}" in page.inner_text("#status")
    assert _fetch(page, page.locator("#output img").get_attribute("src")).shape == \
        (4 * lr_h, 4 * lr_w, 3)

    # The slider: dragging the handle moves the boundary between bicubic and TTSR.
    after_image = page.locator("#slider img").nth(1)
    clip = after_image.evaluate("e => e.style.clipPath")
    handle = page.locator("#slider [data-testid=slider]").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(handle["x"] + handle["width"] / 2 - 120, handle["y"] + handle["height"] / 2,
                    steps=5)
    page.mouse.up()
    assert after_image.evaluate("e => e.style.clipPath") != clip

    reference, explanation = _explore(page, 0.5, 0.25)
    assert reference.shape[:2] == (Image.open(DEMO_REF).size[1] // 4 * 4,
                                   Image.open(DEMO_REF).size[0] // 4 * 4)
    _check_highlight(reference, explanation)
    # The clicked point is the middle column, a quarter down, in output pixels.
    x, y = map(int, re.search(r"output \((\d+), (\d+)\)", explanation).groups())
    assert abs(x - 2 * lr_w) <= 2 and abs(y - lr_h) <= 2

    _run(page, corrupt)
    page.locator("#status").get_by_text("unreadable or truncated image").wait_for(
        timeout=REQUEST_TIMEOUT_MS)
    status = page.inner_text("#status")
    assert status.startswith("Error: image: corrupt.png:") and "Traceback" not in status
    assert page.locator("#output img").count() == 0

    _run(page, DEMO_LR)
    page.wait_for_selector("#output img", timeout=REQUEST_TIMEOUT_MS)
    assert "output" in page.inner_text("#status")
    reference, explanation = _explore(page, 0.3, 0.6)
    _check_highlight(reference, explanation)
    screenshot = tmp_path / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    browser.close()
  if os.environ.get("TTSR_APP_SCREENSHOT"):
    shutil.copy(screenshot, REPO / os.environ["TTSR_APP_SCREENSHOT"])
