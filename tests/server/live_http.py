"""A real HTTP server for attack tests: uvicorn in a thread, a raw client that streams a
chunked body and stops when the server answers, and samplers of memory and spooled bytes."""

from __future__ import annotations

import http.client
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


class LiveServer:
    """uvicorn serving `app` on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn  # deferred: only the tests that need a real server start one

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    sent: int  # body bytes the client got into the connection before it stopped
    body: bytes


def send_chunked(port: int, method: str, path: str, headers: dict[str, str], prefix: bytes,
                 total: int, suffix: bytes = b"", chunk: int = MiB) -> Answer:
    """Send `prefix`, then filler up to `total` bytes, then `suffix`, as a chunked body; stop
    sending as soon as the server answers or hangs up, and read its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", "Transfer-Encoding: chunked",
             *(f"{k}: {v}" for k, v in headers.items())]
    if not any(k.lower() == "host" for k in headers):
        lines.insert(1, f"Host: 127.0.0.1:{port}")
    sent = 0
    filler = b"A" * chunk

    def framed(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + framed(prefix))
        sent = len(prefix)
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # an answer (or the end of the connection) is waiting
            sock.sendall(framed(filler))
            sent += len(filler)
        else:
            sock.sendall(framed(suffix) + b"0\r\n\r\n")
            sent += len(suffix)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        return Answer(response.status, sent, response.read())
    except (ConnectionError, http.client.HTTPException):
        return Answer(None, sent, b"")
    finally:
        sock.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _open_file_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` this process holds open: spooled request bodies are
    unnamed temporary files, listed only among the process's open files."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
                total += os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            pass
    return total


class PeakSampler:
    """The largest rise of `measure()` over its value at the start, sampled every few ms."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.start = measure()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.measure() - self.start)
            time.sleep(0.003)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.measure() - self.start)


def memory_rise() -> PeakSampler:
    """This process's resident memory (the server runs in a thread of it)."""
    return PeakSampler(_rss)


def spooled_bytes(folder: Path) -> PeakSampler:
    """Bytes in open files under `folder` (where request bodies are spooled)."""
    return PeakSampler(lambda: _open_file_bytes(folder))
