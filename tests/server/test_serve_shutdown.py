"""Stopping `prunescope serve` the way a terminal's Ctrl-C or a process supervisor does, by
signalling its whole process group while a job runs, leaves no process of its data directory
behind: the pool restarts nothing once the server stops, and no worker outlives the server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def _processes_of(data_dir: Path) -> list[int]:
    """Live processes whose command line or environment names the data directory."""
    needle = str(data_dir).encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle not in (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return [pid for pid in found if pid != os.getpid()]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _open_request(port: int) -> socket.socket:
    """A sign-in whose form is still arriving: uvicorn waits for it before it stops, as it
    would for a slow upload; meanwhile the pool has time to see its workers die."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\n"
                 "Content-Length: 40\r\n\r\nname=alice&".encode())
    return conn


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_signalling_the_group_leaves_no_process_of_the_data_directory(tmp_path, stop_signal):
    data_dir = tmp_path / "data"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESCOPE_")}
    env.update(PRUNESCOPE_DATA_DIR=str(data_dir), PRUNESCOPE_WORKERS="1",
               PRUNESCOPE_INGEST_WORKERS="1", PRUNESCOPE_POLL_SECONDS="0.2",
               PRUNESCOPE_HEARTBEAT_SECONDS="0.5")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return _call(base, "/api/v1/health")["status"] == "ok"
            except OSError:
                return False

        _wait_for(answers, 120, "the server")
        project = _call(base, "/api/v1/projects", {"name": "p", "architecture": "cnn_small"})
        job = _call(base, f"/api/v1/projects/{project['id']}/jobs",
                    {"kind": "train", "params": {"epochs": 500, "seed": 0}})
        _wait_for(lambda: _call(base, f"/api/v1/jobs/{job['id']}")["state"] == "running",
                  120, "the job to run")
        workers = _children(server.pid)
        held = _open_request(port)

        os.killpg(server.pid, stop_signal)
        # Time for the pool to restart a dead worker, were it going to (it polls each second).
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not _children(server.pid) - workers:
            time.sleep(0.05)
        try:
            held.sendall(b"password=wrong-password-wrong")  # the sign-in completes; serve ends
        except OSError:  # the server answered it already; all the same here
            pass
        held.close()
        server.wait(30)

        survivors: list[int] = []

        def none_left() -> bool:
            survivors[:] = _processes_of(data_dir)
            return not survivors

        try:
            _wait_for(none_left, 5, "the server's processes to end")
        except AssertionError:
            raise AssertionError(f"outlived the server: {survivors}\n{log.read_text()}") from None
        assert "restarting" not in log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        for pid in _processes_of(data_dir):
            os.kill(pid, signal.SIGKILL)
