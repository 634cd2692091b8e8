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

Creating an upload is timed too: a plain POST (baseline) against a POST that declares the
sha256 of content already stored in one of the caller's projects, which completes at once
(deduplication: the access check on the declared digest is part of its cost). With `--auth`
the server runs with accounts and every request carries a user's bearer token, so the per
request sign-in and the upload's owner checks are measured as a signed-in user meets them.

    .venv/bin/python bench/upload_throughput.py [--size-mb 1024] [--chunk-mb 16] [--repeats 3]
                                                 [--creates 60] [--auth]
"""

from __future__ import annotations

import argparse
import base64
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

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    def patch(self, path: str, source, offset: int, count: int) -> int:  # noqa: ANN001
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {count}\r\n{self.extra}\r\n"
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


def send_in_chunks(port: int, path: str, source: Path, chunk: int,
                   headers: dict[str, str] | None = None) -> None:
    size = source.stat().st_size
    client = ChunkClient(port, headers)
    try:
        with open(source, "rb") as f:
            offset = 0
            while offset < size:
                offset = client.patch(path, f, offset, min(chunk, size - offset))
    finally:
        client.close()


def tus_upload(port: int, source: Path, chunk: int, digest: str, auth: dict[str, str]) -> str:
    size = source.stat().st_size
    status, headers, body = _request(
        port, "POST", "/api/v1/uploads",
        {"Tus-Resumable": "1.0.0", "Upload-Length": str(size), **auth},
    )
    assert status == 201, body
    location = dict(headers)["location"]
    send_in_chunks(port, location, source, chunk, auth)
    status, _, body = _request(port, "GET", location, auth)
    state = json.loads(body)
    assert state["complete"] and state["sha256"] == digest, state
    return location


def multipart_upload(port: int, source: Path, project_id: int, auth: dict[str, str]) -> None:
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
            f"Content-Length: {len(head) + size + len(tail)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in auth.items()) + "\r\n"
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


class Creator:
    """Creates uploads over one keep-alive connection: plain ones, or ones declaring `digest`."""

    def __init__(self, port: int, auth: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = auth

    def _send(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        self.conn.request(method, path, headers={"Tus-Resumable": "1.0.0", **self.auth,
                                                 **headers})
        response = self.conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()

    def create(self, length: int, digest: str | None) -> float:
        """Seconds one POST took; the upload is deleted afterwards, untimed."""
        metadata = {"filename": "x.bin", **({"sha256": digest} if digest else {})}
        header = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())
        start = time.perf_counter()
        status, headers, body = self._send(
            "POST", "/api/v1/uploads", {"Upload-Length": str(length), "Upload-Metadata": header})
        seconds = time.perf_counter() - start
        assert status == 201, body
        complete = json.loads(body)["complete"]
        assert complete == (digest is not None), body  # deduplicated exactly when declared
        status, _, body = self._send("DELETE", headers["location"], {})
        assert status == 204, body
        return seconds


def create_latencies(port: int, auth: dict[str, str], stored: tuple[str, int],
                     count: int) -> tuple[float, float]:
    """Median milliseconds of a plain create and of a deduplicated one, alternating."""
    creator = Creator(port, auth)
    plain, dedup = [], []
    digest, length = stored
    for _ in range(count):
        plain.append(creator.create(length, None))
        dedup.append(creator.create(length, digest))
    creator.conn.close()
    return 1000 * statistics.median(plain), 1000 * statistics.median(dedup)


def _user_token(data_dir: Path) -> str:
    """A user with an API token in a fresh data directory (the server is not running yet)."""
    from prunescope.server.auth import add_user
    from prunescope.server.config import Settings
    from prunescope.server.db import upgrade_database

    settings = Settings(data_dir=data_dir)
    upgrade_database(settings)
    return add_user("bench", None, token=True, settings=settings)[1]


def _store_in_project(data_dir: Path, project_id: int, size: int) -> tuple[str, int]:
    """Random bytes stored as a checkpoint's weights in the project: what a deduplicated
    create points to (a row, as `from-upload` leaves, without validating random bytes)."""
    from prunescope.server.config import Settings
    from prunescope.server.db import session_scope
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import Checkpoint

    settings = Settings(data_dir=data_dir)
    store = artifact_store(settings)
    staged, digest, size = store.write_stream([os.urandom(size)])
    store.adopt(staged, digest)
    with session_scope(settings) as s:
        s.add(Checkpoint(project_id=project_id, name="stored", role="dense", source="upload",
                         format="safetensors", artifact_digest=digest, size_bytes=size))
    return digest, size


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
    parser.add_argument("--creates", type=int, default=60,
                        help="upload creations timed, of each kind")
    parser.add_argument("--auth", action="store_true",
                        help="serve with accounts; requests carry a user's bearer token")
    args = parser.parse_args()
    size, chunk = args.size_mb * MiB, args.chunk_mb * MiB

    with tempfile.TemporaryDirectory(prefix="prunescope-bench-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "upload.bin"
        digest = _write_random_file(source, size)
        data_dir = tmp_path / "data"
        env = {
            "PRUNESCOPE_DATA_DIR": str(data_dir),
            "PRUNESCOPE_MAX_UPLOAD_BYTES": str(size + 64 * MiB),
            "PRUNESCOPE_AUTH": "on" if args.auth else "off",
            "TMPDIR": str(tmp_path),  # the multipart spool file
        }
        auth = {"Authorization": f"Bearer {_user_token(data_dir)}"} if args.auth else {}
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
                        lambda: tus_upload(port, source, chunk, digest, auth),
                        # Untimed: aborting the finished upload frees its disk for the next run.
                        lambda url: _request(port, "DELETE", url,
                                             {"Tus-Resumable": "1.0.0", **auth}),
                    )
                )
            status, _, body = _request(
                port,
                "POST",
                "/api/v1/projects",
                {"Content-Type": "application/json", **auth},
                json.dumps({"name": "bench", "architecture": "mlp"}),
            )
            assert status == 201, body
            pid = json.loads(body)["id"]
            stored = _store_in_project(data_dir, pid, MiB)
            creates = create_latencies(port, auth, stored, args.creates)
            multipart = None
            if not args.skip_multipart:
                multipart = _timed(server.pid, size,
                                   lambda: multipart_upload(port, source, pid, auth))
        finally:
            for proc in (server, sink):
                proc.terminate()
                proc.wait(30)

    def median(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    print(
        f"upload of {args.size_mb} MiB over loopback in {args.chunk_mb} MiB requests, "
        f"{args.repeats} alternating runs (medians)"
        + (", as a signed-in user (bearer token)" if args.auth else ", without accounts")
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
    print(
        f"create: plain {creates[0]:.2f} ms, deduplicated (digest in the caller's project) "
        f"{creates[1]:.2f} ms; median of {args.creates}, dedup/plain "
        f"{creates[1] / creates[0]:.2f}"
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
