"""The artifact store over a shared location: an S3 endpoint (moto's server), a URL, a path."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from pathlib import Path

import boto3
import pytest
import s3fs
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model, default_config
from prunescope.server.config import get_settings
from prunescope.server.main import create_app
from prunescope.server.storage import (
    ArtifactNotFound,
    ArtifactStore,
    StorageError,
    artifact_store,
    sha256_file,
)
from prunescope.server.storage_remote import REMOTE_BLOCK_BYTES
from tests.ingest_lane import running_ingest_lane

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server, in its own process so its copy of every object is not counted in the
    memory this process uses while streaming."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import threading
            from moto.server import ThreadedMotoServer
            ThreadedMotoServer(ip_address="127.0.0.1", port={port}).start()
            threading.Event().wait()
        """)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert server.poll() is None, "moto's server exited on start"
                time.sleep(0.05)
        else:
            pytest.fail("moto's server did not start listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def _use_endpoint(monkeypatch, endpoint: str) -> None:  # noqa: ANN001
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a refused connection fails at once
    # s3fs keeps one client per process; a test that changes the endpoint needs a new one.
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the endpoint, with the AWS variables pointing at it."""
    _use_endpoint(monkeypatch, s3_endpoint)
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


def _keys(bucket: str) -> dict[str, int]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}


def _stage(store: ArtifactStore, payload: bytes) -> tuple[Path, str]:
    staged, digest, _size = store.write_stream([payload])
    return staged, digest


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------ S3: two machines


def test_what_one_machine_adopts_another_opens_verified(tmp_path, bucket):
    url = f"s3://{bucket}/team/artifacts"
    first = ArtifactStore(tmp_path / "machine-a", remote=url)
    second = ArtifactStore(tmp_path / "machine-b", remote=url)
    payload = os.urandom(300_000)
    staged, digest = _stage(first, payload)
    assert first.adopt(staged, digest) == digest
    assert _keys(bucket) == {f"team/artifacts/sha256/{digest[:2]}/{digest}": len(payload)}
    assert not second.path(digest).exists() and second.exists(digest)
    opened = second.open_path(digest)
    assert opened == second.path(digest)  # now in machine b's cache
    assert opened.read_bytes() == payload
    assert sha256_file(opened) == hashlib.sha256(payload).hexdigest()
    assert _files(second.tmp_dir) == [] and _files(first.tmp_dir) == []
    # The same content adopted again on machine b is neither uploaded twice nor duplicated.
    staged, _ = _stage(second, payload)
    second.adopt(staged, digest)
    assert not staged.exists() and len(_keys(bucket)) == 1
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not second.exists(absent)
    with pytest.raises(ArtifactNotFound):
        second.open_path(absent)
    assert _files(second.tmp_dir) == []


def test_an_upload_staged_on_the_server_reaches_a_worker_elsewhere_and_is_discarded(
    tmp_path, bucket
):
    url = f"s3://{bucket}/team/artifacts"
    server = ArtifactStore(tmp_path / "server", remote=url)
    worker = ArtifactStore(tmp_path / "worker", remote=url)
    payload = os.urandom(200_000)
    staged, digest = _stage(server, payload)
    key = server.stage_upload(staged, digest)
    assert _keys(bucket) == {f"team/artifacts/staging/{key}": len(payload)}
    assert worker.staged_path(key, digest).read_bytes() == payload  # downloaded, verified
    with pytest.raises(StorageError):  # bytes that are not what the server staged
        ArtifactStore(tmp_path / "other", remote=url).staged_path(key, "0" * 64)
    worker.discard_staged(key)
    assert _keys(bucket) == {}
    server.discard_staged(key)  # the server's copy goes too; gone remotely is fine


def test_a_file_of_many_blocks_streams_both_ways(tmp_path, bucket):
    url = f"s3://{bucket}/big"
    writer = ArtifactStore(tmp_path / "writer", remote=url)
    reader = ArtifactStore(tmp_path / "reader", remote=url)
    size = 10 * REMOTE_BLOCK_BYTES  # a multipart upload of ten parts
    src = tmp_path / "weights.bin"
    with open(src, "wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    digest = sha256_file(src)
    assert not writer.exists(digest)  # also opens the S3 client outside the measurement

    tracemalloc.start()
    try:
        assert writer.put_file(src) == digest
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        opened = reader.open_path(digest)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Memory follows the block size, not the file: neither direction holds the file at once.
    assert upload_peak < size / 2, upload_peak
    assert download_peak < size / 2, download_peak
    assert _keys(bucket) == {f"big/sha256/{digest[:2]}/{digest}": size}
    assert sha256_file(opened) == digest and opened.stat().st_size == size


def test_a_corrupted_remote_object_is_refused_and_not_cached(tmp_path, bucket):
    url = f"s3://{bucket}/p"
    writer = ArtifactStore(tmp_path / "a", remote=url)
    payload = b"weights " * 5000
    staged, digest = _stage(writer, payload)
    writer.adopt(staged, digest)
    key = f"p/sha256/{digest[:2]}/{digest}"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"tampered" * 5000)

    reader = ArtifactStore(tmp_path / "b", remote=url)
    with pytest.raises(StorageError, match="different content") as caught:
        reader.open_path(digest)
    assert digest in str(caught.value) and url in str(caught.value)
    assert not reader.path(digest).exists() and _files(reader.tmp_dir) == []
    assert writer.open_path(digest).read_bytes() == payload  # its own cache is untouched


def test_an_unreachable_endpoint_is_a_storage_error_and_publishes_nothing(
    tmp_path, bucket, monkeypatch
):
    _use_endpoint(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nobody listens there
    store = ArtifactStore(tmp_path / "cache", remote=f"s3://{bucket}/p")
    staged, digest = _stage(store, b"a checkpoint")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL") as caught:
        store.adopt(staged, digest)
    assert f"s3://{bucket}/p" in str(caught.value)
    assert staged.exists()  # left to the caller, who removes it
    assert not store.path(digest).exists()
    with pytest.raises(StorageError):
        store.exists(digest)


def test_a_missing_bucket_is_a_storage_error_and_publishes_nothing(tmp_path, bucket):
    store = ArtifactStore(tmp_path / "cache", remote=f"s3://{bucket}-missing/p")
    staged, digest = _stage(store, b"a checkpoint" * 100)
    with pytest.raises(StorageError, match="cannot upload") as caught:
        store.adopt(staged, digest)
    assert "bucket does not exist" in str(caught.value)
    assert not store.path(digest).exists()
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert f"{bucket}-missing" not in names and _keys(bucket) == {}


# ------------------------------------------------------------------ other locations


def test_a_url_with_rename_publishes_through_its_tmp_folder(tmp_path):
    shared = tmp_path / "nfs"
    url = f"file://{shared}"
    first = ArtifactStore(tmp_path / "a", remote=url)
    second = ArtifactStore(tmp_path / "b", remote=url)
    payload = os.urandom(2 * REMOTE_BLOCK_BYTES + 123)
    digest = first.put_stream(io.BytesIO(payload))[0]
    assert (shared / "sha256" / digest[:2] / digest).read_bytes() == payload
    assert _files(shared / "tmp") == []
    assert second.open_path(digest).read_bytes() == payload

    (tmp_path / "not-a-dir").write_bytes(b"")
    broken = ArtifactStore(tmp_path / "c", remote=f"file://{tmp_path / 'not-a-dir'}/x")
    staged, other = _stage(broken, b"other content")
    with pytest.raises(StorageError, match="Not a directory") as caught:
        broken.adopt(staged, other)
    assert f"file://{tmp_path / 'not-a-dir'}/x" in str(caught.value)
    assert not broken.path(other).exists()


def test_settings_choose_the_store(settings, tmp_path, monkeypatch):
    assert artifact_store(settings).root == settings.artifacts_dir
    assert artifact_store(settings).remote is None
    shared = tmp_path / "shared"
    for url in (str(shared), f"file://{shared}"):
        monkeypatch.setenv("PRUNESCOPE_STORAGE_URL", url)
        get_settings.cache_clear()
        store = artifact_store(get_settings())
        assert store.root == shared and store.remote is None
    # Two machines (two data directories) sharing the path see the same artifacts.
    digest, _ = store.put_stream(io.BytesIO(b"shared weights"))
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "other-machine"))
    get_settings.cache_clear()
    other = artifact_store(get_settings())
    assert other.open_path(digest).read_bytes() == b"shared weights"
    assert other.open_path(digest) == shared / "sha256" / digest[:2] / digest

    monkeypatch.setenv("PRUNESCOPE_STORAGE_URL", "nosuchscheme://bucket/x")
    get_settings.cache_clear()
    with pytest.raises(StorageError, match="PRUNESCOPE_STORAGE_URL"):
        artifact_store(get_settings())


def test_local_stores_import_no_remote_backend(tmp_path):
    code = f"""
        import sys
        from prunescope.server.config import Settings
        from prunescope.server.storage import artifact_store
        for url in (None, {str(tmp_path / 'a')!r}, {'file://' + str(tmp_path / 'b')!r}):
            store = artifact_store(Settings(data_dir={str(tmp_path / 'data')!r}, storage_url=url))
            store.put_stream(__import__("io").BytesIO(b"x"))
        print(sorted(m for m in ("fsspec", "s3fs", "botocore") if m in sys.modules))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ write failures


def test_a_full_disk_during_a_write_is_a_clear_error_and_spares_earlier_artifacts(tmp_path):
    root = tmp_path / "store"
    store = ArtifactStore(root)
    earlier = os.urandom(200_000)
    digest, _ = store.put_stream(io.BytesIO(earlier))
    before = {p: p.read_bytes() for p in _files(root)}

    # A real EFBIG: the child may write files of at most 1 MB, then tries to store 3 MB.
    code = f"""
        import io, json, os, resource, signal
        from prunescope.server.storage import ArtifactStore, StorageError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (1_000_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        store = ArtifactStore({str(root)!r})
        try:
            store.put_stream(io.BytesIO(os.urandom(3_000_000)))
        except StorageError as exc:
            print(json.dumps({{"errno": exc.errno, "message": str(exc)}}))
    """
    out = subprocess.run([sys.executable, "-B", "-c", textwrap.dedent(code)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    failure = json.loads(out.stdout)
    assert failure["errno"] == errno.EFBIG
    assert str(root / "tmp") in failure["message"] and "ulimit" in failure["message"]
    assert {p: p.read_bytes() for p in _files(root)} == before  # nothing new, nothing changed
    assert store.open_path(digest).read_bytes() == earlier


def test_an_unusable_store_root_is_a_clear_error(tmp_path):
    (tmp_path / "data").write_bytes(b"a file where a directory belongs")
    with pytest.raises(StorageError, match="not a directory") as caught:
        ArtifactStore(tmp_path / "data" / "artifacts")
    assert str(tmp_path / "data" / "artifacts") in str(caught.value)
    assert caught.value.errno == errno.ENOTDIR


# ------------------------------------------------------------------ through the app


def test_an_uploaded_checkpoint_comes_back_from_s3_after_the_cache_is_gone(
    settings, bucket, monkeypatch
):
    monkeypatch.setenv("PRUNESCOPE_STORAGE_URL", f"s3://{bucket}/lab")
    get_settings.cache_clear()
    remote_settings = get_settings()
    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    content = safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})
    digest = hashlib.sha256(content).hexdigest()
    # The ingest lane reads the staged upload through the same remote store.
    with running_ingest_lane(remote_settings), \
            TestClient(create_app(remote_settings, dashboard=False)) as client:
        project = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"})
        assert project.status_code == 201, project.text
        r = client.post(
            f"/api/v1/projects/{project.json()['id']}/checkpoints?wait=true",
            files={"file": ("dense.safetensors", content, "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        assert r.json()["artifact_digest"] == digest
        # The staged upload went to the remote for the worker, and is gone once stored.
        assert _keys(bucket) == {f"lab/sha256/{digest[:2]}/{digest}": len(content)}

        shutil.rmtree(remote_settings.artifacts_dir)  # this machine's cache is gone
        download = client.get(f"/api/v1/checkpoints/{r.json()['id']}/download")
        assert download.status_code == 200, download.text
        assert download.content == content
    assert artifact_store(remote_settings).path(digest).read_bytes() == content


def test_a_resumable_upload_of_content_only_the_remote_holds_completes_at_once(
    settings, bucket, monkeypatch
):
    from prunescope.server.services.uploads import create_upload

    monkeypatch.setenv("PRUNESCOPE_STORAGE_URL", f"s3://{bucket}/lab")
    get_settings.cache_clear()
    remote_settings = get_settings()
    payload = os.urandom(50_000)
    digest, _ = ArtifactStore(settings.data_dir / "another-machine",
                              remote=f"s3://{bucket}/lab").put_stream(io.BytesIO(payload))
    assert not artifact_store(remote_settings).path(digest).exists()
    status = create_upload(remote_settings, length=len(payload), sha256=digest)
    assert status.complete and status.offset == len(payload)
    assert artifact_store(remote_settings).path(digest).read_bytes() == payload
