"""Resumable uploads (tus 1.0 core, creation, expiration, termination) staged beside the store.

An upload is two files under `Settings.uploads_dir` (inside the artifact root, so a finished
upload enters the store by a rename): `<id>.bin`, the bytes received so far, and `<id>.json`,
what was declared at creation (length, filename, tus metadata, optional sha256) plus the
sha256 once the upload is complete. The offset is the data file's size, so a dropped
connection, a crashed server or a second server process all agree on where to resume.

Chunk bodies are streamed to disk in blocks of `upload_files.FLUSH_BYTES`, one block being
written by a thread while the next arrives, so a request of any size costs a few MiB of
memory. An exclusive `flock` on the data file serialises writers across threads and
processes; a writer that receives nothing for `upload_idle_timeout_seconds` stops and
releases it.

A finished upload is handed to its consumer (`claim_completed_upload`), which owns the file
from then on; `prunescope.server.services.checkpoints.checkpoint_from_upload` is the consumer
that turns it into a checkpoint. The files, their lock and the block writer are
`prunescope.server.upload_files`.

Every operation acts for the request's principal: an upload is its creator's alone (another
principal gets the unknown id's 404), and deduplication reuses only content the creator may
already download; both rules are `prunescope.server.upload_access`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunescope.server.config import Settings
from prunescope.server.errors import Conflict, InvalidInput, ServiceError, TooLarge
from prunescope.server.storage import artifact_store, sha256_file
from prunescope.server.upload_access import check_owner, may_reuse, uploader_key
from prunescope.server.upload_files import (
    BlockWriter,
    UploadFiles,
    hashers,
    last_activity,
    live_record,
    locked,
    not_found,
    read_sidecar,
    receive,
    remove,
    remove_stale_uploads,
    upload_files,
    write_sidecar,
)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


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


def _status(settings: Settings, p: UploadFiles, record: dict[str, Any],
            offset: int) -> UploadStatus:
    return UploadStatus(
        id=p.id,
        filename=record["filename"],
        length=record["length"],
        offset=offset,
        expires_at=last_activity(p) + settings.upload_expiry_seconds,
        metadata=record.get("metadata", {}),
        sha256=record.get("sha256"),
    )


def _owned_record(settings: Settings, p: UploadFiles) -> dict[str, Any]:
    """The live sidecar of an upload the principal created; the unknown id's 404 otherwise."""
    uploader_key()  # a share link's visitor is refused before the id is even looked at
    record = live_record(settings, p)
    check_owner(record, not_found(p.id))
    return record


# ------------------------------------------------------------------ protocol operations


def create_upload(
    settings: Settings,
    *,
    length: int,
    filename: str | None = None,
    sha256: str | None = None,
    metadata: dict[str, str] | None = None,
) -> UploadStatus:
    """Start an upload of `length` bytes (tus creation), owned by the principal.

    If `sha256` is given and names content of that size that the principal may already
    download (`upload_access.may_reuse`), the upload is complete at once and no byte needs to
    be sent (deduplication). Any other declared sha256 is only checked against the bytes.
    """
    owner = uploader_key()
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
    p = upload_files(settings, uuid.uuid4().hex)
    record: dict[str, Any] = {
        "filename": _clean_filename(filename),
        "length": length,
        "metadata": metadata or {},
        "declared_sha256": sha256,
        "sha256": None,
        "created": time.time(),
        "owner": owner,
    }
    store = artifact_store(settings)
    if (
        sha256 is not None
        and may_reuse(settings, sha256)  # asked first: the store's answer must not leak
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
    write_sidecar(p, record)
    return _status(settings, p, record, p.data.stat().st_size)


def upload_status(settings: Settings, upload_id: str) -> UploadStatus:
    """Where an upload stands (tus HEAD): its offset is the number of bytes kept so far."""
    p = upload_files(settings, upload_id)
    record = _owned_record(settings, p)
    try:
        offset = p.data.stat().st_size
    except FileNotFoundError:
        raise not_found(upload_id) from None
    return _status(settings, p, record, offset)


def abort_upload(settings: Settings, upload_id: str) -> None:
    """Discard an upload and its bytes (tus termination)."""
    p = upload_files(settings, upload_id)
    _owned_record(settings, p)
    with locked(p, os.O_RDONLY):
        remove(p)


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
    p = upload_files(settings, upload_id)
    record = await asyncio.to_thread(_owned_record, settings, p)
    length = record["length"]
    if record.get("sha256") is not None:
        # Complete (possibly a link to a stored artifact): never opened for writing again.
        _refuse_more(upload_id, length, offset, content_length)
        return await asyncio.to_thread(upload_status, settings, upload_id)

    with locked(p, os.O_WRONLY | os.O_APPEND) as fd:
        if read_sidecar(p).get("sha256") is not None:  # completed while we took the lock
            _refuse_more(upload_id, length, offset, content_length)
            return await asyncio.to_thread(upload_status, settings, upload_id)
        start = os.fstat(fd).st_size
        if offset != start:
            raise OffsetMismatch(start, offset)
        if content_length is not None and start + content_length > length:
            raise TooLarge(_beyond_length(length, start, content_length))
        cached = hashers.pop(upload_id, None)
        hasher = cached[0] if cached and cached[1] == start else None
        if hasher is None and start == 0:
            hasher = hashlib.sha256()
        sink = BlockWriter(fd, hasher)
        try:
            outcome = await receive(body, sink, room=length - start, settings=settings)
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
                hashers[upload_id] = (sink.hasher, start + sink.written)
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



async def _complete(p: UploadFiles, record: dict[str, Any], hasher: Any) -> None:
    digest = (
        hasher.hexdigest() if hasher is not None else await asyncio.to_thread(sha256_file, p.data)
    )
    hashers.pop(p.id, None)
    declared = record.get("declared_sha256")
    if declared is not None and declared != digest:
        remove(p)
        raise InvalidInput(
            f"the received file's sha256 is {digest}, not the {declared} declared when the "
            "upload was created; the upload was discarded, upload the file again"
        )
    await asyncio.to_thread(write_sidecar, p, {**record, "sha256": digest})


# ------------------------------------------------------------------ consuming finished uploads


@contextlib.contextmanager
def claim_completed_upload(settings: Settings, upload_id: str) -> Iterator[CompletedUpload]:
    """Take a complete upload out of the protocol and lend its file to the `with` block.

    The block may move or delete `path` (e.g. `checkpoints.add_checkpoint_file` does); whatever
    is left is deleted when the block ends, success or not. Raises NotFound (404, also for
    another principal's upload), Conflict (409) while bytes are missing (the upload is left as
    it was) and UploadLocked (423). The consumer checks its own access first: nothing is
    claimed for a request that would be refused.
    """
    p = upload_files(settings, upload_id)
    record = _owned_record(settings, p)
    with locked(p, os.O_RDONLY) as fd:
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
