"""Throughput and server memory of resumable uploads against a bare HTTP sink on loopback.

The real server (`uvicorn server.main:create_app` in a subprocess, temporary data directory)
receives a file through the tus chunk protocol: POST /api/v1/uploads, then PATCH requests of
`--chunk-mb` (the browser's chunk size) written to disk and hashed as they arrive. Baseline,
measured in the same run with the same client, chunking and keep-alive connection: a second
uvicorn process whose app reads every body and drops it — the HTTP stack and loopback with
nothing done to the bytes (see ../shared/BENCH.md). Runs alternate sink/upload and report
medians; peak RSS is each server process's high-water mark (reset before every run through
/proc/<pid>/clear_refs, else sampled) above its RSS when the run began. The multipart
endpoint, which streams to a spooled temporary file and then validates, is timed once for
context: with random bytes it answers 422 after reading and hashing everything.

The upload phase only: finalizing (POST .../checkpoints/from-upload) loads and validates the
file as a checkpoint, a cost set by the model, not by the transfer.

    .venv/bin/python bench/upload_throughput.py [--size-mb 1024] [--chunk-mb 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1024 * 1024
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


async def sink_app(scope, receive, send) -> None:  # noqa: ANN001
    """ASGI app that reads a request body to the end and answers like a tus PATCH."""
    if scope["type"] != "http":
        return
    received = int(dict(scope["headers"]).get(b"upload-offset", b"0"))
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"upload-offset", str(received).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b""})


# ------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_uvicorn(app: str, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{app} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{app} did not start")


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


class PeakRss:
    """Peak resident memory of a process during a `with` block, above its level at the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        try:  # "5" resets the kernel's peak-RSS high-water mark (Linux 4.0+)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.start_kib = _rss_kib(self.pid, "VmRSS")
        self.peak_kib = self.start_kib
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid, "VmRSS"))

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.exact:
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid, "VmHWM"))

    @property
    def increase_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


# ------------------------------------------------------------------ client


