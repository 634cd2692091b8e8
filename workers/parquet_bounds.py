"""Parquet uploads bounded by what they decode to, checked before any column is expanded.

Parquet compresses repeated values to almost nothing: one 913-character text repeated on a
million rows is a 0.1 MB file and 913 MB once read as plain strings (3.6 GB as the NumPy
text array a dataset becomes). So the readers here never trust the file size. They

- estimate each column's decoded size from the footer metadata alone (row count × width for
  fixed-width types; for strings and binaries, 4 bytes per row plus their uncompressed size,
  because they are read as dictionaries, which keep a repeated value once), refusing a file
  past the limit before reading a page, and nested columns (lists, structs, maps) whose
  repetition cannot be bounded that way;
- measure a dictionary-read string column's decoded size and longest value from its
  dictionary (`dictionary_text_size`) before it is expanded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class ParquetTooLarge(ValueError):
    """A Parquet file that would decode past the limit; the message names the column."""


def _is_text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t) or pa.types.is_dictionary(t) and _is_nested(t.value_type)


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """The file, opened so that its string and binary columns read as dictionaries."""
    schema = pq.read_schema(path)
    text = [f.name for f in schema if _is_text(f.type)]
    return pq.ParquetFile(path, read_dictionary=text)


def check_decoded_size(parquet: pq.ParquetFile, max_bytes: int, *, what: str,
                       columns: Sequence[str] | None = None) -> int:
    """The bytes `columns` (default: all) take once read from `parquet` (opened by
    `open_parquet`), estimated from the footer; ParquetTooLarge past `max_bytes` or for a
    nested column."""
    meta, schema = parquet.metadata, parquet.schema_arrow
    rows = meta.num_rows
    wanted = list(schema.names) if columns is None else list(columns)
    uncompressed: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            top = chunk.path_in_schema.split(".", 1)[0]
            uncompressed[top] = uncompressed.get(top, 0) + max(chunk.total_uncompressed_size, 0)
    total = 0
    for name in wanted:
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if _is_nested(t):
            raise ParquetTooLarge(
                f"column {name!r} of {what} holds nested {t} values; columns must hold "
                "numbers or text — flatten it or drop it"
            )
        if _is_text(t):
            size = 4 * rows + uncompressed.get(name, 0)
        else:
            size = rows * max(1, t.bit_width // 8)
        total += size
    if total > max_bytes:
        raise ParquetTooLarge(
            f"{what} holds {rows:,} rows, about {total:,} bytes once read, past the limit of "
            f"{max_bytes:,}; upload fewer rows or columns, or raise PRUNESCOPE_MAX_UPLOAD_BYTES"
        )
    return total


def dictionary_text_size(column: pa.ChunkedArray) -> tuple[int, int]:
    """(bytes, characters of the longest value) of a string column once decoded, computed
    from its dictionaries without expanding them; a plain column is measured as it is."""
    total = longest = 0
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            values, indices = chunk.dictionary, chunk.indices
        else:
            values, indices = chunk, None
        if len(values) == 0:
            continue
        text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        lengths = pc.binary_length(values)
        chars = pc.utf8_length(values) if text else lengths
        if indices is not None:
            lengths = pc.take(lengths, indices.drop_null())
        total += int(pc.sum(lengths).as_py() or 0)
        longest = max(longest, int(pc.max(chars).as_py() or 0))
    return total, longest
