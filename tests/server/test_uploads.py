"""Resumable uploads: the tus protocol, dropped connections, limits, dedup and finalizing."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import time
import tracemalloc
import uuid

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model, default_config
from prunescope.server.config import get_settings
from prunescope.server.main import create_app
from prunescope.server.services import uploads
from prunescope.server.storage import ArtifactStore
from tests.server.live_http import LiveServer

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


@pytest.fixture
def project(client) -> dict:
    r = client.post("/api/v1/projects", json={"name": "mlp-digits", "architecture": "mlp"})
    assert r.status_code == 201, r.text
    return r.json()


def _reconfigure(monkeypatch, **env: str):  # noqa: ANN202
    for key, value in env.items():
        monkeypatch.setenv(f"PRUNESCOPE_{key.upper()}", value)
    get_settings.cache_clear()
    return get_settings()


def _checkpoint_bytes(**config) -> bytes:  # noqa: ANN003
    torch.manual_seed(0)
    model = create_model("mlp", **(config or default_config("mlp")))
    return safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _create(client, length: int, filename: str = "ckpt.safetensors", **extra: str) -> str:  # noqa: ANN001
    r = client.post(
        "/api/v1/uploads",
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": _metadata(filename=filename, **extra),
        },
    )
    assert r.status_code == 201, r.text
    return r.headers["location"]


def _patch(client, url: str, offset: int, body, **headers: str):  # noqa: ANN001, ANN202
    return client.patch(
        url, content=body, headers={**CHUNK, "Upload-Offset": str(offset), **headers}
    )


def _finalize(client, pid: int, url: str, **fields):  # noqa: ANN001, ANN202
    upload_id = url.rsplit("/", 1)[1]
    return client.post(
        f"/api/v1/projects/{pid}/checkpoints/from-upload", json={"upload_id": upload_id, **fields}
    )


def _artifacts(settings) -> list[str]:  # noqa: ANN001
    root = settings.artifacts_dir / "sha256"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _upload_files(settings) -> list[str]:  # noqa: ANN001
    root = settings.uploads_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ------------------------------------------------------------------ a real server on loopback


class TusServer(LiveServer):
    """The API alone on a real uvicorn server, with the tus client calls these tests make."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        super().__init__(create_app(settings, dashboard=False))

    def create(self, length: int, filename: str = "ckpt.safetensors") -> str:
        status, headers, body = self.request(
            "POST",
            "/api/v1/uploads",
            headers={
                **TUS,
                "Upload-Length": str(length),
                "Upload-Metadata": _metadata(filename=filename),
            },
        )
        assert status == 201, body
        return headers["location"]

    def offset(self, url: str) -> int:
        status, headers, _ = self.request("HEAD", url, headers=TUS)
        assert status == 200
        return int(headers["upload-offset"])

    def start_patch(self, url: str, offset: int, content_length: int, first_bytes: bytes):  # noqa: ANN201
        """A PATCH whose headers promise `content_length` bytes; only `first_bytes` are sent."""
        conn = socket.create_connection(("127.0.0.1", self.port))
        head = (
            f"PATCH {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {content_length}\r\n\r\n"
        )
        conn.sendall(head.encode() + first_bytes)
        return conn


@pytest.fixture
def live(settings):
    with TusServer(settings) as server:
        yield server


def _until(predicate, message: str, attempts: int = 200):  # noqa: ANN001, ANN202
    for _ in range(attempts):
        if value := predicate():
            return value
        time.sleep(0.025)
    pytest.fail(message)


# ------------------------------------------------------------------ tests