class ChunkClient:
    """Sends file ranges as PATCH bodies over one keep-alive connection, zero-copy (sendfile)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))

    def patch(self, path: str, source, offset: int, count: int) -> int:  # noqa: ANN001
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {count}\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        sent = self.sock.sendfile(source, offset, count)
        assert sent == count, (sent, count)
        response = http.client.HTTPResponse(self.sock, method="PATCH")
        response.begin()
        body = response.read()
        if response.status != 204:
            raise RuntimeError(f"PATCH at {offset}: {response.status} {body[:300]!r}")
        return int(response.getheader("Upload-Offset"))

    def close(self) -> None:
        self.sock.close()


def _request(port: int, method: str, path: str, headers=None, body=None):  # noqa: ANN001, ANN202
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=MiB)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def send_in_chunks(port: int, path: str, source: Path, chunk: int) -> None:
    size = source.stat().st_size
    client = ChunkClient(port)
    try:
        with open(source, "rb") as f:
            offset = 0
            while offset < size:
                offset = client.patch(path, f, offset, min(chunk, size - offset))
    finally:
        client.close()


def tus_upload(port: int, source: Path, chunk: int, digest: str) -> str:
    size = source.stat().st_size
    status, headers, body = _request(
        port, "POST", "/api/v1/uploads", {"Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
    )
    assert status == 201, body
    location = dict(headers)["location"]
    send_in_chunks(port, location, source, chunk)
    status, _, body = _request(port, "GET", location)
    state = json.loads(body)
    assert state["complete"] and state["sha256"] == digest, state
    return location


def multipart_upload(port: int, source: Path, project_id: int) -> None:
    boundary = "benchboundary7d1f"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = source.stat().st_size
    conn = socket.create_connection(("127.0.0.1", port))
    try:
        request = (
            f"POST /api/v1/projects/{project_id}/checkpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n"
        ).encode()
        conn.sendall(request + head)
        with open(source, "rb") as f:
            conn.sendfile(f, 0, size)
        conn.sendall(tail)
        response = http.client.HTTPResponse(conn, method="POST")
        response.begin()
        body = response.read()
        # Random bytes are not a checkpoint: 422 once everything was read, stored and checked.
        assert response.status == 422, (response.status, body[:300])
    finally:
        conn.close()


# ------------------------------------------------------------------ main


def _write_random_file(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(16 * MiB, left))
            sha.update(block)
            f.write(block)
            left -= len(block)
    return sha.hexdigest()


def _timed(pid: int, size: int, run, after=None) -> tuple[float, float]:  # noqa: ANN001
    with PeakRss(pid) as rss:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
    if after is not None:
        after(result)
    return size / MiB / seconds, rss.increase_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--chunk-mb", type=int, default=16, help="PATCH body size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="alternating sink/upload pairs")
    parser.add_argument("--skip-multipart", action="store_true")
    args = parser.parse_args()
    size, chunk = args.size_mb * MiB, args.chunk_mb * MiB

    with tempfile.TemporaryDirectory(prefix="prunescope-bench-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "upload.bin"
        digest = _write_random_file(source, size)
        env = {
            "PRUNESCOPE_DATA_DIR": str(tmp_path / "data"),
            "PRUNESCOPE_MAX_UPLOAD_BYTES": str(size + 64 * MiB),
            "TMPDIR": str(tmp_path),  # the multipart spool file
        }
        server, port = _start_uvicorn("prunescope.server.main:create_app", env, "--factory")
        sink, sink_port = _start_uvicorn("upload_throughput:sink_app", {}, "--app-dir", str(HERE))
        try:
            rows: dict[str, list[tuple[float, float]]] = {"sink": [], "tus": []}
            for _ in range(args.repeats):
                rows["sink"].append(
                    _timed(sink.pid, size, lambda: send_in_chunks(sink_port, "/", source, chunk))
                )
                rows["tus"].append(
                    _timed(
                        server.pid,
                        size,
                        lambda: tus_upload(port, source, chunk, digest),
                        # Untimed: aborting the finished upload frees its disk for the next run.
                        lambda url: _request(port, "DELETE", url, {"Tus-Resumable": "1.0.0"}),
                    )
                )
            multipart = None
            if not args.skip_multipart:
                status, _, body = _request(
                    port,
                    "POST",
                    "/api/v1/projects",
                    {"Content-Type": "application/json"},
                    json.dumps({"name": "bench", "architecture": "mlp"}),
                )
                assert status == 201, body
                pid = json.loads(body)["id"]
                multipart = _timed(server.pid, size, lambda: multipart_upload(port, source, pid))
        finally:
            for proc in (server, sink):
                proc.terminate()
                proc.wait(30)

    def median(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    print(
        f"upload of {args.size_mb} MiB over loopback in {args.chunk_mb} MiB requests, "
        f"{args.repeats} alternating runs (medians)"
    )
    print(f"{'path':52} {'MiB/s':>8} {'peak RSS +MiB':>14}")
    print(
        f"{'baseline: uvicorn sink, body read and dropped':52} "
        f"{median('sink', 0):8.0f} {median('sink', 1):14.1f}"
    )
    print(
        f"{'tus PATCH: streamed to disk + sha256':52} "
        f"{median('tus', 0):8.0f} {median('tus', 1):14.1f}"
    )
    if multipart is not None:
        print(
            f"{'context: multipart POST (spool, copy, hash, 422)':52} "
            f"{multipart[0]:8.0f} {multipart[1]:14.1f}"
        )
    runs = ", ".join(
        f"{t[0]:.0f}/{s[0]:.0f}" for t, s in zip(rows["tus"], rows["sink"], strict=True)
    )
    print(f"per-run tus/sink MiB/s: {runs}")
    ratios = [t[0] / s[0] for t, s in zip(rows["tus"], rows["sink"], strict=True)]
    print(
        f"tus upload / sink throughput: {statistics.median(ratios):.2f} "
        f"({median('tus', 0):.0f} MiB/s, target >= 150; +{median('tus', 1):.0f} MiB RSS, "
        "target < 100)"
    )


if __name__ == "__main__":
    main()
