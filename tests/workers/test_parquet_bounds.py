"""Parquet files are measured from their footer and dictionaries before they are decoded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prunescope.workers.dataset_formats import DatasetFormatError, DatasetLimits, read_dataset_file
from prunescope.workers.parquet_bounds import (
    ParquetTooLarge,
    check_decoded_size,
    dictionary_text_size,
    open_parquet,
)
from tests.server.hostile_files import repeated_text_parquet


def test_the_footer_estimate_counts_rows_times_widths(tmp_path):
    path = tmp_path / "t.parquet"
    # Constant columns compress to almost nothing; decoded they are rows × 8 bytes each.
    pq.write_table(pa.table({f"f{i}": np.zeros(100_000) for i in range(5)}), path)
    assert path.stat().st_size < 100_000
    parquet = open_parquet(path)
    assert check_decoded_size(parquet, 10**7, what="t") == 5 * 8 * 100_000
    with pytest.raises(ParquetTooLarge, match="about 4,000,000 bytes once read"):
        check_decoded_size(parquet, 3_000_000, what="t")
    assert check_decoded_size(parquet, 10**6, what="t", columns=["f0"]) == 800_000


def test_nested_columns_are_refused_before_reading(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"label": [0, 1], "f": pa.array([[0.0] * 3, [1.0] * 3])}), path)
    with pytest.raises(ParquetTooLarge, match="column 'f' of t holds nested"):
        check_decoded_size(open_parquet(path), 10**9, what="t")


def test_text_reads_as_a_dictionary_measured_before_it_is_expanded(tmp_path):
    path = tmp_path / "r.parquet"
    path.write_bytes(repeated_text_parquet(10_000, 500))
    table = open_parquet(path).read()
    assert pa.types.is_dictionary(table.column("text").type)  # one value, kept once
    assert dictionary_text_size(table.column("text")) == (5_000_000, 500)
    with pytest.raises(DatasetFormatError, match="column 'text' needs 20,000,000 bytes"):
        read_dataset_file(path, name="r", filename="r.parquet", columns=None,
                          limits=DatasetLimits(max_bytes=10_000_000), scratch_dir=str(tmp_path))
