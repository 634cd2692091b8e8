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

if TYPE_CHECKING:
    from prunescope.server.config import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# One request's worth of a remote transfer: S3 refuses multipart parts under 5 MiB, and an
# upload has at most 10 000 parts, so larger files get proportionally larger parts.
REMOTE_BLOCK_BYTES = 5 * 1024 * 1024
_MAX_PARTS = 10_000
# Backends that publish an object only once its upload completes; elsewhere an upload goes to
# `<url>/tmp/` first and is renamed into place.
_PUBLISH_ON_CLOSE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})

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
_REMOTE_HINT = (
    "check that the location exists and this machine can reach and write it (for S3 or MinIO: "
    "the bucket, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL); "
    "PRUNESCOPE_STORAGE_URL names the location"
)


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"file exceeds the upload limit of {limit} bytes")
        self.limit = limit


class ArtifactNotFound(KeyError):
    pass


class StorageError(OSError):
    """The store could not write or read an artifact (full disk, unreachable remote, corrupt copy).

    An OSError, so code that already handles I/O failures handles it; `errno` is kept when the
    cause had one (e.g. ENOSPC). The message names the location and what to check.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# A random name, and the staged file's own extension (readers tell formats apart by it too).
_STAGING_KEY = re.compile(r"[0-9a-f]{32}(\.[a-z0-9]{1,10})?")


def _valid_digest(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


class ArtifactStore:
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
            self._fs, self._remote_root = _remote_filesystem(self.remote)

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

    # ------------------------------------------------------------------ remote helpers

    def _remote_key(self, digest: str) -> str:
        return f"{self._remote_root}/sha256/{digest[:2]}/{digest}"

    def _remote_size(self, digest: str) -> int | None:
        key = self._remote_key(digest)
        try:
            self._fs.invalidate_cache(key)  # another machine may have written it since
            info = self._fs.info(key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(
                f"cannot read {self.remote}: {type(exc).__name__}: {exc}; {_REMOTE_HINT}"
            ) from exc
        return int(info["size"]) if info.get("type") == "file" else None

    def _upload(self, local: Path, digest: str) -> None:
        """Stream `local` to the remote under the digest unless an equal-sized copy is there."""
        if self._remote_size(digest) == local.stat().st_size:
            return
        self._upload_to(local, self._remote_key(digest), f"artifact {digest}")

    def _upload_to(self, local: Path, key: str, what: str) -> None:
        """Stream `local` to the remote `key`, visible there only once whole."""
        size = local.stat().st_size
        fs = self._fs
        publishes_on_close = bool(_PUBLISH_ON_CLOSE & set(_protocols(fs)))
        target = key if publishes_on_close else f"{self._remote_root}/tmp/{uuid.uuid4().hex}"
        block = max(REMOTE_BLOCK_BYTES, -(-size // _MAX_PARTS))
        remote_file = None
        try:
            if not publishes_on_close:
                fs.makedirs(fs._parent(target), exist_ok=True)
                fs.makedirs(fs._parent(key), exist_ok=True)
            remote_file = fs.open(target, "wb", block_size=block)
            with open(local, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
                    remote_file.write(chunk)
            remote_file.close()  # an object store publishes the object here, whole
            remote_file = None
            if not publishes_on_close:
                fs.mv(target, key)
        except Exception as exc:
            self._discard_upload(remote_file, target, publishes_on_close)
            raise StorageError(
                f"cannot upload {what} to {self.remote}: {type(exc).__name__}: "
                f"{exc}; {_REMOTE_HINT}"
            ) from exc
        except BaseException:
            self._discard_upload(remote_file, target, publishes_on_close)
            raise

    def _discard_upload(self, remote_file: Any, target: str, publishes_on_close: bool) -> None:
        """Drop a failed upload; never by closing an object-store file, which would publish it."""
        if remote_file is not None:
            try:
                if publishes_on_close:
                    remote_file.discard()  # aborts a multipart upload
                else:
                    remote_file.close()
            except Exception:  # the original failure is the one to report
                pass
        if not publishes_on_close:
            try:
                self._fs.rm(target)
            except Exception:  # nothing was written there, or it is unreachable
                pass

    def _download(self, digest: str, target: Path) -> Path:
        return self._download_from(self._remote_key(digest), digest, target)

    def _download_from(self, key: str, digest: str, target: Path) -> Path:
        """Download remote `key` to `target`, refused unless its sha256 is `digest`."""
        fd, staged = self.staging_file(".download")
        sha = hashlib.sha256()
        writing = False  # a local disk error, not the remote's
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    remote_file = self._fs.open(
                        key, "rb", block_size=REMOTE_BLOCK_BYTES, cache_type="none"
                    )
                except FileNotFoundError:
                    raise ArtifactNotFound(digest) from None
                with remote_file:
                    for chunk in iter(lambda: remote_file.read(REMOTE_BLOCK_BYTES), b""):
                        sha.update(chunk)
                        writing = True
                        out.write(chunk)
                        writing = False
                writing = True
            if sha.hexdigest() != digest:
                raise StorageError(
                    f"the copy of artifact {digest} in {self.remote} has different content "
                    f"(sha256 {sha.hexdigest()}), so it was not used; upload the original "
                    "again or restore that object from a backup"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        except (ArtifactNotFound, StorageError):
            raise
        except OSError as exc:
            if writing:
                raise self._local_error("write to", self.root, exc) from exc
            raise self._download_error(digest, exc) from exc
        except Exception as exc:
            raise self._download_error(digest, exc) from exc
        finally:
            staged.unlink(missing_ok=True)
        return target

    def _download_error(self, digest: str, exc: Exception) -> StorageError:
        return StorageError(
            f"cannot download artifact {digest} from {self.remote}: {type(exc).__name__}: "
            f"{exc}; {_REMOTE_HINT}"
        )


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _remote_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of a URL; its backend is imported only now."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"PRUNESCOPE_STORAGE_URL={url!r} cannot be opened: {exc}. For s3:// install s3fs "
            "(`pip install 'prunescope[cluster]'`); other schemes need their fsspec backend"
        ) from exc
    return fs, root.rstrip("/")


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
