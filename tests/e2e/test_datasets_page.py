"""End to end: datasets uploaded, previewed and chosen in a real Chromium, then used by a job."""

from __future__ import annotations

import io
import json
import time
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.e2e.test_browser import (  # noqa: F401 - fixtures are used by name
    _get_json,
    _new_browser,
    _plot_data,
    _project_id,
    _wait,
    browser,
    demo_server,
)

pytestmark = pytest.mark.e2e


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _digit_folders(path, count: int) -> None:  # noqa: ANN001
    digits = load_digits()
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            pixels = np.round(digits.images[i] / 16 * 255).astype(np.uint8)
            zf.writestr(f"scans/{digits.target[i]}/{i:04d}.png", _png(pixels))


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_upload_preview_activate_and_analyse_on_the_uploaded_dataset(
    demo_server, browser, tmp_path  # noqa: F811 - the imported fixtures
):
    base = demo_server["base"]
    pid = _project_id(base)
    datasets_url = f"{base}/api/v1/projects/{pid}/datasets"
    before = _get_json(datasets_url)["count"]

    browser.get(f"{base}/projects/{pid}")
    link = _wait(browser, lambda d: d.find_elements("id", "datasets-link"), message="link")
    link[0].click()
    _wait(browser, lambda d: d.current_url.endswith(f"/projects/{pid}/datasets"), message="page")
    file_input = _wait(
        browser,
        lambda d: d.find_elements("css selector", "#dataset-upload input[type=file]"),
        message="upload input",
    )

    bad = tmp_path / "escape.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("scans/1/a.png", _png(np.zeros((8, 8), np.uint8)))
        zf.writestr("../../outside.png", _png(np.zeros((8, 8), np.uint8)))
    file_input[0].send_keys(str(bad))
    error = _wait(browser, lambda d: d.find_elements("id", "dataset-upload-error"), message="err")
    assert "escape.zip" in error[0].text and "outside" in error[0].text
    assert _get_json(datasets_url)["count"] == before

    good = tmp_path / "scans.zip"
    _digit_folders(good, 300)
    browser.find_element("id", "dataset-name").send_keys("scanned-digits")
    browser.find_elements("css selector", "#dataset-upload input[type=file]")[0].send_keys(
        str(good)
    )
    ok = _wait(browser, lambda d: d.find_elements("id", "dataset-upload-ok"), message="stored")
    assert "scanned-digits" in ok[0].text and "300 examples" in ok[0].text
    stored = next(d for d in _get_json(datasets_url)["data"] if d["name"] == "scanned-digits")
    assert stored["format"] == "image_zip" and not stored["active"]

    # The new dataset's preview: a grid of thumbnails and its class counts.
    _wait(
        browser,
        lambda d: "scanned-digits" in d.find_element("id", "preview-title").text,
        message="preview title",
    )
    thumbnails = browser.find_elements("css selector", "#dataset-thumbnails img")
    assert len(thumbnails) == 24
    assert all(t.get_attribute("src").startswith("data:image/png;base64,") for t in thumbnails)
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('#dataset-thumbnails img'))"
        ".every(function (img) { return img.complete && img.naturalWidth === 8; });"
    )
    assert loaded  # the browser decoded every thumbnail as an 8×8 image
    bars = _wait(browser, lambda d: _plot_data(d, "class-counts"), message="class counts")
    assert sum(sum(trace["y"]) for trace in bars) == 300
    assert [t["name"] for t in bars] == ["train", "test"]

    # Choose it for jobs, then analyse: the evaluation runs on its test split.
    button = browser.find_element(
        "xpath", f"//tr[@id='dataset-row-{stored['id']}']//button[text()='use for jobs']"
    )
    button.click()
    _wait(browser, lambda d: d.find_elements("id", "datasets-activated"), message="activated")
    assert _get_json(f"{base}/api/v1/datasets/{stored['id']}")["active"]
    _wait(browser, lambda d: d.find_elements("id", f"dataset-active-{stored['id']}"),
          message="active badge")
    job = _post_json(f"{base}/api/v1/projects/{pid}/jobs", {"kind": "analyze"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = _get_json(f"{base}/api/v1/jobs/{job['id']}")
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(1)
    assert job["state"] == "succeeded", job
    assert job["result_summary"]["num_examples"] == stored["num_test"] == 75

    # The preview is in the URL: a collaborator's browser opens the same one.
    builtin = next(d for d in _get_json(datasets_url)["data"] if d["source"] == "builtin")
    other = _new_browser()
    try:
        other.get(f"{base}/projects/{pid}/datasets?dataset={builtin['id']}")
        _wait(
            other,
            lambda d: d.find_elements("id", "preview-title")
            and d.find_element("id", "preview-title").text == f"Preview: {builtin['name']}",
            message="builtin preview",
        )
    finally:
        other.quit()