def test_resume_after_a_dropped_connection_stores_the_original_bytes(settings, live,
                                                                   ingest_worker):
    wide = {"in_features": 64, "hidden": [1024, 1024], "num_classes": 10}
    status, _, body = live.request(
        "POST",
        "/api/v1/projects",
        json.dumps({"name": "wide", "architecture": "mlp", "architecture_config": wide}),
        {"Content-Type": "application/json"},
    )
    assert status == 201, body
    pid = json.loads(body)["id"]
    data = _checkpoint_bytes(**wide)  # 4.5 MB, several write blocks
    half = len(data) // 2
    url = live.create(len(data), "wide.safetensors")

    conn = live.start_patch(url, 0, len(data), data[: half // 2])
    time.sleep(0.2)  # let the server take in the first part before the rest and the drop
    conn.sendall(data[half // 2 : half])
    time.sleep(0.2)
    conn.close()  # the connection drops with half of the body sent

    # Resume as a tus client does: ask for the offset, send the rest; 423 and 409 mean the
    # interrupted request is still being wound up, so ask again.
    def resume():  # noqa: ANN202
        kept = live.offset(url)
        status, headers, _ = live.request(
            "PATCH", url, data[kept:], {**CHUNK, "Upload-Offset": str(kept)}
        )
        return status == 204 and (kept, int(headers["upload-offset"]))

    kept, final_offset = _until(resume, "the upload could not be resumed")
    # Bytes still in flight when the connection dropped may be lost; those received are kept.
    assert 0 < kept <= half and final_offset == len(data)

    payload = json.dumps({"upload_id": url.rsplit("/", 1)[1], "name": "resumed"})
    status, _, body = live.request(
        "POST",
        f"/api/v1/projects/{pid}/checkpoints/from-upload?wait=true",
        payload,
        {"Content-Type": "application/json"},
    )
    assert status == 201, body
    digest = hashlib.sha256(data).hexdigest()
    assert json.loads(body)["artifact_digest"] == digest
    assert ArtifactStore(settings.artifacts_dir).open_path(digest).read_bytes() == data
    assert _upload_files(settings) == []  # the upload was used up


def test_tus_client_flow_with_wrong_offsets_and_finalize(client, settings, project):
    data = _checkpoint_bytes()
    url = _create(client, len(data))
    assert client.head(url, headers=TUS).headers["upload-offset"] == "0"

    assert _patch(client, url, 0, data[:1000]).status_code == 204
    wrong = _patch(client, url, 0, data[:1000])
    assert wrong.status_code == 409
    assert wrong.headers["upload-offset"] == "1000" and "from offset 1000" in wrong.json()["detail"]
    ahead = _patch(client, url, 5000, data[5000:])
    assert ahead.status_code == 409 and ahead.headers["upload-offset"] == "1000"

    # Finalizing too early leaves the upload to be continued.
    early = _finalize(client, project["id"], url)
    assert early.status_code == 409 and "1000 of" in early.json()["detail"]

    done = _patch(client, url, 1000, data[1000:])
    assert done.status_code == 204 and done.headers["upload-offset"] == str(len(data))
    status = client.get(url).json()
    assert status["complete"] and status["sha256"] == hashlib.sha256(data).hexdigest()

    r = _finalize(client, project["id"], url, name="dense", role="dense")
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "dense" and r.json()["artifact_digest"] == status["sha256"]
    assert client.head(url, headers=TUS).status_code == 404  # consumed
    assert _finalize(client, project["id"], url).status_code == 404


def test_bytes_beyond_the_declared_length_or_the_limit_are_413(client, settings, monkeypatch):
    url = _create(client, 100)
    r = _patch(client, url, 0, b"x" * 101)  # Content-Length says too much: refused unread
    assert r.status_code == 413 and "declared Upload-Length of 100" in r.json()["detail"]
    assert client.get(url).json()["offset"] == 0

    def chunked():  # no Content-Length: the declared length is kept, the excess refused
        yield b"a" * 60
        yield b"b" * 60

    r = _patch(client, url, 0, chunked())
    assert r.status_code == 413
    status = client.get(url).json()
    assert status["offset"] == 100 and status["complete"]
    assert status["sha256"] == hashlib.sha256(b"a" * 60 + b"b" * 40).hexdigest()
    assert _patch(client, url, 100, b"more").status_code == 413  # complete: nothing appended

    settings = _reconfigure(monkeypatch, max_upload_bytes="1000")
    r = client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "1001"})
    assert r.status_code == 413 and "PRUNESCOPE_MAX_UPLOAD_BYTES" in r.json()["detail"]
    with TestClient(create_app(settings, dashboard=False)) as small:
        # The size-limit middleware bounds chunk requests before the route reads them.
        big = _patch(small, url, 100, b"\0" * (1000 + 1024 * 1024 + 1))
        assert big.status_code == 413 and "PRUNESCOPE_MAX_UPLOAD_BYTES" in big.json()["detail"]


def test_unknown_or_malformed_upload_ids_are_404(client, project):
    for upload_id in (uuid.uuid4().hex, "prunescope.db", "A" * 32):
        url = f"/api/v1/uploads/{upload_id}"
        assert client.head(url, headers=TUS).status_code == 404
        assert client.get(url).status_code == 404
        assert _patch(client, url, 0, b"x").status_code == 404
        assert client.delete(url, headers=TUS).status_code == 404
        assert _finalize(client, project["id"], url).status_code == 404


def test_a_corrupt_file_is_refused_and_nothing_is_kept(client, settings, project):
    junk = os.urandom(5000)
    url = _create(client, len(junk), "broken.safetensors")
    assert _patch(client, url, 0, junk).status_code == 204
    r = _finalize(client, project["id"], url, name="broken")
    assert 400 <= r.status_code < 500 and "broken.safetensors" in r.json()["detail"]
    assert client.get(f"/api/v1/projects/{project['id']}/checkpoints").json()["count"] == 0
    assert _artifacts(settings) == []
    assert _upload_files(settings) == []
    assert os.listdir(ArtifactStore(settings.artifacts_dir).tmp_dir) == []
    assert client.get(url).status_code == 404


def test_a_declared_sha256_of_stored_content_completes_at_once(client, settings, project):
    data = _checkpoint_bytes()
    digest = hashlib.sha256(data).hexdigest()
    first = _create(client, len(data), sha256=digest)
    assert _patch(client, first, 0, data).status_code == 204
    assert _finalize(client, project["id"], first, name="dense", role="dense").status_code == 201
    assert _artifacts(settings) == [digest]

    r = client.post(
        "/api/v1/uploads",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": _metadata(filename="again.safetensors", sha256=digest),
        },
    )
    assert r.status_code == 201
    assert r.headers["upload-offset"] == str(len(data)) and r.json()["complete"]
    second = _finalize(client, project["id"], r.headers["location"], name="copy")
    assert second.status_code == 201 and second.json()["artifact_digest"] == digest
    # One stored file, intact: finishing the linked upload did not touch the artifact.
    assert _artifacts(settings) == [digest]
    stored = ArtifactStore(settings.artifacts_dir).open_path(digest)
    assert stored.read_bytes() == data
    assert _upload_files(settings) == []


def test_a_declared_sha256_that_the_bytes_do_not_match_discards_the_upload(client, settings):
    data = _checkpoint_bytes()
    url = _create(client, len(data), sha256=hashlib.sha256(b"other").hexdigest())
    assert _patch(client, url, 0, data[:100]).status_code == 204
    r = _patch(client, url, 100, data[100:])
    assert r.status_code == 422 and "upload the file again" in r.json()["detail"]
    assert client.get(url).status_code == 404 and _upload_files(settings) == []


def test_a_chunk_far_larger_than_memory_is_streamed_to_disk(settings, live):
    block = os.urandom(1024 * 1024)
    blocks = 64
    url = live.create(blocks * len(block), "big.bin")
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        conn.putrequest("PATCH", url)
        for name, value in {**CHUNK, "Upload-Offset": "0"}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(blocks * len(block)))
        conn.endheaders()
        for _ in range(blocks):
            conn.send(block)
        response = conn.getresponse()
        response.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        conn.close()
    assert response.status == 204
    expected = hashlib.sha256(block * blocks).hexdigest()
    status = live.request("GET", url)[2]
    assert f'"sha256":"{expected}"'.encode() in status
    # The server process (this one) never held more than a few blocks of the 64 MiB body.
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while receiving 64 MiB"


