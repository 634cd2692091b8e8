"""The one way an uploaded file enters a project — stage → validate → adopt → row — shared by
checkpoints, datasets and dynamics runs.

- stage (the HTTP request): the bytes are streamed (or a finished resumable upload is moved)
  into the store, within the upload limit, and wait there under a staging key, apart from the
  content-addressed artifacts; an ingest job (`ingest_checkpoint`, `ingest_dataset`,
  `ingest_dynamics`) is queued for them and the request answers with it (`queue_check`);
- validate (a worker, where torch lives): the job runs `prunescope.workers.ingest`, which
  reads the staged files, checks them against the project and writes what is to be kept
  into its scratch folder. A 10 GB checkpoint never enters an HTTP process's memory;
- adopt (the worker, committing the job): those files enter the content-addressed store;
- row (the same worker): the rows are added in the transaction that records the job's
  success. A name another request took meanwhile (a unique constraint that fails) is the
  same 409 as the check made before the bytes were read.

A caller that wants the answer in one request waits for the job (`outcome`): the API's
`?wait=true`, the CLI, the demo.

A refused upload leaves nothing behind: staged files and scratch folders are removed however
the upload ends, and files the upload added to the store go again when its row is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from prunescope.server import jobs as queue
from prunescope.server.config import Settings
from prunescope.server.db import get_engine, session_scope
from prunescope.server.errors import Conflict, InvalidInput, TooLarge, error_for_code
from prunescope.server.schemas import JobPublic
from prunescope.server.storage import UploadTooLarge, artifact_store, sha256_file
from prunescope.server.tables import AnalysisResult, Checkpoint, Dataset, Job
from prunescope.workers import dataset_checks
from prunescope.workers.jobspec import JobInputError

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class Staged:
    """An upload's bytes in the store's staging folder."""

    path: Path
    size: int
    digest: str | None = None  # sha256, when it came for free


def too_large(detail: str, subject: str) -> TooLarge:
    return TooLarge(f"{detail}; raise PRUNESCOPE_MAX_UPLOAD_BYTES if {subject} is expected")


def stage_stream(chunks: Iterable[bytes], settings: Settings, *, subject: str,
                 label: str = "", suffix: str = "") -> Staged:
    """Stream `chunks` into a staging file; TooLarge past the upload limit (the message is
    `label` + the limit + a hint about `subject`, e.g. "this checkpoint")."""
    try:
        path, digest, size = artifact_store(settings).write_stream(
            chunks, max_bytes=settings.max_upload_bytes, suffix=suffix
        )
    except UploadTooLarge as exc:
        raise too_large(f"{label}{exc}", subject) from exc
    return Staged(path, size, digest)


def check_size(path: Path, settings: Settings, *, subject: str, label: str = "") -> int:
    """The size of a file already on disk; TooLarge past the upload limit."""
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise too_large(f"{label}file exceeds the upload limit of {settings.max_upload_bytes} "
                        "bytes", subject)
    return size


def stage_file(path: Path, settings: Settings, *, subject: str,
               digest: str | None = None) -> Staged:
    """Move a file already on the store's filesystem (a finished upload) into staging.

    `path` is consumed whether or not it is accepted; `digest` is its sha256 when known.
    """
    try:
        size = check_size(path, settings, subject=subject)
        fd, staged = artifact_store(settings).staging_file()
        os.close(fd)
        shutil.move(path, staged)  # a rename, or a copy when the store is another disk
    finally:
        path.unlink(missing_ok=True)
    return Staged(staged, size, digest)


# ---------------------------------------------------------------------------- validate


def queue_check(settings: Settings, project_id: int, kind: str, staged: Mapping[str, Staged],
                fields: Mapping[str, Any]) -> JobPublic:
    """Hand staged files to an ingest job of `kind`: they move under staging keys any worker
    can read, and the job (its params: `fields`, the keys, the upload limit) is queued.

    The staged files are consumed either way; on failure nothing stays in the store.
    """
    store = artifact_store(settings)
    keys: dict[str, list[str]] = {}
    try:
        for role, item in staged.items():
            digest = item.digest or sha256_file(item.path)
            keys[role] = [store.stage_upload(item.path, digest), digest]
        params = {**fields, "staged": keys, "max_bytes": settings.max_upload_bytes}
        with session_scope(settings) as s:
            # One attempt: a file that kills its worker is refused, not fed to the next one.
            job = queue.enqueue_job(s, project_id=project_id, kind=kind, params=params,
                                    max_attempts=1)
            job.message = "validating the upload"
            s.flush()
            return JobPublic.model_validate(job)
    except BaseException:
        for key, _digest in keys.values():
            store.discard_staged(key)
        raise
    finally:
        for item in staged.values():
            item.path.unlink(missing_ok=True)


def outcome(settings: Settings, job_id: int, read: Callable[[dict[str, Any]], T],
            timeout: float | None = None) -> T | None:
    """Wait for an ingest job: `read(result summary)` once it succeeded, its refusal as the
    service error its code stands for (the same status the request used to answer), or None
    when it is still running after `timeout` seconds (default: PRUNESCOPE_INGEST_WAIT_SECONDS).
    """
    wait = settings.ingest_wait_seconds if timeout is None else timeout
    state = queue.wait_until_finished(get_engine(settings), job_id, timeout=wait,
                                      poll_seconds=min(0.2, settings.poll_seconds))
    if state is None:
        return None
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        summary, error, code = dict(job.result_summary or {}), job.error, job.error_code
    if state == "succeeded":
        return read(summary)
    if state == "cancelled":
        raise Conflict("the upload's validation was cancelled; upload the file again")
    raise error_for_code(code, error or "the upload could not be validated")


@dataclass(frozen=True)
class IngestJob:
    """What an ingest job's commit needs: its project, params, and the staged files as the
    worker read them (role → local path, role → sha256)."""

    id: int
    project_id: int
    params: dict[str, Any]
    inputs: dict[str, str]

    def digest(self, role: str) -> str:
        return self.params["staged"][role][1]


def staged_inputs(params: Mapping[str, Any], settings: Settings) -> dict[str, str]:
    """role → local path of each file an ingest job's params name (downloaded when remote)."""
    store = artifact_store(settings)
    return {role: str(store.staged_path(key, digest))
            for role, (key, digest) in (params.get("staged") or {}).items()}


