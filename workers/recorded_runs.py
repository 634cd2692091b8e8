"""A training run recorded by the user's own training loop, read from its three uploaded files
and checked against the dataset it trained on (the dynamics upload's validation).

Three files, each CSV (with a header row) or Parquet, told apart by content (a Parquet file
starts and ends with `PAR1`); they are read with pyarrow only, never unpickled:

- trajectories: one row per training example per epoch, columns `example` (position in the
  training split of the project's active dataset, 0 … N−1), `epoch` (any integers; only
  their order counts), `loss` (the per-example loss of an evaluation pass after that epoch),
  `prediction` (top-1 class) and `p_gold` (probability of the label as trained), and
  optionally `margin` (the label's logit minus the largest other one; stored as NaN when
  absent, since no statistic needs it). `prediction` and `p_gold` are required: forgetting
  events, the learned epoch, cartography and training-set PIEs all need them. Every
  example must appear exactly once in every epoch.
- probes: one row per MAP-D probe, columns `example` and `suite` (the suite's name, e.g.
  typical, atypical, mislabeled, corrupted), optionally `reference` (true for the kNN
  references; without the column each suite is split in halves by
  `prunescope.workers.metrics.dynamics.split_probe_suites` with seed 0) and `label` (the label
  the run trained on where the user changed it, e.g. for mislabeled probes; an empty cell
  keeps the dataset's label). Examples without a row are in no suite. Runs analysed together
  need the same probes, so upload the same probes file with each of them.
- test predictions: columns `example` (0 … M−1) and `prediction`, one row per example of the
  active dataset's test split, from the run's final model.

A file that cannot be used raises JobInputError (InputTooLarge past the size limit) with a
message naming the file, the column and the rows to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from prunescope.workers.analyses.dynamics_training import (
    NOT_A_PROBE,
    PROBE_CATEGORIES,
    RANDOM_INPUTS,
    ProbeSuites,
)
from prunescope.workers.datasets import ClassificationData
from prunescope.workers.jobspec import JobInputError
from prunescope.workers.metrics.dynamics import split_probe_suites
from prunescope.workers.parquet_bounds import dictionary_text_size, open_parquet

PARQUET_MAGIC = b"PAR1"
MAX_SUITES = 127  # suite codes are int8, −1 meaning "no suite"
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Column:
    name: str
    arrow_type: str  # a pyarrow type alias
    required: bool = True
    nullable: bool = False  # empty cells allowed (reported as a `<name>_given` mask)


TRAJECTORY_COLUMNS = (
    _Column("example", "int64"), _Column("epoch", "int32"), _Column("loss", "float32"),
    _Column("prediction", "int64"), _Column("p_gold", "float32"),
    _Column("margin", "float32", required=False),
)
PROBE_COLUMNS = (
    _Column("example", "int64"), _Column("suite", "string"),
    _Column("reference", "bool", required=False),
    _Column("label", "int64", required=False, nullable=True),
)
TEST_PREDICTION_COLUMNS = (_Column("example", "int64"), _Column("prediction", "int64"))


class InputTooLarge(JobInputError):
    """An input refused for its size (an HTTP caller gets 413); the message names the limit."""

    code = "too_large"


@dataclass(frozen=True)
class RecordedRun:
    """The checked contents of a recorded run's three files."""

    epochs: np.ndarray  # [E] the recorded epoch numbers, ascending
    records: dict[str, np.ndarray]  # loss, prediction, p_gold, margin: [E, N] in training order
    suites: ProbeSuites
    train_labels: np.ndarray  # int64 [N], the labels as trained
    test_predictions: np.ndarray  # int64 [M]


def read_recorded_run(trajectories: Path, probes: Path, test_predictions: Path,
                      data: ClassificationData, max_bytes: int) -> RecordedRun:
    """Read and check the three files of a run against `data`, the dataset it trained on."""
    epochs, records = _trajectories(
        _read_columns(trajectories, "trajectories", TRAJECTORY_COLUMNS, max_bytes), data)
    suites, train_labels = _probe_suites(
        _read_columns(probes, "probes", PROBE_COLUMNS, max_bytes), data)
    predictions = _test_predictions(_read_columns(
        test_predictions, "test predictions", TEST_PREDICTION_COLUMNS, max_bytes), data)
    return RecordedRun(epochs, records, suites, train_labels, predictions)


