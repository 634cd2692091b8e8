"""End to end: the real `prunescope demo` server, driven by a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEMO_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):  # noqa: ANN202
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def run_demo(tmp_path_factory, projects: str, timeout_s: float = DEMO_TIMEOUT_S):  # noqa: ANN001, ANN201
    """Start the real `prunescope demo` limited to `projects` (comma-separated names), wait
    until every job has finished, yield its address and paths, and stop it afterwards."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromedriver are required: run scripts/install-system-deps.sh")
    data_dir = tmp_path_factory.mktemp("demo-data")
    port = _free_port()
    log_path = data_dir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRUNESCOPE_HEARTBEAT_SECONDS": "1",
           "PRUNESCOPE_DEMO_PROJECTS": projects}
    log = open(log_path, "w")  # noqa: SIM115 - closed in teardown
    # The server process runs with torch refused (tests/e2e/torchless_server.py): whatever
    # the browser tests open, the web process must never import it; its workers do.
    torch_imports = data_dir / "torch-imports.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("torchless_server.py")),
            str(torch_imports),
            "demo",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        jobs = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"demo exited early:\n{log_path.read_text()[-3000:]}"
            try:
                jobs = _get_json(f"{base}/api/v1/jobs")["data"]
            except OSError:
                time.sleep(0.5)
                continue
            if jobs and all(j["state"] not in ("queued", "running") for j in jobs):
                break
            time.sleep(1)
        else:
            pytest.fail(f"demo jobs did not finish: {jobs}\n{log_path.read_text()[-3000:]}")
        failed = [j for j in jobs if j["state"] != "succeeded"]
        assert not failed, f"demo jobs failed: {failed}"
        yield {"base": base, "data_dir": data_dir, "log": log_path, "proc": proc,
               "torch_imports": torch_imports}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    # The digits demo only: the MiniLM project has its own test (test_layers_page.py).
    yield from run_demo(tmp_path_factory, "digits-cnn")


def _new_browser():  # noqa: ANN202
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def browser():
    driver = _new_browser()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, timeout=30, message="condition"):  # noqa: ANN001, ANN202
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d), message=message)


PLOT_DATA = (
    "var g = document.querySelector('#{id} .js-plotly-plot'); return g && g.data ? g.data : null;"
)


def _plot_data(driver, graph_id):  # noqa: ANN001, ANN202
    return driver.execute_script(PLOT_DATA.format(id=graph_id))


# Figures ship numpy arrays as Plotly's compact typed arrays; read the decoded values instead.
DECODED_Z = """var g = document.querySelector('#{id} .js-plotly-plot');
return Array.from(g._fullData[0].z, function (row) {{ return Array.from(row); }});"""


def _project_id(base: str, name: str = "digits-cnn") -> int:
    projects = _get_json(f"{base}/api/v1/projects")["data"]
    return next(p["id"] for p in projects if p["name"] == name)


