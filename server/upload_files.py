"""An upload's files under `Settings.uploads_dir`: the bytes received so far (`<id>.bin`) and
what was declared (`<id>.json`, the sidecar), the lock that serialises their writers across
threads and processes, their expiry and removal, and the writer that streams a request body
into them a block at a time (the tus protocol on top is `prunescope.server.services.uploads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunescope.server.config import Settings
from prunescope.server.errors import NotFound, ServiceError

# Received bytes are written in blocks of this size: large enough that the thread hand-off
# costs nothing measurable, small enough that a request holds only a few blocks in memory.
FLUSH_BYTES = 1024 * 1024
ID = re.compile(r"[0-9a-f]{32}")


class UploadLocked(ServiceError):
    status_code = 423


@dataclass(frozen=True)
class UploadFiles:
    id: str
    data: Path
    sidecar: Path
    claimed: Path


def upload_files(settings: Settings, upload_id: str) -> UploadFiles:
    # The id names files, so anything but our own hex ids is unknown rather than a path.
    if not ID.fullmatch(upload_id):
        raise NotFound(f"upload {upload_id!r} not found")
    root = settings.uploads_dir
    return UploadFiles(
        upload_id,
        root / f"{upload_id}.bin",
        root / f"{upload_id}.json",
        root / f"{upload_id}.claimed",
    )


def not_found(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id} not found (finished, aborted or expired); start a new one")


# In-process sha256 state of uploads being received, keyed by id, with the offset it covers.
# Only the holder of an upload's lock touches its entry; where the entry is missing or covers
# another offset (another process wrote, or the server restarted) the file is hashed at the end.
hashers: dict[str, tuple[Any, int]] = {}


def read_sidecar(p: UploadFiles) -> dict[str, Any]:
    try:
        return json.loads(p.sidecar.read_text())
    except FileNotFoundError:
        raise not_found(p.id) from None


def write_sidecar(p: UploadFiles, record: dict[str, Any]) -> None:
    tmp = p.sidecar.with_name(p.sidecar.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, p.sidecar)


def last_activity(p: UploadFiles) -> float:
    stamps = [f.stat().st_mtime for f in (p.sidecar, p.data) if f.exists()]
    return max(stamps, default=0.0)


def live_record(settings: Settings, p: UploadFiles) -> dict[str, Any]:
    """The sidecar of an upload that exists and has not expired (an expired one is removed)."""
    record = read_sidecar(p)
    if time.time() - last_activity(p) > settings.upload_expiry_seconds:
        remove(p, only_if_unlocked=True)
        raise not_found(p.id)
    return record


# ------------------------------------------------------------------ locking


@contextlib.contextmanager
def locked(p: UploadFiles, flags: int) -> Iterator[int]:
    """Open the data file and hold its exclusive lock; 423 while another request holds it."""
    try:
        fd = os.open(p.data, flags)
    except FileNotFoundError:
        raise not_found(p.id) from None
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
            raise not_found(p.id)
        yield fd
    finally:
        os.close(fd)


def remove(p: UploadFiles, *, only_if_unlocked: bool = False) -> bool:
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
        hashers.pop(p.id, None)
        return True
    finally:
        if fd is not None:
            os.close(fd)


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
            if suffix == ".json" and ID.fullmatch(stem):
                p = upload_files(settings, stem)
                if last_activity(p) < cutoff and remove(p, only_if_unlocked=True):
                    removed += 1
            elif not (suffix == ".bin" and (root / f"{stem}.json").exists()):
                # Claimed files whose consumer died, data without a sidecar, temp files.
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        except FileNotFoundError:
            continue  # finished or removed by another request meanwhile
    return removed


class BlockWriter:
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


async def receive(
    body: AsyncIterator[bytes], sink: BlockWriter, *, room: int, settings: Settings
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
