"""Uploaded evaluation datasets (npz, image-folder zip, CSV, JSONL, Parquet) read safely.

Every loader turns an untrusted file into a `prunescope.workers.dataset_arrays.ClassificationData`,
which the server stores as one canonical npz (`prunescope.workers.dataset_arrays.save_canonical`),
or raises `DatasetFormatError` with a message that says what is wrong and what to do. The
formats:

- **npz** (`np.savez`): arrays `x` (numbers, one row per example: (n, features) or
  (n, C, H, W); or a 1-D unicode array of texts) and `y` (integer labels, or strings that
  name the classes), optional `ids` (unique), `group`, `split` ("train"/"test") and
  `class_names`. Each member's .npy header is read first: object arrays (which would need
  unpickling) are refused before anything is loaded, and the declared sizes must fit the
  byte budget; the arrays are then read with `np.load(allow_pickle=False)`.
- **image_zip**: a .zip/.tar(.gz) with one sub-folder per class (class index = position of
  the folder name in sorted order), optionally under `train/` and `test/` folders that give
  the split. Unpacked by `prunescope.models.archives.extract_archive` (no escaping paths, links or
  bombs). Only PNG and JPEG are accepted, recognised by content; each image's pixel count is
  bounded before it is decoded and `verify()` runs first. All images must have the same size
  (nothing is resized: resize them before zipping); they become grey (C=1) when every image
  is grey and RGB (C=3) otherwise, float32 in [0, 1], shape (C, H, W).
- **csv / jsonl / parquet** (read by pyarrow): a label column (`label` unless configured),
  either a text column (`text`) — a text dataset; other columns are then ignored — or numeric
  feature columns (every other column, in file order), and optional `id`, `group` and
  `split` columns. Missing values, NaN and infinities are refused, naming column and row.

Labels: integers are class indices as they are; strings are numbered in sorted order (as
image folders are). Without a split column/array/folder the fixed split of
`prunescope.workers.dataset_arrays.split_indices` is used (stratified 75/25 where possible).
"""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from prunescope.models.archives import ArchiveError, archive_format, common_root, extract_archive
from prunescope.workers.dataset_arrays import ClassificationData, from_arrays, split_indices

UPLOAD_FORMATS = ("npz", "image_zip", "csv", "jsonl", "parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x", "y", "ids", "group", "split", "class_names")
PREVIEW_IMAGES = 24
PREVIEW_ROWS = 10
PREVIEW_FEATURES = 16
THUMBNAIL_SIDE = 64
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# Files that desktop archivers add to a folder; they are not part of the dataset.
_ARCHIVER_LITTER = {"__MACOSX", "Thumbs.db", "desktop.ini"}


class DatasetFormatError(ValueError):
    """An uploaded dataset file that cannot be used; the message is meant for the user."""


# What numpy and zipfile raise for corrupt or crafted archives and .npy headers.
_READ_ERRORS = (
    ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, SyntaxError,
    TypeError, NotImplementedError, OverflowError, struct.error, IndexError,
)


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds on what an upload may expand to; every check happens before the work it bounds."""

    max_bytes: int = 2 * 1024**3  # unpacked archive bytes, and the examples held in memory
    max_examples: int = 1_000_000
    max_values_per_example: int = 4 * 1024 * 1024
    max_columns: int = 10_000
    max_classes: int = 10_000
    max_image_pixels: int = 4096 * 4096  # per image, like PIL.Image.MAX_IMAGE_PIXELS
    max_text_chars: int = 10_000
    max_name_chars: int = 200  # ids, groups and class names


@dataclass(frozen=True)
class ColumnNames:
    """Which columns of a table hold what; `text` present makes it a text dataset."""

    label: str = "label"
    text: str = "text"
    id: str = "id"
    group: str = "group"
    split: str = "split"


@dataclass(frozen=True)
class LoadedDataset:
    """A loader's result: the data, the format it came in and how it was split."""

    data: ClassificationData
    format: str  # one of UPLOAD_FORMATS
    split_rule: str  # "given" (split column/array/folders) | "stratified" | "shuffled"


# ---------------------------------------------------------------------------------- entry