def discard_staged(params: Mapping[str, Any], settings: Settings) -> None:
    """Remove the staged files an ingest job's params name, once the job has ended."""
    store = artifact_store(settings)
    for key, _digest in (params.get("staged") or {}).values():
        store.discard_staged(key)


# Builtin datasets are checked here, in the web process: `dataset_checks` reads the model a
# dataset must fit from the architecture's configuration, so it needs no torch.


def builtin_dataset_names() -> list[str]:
    return dataset_checks.builtin_dataset_names()


def builtin_dataset_metadata(builtin_name: str) -> dict[str, Any]:
    """A builtin dataset's row columns (kind, sizes, classes, preview); {} for an unknown one."""
    return dataset_checks.builtin_dataset_metadata(builtin_name)


def check_builtin_dataset(builtin_name: str, *, architecture: str,
                          config: Mapping[str, Any]) -> Any:
    """The builtin's `CheckedDataset` (format and row columns) once it fits the project's
    architecture; InvalidInput (422) saying what to change otherwise."""
    try:
        return dataset_checks.check_builtin_dataset(builtin_name, architecture=architecture,
                                                    config=config)
    except JobInputError as exc:
        raise InvalidInput(str(exc)) from exc


# ---------------------------------------------------------------------------- adopt


@dataclass
class Adopted:
    digests: dict[str, str] = field(default_factory=dict)  # name → digest
    added: list[str] = field(default_factory=list)  # digests the store did not hold before


def adopt(settings: Settings, files: Mapping[str, tuple[Path, str | None]]) -> Adopted:
    """Move each (path, digest or None) into the store; all of them or, on failure, none of
    those this call added."""
    store = artifact_store(settings)
    adopted = Adopted()
    try:
        for name, (path, digest) in files.items():
            digest = digest or sha256_file(path)
            if not store.exists(digest):
                adopted.added.append(digest)
            adopted.digests[name] = store.adopt(path, digest)
    except BaseException:
        _discard(settings, adopted)
        raise
    return adopted


def _discard(settings: Settings, adopted: Adopted) -> None:
    """Remove the files this upload added to the store, unless a row has come to use them
    (the same content uploaded again meanwhile)."""
    if not adopted.added:
        return
    try:
        used = set()
        with session_scope(settings) as s:
            for column in (Checkpoint.artifact_digest, Checkpoint.assets_digest,
                           Dataset.artifact_digest, AnalysisResult.artifact_digest):
                used.update(s.scalars(select(column).where(column.in_(adopted.added))))
        store = artifact_store(settings)
        for digest in adopted.added:
            if digest not in used:
                store.path(digest).unlink(missing_ok=True)
    except Exception:  # the refusal being reported matters more than the leftover file
        log.warning("could not remove the refused upload's files %s", adopted.added,
                    exc_info=True)


# ---------------------------------------------------------------------------- row


def add_rows(settings: Settings, adopted: Adopted, write: Callable[[Session], T], *,
             conflict: str) -> T:
    """Run `write` (it adds the rows and returns what the caller answers) in one
    transaction. A unique constraint that fails — the name was free when checked, another
    request took it since — is Conflict(`conflict`), the pre-check's message; on any failure
    the files this upload added to the store are removed."""
    try:
        with session_scope(settings) as s:
            return write(s)
    except IntegrityError:
        _discard(settings, adopted)
        raise Conflict(conflict) from None
    except BaseException:
        _discard(settings, adopted)
        raise
