"""Resumable uploads (tus 1.0 core, creation, expiration, termination) staged beside the store.

An upload is two files under `Settings.uploads_dir` (inside the artifact root, so a finished
upload enters the store by a rename): `<id>.bin`, the bytes received so far, and `<id>.json`,
what was declared at creation (length, filename, tus metadata, optional sha256) plus the
sha256 once the upload is complete. The offset is the data file's size, so a dropped
connection, a crashed server or a second server process all agree on where to resume.

Chunk bodies are streamed to disk in blocks of `FLUSH_BYTES`, one block being written by a
thread while the next arrives, so a request of any size costs a few MiB of memory. An
exclusive `flock` on the data file serialises writers across threads and processes; a writer
that receives nothing for `upload_idle_timeout_seconds` stops and releases it.

A finished upload is handed to its consumer (`claim_completed_upload`), which owns the file
from then on; `checkpoint_from_upload` is the consumer that turns it into a checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunescope.server import services
from prunescope.server.config import Settings, get_settings
from prunescope.server.schemas import CheckpointPublic
from prunescope.server.services import Conflict, InvalidInput, NotFound, ServiceError, TooLarge
from prunescope.server.storage import artifact_store, sha256_file

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
# Received bytes are written in blocks of this size: large enough that the thread hand-off
# costs nothing measurable, small enough that a request holds only a few blocks in memory.
FLUSH_BYTES = 1024 * 1024
_ID = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class UploadLocked(ServiceError):
    status_code = 423


class UploadStalled(ServiceError):
    status_code = 408


class StorageFull(ServiceError):
    status_code = 507


class OffsetMismatch(Conflict):
    def __init__(self, offset: int, sent: int) -> None:
        super().__init__(
            f"Upload-Offset {sent} does not match the upload's offset {offset}; "
            f"send the bytes from offset {offset} on"
        )
        self.offset = offset


@dataclass(frozen=True)
class UploadStatus:
    id: str
    filename: str
    length: int
    offset: int
    expires_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    # Known once every byte arrived (or at creation, when the declared digest was already stored).
    sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class CompletedUpload:
    """A finished upload taken out of the protocol: `path` now belongs to the caller."""

    path: Path
    filename: str
    size: int
    sha256: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class _Paths:
    id: str
    data: Path
    sidecar: Path
    claimed: Path


def _paths(settings: Settings, upload_id: str) -> _Paths:
    # The id names files, so anything but our own hex ids is unknown rather than a path.
    if not _ID.fullmatch(upload_id):
        raise NotFound(f"upload {upload_id!r} not found")
    root = settings.uploads_dir
    return _Paths(
        upload_id,
        root / f"{upload_id}.bin",
        root / f"{upload_id}.json",
        root / f"{upload_id}.claimed",
    )


def _not_found(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id} not found (finished, aborted or expired); start a new one")


# In-process sha256 state of uploads being received, keyed by id, with the offset it covers.
# Only the holder of an upload's lock touches its entry; where the entry is missing or covers
# another offset (another process wrote, or the server restarted) the file is hashed at the end.
_hashers: dict[str, tuple[Any, int]] = {}


# ------------------------------------------------------------------ metadata


def parse_metadata(header: str | None) -> dict[str, str]:
    """Decode a tus `Upload-Metadata` header: comma-separated `key base64(value)` pairs."""
    metadata: dict[str, str] = {}
    for pair in (header or "").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not _METADATA_KEY.fullmatch(key):
            raise ServiceError(
                f"Upload-Metadata key {key[:70]!r} is not valid; keys are ASCII words such as "
                "'filename' or 'sha256'"
            )
        try:
            metadata[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ServiceError(
                f"Upload-Metadata value of {key!r} is not base64-encoded UTF-8"
            ) from exc
    return metadata


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode('utf-8')).decode('ascii')}" for k, v in metadata.items()
    )


def _clean_filename(name: str | None) -> str:
    # Browsers send a bare name, other clients may send a path; only the last part is kept.
    base = Path((name or "").replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable()).strip()
    return base[:200] or "upload"


def _read_sidecar(p: _Paths) -> dict[str, Any]:
    try:
        return json.loads(p.sidecar.read_text())
    except FileNotFoundError:
        raise _not_found(p.id) from None


def _write_sidecar(p: _Paths, record: dict[str, Any]) -> None:
    tmp = p.sidecar.with_name(p.sidecar.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, p.sidecar)


def _last_activity(p: _Paths) -> float:
    stamps = [f.stat().st_mtime for f in (p.sidecar, p.data) if f.exists()]
    return max(stamps, default=0.0)


def _status(settings: Settings, p: _Paths, record: dict[str, Any], offset: int) -> UploadStatus:
    return UploadStatus(
        id=p.id,
        filename=record["filename"],
        length=record["length"],
        offset=offset,
        expires_at=_last_activity(p) + settings.upload_expiry_seconds,
        metadata=record.get("metadata", {}),
        sha256=record.get("sha256"),
    )


def _live_record(settings: Settings, p: _Paths) -> dict[str, Any]:
    """The sidecar of an upload that exists and has not expired (an expired one is removed)."""
    record = _read_sidecar(p)
    if time.time() - _last_activity(p) > settings.upload_expiry_seconds:
        _remove(p, only_if_unlocked=True)
        raise _not_found(p.id)
    return record


# ------------------------------------------------------------------ locking


@contextlib.contextmanager
def _locked(p: _Paths, flags: int) -> Iterator[int]:
    """Open the data file and hold its exclusive lock; 423 while another request holds it."""
    try:
        fd = os.open(p.data, flags)
    except FileNotFoundError:
        raise _not_found(p.id) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UploadLocked(
                f"upload {p.id} is receiving data in another request; retry in a few seconds"
            ) from None
        # Finished or aborted while we waited for the lock: the name now points elsewhere.
        try:
            same = os.stat(p.data).st_ino == os.fstat(fd).st_ino and p.sidecar.exists()
        except FileNotFoundError:
            same = False
        if not same:
            raise _not_found(p.id)
        yield fd
    finally:
        os.close(fd)


def _remove(p: _Paths, *, only_if_unlocked: bool = False) -> bool:
    try:
        fd = os.open(p.data, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None and only_if_unlocked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        # Unlinking never truncates: a deduplicated upload's data file is a link to an artifact.
        p.data.unlink(missing_ok=True)
        p.sidecar.unlink(missing_ok=True)
        _hashers.pop(p.id, None)
        return True
    finally:
        if fd is not None:
            os.close(fd)


# ------------------------------------------------------------------ protocol operations


def create_upload(
    settings: Settings,
    *,
    length: int,
    filename: str | None = None,
    sha256: str | None = None,
    metadata: dict[str, str] | None = None,
) -> UploadStatus:
    """Start an upload of `length` bytes (tus creation).

    If `sha256` is given and the store already holds that content with that size, the upload
    is complete at once and no byte needs to be sent (deduplication).
    """
    if length < 0:
        raise InvalidInput("Upload-Length must be the file's size in bytes (0 or more)")
    if length > settings.max_upload_bytes:
        raise TooLarge(
            f"a file of {length} bytes exceeds the upload limit of {settings.max_upload_bytes} "
            "bytes; raise PRUNESCOPE_MAX_UPLOAD_BYTES if this file is expected"
        )
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _DIGEST.fullmatch(sha256):
            raise InvalidInput("sha256 must be 64 hexadecimal characters (the file's SHA-256)")
    remove_stale_uploads(settings)
    root = settings.uploads_dir
    root.mkdir(parents=True, exist_ok=True)
    p = _paths(settings, uuid.uuid4().hex)
    record: dict[str, Any] = {
        "filename": _clean_filename(filename),
        "length": length,
        "metadata": metadata or {},
        "declared_sha256": sha256,
        "sha256": None,
        "created": time.time(),
    }
    store = artifact_store(settings)
    if (
        sha256 is not None
        and store.exists(sha256)
        and store.open_path(sha256).stat().st_size == length  # fetched when only remote
    ):
        try:
            os.link(store.path(sha256), p.data)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(store.path(sha256), p.data)
        record["sha256"] = sha256
    elif length == 0:
        p.data.touch(exist_ok=False)
        record["sha256"] = hashlib.sha256().hexdigest()
    else:
        p.data.touch(exist_ok=False)
    _write_sidecar(p, record)
    return _status(settings, p, record, p.data.stat().st_size)


def upload_status(settings: Settings, upload_id: str) -> UploadStatus:
    """Where an upload stands (tus HEAD): its offset is the number of bytes kept so far."""
    p = _paths(settings, upload_id)
    record = _live_record(settings, p)
    try:
        offset = p.data.stat().st_size
    except FileNotFoundError:
        raise _not_found(upload_id) from None
    return _status(settings, p, record, offset)


def abort_upload(settings: Settings, upload_id: str) -> None:
    """Discard an upload and its bytes (tus termination)."""
    p = _paths(settings, upload_id)
    with _locked(p, os.O_RDONLY):
        _remove(p)


async def append_chunk(
    settings: Settings,
    upload_id: str,
    offset: int,
    body: AsyncIterator[bytes],
    *,
    content_length: int | None = None,
) -> UploadStatus:
    """Append a request body at `offset` (tus PATCH), streaming it to disk.

    Whatever arrives is kept, even when the body ends early (a dropped connection): the
    client asks for the offset and continues from there. Raises OffsetMismatch (409) when
    `offset` is not the upload's offset, TooLarge (413) for bytes beyond the declared length
    (a body whose `content_length` says so is refused unread; of a body without one, the
    bytes up to the length are kept), UploadLocked (423) while another request writes,
    UploadStalled (408) after
    `upload_idle_timeout_seconds` without data, and InvalidInput (422, upload discarded) when
    the complete file's sha256 differs from the one declared at creation.
    """
    p = _paths(settings, upload_id)
    record = await asyncio.to_thread(_live_record, settings, p)
    length = record["length"]
    if record.get("sha256") is not None:
        # Complete (possibly a link to a stored artifact): never opened for writing again.
        _refuse_more(upload_id, length, offset, content_length)
        return await asyncio.to_thread(upload_status, settings, upload_id)

    with _locked(p, os.O_WRONLY | os.O_APPEND) as fd:
        if _read_sidecar(p).get("sha256") is not None:  # completed while we took the lock
            _refuse_more(upload_id, length, offset, content_length)
            return await asyncio.to_thread(upload_status, settings, upload_id)
        start = os.fstat(fd).st_size
        if offset != start:
            raise OffsetMismatch(start, offset)
        if content_length is not None and start + content_length > length:
            raise TooLarge(_beyond_length(length, start, content_length))
        cached = _hashers.pop(upload_id, None)
        hasher = cached[0] if cached and cached[1] == start else None
        if hasher is None and start == 0:
            hasher = hashlib.sha256()
        sink = _BlockWriter(fd, hasher)
        try:
            outcome = await _receive(body, sink, room=length - start, settings=settings)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageFull(
                    f"the server's disk is full after offset {os.fstat(fd).st_size}; free space "
                    "and continue the upload from there"
                ) from exc
            raise
        finally:
            # The descriptor closes after this block; no write may still be using it.
            await sink.settle()
            if sink.hasher is not None:
                _hashers[upload_id] = (sink.hasher, start + sink.written)
        end = os.fstat(fd).st_size
        if end == length:
            await _complete(p, record, sink.hasher if sink.written + start == end else None)
        if outcome == "overflow":
            raise TooLarge(_beyond_length(length, start, None))
        if outcome == "stalled":
            raise UploadStalled(
                f"no data arrived for {settings.upload_idle_timeout_seconds:g} s; the "
                f"{end - start} bytes received were kept, continue from offset {end}"
            )
    return await asyncio.to_thread(upload_status, settings, upload_id)


def _refuse_more(upload_id: str, length: int, offset: int, content_length: int | None) -> None:
    if offset != length:
        raise OffsetMismatch(length, offset)
    if content_length != 0:
        raise TooLarge(f"upload {upload_id} is already complete ({length} bytes)")


def _beyond_length(length: int, start: int, content_length: int | None) -> str:
    sent = "more bytes" if content_length is None else f"{content_length} bytes"
    return (
        f"{sent} at offset {start} go beyond the declared Upload-Length of {length} bytes; "
        "send the rest of the file only"
    )


class _BlockWriter:
    """Writes blocks of received bytes in a worker thread, one block in flight at a time."""

    def __init__(self, fd: int, hasher: Any) -> None:
        self.fd = fd
        self.hasher = hasher
        self.written = 0
        self._pending: asyncio.Future[None] | None = None

    def _write(self, parts: list[bytes]) -> None:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(self.fd, view) :]
                if self.hasher is not None:
                    self.hasher.update(part)
                self.written += len(part)
        except BaseException:
            self.hasher = None  # it may now disagree with the file; hash the file at the end
            raise

    async def submit(self, parts: list[bytes]) -> None:
        await self.drain()
        if parts:
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, parts)

    async def drain(self) -> None:
        if self._pending is not None:
            # Shielded: a cancelled request must not forget a block that a thread still writes.
            await asyncio.shield(self._pending)
            self._pending = None

    async def settle(self) -> None:
        """Wait for a block still being written, without raising its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved here; the request already reports the failure