def detect_format(path: str | Path, filename: str = "") -> str:
    """The upload's format from its content (zip, Parquet) or, for text files, its name."""
    path = Path(path)
    suffix = Path(filename or path.name).suffix.lower()
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise DatasetFormatError("the file is empty; upload the complete dataset file")
    kind = archive_format(path)
    if kind == "zip" and (suffix == ".npz" or _zip_holds_npy(path)):
        return "npz"
    if kind is not None:
        return "image_zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    binary = {".npz": "an npz (zip) archive", ".zip": "a zip archive",
              ".parquet": "a Parquet file", ".pq": "a Parquet file"}
    if suffix in binary:
        raise DatasetFormatError(
            f"the file is named {suffix} but is not {binary[suffix]} (its first bytes do not "
            "match); it is corrupt, truncated or mislabelled"
        )
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".txt"):
        return "csv"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut off at 512 bytes is fine
            raise DatasetFormatError(
                "the file is not a dataset PruneScope reads: use .npz, a .zip of image folders, "
                ".csv, .jsonl or .parquet"
            ) from None
    return "csv"


def read_dataset_file(
    path: str | Path,
    *,
    name: str,
    filename: str = "",
    columns: ColumnNames | None = None,
    limits: DatasetLimits | None = None,
    scratch_dir: str | Path | None = None,
) -> LoadedDataset:
    """Read an uploaded dataset file of any supported format; DatasetFormatError if unusable.

    `scratch_dir` is where an image archive is unpacked (a temporary folder inside it,
    removed afterwards); by default the system's temporary directory.
    """
    columns = columns or ColumnNames()
    limits = limits or DatasetLimits()
    fmt = detect_format(path, filename)
    if fmt == "npz":
        raw = _read_npz(Path(path), limits)
    elif fmt == "image_zip":
        raw = _read_image_archive(Path(path), limits, scratch_dir)
    else:
        raw = _read_table(Path(path), fmt, columns, limits)
    data, split_rule = _assemble(name, raw, limits)
    return LoadedDataset(data=data, format=fmt, split_rule=split_rule)


@dataclass
class _Raw:
    """Whole-dataset arrays as a format gives them, before labels are encoded and split."""

    kind: str
    x: np.ndarray | None
    labels: np.ndarray
    texts: np.ndarray | None = None
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None
    split: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] = ()


# ------------------------------------------------------------------------- common checks


def _assemble(name: str, raw: _Raw, limits: DatasetLimits) -> tuple[ClassificationData, str]:
    n = int(raw.labels.shape[0])
    if n < 2:
        raise DatasetFormatError(
            f"the dataset has {n} example(s); at least 2 are needed (one to train, one to test)"
        )
    if n > limits.max_examples:
        raise DatasetFormatError(
            f"the dataset has {n:,} examples, more than the limit of {limits.max_examples:,}; "
            "upload a sample of it"
        )
    y, class_names = _encode_labels(raw.labels, raw.class_names, limits)
    ids = _names(raw.ids, "ids", limits)
    if ids is not None:
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise DatasetFormatError(
                f"ids must be unique, but {str(unique[counts > 1][0])!r} appears "
                f"{int(counts.max())} times; give every example its own id"
            )
    groups = _names(raw.groups, "group", limits)
    if raw.x is not None and raw.x.size and not np.isfinite(raw.x).all():
        row = int(np.flatnonzero(~np.isfinite(raw.x.reshape(n, -1)).all(axis=1))[0])
        raise DatasetFormatError(
            f"example {row} holds NaN or infinite values; fill or drop such examples"
        )
    if raw.split is not None:
        is_test = _split_flags(raw.split)
        split = (np.flatnonzero(~is_test), np.flatnonzero(is_test))
        split_rule = "given"
    else:
        train, test, stratified = split_indices(y)
        split = (train, test)
        split_rule = "stratified" if stratified else "shuffled"
    data = from_arrays(
        name,
        kind=raw.kind,
        x=raw.x,
        y=y,
        class_names=class_names,
        texts=raw.texts,
        ids=ids,
        groups=groups,
        split=split,
        feature_names=raw.feature_names,
    )
    return data, split_rule


