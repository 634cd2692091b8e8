"""End to end: accounts and share links in a real Chromium against a real `prunescope serve`.

A user signs in through the login page and sees a private project's view; a share link opens
the same view in a second browser with no account, which can read it and change nothing; the
owner revokes the link and the second browser loses access on its next request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.e2e.test_browser import (  # noqa: F401 - fixtures are used by name
    _free_port,
    _new_browser,
    _plot_data,
    _wait,
    browser,
)

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
FETCH = """var done = arguments[arguments.length - 1];
fetch(arguments[0], {method: arguments[1], headers: {'content-type': 'application/json'},
                     body: arguments[2]}).then(function (r) { done(r.status); },
                                              function () { done(-1); });"""


def _api(base: str, path: str, token: str, body: dict | None = None, method: str = "GET"):  # noqa: ANN202
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("secured")
    env = {**os.environ, "PRUNESCOPE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
           "PRUNESCOPE_AUTH": "on"}
    added = subprocess.run(
        [sys.executable, "-m", "prunescope.server.cli", "users", "add", "alice", "--password-stdin",
         "--token"], input=PASSWORD + "\n", env=env, capture_output=True, text=True,
        timeout=120)
    assert added.returncode == 0, added.stderr
    token = next(line for line in added.stdout.splitlines() if "API token" in line).split()[-1]
    port = _free_port()
    log_path = data_dir / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{base}/api/v1/health", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        project = _api(base, "/api/v1/projects", token, {
            "name": "private-digits", "architecture": "mlp", "dataset": {"builtin": "digits"}},
            "POST")
        yield {"base": base, "token": token, "pid": project["id"], "log": log_path}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _class_counts(driver) -> list:  # noqa: ANN001
    data = _plot_data(driver, "class-counts") or []
    return [trace.get("y") for trace in data if trace.get("type") == "bar"]


def test_sign_in_share_a_view_read_only_and_revoke_it(secured_server, browser):  # noqa: F811
    base, token, pid = (secured_server[k] for k in ("base", "token", "pid"))
    view = f"/projects/{pid}/datasets"

    # Without an account the page sends the browser to the login page.
    browser.get(base + view)
    _wait(browser, lambda d: "/login" in d.current_url, message="login page")
    browser.find_element("name", "name").send_keys("alice")
    browser.find_element("name", "password").send_keys(PASSWORD)
    browser.find_element("css selector", "button[type=submit]").click()
    _wait(browser, lambda d: d.current_url.endswith(view), message="back at the view")
    owner_counts = _wait(browser, _class_counts, timeout=60, message="the owner's figure")
    assert owner_counts and sum(owner_counts[0]) > 0
    session = browser.get_cookie("prunescope_session") or next(
        (c for c in browser.get_cookies() if c.get("httpOnly")), None)
    assert session is not None and session.get("httpOnly")

    # The owner shares this view from the header.
    _wait(browser, lambda d: d.find_element("id", "share-view").is_enabled(),
          message="the share button")
    browser.find_element("id", "share-view").click()
    url = _wait(browser, lambda d: (box := d.find_elements("id", "share-url"))
                and box[0].get_attribute("value"), message="the share link")
    assert url.startswith(f"{base}/s/") and len(url.rsplit("/", 1)[-1]) >= 43  # 256 bits
    [link] = _api(base, f"/api/v1/projects/{pid}/share-links", token)["data"]
    assert link["view_path"] == view
    visitor = _new_browser()  # no account, a fresh browser
    try:
        visitor.get(url)
        _wait(visitor, lambda d: d.current_url.endswith(view), message="the shared view")
        assert _wait(visitor, _class_counts, timeout=60, message="shared figure") == owner_counts
        # Reading is all it may do: a change from the page itself is refused.
        status = visitor.execute_async_script(FETCH, f"/api/v1/projects/{pid}/jobs", "POST",
                                              json.dumps({"kind": "analyze"}))
        assert status == 403
        other = visitor.execute_async_script(FETCH, "/api/v1/projects", "POST",
                                             json.dumps({"name": "x", "architecture": "mlp"}))
        assert other in (401, 403)
        assert all(j["kind"] != "analyze" for j in
                   _api(base, f"/api/v1/projects/{pid}/jobs", token)["data"])

        _api(base, f"/api/v1/projects/{pid}/share-links/{link['id']}", token, method="DELETE")
        visitor.refresh()
        _wait(visitor, lambda d: not _class_counts(d), timeout=30, message="access gone")
        status = visitor.execute_async_script(FETCH, f"/api/v1/projects/{pid}", "GET", None)
        assert status in (401, 403, 404)
    finally:
        visitor.quit()
