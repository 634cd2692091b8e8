"""A database outage: 503 with retry advice from the API, backoff in the workers, and no job
lost or run twice; a real PostgreSQL server is stopped and started under a running job."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError, OperationalError

from prunescope.server.main import create_app
from prunescope.server.resilience import (
    RETRY_AFTER_SECONDS,
    Backoff,
    DatabaseUnavailableMiddleware,
    database_unavailable,
    retry_on_outage,
)
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.storage import artifact_store
from tests.postgres import running_postgres, stop_process


def _outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_outage_errors_are_told_from_statement_errors():
    assert database_unavailable(_outage())
    assert not database_unavailable(IntegrityError("INSERT", {}, ValueError("duplicate")))
    assert not database_unavailable(ValueError("not a database error"))


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(first=0.5, cap=4.0, rng=random.Random(0))
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    draws = [[backoff.next_delay() for _ in bounds] for _ in range(200) if not backoff.reset()]
    for i, bound in enumerate(bounds):
        column = [d[i] for d in draws]
        assert 0.0 <= min(column) and max(column) <= bound
        assert max(column) > 0.8 * bound  # jitter spans the whole interval
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() <= 0.5


def test_retry_waits_out_an_outage_then_gives_up_or_passes_other_errors_on():
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    calls = iter([_outage(), _outage(), "done"])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry_on_outage(flaky, what="testing", give_up_after=60, sleep=sleep,
                           clock=lambda: clock[0]) == "done"
    assert len(slept) == 2

    clock[0], slept[:] = 0.0, []

    def down() -> None:
        raise _outage()

    with pytest.raises(OperationalError):
        retry_on_outage(down, what="testing", give_up_after=30, sleep=sleep,
                        clock=lambda: clock[0])
    assert 29.0 <= clock[0] <= 30.0 + 1e-9 and len(slept) > 3

    def broken() -> None:
        raise IntegrityError("INSERT", {}, ValueError("duplicate"))

    slept[:] = []
    with pytest.raises(IntegrityError):
        retry_on_outage(broken, what="testing", give_up_after=30, sleep=sleep)
    assert slept == []  # a statement error is not retried


def test_the_middleware_answers_503_with_retry_after_only_for_outages():
    app = FastAPI()

    @app.get("/down")
    def down() -> None:
        raise _outage()

    @app.get("/bug")
    def bug() -> None:
        raise IntegrityError("INSERT", {}, ValueError("duplicate"))

    @app.get("/fine")
    def fine() -> dict:
        return {"ok": True}

    app.add_middleware(DatabaseUnavailableMiddleware)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/down")
        assert r.status_code == 503 and r.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert "database is unavailable" in r.json()["detail"]
        assert client.get("/bug").status_code == 500
        assert client.get("/fine").json() == {"ok": True}


# ------------------------------------------------------- a real server, stopped and restarted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, {}, {}


def _wait(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, since the test stops it."""
    with running_postgres() as server:
        yield server


def test_an_outage_under_a_running_job_loses_nothing_and_runs_nothing_twice(own_postgres,
                                                                            tmp_path):
    database = own_postgres.create_database()
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    env = {**os.environ, "PRUNESCOPE_DATA_DIR": str(tmp_path / "data"),
           "PRUNESCOPE_DATABASE_URL": own_postgres.url(database),
           "PRUNESCOPE_HEARTBEAT_SECONDS": "0.3", "PRUNESCOPE_STALE_AFTER_SECONDS": "20",
           "PRUNESCOPE_POLL_SECONDS": "0.2", "PRUNESCOPE_LOG_LEVEL": "INFO"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _request(f"{base}/health")[0] == 200, 120, "the server")
        status, project, _ = _request(f"{base}/projects",
                                      {"name": "outage", "architecture": "cnn_small"})
        assert status == 201, project
        pid = project["id"]
        _, train, _ = _request(f"{base}/projects/{pid}/jobs",
                               {"kind": "train", "params": {"epochs": 40, "seed": 1}})
        _, prune, _ = _request(f"{base}/projects/{pid}/jobs", {
            "kind": "prune", "depends_on": [train["id"]],
            "params": {"method": "magnitude_global", "sparsity": 0.5}})
        _wait(lambda: (j := _request(f"{base}/jobs/{train['id']}")[1])["state"] == "running"
              and j["progress"] > 0.05, 120, "the training to run")

        own_postgres.stop()
        status, body, headers = _request(f"{base}/jobs/{train['id']}")
        assert status == 503, body
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == str(
            RETRY_AFTER_SECONDS)
        assert "retry" in body["detail"]
        time.sleep(4)  # a few seconds without a database; the job keeps computing
        assert server.poll() is None
        own_postgres.start()

        done = _wait(lambda: (j := _request(f"{base}/jobs/{prune['id']}")[1])["state"]
                     in ("succeeded", "failed", "cancelled") and j, 300, "the pruning job")
        assert done["state"] == "succeeded", done
        trained = _request(f"{base}/jobs/{train['id']}")[1]
        assert trained["state"] == "succeeded" and trained["attempts"] == 1, trained
        assert done["attempts"] == 1
        _, checkpoints, _ = _request(f"{base}/projects/{pid}/checkpoints")
        names = sorted(c["name"] for c in checkpoints["data"])
        assert names == ["dense", "magnitude_global-50"]  # each job's output recorded once
        assert server.poll() is None
    finally:
        stop_process(server)
        log.close()
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert "database is unavailable" in text or "unreachable" in text, text[-3000:]


