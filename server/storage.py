"""Content-addressed artifact store: streamed to disk, named by sha256, never half-visible."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

from prunescope.server.storage_remote import (
    CHUNK_BYTES,
    ArtifactNotFound,
    RemoteTransfers,
    StorageError,
    UploadTooLarge,
    remote_filesystem,
)

if TYPE_CHECKING:
    from prunescope.server.config import Settings

log = logging.getLogger(__name__)

# The store's errors and chunk size are defined beside its remote transfers; callers import
# them from here.
__all__ = ["CHUNK_BYTES", "ArtifactNotFound", "ArtifactStore", "StorageError", "UploadTooLarge",
           "artifact_store", "sha256_file"]

_LOCAL_HINTS = {
    errno.ENOSPC: "free some space on that disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "free some space or raise the disk quota",
    errno.EFBIG: "the file is larger than this filesystem or process allows (see `ulimit -f`)",
    errno.EROFS: "the filesystem is mounted read-only; point PRUNESCOPE_DATA_DIR or "
    "PRUNESCOPE_STORAGE_URL at a writable one",
    errno.EACCES: "check the permissions of that directory",
    errno.EPERM: "check the permissions of that directory",
    errno.ENOTDIR: "part of that path is a file, not a directory; fix PRUNESCOPE_DATA_DIR or "
    "PRUNESCOPE_STORAGE_URL",
    errno.EEXIST: "part of that path is a file, not a directory; fix PRUNESCOPE_DATA_DIR or "
    "PRUNESCOPE_STORAGE_URL",
}
_STAGING_KEY = re.compile(r"[0-9a-f]{32}(\.[a-z0-9]{1,10})?")


def _valid_digest(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


class ArtifactStore(RemoteTransfers):
    """Files under `root/sha256/ab/<digest>`; writes go to `root/tmp` and are renamed in.

    The rename is atomic on one filesystem, so a reader sees either no artifact or the
    whole artifact; identical content is stored once.

    With `remote` (an fsspec URL such as `s3://bucket/prefix`) the remote holds the truth at
    `<remote>/sha256/ab/<digest>` and `root` is this machine's read-through cache and staging
    area: `adopt` uploads before the artifact appears locally, and `open_path` downloads,
    verifies and caches what only the remote has.
    """

    def __init__(self, root: Path, *, remote: str | None = None) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._local_error("create the artifact store at", self.root, exc) from exc
        self.remote = remote.rstrip("/") if remote else None
        self._fs: Any = None
        self._remote_root = ""
        if self.remote is not None:
            self._fs, self._remote_root = remote_filesystem(self.remote)

    def path(self, digest: str) -> Path:
        """Where the artifact is (or would be) on this machine."""
        if not _valid_digest(digest):
            raise ArtifactNotFound(digest)
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        """Whether the store holds the digest, here or remotely (StorageError if unreachable)."""
        if not _valid_digest(digest):
            return False
        if self.path(digest).is_file():
            return True
        return self.remote is not None and self._remote_size(digest) is not None

    def open_path(self, digest: str) -> Path:
        """A local file with the artifact's bytes, downloaded into the cache when only remote.

        A download is streamed to a staging file and renamed into the cache only once its
        sha256 equals the digest. Raises ArtifactNotFound, or StorageError for a remote that
        cannot be read or holds different bytes.
        """
        p = self.path(digest)
        if p.is_file():
            return p
        if self.remote is None:
            raise ArtifactNotFound(digest)
        return self._download(digest, p)

    def staging_file(self, suffix: str = "") -> tuple[int, Path]:
        """A temporary file inside the store's filesystem (so adopting it is a rename)."""
        try:
            fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        except OSError as exc:
            raise self._local_error("create a file in", self.tmp_dir, exc) from exc
        return fd, Path(name)

    def write_stream(
        self, chunks: Iterable[bytes], *, max_bytes: int | None = None, suffix: str = ""
    ) -> tuple[Path, str, int]:
        """Stream chunks into a staging file; returns (staged path, sha256, size).

        Raises UploadTooLarge (and removes the partial file) past `max_bytes`, and
        StorageError (likewise) when the disk refuses the bytes.
        """
        fd, staged = self.staging_file(suffix)
        sha = hashlib.sha256()
        size = 0
        writing = False  # errors from `chunks` itself are the caller's, not the disk's
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    sha.update(chunk)
                    writing = True
                    out.write(chunk)
                    writing = False
                writing = True  # closing flushes the last buffered bytes
        except OSError as exc:
            staged.unlink(missing_ok=True)
            if writing and not isinstance(exc, StorageError):
                raise self._local_error("write to", self.tmp_dir, exc) from exc
            raise
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged, sha.hexdigest(), size

    def adopt(self, staged: Path, digest: str | None = None) -> str:
        """Move a staged file into the store under its digest; returns the digest.

        With a remote, the bytes are uploaded first: the artifact appears here only once the
        remote holds it whole. On failure (StorageError) `staged` is left to the caller.
        """
        if digest is None:
            digest = sha256_file(staged)
        target = self.path(digest)
        if self.remote is not None:
            self._upload(target if target.is_file() else staged, digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                staged.unlink(missing_ok=True)
            else:
                self._rename_into(staged, target)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._local_error("store an artifact in", self.root, exc) from exc
        return digest

    def put_file(self, src: Path) -> str:
        """Copy an existing file into the store (source left in place)."""
        fd, staged = self.staging_file()
        os.close(fd)
        try:
            try:
                shutil.copyfile(src, staged)
            except OSError as exc:
                if Path(src).is_file():  # the source was readable: the store's disk refused
                    raise self._local_error("write to", self.tmp_dir, exc) from exc
                raise
            return self.adopt(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        staged, digest, size = self.write_stream(
            iter(lambda: stream.read(CHUNK_BYTES), b""), max_bytes=max_bytes
        )
        try:
            return self.adopt(staged, digest), size
        finally:
            staged.unlink(missing_ok=True)

    # ---------------------------------------------------------- uploads awaiting validation
    # An upload waits here, outside the content-addressed artifacts, until a worker has
    # validated it: bytes nobody vetted never share a name with a stored artifact, and a
    # refused upload is removed without asking who else holds the same bytes.

    def stage_upload(self, staged: Path, digest: str) -> str:
        """Move a staged file (with this sha256) where any worker can read it; returns its key.

        With a remote the bytes are uploaded too, since the worker may be another machine.
        """
        suffix = staged.suffix.lower()
        key = uuid.uuid4().hex + (suffix if _STAGING_KEY.fullmatch("0" * 32 + suffix) else "")
        target = self._staged_local(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.remote is not None:
                self._upload_to(staged, self._remote_staged_key(key), f"upload {key}")
            self._rename_into(staged, target)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._local_error("stage an upload in", self.root, exc) from exc
        return key

    def staged_path(self, key: str, digest: str) -> Path:
        """A local file with the staged upload's bytes (downloaded and checked when remote)."""
        local = self._staged_local(key)
        if local.is_file():
            return local
        if self.remote is None:
            raise ArtifactNotFound(key)
        return self._download_from(self._remote_staged_key(key), digest, local)

    def discard_staged(self, key: str) -> None:
        """Remove a staged upload here and remotely (nothing happens when it is gone)."""
        self._staged_local(key).unlink(missing_ok=True)
        if self.remote is not None:
            try:
                self._fs.rm(self._remote_staged_key(key))
            except FileNotFoundError:
                pass
            except Exception as exc:  # left behind; the upload itself is decided either way
                log.warning("could not remove staged upload %s from %s: %s", key, self.remote,
                            exc)

    def _staged_local(self, key: str) -> Path:
        if not _STAGING_KEY.fullmatch(key):
            raise ArtifactNotFound(key)
        return self.root / "staging" / key

    def _remote_staged_key(self, key: str) -> str:
        return f"{self._remote_root}/staging/{key}"

    # ------------------------------------------------------------------ local helpers

    def _rename_into(self, staged: Path, target: Path) -> None:
        """Atomically place `staged` at `target`, copying first when they are on two disks."""
        try:
            os.replace(staged, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        fd, local = self.staging_file()
        os.close(fd)
        try:
            shutil.copyfile(staged, local)
            os.replace(local, target)
        finally:
            local.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)

    @staticmethod
    def _local_error(action: str, where: Path, exc: OSError) -> StorageError:
        hint = _LOCAL_HINTS.get(exc.errno or 0, "check that disk and PRUNESCOPE_DATA_DIR")
        reason = exc.strerror or str(exc) or type(exc).__name__
        return StorageError(f"cannot {action} {where}: {reason}; {hint}", errno=exc.errno)

def _local_path(url: str) -> Path | None:
    """The directory a storage URL names on this machine, or None for a remote URL."""
    if "://" not in url:
        return Path(url).expanduser().resolve()
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path)).resolve()
    return None


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store `settings.storage_url` names.

    None: `data_dir/artifacts`. A local path or file:// URL: that directory (e.g. an NFS mount
    every machine shares). Any other fsspec URL (`s3://bucket/prefix`): the truth lives there
    and `data_dir/artifacts` is this machine's cache.
    """
    url = (settings.storage_url or "").strip()
    if not url:
        return ArtifactStore(settings.artifacts_dir)
    local = _local_path(url)
    if local is not None:
        return ArtifactStore(local)
    return ArtifactStore(settings.artifacts_dir, remote=url)


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            sha.update(chunk)
    return sha.hexdigest()
