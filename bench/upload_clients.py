"""The clients of `upload_throughput.py`: tus chunks sent zero-copy over one keep-alive
connection, uploads created in turns (plain and deduplicated), and a multipart POST."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from pathlib import Path

MiB = 1024 * 1024


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


def request(port: int, method: str, path: str, headers=None, body=None):  # noqa: ANN001, ANN202
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
    status, headers, body = request(
        port, "POST", "/api/v1/uploads",
        {"Tus-Resumable": "1.0.0", "Upload-Length": str(size), **auth},
    )
    assert status == 201, body
    location = dict(headers)["location"]
    send_in_chunks(port, location, source, chunk, auth)
    status, _, body = request(port, "GET", location, auth)
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
        # Once everything was read, hashed and staged the check is queued as a worker's job
        # (202; none runs here); a server that checks in the request refuses random bytes (422).
        assert response.status in (202, 422), (response.status, body[:300])
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