# ------------------------------------------------------------------------------ reading files


def _is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sniffed block may end inside a multi-byte character.
        return exc.start >= len(head) - 3 and len(head) == _SNIFF_BYTES
    return True


def _file_format(path: Path, what: str) -> str:
    """"parquet" or "csv", by content; JobInputError for anything else."""
    size = path.stat().st_size
    if size == 0:
        raise JobInputError(f"the {what} file is empty")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        f.seek(max(0, size - len(PARQUET_MAGIC)))
        tail = f.read()
    if head.startswith(PARQUET_MAGIC):
        if size < 2 * len(PARQUET_MAGIC) + 4 or tail != PARQUET_MAGIC:
            raise JobInputError(
                f"the {what} file is cut short: a Parquet file ends with its footer and PAR1, "
                "this one does not; close the writer (ParquetWriter, DynamicsWriter) before "
                "uploading, and upload the whole file again"
            )
        return "parquet"
    if path.suffix in (".parquet", ".pq"):
        raise JobInputError(
            f"the {what} file is named {path.suffix} but is not Parquet (a Parquet file starts "
            "with PAR1); write it with pandas.DataFrame.to_parquet or pyarrow.parquet"
        )
    if not _is_text(head):
        raise JobInputError(
            f"the {what} file is neither Parquet nor CSV text; write it with "
            "pandas.DataFrame.to_parquet or to_csv (pickles and npz files are not read)"
        )
    return "csv"


def _required_text(columns: Sequence[_Column]) -> str:
    required = ", ".join(c.name for c in columns if c.required)
    optional = ", ".join(c.name for c in columns if not c.required)
    return f"{required}" + (f" (optional: {optional})" if optional else "")


def _row_bytes(column: _Column) -> int:
    """Bytes a value of `column` takes once read (text: a generous guess)."""
    if column.arrow_type == "string":
        return 64
    return max(1, pa.type_for_alias(column.arrow_type).bit_width // 8)


def _check_text_size(values: pa.ChunkedArray, name: str, what: str, max_bytes: int) -> None:
    """InputTooLarge when a dictionary column would pass `max_bytes` once expanded to the
    NumPy text it becomes (4 bytes a character of its longest value, on every row)."""
    _size, longest = dictionary_text_size(values)
    needed = len(values) * max(longest, 1) * 4
    if needed > max_bytes:
        raise InputTooLarge(
            f"column {name!r} of the {what} file needs about {needed} bytes once read (values "
            f"of up to {longest} characters on {len(values)} rows), above the upload limit of "
            f"{max_bytes} bytes; raise PRUNESCOPE_MAX_UPLOAD_BYTES if it is expected"
        )


def _read_columns(
    path: Path, what: str, columns: Sequence[_Column], max_bytes: int
) -> dict[str, np.ndarray]:
    """The named columns of a CSV or Parquet file as NumPy arrays of the columns' types.

    Checks: required columns present, no empty values (except nullable columns, whose
    validity comes back as `<name>_given`), values convertible without loss, floats finite.
    """
    fmt = _file_format(path, what)
    try:
        if fmt == "parquet":
            # Text read as dictionaries: a repeated value stays one value until measured.
            with open_parquet(path) as parquet:
                names = parquet.schema_arrow.names
                present = [c for c in columns if c.name in names]
                # Parquet compresses well: bound what the columns take once decoded.
                decoded = parquet.metadata.num_rows * sum(map(_row_bytes, present))
                if decoded > max_bytes:
                    raise InputTooLarge(
                        f"the {what} file holds {parquet.metadata.num_rows} rows, about "
                        f"{decoded} bytes once read, above the upload limit of "
                        f"{max_bytes} bytes; raise PRUNESCOPE_MAX_UPLOAD_BYTES "
                        "if it is expected"
                    )
                table = parquet.read(columns=[c.name for c in present]) if present else None
        else:
            with pa_csv.open_csv(path) as reader:
                names = reader.schema.names
            present = [c for c in columns if c.name in names]
            table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
                include_columns=[c.name for c in present],
                column_types={c.name: pa.string() for c in present if c.arrow_type == "string"},
            )) if present else None
    except (OSError, pa.ArrowException) as exc:
        raise JobInputError(f"the {what} file cannot be read as {fmt.upper()} ({exc})") from exc
    missing = [c.name for c in columns if c.required and c not in present]
    if missing:
        shown = ", ".join(map(str, names[:10])) + (" …" if len(names) > 10 else "")
        raise JobInputError(
            f"the {what} file lacks the column(s) {', '.join(missing)}; it needs "
            f"{_required_text(columns)} and has {shown or 'none'}"
        )
    out: dict[str, np.ndarray] = {}
    for column in present:
        values = table.column(column.name)
        kind = "text" if column.arrow_type == "string" else column.arrow_type
        if pa.types.is_dictionary(values.type):
            _check_text_size(values, column.name, what, max_bytes)
        if column.nullable:
            out[f"{column.name}_given"] = pc.is_valid(values).to_numpy(zero_copy_only=False)
        elif values.null_count:
            first = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
            nan = " or NaN" if kind.startswith("float") and fmt == "csv" else ""
            raise JobInputError(
                f"column {column.name!r} of the {what} file has {values.null_count} empty"
                f"{nan} value(s), the first in data row {first + 1}; every row needs one"
            )
        try:
            values = pc.cast(values, pa.type_for_alias(column.arrow_type))
            if column.nullable:  # the filler is masked out by `<name>_given`
                values = values.fill_null(0)
            array = values.to_numpy(zero_copy_only=False)
        except pa.ArrowException as exc:
            raise JobInputError(
                f"column {column.name!r} of the {what} file must hold {kind} values ({exc})"
            ) from exc
        if kind.startswith("float") and not np.all(np.isfinite(array)):
            first = int(np.flatnonzero(~np.isfinite(array))[0])
            raise JobInputError(
                f"column {column.name!r} of the {what} file contains NaN or Inf, the first in "
                f"data row {first + 1}; every value must be a finite number"
            )
        out[column.name] = array.astype(np.str_) if kind == "text" else array
    return out


