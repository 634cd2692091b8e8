"""The remote side of the artifact store: an fsspec location (S3, MinIO, GCS, …) that holds the
truth, uploads that appear only whole, and downloads verified against their sha256 before use.

`RemoteTransfers` is mixed into `prunescope.server.storage.ArtifactStore`; the store's errors
live here so both modules can raise them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1024 * 1024
# One request's worth of a remote transfer: S3 refuses multipart parts under 5 MiB, and an
# upload has at most 10 000 parts, so larger files get proportionally larger parts.
REMOTE_BLOCK_BYTES = 5 * 1024 * 1024
_MAX_PARTS = 10_000
# Backends that publish an object only once its upload completes; elsewhere an upload goes to
# `<url>/tmp/` first and is renamed into place.
_PUBLISH_ON_CLOSE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})

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

class RemoteTransfers:
    """Transfers between this machine's store and its remote (`self._fs` at `self._remote_root`).

    The store supplies `remote`, `root`, `staging_file` and `_local_error`.
    """

    remote: str | None
    root: Path
    _fs: Any
    _remote_root: str

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


def remote_filesystem(url: str) -> tuple[Any, str]:
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
