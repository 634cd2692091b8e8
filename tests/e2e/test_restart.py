"""The server restarts while a job runs in a separate worker: nothing is lost, and an open
page, never reloaded, reconnects and follows the job's progress to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.test_browser import _free_port, _new_browser, _wait

pytestmark = pytest.mark.e2e


def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def _start(args: list[str], env: dict, log) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "prunescope.server.cli", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


PROGRESS = ("var p = document.querySelector('#job-progress-{id}');"
            " return p ? Number(p.getAttribute('value')) : null;")
STATE = ("var p = document.querySelector('#job-{id} .state');"
         " return p ? p.textContent : null;")


def test_a_server_restart_loses_nothing_and_the_open_page_catches_up(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRUNESCOPE_DATA_DIR": str(tmp_path),
           "PRUNESCOPE_HEARTBEAT_SECONDS": "0.5", "PRUNESCOPE_POLL_SECONDS": "0.2"}
    log = open(tmp_path / "log.txt", "wb")  # noqa: SIM115 - closed below
    serve_args = ["serve", "--port", str(port), "--workers", "0"]
    server = _start(serve_args, env, log)
    worker = _start(["worker"], env, log)
    browser = _new_browser()
    try:
        _wait(None, lambda _d: _call(f"{base}/api/v1/health")[0] == 200, 120, "server")
        status, project = _call(f"{base}/api/v1/projects",
                                {"name": "restart", "architecture": "cnn_small"})
        assert status == 201, project
        _, job = _call(f"{base}/api/v1/projects/{project['id']}/jobs",
                       {"kind": "train", "params": {"epochs": 80, "seed": 0}})
        browser.get(f"{base}/projects/{project['id']}")
        _wait(browser, lambda d: (d.execute_script(PROGRESS.format(id=job["id"])) or 0) > 0.02,
              120, "progress on the page")

        _stop(server)
        before = browser.execute_script(PROGRESS.format(id=job["id"]))
        assert _call(f"{base}/api/v1/health")[0] == 0  # the server is gone
        time.sleep(2)
        server = _start(serve_args, env, log)

        # The page was not reloaded: its polling reaches the new server and moves on.
        _wait(browser, lambda d: (d.execute_script(PROGRESS.format(id=job["id"])) or 0)
              > before + 0.05, 120, "progress after the restart")
        _wait(browser, lambda d: d.execute_script(STATE.format(id=job["id"])) == "succeeded",
              240, "the job finished on the page")
        _, final = _call(f"{base}/api/v1/jobs/{job['id']}")
        assert final["state"] == "succeeded" and final["attempts"] == 1, final
        _, checkpoints = _call(f"{base}/api/v1/projects/{project['id']}/checkpoints")
        assert [c["name"] for c in checkpoints["data"]] == ["dense"]
    finally:
        browser.quit()
        _stop(server)
        _stop(worker)
        log.close()
