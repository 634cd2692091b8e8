"""Uploaded archives (.zip, .tar, .tar.gz) unpacked safely: no escaping paths, links or bombs.

Hugging Face model folders and image-folder datasets arrive as archives. An archive is
untrusted input, so `extract_archive`

- recognises the format from the content (zip: b"PK\\x03\\x04"; gzip: 1f 8b; plain tar:
  b"ustar" at offset 257), not the file name;
- refuses member names that are absolute, contain "..", backslashes or drive letters, or
  repeat, and members that are links, devices or FIFOs — so nothing lands outside `dest`;
- refuses a zip whose members declare more than `max_total_bytes` before inflating any, and
  counts the bytes it actually writes (never trusting the sizes an archive declares),
  stopping past `max_total_bytes` or `max_members`, so a decompression bomb costs at most the
  limit in disk and time; a .tar.gz is read in one streaming pass for the same reason;
- writes into an empty destination folder and removes what it wrote when it fails.

`check_zip_expansion` makes the same promise for zips read by other code (a torch.save
archive, which torch inflates into memory): declared sizes against the limit first, then
proof that no compressed member inflates past what it declares.

The standard library's `tarfile` "data" filter covers part of this for tar; zip has no
equivalent, and both need the byte budget, so the checks are written out here once for both.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """An archive that cannot be unpacked safely; the message is meant for the user."""


def archive_format(path: str | os.PathLike[str]) -> str | None:
    """"zip", "tar.gz" or "tar" from the file's first bytes, or None for anything else.

    A torch.save checkpoint is also a zip archive; callers that accept both look inside.
    """
    with open(path, "rb") as f:
        head = f.read(262)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def safe_member_name(name: str) -> str:
    """The member's relative POSIX path, or ArchiveError if it could land outside the folder."""
    if not name or "\x00" in name:
        raise ArchiveError("the archive has a member with an empty or invalid name")
    if "\\" in name or (len(name) >= 2 and name[1] == ":"):
        raise ArchiveError(
            f"archive member {name!r} uses a Windows path; re-create the archive with "
            "forward-slash relative paths"
        )
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(
            f"archive member {name!r} points outside the archive's folder (absolute path or "
            "'..'); such archives are refused — re-create it from the folder itself"
        )
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise ArchiveError(f"archive member {name!r} has no file name")
    return "/".join(parts)


class _Budget:
    """Counts bytes written across all members and the number of members."""

    def __init__(self, max_total_bytes: int, max_members: int) -> None:
        self.max_total_bytes = max_total_bytes
        self.max_members = max_members
        self.total = 0
        self.members = 0

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(
                f"the archive has more than {self.max_members} members; split it or remove "
                "files that are not needed"
            )

    def add_bytes(self, n: int) -> None:
        self.total += n
        if self.total > self.max_total_bytes:
            raise ArchiveError(
                f"the archive expands past the limit of {self.max_total_bytes} bytes; upload a "
                "smaller archive or raise PRUNESCOPE_MAX_UPLOAD_BYTES"
            )


class _CountingReader(io.RawIOBase):
    """A read-only stream that raises once more than `limit` bytes have been read from it.

    Wrapped around gzip's output, it bounds the decompressed size of a .tar.gz, including
    data tarfile would otherwise decompress merely to skip it.
    """

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(
                f"the archive expands past the limit of {self.limit} bytes when decompressed; "
                "upload a smaller archive or raise PRUNESCOPE_MAX_UPLOAD_BYTES"
            )
        buffer[: len(data)] = data
        return len(data)


