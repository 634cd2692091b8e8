"""Content-addressed artifact store: streamed to disk, named by sha256, never half-visible."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"file exceeds the upload limit of {limit} bytes")
        self.limit = limit


class ArtifactNotFound(KeyError):
    pass


def _valid_digest(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


class ArtifactStore:
    """Files under `root/sha256/ab/<digest>`; writes go to `root/tmp` and are renamed in.

    The rename is atomic on one filesystem, so a reader sees either no artifact or the
    whole artifact; identical content is stored once.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _valid_digest(digest):
            raise ArtifactNotFound(digest)
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return _valid_digest(digest) and self.path(digest).is_file()

    def open_path(self, digest: str) -> Path:
        p = self.path(digest)
        if not p.is_file():
            raise ArtifactNotFound(digest)
        return p

    def staging_file(self, suffix: str = "") -> tuple[int, Path]:
        """A temporary file inside the store's filesystem (so adopting it is a rename)."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        return fd, Path(name)

    def write_stream(
        self, chunks: Iterable[bytes], *, max_bytes: int | None = None, suffix: str = ""
    ) -> tuple[Path, str, int]:
        """Stream chunks into a staging file; returns (staged path, sha256, size).

        Raises UploadTooLarge (and removes the partial file) past `max_bytes`.
        """
        fd, staged = self.staging_file(suffix)
        sha = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    sha.update(chunk)
                    out.write(chunk)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged, sha.hexdigest(), size

    def adopt(self, staged: Path, digest: str | None = None) -> str:
        """Move a staged file into the store under its digest; returns the digest."""
        if digest is None:
            digest = sha256_file(staged)
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.unlink(missing_ok=True)
        else:
            os.replace(staged, target)
        return digest

    def put_file(self, src: Path) -> str:
        """Copy an existing file into the store (source left in place)."""
        fd, staged = self.staging_file()
        os.close(fd)
        try:
            shutil.copyfile(src, staged)
            return self.adopt(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        staged, digest, size = self.write_stream(
            iter(lambda: stream.read(CHUNK_BYTES), b""), max_bytes=max_bytes
        )
        return self.adopt(staged, digest), size


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            sha.update(chunk)
    return sha.hexdigest()