@pytest.mark.parametrize(("code", "status"), [(28, 507), (27, 507), (111, 503)])
def test_a_store_that_refuses_a_write_answers_507_when_full_else_503(settings, monkeypatch,
                                                                       code, status):
    from prunescope.server.storage import StorageError

    store = artifact_store(settings)

    def refuse(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise StorageError(f"cannot write to {store.root}: errno {code}", errno=code)

    monkeypatch.setattr(type(store), "write_stream", refuse)
    with TestClient(create_app(settings, dashboard=False)) as client:
        pid = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"}).json()
        r = client.post(f"/api/v1/projects/{pid['id']}/checkpoints",
                        files={"file": ("c.safetensors", b"x" * 100, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert "artifact store refused" in r.json()["detail"] and f"errno {code}" in r.json()["detail"]
    assert ("retry-after" in r.headers) == (status == 503)


def _limited_file_size(limit: int):  # noqa: ANN202
    """preexec_fn: a real EFBIG on any write past `limit` bytes, as on a full disk."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_a_jobs_output_fails_the_job_and_keeps_the_rest(own_postgres,
                                                                          tmp_path,
                                                                          monkeypatch):
    """A worker whose writes stop at 4 kB (the kernel answers EFBIG, as a full disk answers
    ENOSPC); the database is a PostgreSQL server, which the limit does not reach."""
    import hashlib

    from prunescope.server.config import get_settings
    from prunescope.server.db import upgrade_database
    from prunescope.server.schemas import JobCreate, ProjectCreate
    from prunescope.server.worker import run_worker

    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNESCOPE_DATABASE_URL",
                       own_postgres.url(own_postgres.create_database()))
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_database(settings)
    pid = project_service.create_project(
        ProjectCreate(name="full", architecture="mlp"), settings).id
    job_service.submit_job(pid, JobCreate(kind="train", params={"epochs": 2}), settings)
    assert run_worker(settings, "unlimited", max_jobs=1) == 1
    (dense,) = checkpoint_service.list_checkpoints(pid, settings)
    stored, _ = checkpoint_service.checkpoint_file(dense.id, settings)
    before = stored.read_bytes()

    prune = job_service.submit_job(pid, JobCreate(kind="prune", params={
        "method": "magnitude_global", "sparsity": 0.5}), settings)
    worker = subprocess.Popen([sys.executable, "-m", "prunescope.server.cli", "worker"],
                              env={**os.environ, "PRUNESCOPE_POLL_SECONDS": "0.2"},
                              preexec_fn=_limited_file_size(4096),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        failed = _wait(lambda: (j := job_service.get_job(prune.id, settings)).state
                       in ("failed", "succeeded") and j, 120, "the pruning job")
        assert worker.poll() is None  # the worker lives on
    finally:
        stop_process(worker)
    assert failed.state == "failed"
    assert "could not write its output" in failed.error and "File too large" in failed.error
    assert "Earlier results are unaffected" in failed.error
    assert [c.name for c in checkpoint_service.list_checkpoints(pid, settings)] == ["dense"]
    assert stored.read_bytes() == before
    assert hashlib.sha256(before).hexdigest() == dense.artifact_digest
    get_settings.cache_clear()


def test_an_unusable_store_fails_the_job_and_not_the_worker(settings, tmp_path, monkeypatch):
    from prunescope.server.config import get_settings
    from prunescope.server.schemas import JobCreate, ProjectCreate
    from prunescope.server.worker import run_worker

    shared = tmp_path / "shared-store"
    monkeypatch.setenv("PRUNESCOPE_STORAGE_URL", shared.as_uri())
    get_settings.cache_clear()
    settings = get_settings()
    pid = project_service.create_project(ProjectCreate(name="p", architecture="mlp"), settings).id
    job_service.submit_job(pid, JobCreate(kind="train", params={"epochs": 1}), settings)
    assert run_worker(settings, "w", max_jobs=1) == 1
    (dense,) = checkpoint_service.list_checkpoints(pid, settings)
    staging = shared / "tmp"  # where the store writes before renaming into place
    for leftover in staging.iterdir():
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    staging.rmdir()
    staging.write_text("a file where the store's folder was")
    job = job_service.submit_job(pid, JobCreate(kind="analyze"), settings)
    assert run_worker(settings, "w", max_jobs=1) == 1  # returned: the worker did not crash
    failed = job_service.get_job(job.id, settings)
    assert failed.state == "failed" and "artifact store cannot be used" in failed.error
    assert "shared-store" in failed.error
    stored = shared / "sha256" / dense.artifact_digest[:2] / dense.artifact_digest
    assert stored.is_file()  # what was stored is still there
    get_settings.cache_clear()


def test_full_storage_is_recognised_however_a_library_words_it():
    import errno as codes

    from prunescope.server.worker import storage_full

    assert storage_full(OSError(codes.ENOSPC, "No space left on device"))
    assert storage_full(RuntimeError("Error while serializing: I/O error: File too large "
                                     "(os error 27)"))
    try:
        try:
            raise OSError(codes.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("could not save") from inner
    except ValueError as outer:
        assert storage_full(outer)
    assert not storage_full(OSError(codes.ENOENT, "No such file or directory"))
    assert not storage_full(ValueError("os error 2"))
    assert not storage_full(RuntimeError("CUDA out of memory"))