def test_demo_project_renders_heatmap_accuracy_and_jobs(demo_server, browser):
    base = demo_server["base"]
    browser.get(base + "/")
    link = _wait(browser, lambda d: d.find_elements("link text", "digits-cnn"), message="link")
    link[0].click()
    heatmap = _wait(
        browser,
        lambda d: (
            (data := _plot_data(d, "cka-heatmap")) and data[0].get("type") == "heatmap" and data
        ),
        message="CKA heatmap with data",
    )
    checkpoints = _get_json(f"{base}/api/v1/projects/{_project_id(base)}/checkpoints")["data"]
    assert len(checkpoints) == 7  # dense + 2 methods × 3 sparsities
    z = browser.execute_script(DECODED_Z.format(id="cka-heatmap"))
    names = heatmap[0]["x"]
    assert len(names) == 7 and len(z) >= 3  # layers × checkpoints
    dense_col = names.index("dense")
    assert all(abs(row[dense_col] - 1.0) < 1e-6 for row in z)
    assert all(0.0 <= v <= 1.0 + 1e-9 for row in z for v in row)

    accuracy = _wait(
        browser,
        lambda d: (data := _plot_data(d, "accuracy-graph")) and len(data) >= 2 and data,
        message="accuracy lines",
    )
    lines = {t["name"]: t for t in accuracy if t.get("mode") == "lines+markers"}
    assert set(lines) == {"magnitude_global", "random"}
    for trace in lines.values():
        assert len(trace["x"]) == 4 and trace["x"][0] == 0  # dense, then 50/80/95 %
        assert all(0 <= y <= 100 for y in trace["y"])
    # Real behaviour, not a fixture: at 95 % magnitude pruning keeps more accuracy than random.
    assert lines["magnitude_global"]["y"][-1] > lines["random"]["y"][-1]

    # Per-layer sparsity: global magnitude spreads its 95 % unevenly, random almost evenly.
    layers = browser.execute_script(DECODED_Z.format(id="layer-sparsity"))
    columns = _plot_data(browser, "layer-sparsity")[0]["x"]
    mag, rnd = columns.index("magnitude_global-95"), columns.index("random-95")
    spread = [max(row[c] for row in layers) - min(row[c] for row in layers) for c in (mag, rnd)]
    assert spread[0] > spread[1]
    progress = browser.find_elements("css selector", "#jobs-panel progress")
    # train, 6 prunes, the analysis and the geometry job
    assert len(progress) == 9 and all(p.get_attribute("value") == "1" for p in progress)
    shot = os.environ.get("PRUNESCOPE_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def test_method_filter_lives_in_the_url_and_a_copied_link_restores_it(demo_server, browser):
    base = demo_server["base"]
    browser.get(f"{base}/projects/{_project_id(base)}")
    _wait(
        browser,
        lambda d: _plot_data(d, "accuracy-graph") and len(_plot_data(d, "accuracy-graph")) >= 3,
        message="accuracy lines",
    )
    box = _wait(
        browser,
        lambda d: d.find_elements("xpath", "//div[@id='method-filter']//input[@value='random']"),
        message="filter",
    )
    box[0].click()
    _wait(browser, lambda d: "methods=magnitude_global" in d.current_url, message="URL updated")
    shared = browser.current_url

    other = _new_browser()  # a collaborator's fresh browser
    try:
        other.get(shared)
        data = _wait(
            other,
            lambda d: (
                (data := _plot_data(d, "accuracy-graph"))
                and any(t.get("mode") == "lines+markers" for t in data)
                and data
            ),
            message="restored accuracy graph",
        )
        assert [t["name"] for t in data if t.get("mode") == "lines+markers"] == ["magnitude_global"]
    finally:
        other.quit()


AXIS_RANGE = """var g = document.querySelector('#{id} .js-plotly-plot');
return g && g._fullLayout && g._fullLayout.{axis} && !g._fullLayout.{axis}.autorange
    ? g._fullLayout.{axis}.range.slice() : null;"""


def _range(driver, graph_id: str, axis: str):  # noqa: ANN001, ANN202
    return driver.execute_script(AXIS_RANGE.format(id=graph_id, axis=axis))


def _query(driver) -> dict[str, str]:  # noqa: ANN001
    from urllib.parse import parse_qs, urlsplit

    return {k: v[-1] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


def test_zoom_lives_in_the_url_survives_other_changes_and_reopens(demo_server, browser):
    base = demo_server["base"]
    browser.get(f"{base}/projects/{_project_id(base)}")
    _wait(browser, lambda d: (data := _plot_data(d, "accuracy-graph")) and len(data) >= 3,
          message="accuracy lines")
    # What a drag-zoom does: Plotly relayouts the axes and reports the new ranges.
    browser.execute_script(
        "Plotly.relayout(document.querySelector('#accuracy-graph .js-plotly-plot'),"
        " {'xaxis.range': [0.6, 0.9], 'yaxis.range': [0.25, 0.75]});")
    _wait(browser, lambda d: "zoom" in _query(d), message="zoom in the URL")
    assert _query(browser)["zoom"] == "accuracy-graph_x_0.6_0.9*accuracy-graph_y_0.25_0.75"

    # Another control writes the URL through Dash and redraws the figure: the zoom stays.
    box = _wait(
        browser,
        lambda d: d.find_elements("xpath", "//div[@id='method-filter']//input[@value='random']"),
        message="filter",
    )
    box[0].click()
    _wait(browser, lambda d: "methods" in _query(d), message="methods in the URL")
    _wait(browser, lambda d: len([t for t in _plot_data(d, "accuracy-graph")
                                  if t.get("mode") == "lines+markers"]) == 1,
          message="one method drawn")
    assert _query(browser)["zoom"] == "accuracy-graph_x_0.6_0.9*accuracy-graph_y_0.25_0.75"
    assert _range(browser, "accuracy-graph", "xaxis") == [0.6, 0.9]
    shared = browser.current_url

    other = _new_browser()  # a fresh browser opens the link zoomed the same way
    try:
        other.get(shared)
        # The range may land on the figure before its lines do: wait for both.
        _wait(other, lambda d: _range(d, "accuracy-graph", "yaxis") == [0.25, 0.75]
              and any(t.get("mode") == "lines+markers"
                      for t in _plot_data(d, "accuracy-graph") or []),
              message="zoom and lines restored")
        assert _range(other, "accuracy-graph", "xaxis") == [0.6, 0.9]
        assert [t["name"] for t in _plot_data(other, "accuracy-graph")
                if t.get("mode") == "lines+markers"] == ["magnitude_global"]
        # A double-click autoscales: the axes leave the URL, the other keys stay.
        other.execute_script(
            "Plotly.relayout(document.querySelector('#accuracy-graph .js-plotly-plot'),"
            " {'xaxis.autorange': true, 'yaxis.autorange': true});")
        _wait(other, lambda d: "zoom" not in _query(d), message="zoom removed")
        assert _query(other)["methods"] == "magnitude_global"
        assert _range(other, "accuracy-graph", "xaxis") is None
    finally:
        other.quit()


def test_upload_through_the_browser_validates_and_stores(demo_server, browser, tmp_path):
    base = demo_server["base"]
    pid = _project_id(base)
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"this is not a checkpoint")
    before = _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["count"]

    file_input = _open_upload_form(browser, base, pid)
    file_input[0].send_keys(str(bad))
    error = _wait(browser, lambda d: d.find_elements("id", "upload-error"), message="error")
    assert "not-a-checkpoint.pt" in error[0].text
    assert _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["count"] == before
    assert _staged_uploads(demo_server) == []  # the refused upload left no bytes behind

    # A real checkpoint: the demo's dense one, downloaded and uploaded again under a new name.
    dense = next(
        c
        for c in _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["data"]
        if c["role"] == "dense"
    )
    good = tmp_path / "copy.safetensors"
    with urllib.request.urlopen(f"{base}/api/v1/checkpoints/{dense['id']}/download") as r:
        good.write_bytes(r.read())
    browser.find_element("id", "upload-name").send_keys("dense-copy")
    file_input = browser.find_elements("css selector", "#checkpoint-upload input[type=file]")
    file_input[0].send_keys(str(good))
    ok = _wait(browser, lambda d: d.find_elements("id", "upload-ok"), message="stored")
    assert "dense-copy" in ok[0].text
    assert browser.find_element("id", "upload-progress").get_attribute("value") == "100"
    assert "100 %" in browser.find_element("id", "upload-progress-text").text
    after = _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["data"]
    assert [c["name"] for c in after].count("dense-copy") == 1
    # The new checkpoint appears in the page's table without a reload.
    _wait(
        browser,
        lambda d: "dense-copy" in d.find_element("id", "checkpoint-table").text,
        message="table refreshed",
    )
    assert _staged_uploads(demo_server) == []


def _open_upload_form(browser, base: str, pid: int):  # noqa: ANN001, ANN202
    # Dash's FastAPI backend registers the assets (the upload script among them) on its first
    # request to "/" or "/_dash-*"; a server whose first visit is a project page serves that
    # page without them, so these tests, when run alone, open the home page first.
    browser.get(f"{base}/")
    _wait(browser, lambda d: d.find_elements("link text", "digits-cnn"), message="home page")
    browser.get(f"{base}/projects/{pid}")
    return _wait(
        browser,
        lambda d: d.find_elements("css selector", "#checkpoint-upload input[type=file]"),
        message="upload input",
    )


def _staged_uploads(demo_server) -> list[str]:  # noqa: ANN001
    root = demo_server["data_dir"] / "artifacts" / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# Every PATCH's Upload-Offset is recorded, and the response to the first one is lost as if the
# connection dropped after the server stored the chunk: the client must ask where to go on.
LOSE_FIRST_CHUNK_RESPONSE = """
window.__patchOffsets = [];
var open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send,
    setHeader = XMLHttpRequest.prototype.setRequestHeader;
XMLHttpRequest.prototype.open = function (method) {
  this.__method = method; return open.apply(this, arguments);
};
XMLHttpRequest.prototype.setRequestHeader = function (name, value) {
  if (this.__method === "PATCH" && name === "Upload-Offset") window.__patchOffsets.push(+value);
  return setHeader.apply(this, arguments);
};
XMLHttpRequest.prototype.send = function () {
  if (this.__method === "PATCH" && window.__patchOffsets.length === 1) {
    var fail = this.onerror;
    this.onload = function () { fail(new ProgressEvent("error")); };
  }
  return send.apply(this, arguments);
};
"""


def test_browser_upload_of_several_chunks_resumes_after_a_lost_response(
    demo_server, browser, tmp_path
):
    from safetensors.torch import save_file

    from prunescope.models.registry import create_model

    base = demo_server["base"]
    wide = {"in_features": 64, "hidden": [2048, 2048], "num_classes": 10}
    request = urllib.request.Request(
        f"{base}/api/v1/projects",
        data=json.dumps(
            {"name": "wide-mlp", "architecture": "mlp", "architecture_config": wide}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as r:
        pid = json.loads(r.read())["id"]
    model = create_model("mlp", **wide)
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    size = path.stat().st_size
    chunk = 16 * 1024 * 1024  # CHUNK_BYTES in dashboard/assets/checkpoint_upload.js
    assert size > chunk  # two requests at least

    file_input = _open_upload_form(browser, base, pid)
    browser.execute_script(LOSE_FIRST_CHUNK_RESPONSE)
    file_input[0].send_keys(str(path))
    ok = _wait(browser, lambda d: d.find_elements("id", "upload-ok"), timeout=60, message="stored")
    assert "wide" in ok[0].text
    # After the lost response the client asked for the offset and went on from there: the
    # second request starts where the first ended, nothing is sent twice.
    assert browser.execute_script("return window.__patchOffsets;") == [0, chunk]
    assert browser.find_element("id", "upload-progress").get_attribute("value") == "100"
    stored = _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["data"]
    assert [c["artifact_digest"] for c in stored] == [hashlib.sha256(path.read_bytes()).hexdigest()]
    _wait(
        browser,
        lambda d: "wide" in d.find_element("id", "checkpoint-table").text,
        message="table refreshed",
    )
    assert _staged_uploads(demo_server) == []


def test_pruning_form_queues_jobs_whose_results_reach_the_plot(demo_server, browser):
    base = demo_server["base"]
    pid = _project_id(base)
    browser.get(f"{base}/projects/{pid}")
    box = _wait(
        browser,
        lambda d: d.find_elements(
            "xpath", "//div[@id='prune-methods']//input[@value='magnitude_layerwise']"
        ),
        message="method checkbox",
    )
    box[0].click()
    from selenium.webdriver.common.keys import Keys

    field = browser.find_element("id", "prune-sparsities")
    # clear() bypasses React's change events; select-all + delete is what a person does.
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys("50%, 0.9")
    browser.find_element("id", "prune-submit").click()
    result = _wait(browser, lambda d: d.find_elements("id", "prune-result"), message="queued")
    assert "queued jobs" in result[0].text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = _get_json(f"{base}/api/v1/projects/{pid}/jobs")["data"]
        if all(j["state"] not in ("queued", "running") for j in jobs):
            break
        time.sleep(1)
    # The upload test's refused file failed its own validation job, as it should; every job
    # the form queued (and the demo's) succeeded.
    assert all(j["state"] == "succeeded" for j in jobs if not j["kind"].startswith("ingest_")), jobs
    # The page notices the new analysis by itself and draws the new method's line.
    lines = _wait(
        browser,
        lambda d: (
            (data := _plot_data(d, "accuracy-graph"))
            and {t["name"]: t for t in data if t.get("mode") == "lines+markers"}.get(
                "magnitude_layerwise"
            )
        ),
        timeout=30,
        message="layer-wise line",
    )
    assert [round(x) for x in lines["x"]] == [0, 50, 90]


PAGES = ("", "/layers", "/geometry", "/attention", "/dynamics", "/datasets", "/bookmarks")


def _api_reads(base: str, pid: int) -> list[str]:
    """Every GET route of the API with its path ids filled from project `pid` (routes whose ids
    the project cannot fill are left out)."""
    ids = {"project_id": pid}
    for key, listing in (("checkpoint_id", "checkpoints"), ("dataset_id", "datasets"),
                         ("job_id", "jobs"), ("result_id", "results")):
        rows = _get_json(f"{base}/api/v1/projects/{pid}/{listing}")["data"]
        if rows:
            ids[key] = rows[-1]["id"]
    result = ids.get("result_id")
    if result is not None:
        arrays = _get_json(f"{base}/api/v1/results/{result}/arrays")
        names = [a["name"] for a in arrays.get("data", arrays.get("arrays", []))]
        if names:
            ids["name"] = names[0]
    urls = []
    for path, ops in _get_json(f"{base}/openapi.json")["paths"].items():
        if "get" not in ops:
            continue
        try:
            urls.append(base + path.format(**ids))
        except KeyError:
            continue
    return urls


def assert_the_web_process_needs_no_torch(server: dict, browser, names: list[str]) -> None:  # noqa: ANN001
    """Open every page of the named demo projects in Chromium and read every API route; the
    server process (started with torch refused) must answer all of them and import no torch."""
    base = server["base"]
    browser.get(f"{base}/")
    _wait(browser, lambda d: d.find_elements("link text", names[0]), message="home page")
    failures = []
    for name in names:
        pid = _project_id(base, name)
        for url in [f"{base}/", f"{base}/jobs", *(f"{base}/projects/{pid}{p}" for p in PAGES)]:
            browser.get(url)
            _wait(browser, lambda d: d.execute_script(
                "var c = document.getElementById('_pages_content');"
                "return c && c.children.length > 0 && !document.querySelector('._dash-loading');"),
                message=f"page {url}")
            time.sleep(1.0)  # the page's first callbacks (figures, tables) answer
        for url in _api_reads(base, pid):
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    r.read()
            except urllib.error.HTTPError as exc:
                if exc.code >= 500:
                    failures.append(f"{url}: {exc.code}")
    imports = server["torch_imports"]
    assert not imports.exists(), f"the web process imported torch:\n{imports.read_text()[:6000]}"
    assert not failures, failures


def test_the_web_process_serves_every_page_and_read_without_torch(demo_server, browser):
    assert_the_web_process_needs_no_torch(demo_server, browser, ["digits-cnn"])