def test_a_writer_that_goes_silent_gives_the_upload_back(settings, monkeypatch):
    settings = _reconfigure(monkeypatch, upload_idle_timeout_seconds="1.5")
    with TusServer(settings) as live:
        url = live.create(1000)
        stalled = live.start_patch(url, 0, 1000, b"s" * 10)
        try:
            # While the first request holds the upload, another writer is told to wait. The
            # probe's offset never matches, so a probe that arrives before the stalled
            # request took the lock is refused (409) instead of writing.
            locked = _until(
                lambda: (
                    (r := live.request("PATCH", url, b"x", {**CHUNK, "Upload-Offset": "999"}))
                    and r[0] == 423
                    and r
                ),
                "the busy upload was not reported as locked",
            )
            assert b"retry" in locked[2]
            # After the idle timeout the ten bytes are kept and the upload is free again.
            _until(
                lambda: (
                    live.request("PATCH", url, b"r" * 990, {**CHUNK, "Upload-Offset": "10"})[0]
                    == 204
                ),
                "the upload stayed locked after its writer went silent",
            )
        finally:
            stalled.close()
        assert (
            live.request("GET", url)[2].count(
                hashlib.sha256(b"s" * 10 + b"r" * 990).hexdigest().encode()
            )
            == 1
        )