# ------------------------------------------------------------------------------ checking


def _check_ids(example: np.ndarray, size: int, what: str, split: str, dataset: str) -> None:
    outside = (example < 0) | (example >= size)
    if outside.any():
        shown = ", ".join(map(str, np.unique(example[outside])[:5]))
        raise JobInputError(
            f"the {what} file names example ids outside 0…{size - 1} ({shown}); ids are "
            f"positions in the {split} split of the project's active dataset {dataset!r}, "
            f"which has {size} examples"
        )


def _check_classes(values: np.ndarray, num_classes: int, what: str, column: str) -> None:
    outside = (values < 0) | (values >= num_classes)
    if outside.any():
        shown = ", ".join(map(str, np.unique(values[outside])[:5]))
        raise JobInputError(
            f"column {column!r} of the {what} file holds classes outside 0…{num_classes - 1} "
            f"({shown}); the active dataset has {num_classes} classes"
        )


def _trajectories(cols: dict[str, np.ndarray], data: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(epochs [E], {"loss", "prediction", "p_gold", "margin": [E, N]}) in training order."""
    what, n = "trajectories", data.num_train
    example, epoch = cols["example"], cols["epoch"]
    if example.size == 0:
        raise JobInputError("the trajectories file holds no rows")
    _check_ids(example, n, what, "training", data.name)
    epochs, code = np.unique(epoch, return_inverse=True)
    seen = np.bincount(code.reshape(-1) * n + example, minlength=epochs.size * n)
    seen = seen.reshape(epochs.size, n)
    bad = np.flatnonzero((seen != 1).any(axis=1))
    if bad.size:
        row = seen[bad[0]]
        lacks, repeats = np.flatnonzero(row == 0), np.flatnonzero(row > 1)
        detail = "; ".join(part for part in (
            f"lacks {lacks.size} example(s) ({', '.join(map(str, lacks[:5]))})" if lacks.size
            else "",
            f"repeats {repeats.size} ({', '.join(map(str, repeats[:5]))})" if repeats.size
            else "") if part)
        raise JobInputError(
            f"epoch {epochs[bad[0]]} of the trajectories {detail}; record every training "
            f"example (ids 0…{n - 1}) exactly once per epoch"
        )
    p_gold = cols["p_gold"]
    if np.any((p_gold < 0) | (p_gold > 1)):
        raise JobInputError("column 'p_gold' of the trajectories file must hold probabilities "
                           "in [0, 1] (the softmax probability of the label as trained)")
    _check_classes(cols["prediction"], data.num_classes, what, "prediction")
    order = np.lexsort((example, epoch))
    shape = (epochs.size, n)
    records = {name: cols[name][order].reshape(shape) for name in ("loss", "prediction",
                                                                  "p_gold")}
    records["margin"] = (cols["margin"][order].reshape(shape) if "margin" in cols
                         else np.full(shape, np.nan, dtype=np.float32))
    return epochs, records


def _suite_order(distinct: np.ndarray) -> tuple[str, ...]:
    """Suite names, the recorded runs' own suites first in their order, the others sorted,
    so an upload of a recorded run's suites matches that run."""
    known = (*PROBE_CATEGORIES, RANDOM_INPUTS)
    names = set(distinct.tolist())
    return tuple(c for c in known if c in names) + tuple(sorted(names - set(known)))


def _probe_suites(cols: dict[str, np.ndarray], data: Any) -> tuple[Any, np.ndarray]:
    """(ProbeSuites over the training split, labels as trained int64 [N])."""
    what, n = "probes", data.num_train
    example, names = cols["example"], np.char.strip(cols["suite"])
    if example.size == 0:
        raise JobInputError("the probes file holds no rows; list at least one probe per suite")
    _check_ids(example, n, what, "training", data.name)
    repeated = np.flatnonzero(np.bincount(example, minlength=n) > 1)
    if repeated.size:
        raise JobInputError(
            f"example(s) {', '.join(map(str, repeated[:5]))} appear in more than one row of "
            "the probes file; each probe belongs to exactly one suite"
        )
    if np.any(names == ""):
        raise JobInputError("column 'suite' of the probes file has empty names; name every "
                           "probe's suite (e.g. typical, atypical, mislabeled, corrupted)")
    distinct, inverse = np.unique(names, return_inverse=True)
    categories = _suite_order(distinct)
    if len(categories) > MAX_SUITES:
        raise JobInputError(f"the probes file names {len(categories)} suites; use at most "
                           f"{MAX_SUITES}")
    codes = np.array([categories.index(name) for name in distinct.tolist()])[inverse]
    suite = np.full(n, NOT_A_PROBE, dtype=np.int8)
    suite[example] = codes
    reference = np.zeros(n, dtype=bool)
    if "reference" in cols:
        reference[example] = cols["reference"]
        lacking = [c for i, c in enumerate(categories) if not reference[suite == i].any()]
        if lacking:
            raise JobInputError(
                f"suite(s) {', '.join(lacking)} have no reference probe (reference = true); "
                "MAP-D's kNN needs some in every suite: mark about half of each, or leave the "
                "column out to split every suite in halves"
            )
    else:
        index = np.sort(example)
        split = split_probe_suites(index, suite[index], seed=0)
        reference[split.reference_index] = True
    original = np.asarray(data.y_train, dtype=np.int64)
    trained = original.copy()
    if "label" in cols:
        given = cols["label_given"]
        _check_classes(cols["label"][given], data.num_classes, what, "label")
        trained[example[given]] = cols["label"][given]
    suites = ProbeSuites(categories, suite, reference, original.copy())
    return ProbeSuites.from_arrays(suites.to_arrays()), trained


def _test_predictions(cols: dict[str, np.ndarray], data: Any) -> np.ndarray:
    what, m = "test predictions", data.num_test
    example = cols["example"]
    if example.size != m:
        raise JobInputError(
            f"the test predictions file has {example.size} rows, the test split of the "
            f"project's active dataset {data.name!r} has {m} examples; give one prediction "
            f"per test example (ids 0…{m - 1})"
        )
    _check_ids(example, m, what, "test", data.name)
    count = np.bincount(example, minlength=m)
    if np.any(count != 1):
        missing, repeated = np.flatnonzero(count == 0), np.flatnonzero(count > 1)
        raise JobInputError(
            f"the test predictions file repeats example(s) {', '.join(map(str, repeated[:5]))} "
            f"and lacks {', '.join(map(str, missing[:5]))}; give each test example one row"
        )
    _check_classes(cols["prediction"], data.num_classes, what, "prediction")
    predictions = np.empty(m, dtype=np.int64)
    predictions[example] = cols["prediction"]
    return predictions