def _write_member(source: BinaryIO, target: Path, budget: _Budget, declared: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    # O_EXCL: a name that survived the duplicate check can still not overwrite anything.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except (FileExistsError, IsADirectoryError):
        raise ArchiveError(
            f"the archive holds {target.name!r} twice (or as a file and a folder); re-create it"
        ) from None
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > declared:
                raise ArchiveError(
                    f"archive member {target.name!r} holds more data than its header declares; "
                    "the archive is corrupt or crafted"
                )
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _declared_total(archive: zipfile.ZipFile, limit: int, what: str) -> None:
    declared = sum(info.file_size for info in archive.infolist())
    if declared > limit:
        raise ArchiveError(
            f"{what} expands past the limit of {limit:,} bytes (its members declare "
            f"{declared:,}); upload a smaller file or raise PRUNESCOPE_MAX_UPLOAD_BYTES"
        )


def _inflates_within(path: Path, info: zipfile.ZipInfo) -> bool:
    """Whether a deflated member's data inflates to no more than its declared size: its raw
    bytes run through zlib in bounded steps, nothing kept."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return False
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        inflate, left, produced = zlib.decompressobj(-zlib.MAX_WBITS), info.compress_size, 0
        while left > 0 and not inflate.eof:
            data = f.read(min(_CHUNK, left))
            if not data:
                return False
            left -= len(data)
            while data:
                produced += len(inflate.decompress(data, _CHUNK))
                if produced > info.file_size:
                    return False
                data = inflate.unconsumed_tail
        return produced == info.file_size


def check_zip_expansion(path: str | os.PathLike[str], max_total_bytes: int, *,
                        what: str = "the archive") -> None:
    """Refuse, before anything is inflated into memory, a zip that would expand past
    `max_total_bytes`: the sizes its central directory declares are summed first; members
    compressed other than by deflate are refused; deflated members are then inflated in
    bounded steps (nothing kept) to prove none holds more than its header declares — a
    reader that trusts the stream rather than the header would otherwise inflate a bomb.
    Stored members (what torch.save writes) cost nothing to check. ArchiveError explains
    a refusal, naming `what`."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _declared_total(archive, max_total_bytes, what)
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{what} is a corrupt or truncated zip archive ({exc})") from None
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise ArchiveError(f"{what}: member {info.filename!r} declares two sizes; the "
                                   "archive is corrupt or crafted")
        elif info.compress_type != zipfile.ZIP_DEFLATED:
            raise ArchiveError(f"{what}: member {info.filename!r} uses a compression other than "
                               "deflate; save the file again without recompressing it")
        elif not _inflates_within(path, info):
            raise ArchiveError(
                f"{what}: member {info.filename!r} holds more (or other) data than its header "
                "declares; the archive is corrupt or crafted"
            )


def _zip_members(path: Path, dest: Path, budget: _Budget) -> Iterator[str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise ArchiveError(f"the zip archive is corrupt or truncated ({exc})") from None
    with archive:
        # Declared sizes first: a bomb is refused before anything is inflated or written.
        _declared_total(archive, budget.max_total_bytes, "the archive")
        for info in archive.infolist():
            budget.add_member()
            name = safe_member_name(info.filename)
            # Unix file-type bits, when the archiver recorded them (writestr records none).
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir():
                continue
            if file_type and file_type != stat.S_IFREG:
                raise ArchiveError(
                    f"archive member {info.filename!r} is a link or special file; only regular "
                    "files and folders are accepted"
                )
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted")
            try:
                with archive.open(info) as source:
                    _write_member(source, dest / name, budget, info.file_size)
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, ValueError,
                    zlib.error) as exc:
                if isinstance(exc, ArchiveError):
                    raise
                raise ArchiveError(
                    f"archive member {info.filename!r} cannot be read ({exc}); the archive is "
                    "corrupt or truncated"
                ) from None
            yield name


def _tar_members(path: Path, dest: Path, budget: _Budget, compressed: bool) -> Iterator[str]:
    raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    try:
        stream: BinaryIO = raw
        if compressed:
            # Headers and skipped data count too: a tar of headers alone can be a bomb.
            limit = budget.max_total_bytes + 512 * (budget.max_members + 2) + 10 * 1024
            stream = io.BufferedReader(_CountingReader(gzip.GzipFile(fileobj=raw), limit))
        # "r|": one sequential pass, no seeking back, so nothing is decompressed twice.
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                budget.add_member()
                name = safe_member_name(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ArchiveError(
                        f"archive member {member.name!r} is a link or special file; only "
                        "regular files and folders are accepted"
                    )
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                _write_member(source, dest / name, budget, member.size)
                yield name
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"the tar archive is corrupt or truncated ({exc})") from None
    finally:
        raw.close()


def extract_archive(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_total_bytes: int,
    max_members: int = 10_000,
) -> list[str]:
    """Unpack a zip, tar or tar.gz archive into the empty (or new) folder `dest`.

    Returns the relative POSIX paths of the files written, in archive order. Raises
    ArchiveError — after removing everything it wrote — for an unknown format, a corrupt or
    truncated archive, an unsafe member (see the module docstring), or when the archive
    expands past `max_total_bytes` or holds more than `max_members` members.
    """
    path, dest = Path(path), Path(dest)
    fmt = archive_format(path)
    if fmt is None:
        raise ArchiveError(
            "the file is not a zip, tar or tar.gz archive; pack the folder with "
            "`zip -r model.zip folder/` or `tar czf model.tar.gz folder/`"
        )
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extract_archive needs an empty destination folder, got {dest}")
    budget = _Budget(max_total_bytes, max_members)
    members = (
        _zip_members(path, dest, budget)
        if fmt == "zip"
        else _tar_members(path, dest, budget, compressed=fmt == "tar.gz")
    )
    names: list[str] = []
    try:
        for name in members:
            if name in names:
                raise ArchiveError(f"the archive holds {name!r} twice; re-create it")
            names.append(name)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        raise
    return names


def common_root(names: list[str]) -> str:
    """The single top-level folder every member lies in ("" if there is none).

    `zip -r model.zip my-model/` puts every file under "my-model/"; loaders look inside it.
    """
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return ""