def _encode_labels(
    labels: np.ndarray, given: tuple[str, ...] | None, limits: DatasetLimits
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer class indices and class names from integer, integral-float or string labels."""
    if labels.ndim != 1:
        raise DatasetFormatError(f"labels must be one value per example; got shape {labels.shape}")
    kind = labels.dtype.kind
    if kind in "US":
        text = labels.astype(np.str_)
        names = tuple(given) if given is not None else tuple(sorted(set(text.tolist())))
        index = {label: i for i, label in enumerate(names)}
        unknown = [label for label in set(text.tolist()) if label not in index]
        if unknown:
            raise DatasetFormatError(
                f"label {sorted(unknown)[0]!r} is not one of the class names; list every class "
                "in class_names or drop those examples"
            )
        y = np.array([index[label] for label in text.tolist()], dtype=np.int64)
    elif kind in "biuf":
        if kind == "f":
            if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
                raise DatasetFormatError(
                    "labels must be whole numbers (class indices 0, 1, 2, …); found fractional, "
                    "NaN or infinite values"
                )
            if np.abs(labels).max() >= 2**62:
                raise DatasetFormatError("labels must be class indices 0, 1, 2, …")
        if kind == "u" and labels.max() >= 2**62:
            raise DatasetFormatError("labels must be class indices 0, 1, 2, …")
        y = labels.astype(np.int64)
        if y.min() < 0:
            raise DatasetFormatError(
                f"labels must be class indices 0, 1, 2, …; found {int(y.min())}. Renumber the "
                "classes from 0"
            )
        count = int(y.max()) + 1
        if given is not None and len(given) < count:
            raise DatasetFormatError(
                f"labels go up to {count - 1} but class_names lists only {len(given)} classes; "
                "name every class or relabel the examples"
            )
        if count > limits.max_classes:
            raise DatasetFormatError(
                f"labels go up to {count - 1}, more than {limits.max_classes:,} classes; labels "
                "must be class indices 0, 1, 2, …"
            )
        names = tuple(given) if given is not None else tuple(str(k) for k in range(count))
    else:
        raise DatasetFormatError(
            f"labels must be integers or class-name strings, not {labels.dtype}"
        )
    if len(names) > limits.max_classes:
        raise DatasetFormatError(
            f"the dataset has {len(names):,} classes, more than the limit of "
            f"{limits.max_classes:,}"
        )
    too_long = [c for c in names if len(c) > limits.max_name_chars]
    if too_long:
        raise DatasetFormatError(
            f"class name {too_long[0][:40]!r}… is longer than {limits.max_name_chars} characters"
        )
    return y, names


def _names(values: np.ndarray | None, what: str, limits: DatasetLimits) -> np.ndarray | None:
    """ids or groups as a unicode array (numbers become their decimal text)."""
    if values is None:
        return None
    if values.ndim != 1:
        raise DatasetFormatError(f"{what} must be one value per example; got shape {values.shape}")
    if values.dtype.kind not in "biuUS":
        raise DatasetFormatError(f"{what} must be integers or strings, not {values.dtype}")
    text = values.astype(np.str_) if values.dtype.kind != "S" else np.char.decode(values, "utf-8")
    if text.dtype.itemsize // 4 > limits.max_name_chars:
        raise DatasetFormatError(
            f"an entry of {what} is longer than {limits.max_name_chars} characters; shorten it"
        )
    return text


def _split_flags(split: np.ndarray) -> np.ndarray:
    """True for test examples, from "train"/"test" values (case and spaces ignored)."""
    if split.ndim != 1 or split.dtype.kind not in "US":
        raise DatasetFormatError("split must hold the strings 'train' or 'test', one per example")
    text = np.char.lower(np.char.strip(split.astype(np.str_)))
    bad = ~np.isin(text, ["train", "test"])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetFormatError(
            f"split holds {str(split[row])!r} at example {row}; use 'train' or 'test' (or drop "
            "the split for an automatic 75/25 split)"
        )
    is_test = text == "test"
    for part, present in (("test", is_test.any()), ("train", (~is_test).any())):
        if not present:
            raise DatasetFormatError(
                f"split marks no example as {part!r}; mark some, or drop the split for an "
                "automatic 75/25 split"
            )
    return is_test


def _check_size(n: int, per_example: int, itemsize: int, limits: DatasetLimits, what: str) -> None:
    if n > limits.max_examples:
        raise DatasetFormatError(
            f"{what} has {n:,} examples, more than the limit of {limits.max_examples:,}; upload "
            "a sample of it"
        )
    if per_example > limits.max_values_per_example:
        raise DatasetFormatError(
            f"{what} has {per_example:,} values per example, more than the limit of "
            f"{limits.max_values_per_example:,}"
        )
    if n * per_example * itemsize > limits.max_bytes:
        raise DatasetFormatError(
            f"{what} needs {n * per_example * itemsize:,} bytes in memory, past the limit of "
            f"{limits.max_bytes:,}; upload fewer or smaller examples or raise "
            "PRUNESCOPE_MAX_UPLOAD_BYTES"
        )


# ---------------------------------------------------------------------------------- npz


def _zip_holds_npy(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except _READ_ERRORS:
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _inspect_npz(path: Path, limits: DatasetLimits) -> None:
    """Check every member's declared dtype and size before any array data is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            budget = limits.max_bytes
            seen = set()
            for info in infos:
                key = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else None
                if key not in NPZ_KEYS:
                    raise DatasetFormatError(
                        f"the npz holds {info.filename!r}; accepted arrays are "
                        f"{', '.join(NPZ_KEYS)} (x and y required)"
                    )
                if key in seen:
                    raise DatasetFormatError(f"the npz holds {key!r} twice; save it again")
                seen.add(key)
                if info.file_size > budget:
                    raise DatasetFormatError(
                        f"array {key!r} expands to {info.file_size:,} bytes, past the limit of "
                        f"{limits.max_bytes:,}; upload a smaller dataset or raise "
                        "PRUNESCOPE_MAX_UPLOAD_BYTES"
                    )
                with zf.open(info) as f:
                    shape, _fortran, dtype = _npy_header(f)
                    header_end = f.tell()
                if dtype.hasobject:
                    raise DatasetFormatError(
                        f"array {key!r} holds Python objects (dtype object), which can only be "
                        "read by unpickling; PruneScope never unpickles uploads. Save numbers "
                        "as numeric arrays and strings as fixed-width text: "
                        "np.asarray(values, dtype=str)"
                    )
                if dtype.fields is not None or dtype.kind not in "biufUS":
                    raise DatasetFormatError(
                        f"array {key!r} has dtype {dtype}; use numbers or strings"
                    )
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > budget:
                    raise DatasetFormatError(
                        f"array {key!r} declares {nbytes:,} bytes, past the limit of "
                        f"{limits.max_bytes:,}; upload a smaller dataset or raise "
                        "PRUNESCOPE_MAX_UPLOAD_BYTES"
                    )
                if header_end + nbytes != info.file_size:
                    raise DatasetFormatError(
                        f"array {key!r} is truncated or corrupt (its header declares {nbytes:,} "
                        "bytes of data that are not there); save the npz again"
                    )
                budget -= nbytes
            for key in ("x", "y"):
                if key not in seen:
                    raise DatasetFormatError(
                        f"the npz has no array {key!r}; save it as np.savez(path, x=examples, "
                        "y=labels)"
                    )
    except DatasetFormatError:
        raise
    except _READ_ERRORS as exc:
        raise DatasetFormatError(
            f"the npz file is corrupt or truncated ({type(exc).__name__}: {exc}); save it again "
            "with np.savez"
        ) from None


def _read_npz(path: Path, limits: DatasetLimits) -> _Raw:
    _inspect_npz(path, limits)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except _READ_ERRORS as exc:
        raise DatasetFormatError(
            f"the npz file is corrupt or truncated ({type(exc).__name__}: {exc}); save it again "
            "with np.savez"
        ) from None
    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1:
        raise DatasetFormatError(f"y must be one label per example, shape (n,); got {y.shape}")
    if x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise DatasetFormatError(
            f"x has {x.shape[0] if x.ndim else 0} examples but y has {y.shape[0]} labels; they "
            "must have one entry per example, in the same order"
        )
    for key in ("ids", "group", "split"):
        if key in arrays and arrays[key].shape != y.shape:
            raise DatasetFormatError(
                f"{key} has shape {arrays[key].shape} but there are {y.shape[0]} examples; give "
                "one entry per example"
            )
    class_names = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DatasetFormatError("class_names must be a 1-D array of strings")
        class_names = tuple(str(c) for c in names.astype(np.str_).tolist())
    n = int(x.shape[0])
    if x.dtype.kind in "US":
        if x.ndim != 1:
            raise DatasetFormatError(f"texts in x must be a 1-D array of strings; got {x.shape}")
        kind, texts, x_values = "text", _texts(x.astype(np.str_), limits), None
    elif x.dtype.kind in "biuf":
        if x.ndim < 2:
            raise DatasetFormatError(
                f"x must hold one row per example, shape (n, features) or (n, C, H, W); got "
                f"{x.shape}. For one feature use x.reshape(-1, 1)"
            )
        _check_size(n, int(np.prod(x.shape[1:])), 4, limits, "x")
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused below
            x_values = x.astype(np.float32)
        is_image = x.ndim == 3 or (x.ndim == 4 and x.shape[1] in (1, 3))
        kind, texts = ("image" if is_image else "tabular"), None
    else:
        raise DatasetFormatError(f"x must hold numbers or strings, not {x.dtype}")
    return _Raw(
        kind=kind,
        x=x_values,
        labels=y,
        texts=texts,
        ids=arrays.get("ids"),
        groups=arrays.get("group"),
        split=arrays.get("split"),
        class_names=class_names,
    )


def _texts(texts: np.ndarray, limits: DatasetLimits) -> np.ndarray:
    lengths = np.char.str_len(texts) if texts.size else np.zeros(0, dtype=np.int64)
    if lengths.size and lengths.max() > limits.max_text_chars:
        row = int(np.argmax(lengths))
        raise DatasetFormatError(
            f"text {row} has {int(lengths[row]):,} characters, more than the limit of "
            f"{limits.max_text_chars:,}; shorten or split it"
        )
    if texts.size and texts.dtype.itemsize * texts.size > limits.max_bytes:
        raise DatasetFormatError(
            "the texts take too much memory as one array; upload fewer or shorter texts"
        )
    return texts


# --------------------------------------------------------------------------- image folders


def _read_image_archive(path: Path, limits: DatasetLimits, scratch_dir: str | Path | None) -> _Raw:
    from PIL import Image

    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="dataset-") as tmp:
        dest = Path(tmp)
        try:
            names = extract_archive(
                path, dest, max_total_bytes=limits.max_bytes,
                max_members=limits.max_examples + 1000,
            )
        except ArchiveError as exc:
            raise DatasetFormatError(str(exc)) from None
        except _READ_ERRORS as exc:
            # zipfile refuses some crafted headers with errors extract_archive passes on.
            raise DatasetFormatError(
                f"the archive is corrupt or uses an unsupported feature ({type(exc).__name__}: "
                f"{exc}); pack the folder again with zip or tar"
            ) from None
        files = [n for n in names if not _is_litter(n)]
        root = common_root(files)
        entries = []  # (split or None, class name, member name)
        parts_of = {n: PurePosixPath(n[len(root) + 1:] if root else n).parts for n in files}
        tops = {parts[0].lower() for parts in parts_of.values() if len(parts) > 2}
        by_split = tops == {"train", "test"}
        for name, parts in parts_of.items():
            depth = 3 if by_split else 2
            if len(parts) < depth:
                where = "train/ or test/ and " if by_split else ""
                raise DatasetFormatError(
                    f"{name!r} lies outside a class folder; an image-folder archive holds "
                    f"{where}one sub-folder per class, e.g. cat/001.png and dog/002.png"
                )
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetFormatError(
                    f"{name!r} is not a PNG or JPEG image; an image-folder archive holds only "
                    "images (.png, .jpg, .jpeg), one sub-folder per class — remove other files"
                )
            if by_split:
                entries.append((parts[0].lower(), parts[1], name))
            else:
                entries.append((None, parts[0], name))
        if not entries:
            raise DatasetFormatError(
                "the archive holds no images; put PNG or JPEG files in one sub-folder per class"
            )
        entries.sort(key=lambda e: e[2])
        if len(entries) > limits.max_examples:
            _check_size(len(entries), 1, 1, limits, "the archive")
        # Pass 1: headers only — format, size and mode — then one budget check for all.
        sizes, modes = [], []
        for _, _, name in entries:
            size, mode = _image_header(dest / name, name, limits, Image)
            sizes.append(size)
            modes.append(mode)
        first = sizes[0]
        for (_, _, name), size in zip(entries, sizes, strict=True):
            if size != first:
                raise DatasetFormatError(
                    f"{name!r} is {size[0]}×{size[1]} pixels but {entries[0][2]!r} is "
                    f"{first[0]}×{first[1]}; all images must have the same size — resize them "
                    "before zipping (nothing is resized on upload)"
                )
        grey = all(mode in _GREY_MODES for mode in modes)
        channels = 1 if grey else 3
        width, height = first
        _check_size(len(entries), channels * width * height, 4, limits, "the archive's images")
        x = np.empty((len(entries), channels, height, width), dtype=np.float32)
        for i, (_, _, name) in enumerate(entries):
            x[i] = _decode_image(dest / name, name, grey, Image)
    class_names = tuple(sorted({cls for _, cls, _ in entries}))
    split = np.array([s for s, _, _ in entries], dtype=np.str_) if by_split else None
    ids = ["/".join(parts_of[name]) for _, _, name in entries]
    return _Raw(
        kind="image",
        x=x,
        labels=np.array([cls for _, cls, _ in entries], dtype=np.str_),
        ids=np.array(ids, dtype=np.str_),
        split=split,
        class_names=class_names,
    )