def test_abort_and_expiry_remove_uploads(client, settings):
    url = _create(client, 100)
    assert _patch(client, url, 0, b"x" * 10).status_code == 204
    assert client.delete(url, headers=TUS).status_code == 204
    assert client.head(url, headers=TUS).status_code == 404 and _upload_files(settings) == []

    stale = _create(client, 100)
    fresh = _create(client, 100)
    old = time.time() - settings.upload_expiry_seconds - 60
    stale_id = stale.rsplit("/", 1)[1]
    for suffix in (".bin", ".json"):
        os.utime(settings.uploads_dir / f"{stale_id}{suffix}", (old, old))
    (settings.uploads_dir / "leftover.claimed").write_bytes(b"x")
    os.utime(settings.uploads_dir / "leftover.claimed", (old, old))
    assert client.head(stale, headers=TUS).status_code == 404  # expired counts as gone
    assert uploads.remove_stale_uploads(settings) == 1  # the leftover
    assert client.head(fresh, headers=TUS).status_code == 200
    assert _upload_files(settings) == sorted(
        f"{fresh.rsplit('/', 1)[1]}{s}" for s in (".bin", ".json")
    )


def test_protocol_discovery_and_refusals(client):
    options = client.options("/api/v1/uploads")
    assert options.status_code == 204
    assert options.headers["tus-version"] == "1.0.0"
    assert "creation" in options.headers["tus-extension"].split(",")
    url = _create(client, 10)
    old = client.head(url, headers={"Tus-Resumable": "0.2.2"})
    assert old.status_code == 412
    wrong_type = client.patch(url, content=b"x", headers={**TUS, "Upload-Offset": "0"})
    assert wrong_type.status_code == 415 and "offset+octet-stream" in wrong_type.json()["detail"]
    no_length = client.post("/api/v1/uploads", headers=TUS)
    assert no_length.status_code == 400 and "Upload-Length" in no_length.json()["detail"]
    bad_meta = client.post(
        "/api/v1/uploads", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "filename %%"}
    )
    assert bad_meta.status_code == 400 and "base64" in bad_meta.json()["detail"]
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/uploads/{upload_id}" in paths
    assert "/api/v1/projects/{project_id}/checkpoints/from-upload" in paths
