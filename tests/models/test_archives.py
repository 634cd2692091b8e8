"""Safe archive unpacking: real crafted zip / tar / tar.gz files, good and hostile."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunescope.models.archives import ArchiveError, archive_format, common_root, extract_archive

LIMIT = 1024 * 1024


def _zip(path: Path, files: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


FILES = {"model/config.json": b'{"a": 1}', "model/sub/weights.bin": os.urandom(5000)}


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_a_good_archive_unpacks_byte_for_byte(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "upload.bin"  # the name says nothing: the format comes from the content
    if kind == "zip":
        _zip(src, FILES)
    else:
        _tar(src, FILES, "w:gz" if kind == "tar.gz" else "w")
    assert archive_format(src) == kind
    names = extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)
    assert names == list(FILES)
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert common_root(names) == "model"


def test_common_root_is_empty_for_flat_or_mixed_archives() -> None:
    assert common_root(["config.json", "model.safetensors"]) == ""
    assert common_root(["a/x", "b/y"]) == ""
    assert common_root(["a/x", "a"]) == ""


@pytest.mark.parametrize(
    "evil",
    ["../escape.txt", "/etc/passwd_copy", "model/../../escape.txt", "C:/win.txt", "a\\..\\b.txt"],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_paths_escaping_the_folder_are_refused_and_nothing_is_written(
    tmp_path: Path, evil: str, kind: str
) -> None:
    src = tmp_path / "evil"
    files = {"ok.txt": b"fine", evil: b"pwned"}
    _zip(src, files) if kind == "zip" else _tar(src, files)
    out = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveError, match=r"outside|Windows path"):
        extract_archive(src, out, max_total_bytes=LIMIT)
    assert list(out.iterdir()) == []  # the good member written before the bad one is gone
    assert not (tmp_path / "deep" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_tar_symlinks_and_hardlinks_are_refused(tmp_path: Path) -> None:
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        src = tmp_path / f"links{kind!r}.tar"
        with tarfile.open(src, "w") as tf:
            info = tarfile.TarInfo("model/link")
            info.type = kind
            info.linkname = "/etc/passwd"
            tf.addfile(info)
        with pytest.raises(ArchiveError, match="link or special"):
            extract_archive(src, tmp_path / f"out{kind!r}", max_total_bytes=LIMIT)


def test_zip_symlink_members_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "link.zip"
    with zipfile.ZipFile(src, "w") as zf:
        info = zipfile.ZipInfo("model/link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK, as `zip --symlinks` writes it
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="link or special"):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_stops_at_the_limit(tmp_path: Path, kind: str) -> None:
    # 64 MB of zeros compresses to ~64 KB: a real bomb against a 1 MB budget.
    bomb = b"\0" * (64 * 1024 * 1024)
    src = tmp_path / "bomb"
    _zip(src, {"zeros.bin": bomb}) if kind == "zip" else _tar(src, {"zeros.bin": bomb})
    assert src.stat().st_size < 1024 * 1024
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="expands past the limit"):
        extract_archive(src, out, max_total_bytes=LIMIT)
    assert list(out.iterdir()) == []


def test_many_small_members_count_against_the_budget_too(tmp_path: Path) -> None:
    src = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(50)})
    with pytest.raises(ArchiveError, match="more than 20 members"):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT, max_members=20)


def test_a_zip_member_larger_than_declared_is_refused(tmp_path: Path) -> None:
    # Craft the central directory to declare 10 bytes for a member that holds 4,000.
    src = _zip(tmp_path / "lie.zip", {"a.bin": b"y" * 4000}, compression=zipfile.ZIP_STORED)
    raw = bytearray(src.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # uncompressed size in the CD record
    src.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)
    assert list((tmp_path / "out").iterdir()) == []


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "dup.tar"
    with tarfile.open(src, "w") as tf:
        for data in (b"first", b"second"):
            info = tarfile.TarInfo("config.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match="twice"):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)


def test_truncated_and_foreign_files_get_clear_errors(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tgz", FILES).read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_archive(cut, tmp_path / "out1", max_total_bytes=LIMIT)
    good_zip = _zip(tmp_path / "good.zip", FILES).read_bytes()
    cut_zip = tmp_path / "cut.zip"
    cut_zip.write_bytes(good_zip[: len(good_zip) - 30])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_archive(cut_zip, tmp_path / "out2", max_total_bytes=LIMIT)
    text = tmp_path / "notes.zip"
    text.write_text("just text")
    with pytest.raises(ArchiveError, match="not a zip, tar or tar.gz"):
        extract_archive(text, tmp_path / "out3", max_total_bytes=LIMIT)


def test_gzip_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "x.gz"
    src.write_bytes(gzip.compress(b"hello, not a tar archive" * 10))
    with pytest.raises(ArchiveError):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)


_SEED_ARCHIVES: list[bytes] = []


def _seeds() -> list[bytes]:
    if not _SEED_ARCHIVES:
        for mode in ("w", "w:gz"):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode=mode) as tf:
                for name, data in FILES.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            _SEED_ARCHIVES.append(buf.getvalue())
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in FILES.items():
                zf.writestr(name, data)
        _SEED_ARCHIVES.append(buf.getvalue())
    return _SEED_ARCHIVES


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_archives_never_crash_or_escape(
    tmp_path_factory: pytest.TempPathFactory, seed: int, flips: list, cut: int | None
) -> None:
    data = bytearray(_seeds()[seed])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    base = tmp_path_factory.mktemp("fuzz")
    src = base / "upload"
    src.write_bytes(bytes(data))
    out = base / "box" / "out"
    try:
        names = extract_archive(src, out, max_total_bytes=LIMIT, max_members=100)
    except ArchiveError:
        assert not out.exists() or list(out.iterdir()) == []
    else:
        for name in names:
            assert (out / name).resolve().is_relative_to(out.resolve())
    written = [p for p in base.rglob("*") if p.is_file() and p != src]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)


def test_a_corrupt_deflate_stream_is_an_archive_error(tmp_path: Path) -> None:
    src = _zip(tmp_path / "bad.zip", {"data.bin": os.urandom(2000) + b"a" * 20000})
    raw = bytearray(src.read_bytes())
    start = 30 + len("data.bin")  # the local header, then the compressed bytes
    raw[start] = 0xFF  # deflate block type 3 is reserved: zlib raises "invalid block type"
    src.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="cannot be read"):
        extract_archive(src, tmp_path / "out", max_total_bytes=LIMIT)