def _is_litter(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p in _ARCHIVER_LITTER for p in parts)


# Pillow reports corrupt data with many exception types, depending on the decoder.
_PILLOW_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError,
    ZeroDivisionError, OverflowError, RuntimeError,
)


def _image_header(path: Path, name: str, limits: DatasetLimits, image_module: Any) -> tuple:
    Image = image_module  # noqa: N806 - PIL's own spelling
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG", "JPEG"]) as im:
                width, height = im.size
                if width * height > limits.max_image_pixels:
                    raise DatasetFormatError(
                        f"{name!r} is {width}×{height} pixels, more than the limit of "
                        f"{limits.max_image_pixels:,} pixels per image; resize it"
                    )
                mode = im.mode
                im.verify()
    except DatasetFormatError:
        raise
    except (*_PILLOW_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetFormatError(
            f"{name!r} is not a readable PNG or JPEG image ({type(exc).__name__}: {exc}); "
            "replace or remove it"
        ) from None
    return (width, height), mode


def _decode_image(path: Path, name: str, grey: bool, image_module: Any) -> np.ndarray:
    Image = image_module  # noqa: N806 - PIL's own spelling
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG", "JPEG"]) as im:
                im.load()
                if not grey:
                    pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                    return pixels.transpose(2, 0, 1)
                if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
                    # 16-bit grey: scale by its full range, not by 8-bit's.
                    pixels = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
                elif im.mode == "F":
                    pixels = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
                else:
                    pixels = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
                return pixels[None]
    except (*_PILLOW_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetFormatError(
            f"{name!r} cannot be decoded ({type(exc).__name__}: {exc}); the image is corrupt or "
            "truncated — replace or remove it"
        ) from None


# ---------------------------------------------------------------------------------- tables


def _read_arrow_table(path: Path, fmt: str, limits: DatasetLimits) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json

    # With pyarrow: the web process imports this module without reading tables.
    from prunescope.workers.parquet_bounds import ParquetTooLarge, check_decoded_size, open_parquet

    label = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}[fmt]
    try:
        if fmt == "parquet":
            # Text columns read as dictionaries, and every column's decoded size bounded
            # from the footer before a page is read (see `parquet_bounds`).
            parquet = open_parquet(path)
            meta = parquet.metadata
            if meta.num_rows > limits.max_examples:
                _check_size(meta.num_rows, 1, 1, limits, "the Parquet file")
            if meta.num_columns > limits.max_columns:
                raise DatasetFormatError(
                    f"the file has {meta.num_columns:,} columns, more than the limit of "
                    f"{limits.max_columns:,}"
                )
            try:
                check_decoded_size(parquet, limits.max_bytes, what="the Parquet file")
            except ParquetTooLarge as exc:
                raise DatasetFormatError(str(exc)) from None
            table = parquet.read()
        elif fmt == "jsonl":
            table = pa_json.read_json(path, read_options=pa_json.ReadOptions(use_threads=False))
        else:
            table = pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(use_threads=False),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            )
        # Readers do not all check UTF-8 (JSON values, CSV headers); a full validation does.
        table.validate(full=True)
        table.column_names  # noqa: B018 - decodes the header; invalid UTF-8 raises here
        return table
    except DatasetFormatError:
        raise
    except (pa.ArrowException, ValueError, OSError, TypeError, KeyError, IndexError,
            UnicodeError, EOFError, OverflowError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetFormatError(
            f"the file is not valid {label} ({message[:300]}); check that it is complete and "
            f"well-formed"
        ) from None


def _read_table(path: Path, fmt: str, columns: ColumnNames, limits: DatasetLimits) -> _Raw:
    import pyarrow as pa
    import pyarrow.compute as pc

    from prunescope.workers.parquet_bounds import dictionary_text_size  # with pyarrow, as above

    table = _read_arrow_table(path, fmt, limits)
    names = list(table.column_names)
    if len(names) > limits.max_columns:
        raise DatasetFormatError(
            f"the file has {len(names):,} columns, more than the limit of {limits.max_columns:,}"
        )
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DatasetFormatError(f"column {duplicated[0]!r} appears twice; rename one of them")
    n = table.num_rows
    if n == 0:
        raise DatasetFormatError("the file has no rows; upload a file with examples")
    if n > limits.max_examples:
        _check_size(n, 1, 1, limits, "the file")
    if columns.label not in names:
        shown = ", ".join(map(repr, names[:20])) + (" …" if len(names) > 20 else "")
        raise DatasetFormatError(
            f"the file has no label column {columns.label!r} (its columns: {shown}); name the "
            "class column 'label' or choose the label column when uploading"
        )

    def column(name: str) -> Any:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):  # Parquet categoricals: their values count
            if not pa.types.is_integer(col.type.value_type) \
                    and not pa.types.is_floating(col.type.value_type):
                # Measured before it is expanded: strings become NumPy text, 4 bytes a
                # character of the longest value on every row.
                size, longest = dictionary_text_size(col)
                _check_size(n, max(size // max(n, 1), 1), 1, limits, f"column {name!r}")
                _check_size(n, max(longest, 1), 4, limits, f"column {name!r}")
            col = pc.cast(col, col.type.value_type)
        if col.null_count:
            row = int(pc.index(pc.is_null(col), True).as_py())
            raise DatasetFormatError(
                f"column {name!r} has a missing value in row {row + 1}; fill or drop it"
            )
        return col

    def scalars(name: str, what: str) -> np.ndarray:
        col = column(name)
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            longest = pc.max(pc.utf8_length(col)).as_py() or 0
            if longest > limits.max_name_chars:
                raise DatasetFormatError(
                    f"column {name!r} has a value of {longest:,} characters; {what} may have at "
                    f"most {limits.max_name_chars}"
                )
            values = col.to_numpy(zero_copy_only=False)
            return np.array(values.tolist(), dtype=np.str_) if len(values) else np.zeros(0, "U1")
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            return np.asarray(col.to_numpy(zero_copy_only=False))
        raise DatasetFormatError(
            f"column {name!r} holds {t} values; {what} must be integers or strings"
        )

    reserved = {columns.label, columns.id, columns.group, columns.split, columns.text}
    labels = scalars(columns.label, "labels")
    ids = scalars(columns.id, "ids") if columns.id in names else None
    groups = scalars(columns.group, "groups") if columns.group in names else None
    split = scalars(columns.split, "split values") if columns.split in names else None
    if columns.text in names:
        col = column(columns.text)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DatasetFormatError(
                f"text column {columns.text!r} holds {col.type} values, not text"
            )
        lengths = pc.utf8_length(col)
        if pc.min(lengths).as_py() == 0:
            row = int(pc.index(lengths, pa.scalar(0, lengths.type)).as_py())
            raise DatasetFormatError(
                f"text column {columns.text!r} is empty in row {row + 1}; drop that row or give "
                "it a text"
            )
        longest = pc.max(lengths).as_py() or 0
        if longest > limits.max_text_chars:
            raise DatasetFormatError(
                f"a text in column {columns.text!r} has {longest:,} characters, more than the "
                f"limit of {limits.max_text_chars:,}; shorten or split it"
            )
        _check_size(n, max(int(longest), 1), 4, limits, "the texts")
        texts = np.array(col.to_pylist(), dtype=np.str_)
        return _Raw(kind="text", x=None, labels=labels, texts=_texts(texts, limits), ids=ids,
                    groups=groups, split=split)
    features = [c for c in names if c not in reserved]
    if not features:
        raise DatasetFormatError(
            f"the file has no feature columns: besides {columns.label!r} it needs numeric "
            f"feature columns, or a text column {columns.text!r}"
        )
    _check_size(n, len(features), 4, limits, "the file")
    x = np.empty((n, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        col = column(name)
        t = col.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_decimal(t)):
            raise DatasetFormatError(
                f"feature column {name!r} holds {t} values; features must be numbers — encode "
                f"it as numbers, drop it, or name it {columns.id!r}/{columns.group!r} if it is "
                "an id or a group"
            )
        try:
            # Unsafe: an integer past 2**53 becomes the nearest float instead of an error.
            values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        except pa.ArrowException as exc:
            raise DatasetFormatError(
                f"feature column {name!r} cannot be read as numbers ({exc}); fix its values"
            ) from None
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused below
            x[:, j] = values
        if not np.isfinite(x[:, j]).all():
            row = int(np.flatnonzero(~np.isfinite(x[:, j]))[0])
            raise DatasetFormatError(
                f"feature column {name!r} holds NaN or an infinite value in row {row + 1}; fill "
                "or drop such rows"
            )
    return _Raw(kind="tabular", x=x, labels=labels, ids=ids, groups=groups, split=split,
                feature_names=tuple(features))


# -------------------------------------------------------------------------------- preview


def _thumbnail(example: np.ndarray) -> str:
    """A small PNG data URI of one (C, H, W) or (H, W) example."""
    from PIL import Image

    pixels = example if example.ndim == 2 else example.transpose(1, 2, 0)
    if pixels.ndim == 3:
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3]
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:  # not in [0, 1]: stretch its own range for display
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    if max(image.size) > THUMBNAIL_SIDE:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample(y: np.ndarray, count: int) -> list[int]:
    """Up to `count` indices, one per class in turn, so a preview shows every class early."""
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    picked: list[int] = []
    rank = 0
    while len(picked) < count and any(rank < len(ix) for ix in by_class):
        picked += [int(ix[rank]) for ix in by_class if rank < len(ix)]
        rank += 1
    return picked[:count]


def _short(value: float) -> float:
    return float(f"{value:.4g}")


def preview(data: ClassificationData, split_rule: str | None = None) -> dict[str, Any]:
    """JSON-able summary the dashboard draws: sizes, class counts and a few examples.

    Images get up to 24 thumbnails (PNG data URIs, at most 64 px a side) cycling through the
    classes; tabular and text datasets the first 10 training rows (16 features at most,
    texts cut at 300 characters).
    """
    shown_names = list(data.class_names[:1000])
    summary: dict[str, Any] = {
        "kind": data.kind,
        "input_shape": list(data.input_shape),
        "num_train": data.num_train,
        "num_test": data.num_test,
        "num_classes": data.num_classes,
        "class_names": shown_names,
        "class_names_truncated": len(data.class_names) > len(shown_names),
        "class_counts": {
            "train": np.bincount(data.y_train, minlength=data.num_classes).tolist(),
            "test": np.bincount(data.y_test, minlength=data.num_classes).tolist(),
        },
        "split_rule": split_rule,
        "has_ids": data.ids_train is not None,
        "num_groups": (
            int(np.unique(np.concatenate([data.groups_train, data.groups_test])).size)
            if data.groups_train is not None
            else None
        ),
        "feature_names": list(data.feature_names[:PREVIEW_FEATURES]),
        "num_features": int(np.prod(data.input_shape)) if data.kind == "tabular" else None,
    }
    indices = (
        _sample(data.y_train, PREVIEW_IMAGES)
        if data.kind == "image"
        else list(range(min(PREVIEW_ROWS, data.num_train)))
    )
    examples = []
    for i in indices:
        example: dict[str, Any] = {
            "split": "train",
            "label": int(data.y_train[i]),
            "class_name": data.class_names[int(data.y_train[i])],
            "id": str(data.ids_train[i]) if data.ids_train is not None else None,
            "group": str(data.groups_train[i]) if data.groups_train is not None else None,
        }
        if data.kind == "image":
            example["image"] = _thumbnail(data.x_train[i])
        elif data.kind == "text":
            example["text"] = str(data.texts_train[i])[:300]
        else:
            example["values"] = [_short(v) for v in data.x_train[i].ravel()[:PREVIEW_FEATURES]]
        examples.append(example)
    summary["examples"] = examples
    return summary