async def _receive(
    body: AsyncIterator[bytes], sink: _BlockWriter, *, room: int, settings: Settings
) -> str:
    """Stream `body` into `sink`; returns 'done', 'overflow' (past `room`) or 'stalled'."""
    parts: list[bytes] = []
    buffered = received = 0
    outcome = "done"
    try:
        async with _idle_timeout(settings.upload_idle_timeout_seconds) as heard_from_client:
            async for chunk in body:
                heard_from_client()
                if received + len(chunk) > room:
                    # The declared length is kept, deterministically however the body was cut.
                    chunk = chunk[: room - received]
                    outcome = "overflow"
                received += len(chunk)
                parts.append(chunk)
                buffered += len(chunk)
                if outcome == "overflow":
                    break
                if buffered >= FLUSH_BYTES:
                    await sink.submit(parts)
                    parts, buffered = [], 0
    except TimeoutError:
        outcome = "stalled"
    await sink.submit(parts)
    await sink.drain()
    return outcome


@contextlib.asynccontextmanager
async def _idle_timeout(seconds: float) -> AsyncIterator[Callable[[], None]]:
    """A deadline `seconds` after the last call of the yielded function (Python ≥ 3.11)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        yield lambda: None
        return
    loop = asyncio.get_running_loop()
    # Moving the deadline re-arms a timer, so it moves at most every `step` seconds.
    step = min(1.0, seconds / 4)
    async with timeout(seconds) as deadline:
        moved = loop.time()

        def heard() -> None:
            nonlocal moved
            now = loop.time()
            if now - moved > step:
                deadline.reschedule(now + seconds)
                moved = now

        yield heard


async def _complete(p: _Paths, record: dict[str, Any], hasher: Any) -> None:
    digest = (
        hasher.hexdigest() if hasher is not None else await asyncio.to_thread(sha256_file, p.data)
    )
    _hashers.pop(p.id, None)
    declared = record.get("declared_sha256")
    if declared is not None and declared != digest:
        _remove(p)
        raise InvalidInput(
            f"the received file's sha256 is {digest}, not the {declared} declared when the "
            "upload was created; the upload was discarded, upload the file again"
        )
    await asyncio.to_thread(_write_sidecar, p, {**record, "sha256": digest})


# ------------------------------------------------------------------ consuming finished uploads


@contextlib.contextmanager
def claim_completed_upload(settings: Settings, upload_id: str) -> Iterator[CompletedUpload]:
    """Take a complete upload out of the protocol and lend its file to the `with` block.

    The block may move or delete `path` (e.g. `services.add_checkpoint_file` does); whatever
    is left is deleted when the block ends, success or not. Raises NotFound (404), Conflict
    (409) while bytes are missing (the upload is left as it was) and UploadLocked (423).
    """
    p = _paths(settings, upload_id)
    record = _live_record(settings, p)
    with _locked(p, os.O_RDONLY) as fd:
        size = os.fstat(fd).st_size
        if record.get("sha256") is None:
            raise Conflict(
                f"upload {upload_id} has {size} of {record['length']} bytes; send the rest "
                "before using it"
            )
        os.replace(p.data, p.claimed)
        p.sidecar.unlink(missing_ok=True)
    try:
        yield CompletedUpload(
            path=p.claimed,
            filename=record["filename"],
            size=size,
            sha256=record["sha256"],
            metadata=record.get("metadata", {}),
        )
    finally:
        p.claimed.unlink(missing_ok=True)


def checkpoint_from_upload(
    project_id: int,
    upload_id: str,
    *,
    name: str | None = None,
    role: str | None = None,
    method: str | None = None,
    target_sparsity: float | None = None,
    settings: Settings | None = None,
) -> CheckpointPublic:
    """Validate a finished upload as a checkpoint of the project and store it.

    The upload is consumed whether or not the file is accepted (a rejected file leaves
    nothing behind); only an incomplete or busy upload is left in place.
    """
    settings = settings or get_settings()
    with claim_completed_upload(settings, upload_id) as upload:
        return services.add_checkpoint_file(
            project_id,
            upload.path,
            digest=upload.sha256,
            filename=upload.filename,
            name=name,
            role=role,
            method=method,
            target_sparsity=target_sparsity,
            settings=settings,
        )


# ------------------------------------------------------------------ housekeeping


def remove_stale_uploads(settings: Settings, *, now: float | None = None) -> int:
    """Delete uploads (finished or not) idle longer than `upload_expiry_seconds`, and leftovers.

    Returns how many uploads or stray files were removed; uploads being written are skipped.
    """
    root = settings.uploads_dir
    if not root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - settings.upload_expiry_seconds
    removed = 0
    for entry in root.iterdir():
        stem, suffix = entry.stem, entry.suffix
        try:
            if suffix == ".json" and _ID.fullmatch(stem):
                p = _paths(settings, stem)
                if _last_activity(p) < cutoff and _remove(p, only_if_unlocked=True):
                    removed += 1
            elif not (suffix == ".bin" and (root / f"{stem}.json").exists()):
                # Claimed files whose consumer died, data without a sidecar, temp files.
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        except FileNotFoundError:
            continue  # finished or removed by another request meanwhile
    return removed
