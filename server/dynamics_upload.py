"""Training runs recorded by the user's own training loop, uploaded to join the dynamics analysis.

An uploaded run becomes the same two results a `train_dynamics` job writes: "dynamics_run",
the per-example trajectories as canonical Parquet (`DynamicsWriter`'s schema, one row group
per epoch), and "dynamics_meta", an npz with the run's probe suites, trained labels and
test predictions. The "dynamics" job then reads it like any recorded run.

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
  `prunescope.workers.metrics.dynamics.split_probe_suites` with seed 0) and `label` (the label the run
  trained on where the user changed it, e.g. for mislabeled probes; an empty cell keeps the
  dataset's label). Examples without a row are in no suite. Runs analysed together need the
  same probes, so upload the same probes file with each of them.
- test predictions: columns `example` (0 … M−1) and `prediction`, one row per example of the
  active dataset's test split, from the run's final model.

Only what a run records is stored: the meta's per-epoch `test_accuracy` and `sparsity` hold
the final values (test accuracy computed from the test predictions, the declared sparsity) in
their last entry and NaN before it, and `train_loss` is all NaN (not recorded).

Nothing is half-written: everything is read and checked first, the two canonical files are
built in a scratch folder inside the store, and only then enter the store and the database
(one transaction). A refused upload raises InvalidInput (422), TooLarge (413), Conflict (409)
or NotFound (404) with a message saying what to fix.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from prunescope.server import dataset_service
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.schemas import ResultPublic
from prunescope.server.services import (
    Conflict,
    InvalidInput,
    TooLarge,
    _get_or_404,
    _store,
    require_project,
)
from prunescope.server.storage import UploadTooLarge, sha256_file
from prunescope.server.tables import AnalysisResult, Job, Project

RUN_MODES = ("dense", "gmp", "finetune")
RUN_RESULT_KINDS = ("dynamics_run", "dynamics_meta", "run_weights")
PARQUET_MAGIC = b"PAR1"
MAX_SUITES = 127  # suite codes are int8, −1 meaning "no suite"
_SNIFF_BYTES = 64 * 1024
_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


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


# ------------------------------------------------------------------------------ reading files


def stage_upload(
    chunks: Iterable[bytes], filename: str, what: str, settings: Settings | None = None
) -> Path:
    """Stream one uploaded file into the store's staging folder, keeping its extension.

    Raises TooLarge past `settings.max_upload_bytes`; the caller removes the staged file.
    """
    settings = settings or get_settings()
    suffix = Path(filename or "").suffix.lower()
    try:
        staged, _digest, _size = _store(settings).write_stream(
            chunks, max_bytes=settings.max_upload_bytes,
            suffix=suffix if _SUFFIX.fullmatch(suffix) else "",
        )
    except UploadTooLarge as exc:
        raise TooLarge(
            f"the {what} file: {exc}; raise PRUNESCOPE_MAX_UPLOAD_BYTES if it is expected"
        ) from exc
    return staged


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
    """"parquet" or "csv", by content; InvalidInput for anything else."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput(f"the {what} file is empty")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        f.seek(max(0, size - len(PARQUET_MAGIC)))
        tail = f.read()
    if head.startswith(PARQUET_MAGIC):
        if size < 2 * len(PARQUET_MAGIC) + 4 or tail != PARQUET_MAGIC:
            raise InvalidInput(
                f"the {what} file is cut short: a Parquet file ends with its footer and PAR1, "
                "this one does not; close the writer (ParquetWriter, DynamicsWriter) before "
                "uploading, and upload the whole file again"
            )
        return "parquet"
    if path.suffix in (".parquet", ".pq"):
        raise InvalidInput(
            f"the {what} file is named {path.suffix} but is not Parquet (a Parquet file starts "
            "with PAR1); write it with pandas.DataFrame.to_parquet or pyarrow.parquet"
        )
    if not _is_text(head):
        raise InvalidInput(
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
    import pyarrow as pa

    if column.arrow_type == "string":
        return 64
    return max(1, pa.type_for_alias(column.arrow_type).bit_width // 8)


def _read_columns(
    path: Path, what: str, columns: Sequence[_Column], settings: Settings
) -> dict[str, np.ndarray]:
    """The named columns of a CSV or Parquet file as NumPy arrays of the columns' types.

    Checks: required columns present, no empty values (except nullable columns, whose
    validity comes back as `<name>_given`), values convertible without loss, floats finite.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    fmt = _file_format(path, what)
    try:
        if fmt == "parquet":
            with pq.ParquetFile(path) as parquet:
                names = parquet.schema_arrow.names
                present = [c for c in columns if c.name in names]
                # Parquet compresses well: bound what the columns take once decoded.
                decoded = parquet.metadata.num_rows * sum(map(_row_bytes, present))
                if decoded > settings.max_upload_bytes:
                    raise TooLarge(
                        f"the {what} file holds {parquet.metadata.num_rows} rows, about "
                        f"{decoded} bytes once read, above the upload limit of "
                        f"{settings.max_upload_bytes} bytes; raise PRUNESCOPE_MAX_UPLOAD_BYTES "
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
        raise InvalidInput(f"the {what} file cannot be read as {fmt.upper()} ({exc})") from exc
    missing = [c.name for c in columns if c.required and c not in present]
    if missing:
        shown = ", ".join(map(str, names[:10])) + (" …" if len(names) > 10 else "")
        raise InvalidInput(
            f"the {what} file lacks the column(s) {', '.join(missing)}; it needs "
            f"{_required_text(columns)} and has {shown or 'none'}"
        )
    out: dict[str, np.ndarray] = {}
    for column in present:
        values = table.column(column.name)
        kind = "text" if column.arrow_type == "string" else column.arrow_type
        if column.nullable:
            out[f"{column.name}_given"] = pc.is_valid(values).to_numpy(zero_copy_only=False)
        elif values.null_count:
            first = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
            nan = " or NaN" if kind.startswith("float") and fmt == "csv" else ""
            raise InvalidInput(
                f"column {column.name!r} of the {what} file has {values.null_count} empty"
                f"{nan} value(s), the first in data row {first + 1}; every row needs one"
            )
        try:
            values = pc.cast(values, pa.type_for_alias(column.arrow_type))
            if column.nullable:  # the filler is masked out by `<name>_given`
                values = values.fill_null(0)
            array = values.to_numpy(zero_copy_only=False)
        except pa.ArrowException as exc:
            raise InvalidInput(
                f"column {column.name!r} of the {what} file must hold {kind} values ({exc})"
            ) from exc
        if kind.startswith("float") and not np.all(np.isfinite(array)):
            first = int(np.flatnonzero(~np.isfinite(array))[0])
            raise InvalidInput(
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
        raise InvalidInput(
            f"the {what} file names example ids outside 0…{size - 1} ({shown}); ids are "
            f"positions in the {split} split of the project's active dataset {dataset!r}, "
            f"which has {size} examples"
        )


def _check_classes(values: np.ndarray, num_classes: int, what: str, column: str) -> None:
    outside = (values < 0) | (values >= num_classes)
    if outside.any():
        shown = ", ".join(map(str, np.unique(values[outside])[:5]))
        raise InvalidInput(
            f"column {column!r} of the {what} file holds classes outside 0…{num_classes - 1} "
            f"({shown}); the active dataset has {num_classes} classes"
        )


def _trajectories(cols: dict[str, np.ndarray], data: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(epochs [E], {"loss", "prediction", "p_gold", "margin": [E, N]}) in training order."""
    what, n = "trajectories", data.num_train
    example, epoch = cols["example"], cols["epoch"]
    if example.size == 0:
        raise InvalidInput("the trajectories file holds no rows")
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
        raise InvalidInput(
            f"epoch {epochs[bad[0]]} of the trajectories {detail}; record every training "
            f"example (ids 0…{n - 1}) exactly once per epoch"
        )
    p_gold = cols["p_gold"]
    if np.any((p_gold < 0) | (p_gold > 1)):
        raise InvalidInput("column 'p_gold' of the trajectories file must hold probabilities "
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
    from prunescope.workers.analyses.dynamics_training import PROBE_CATEGORIES, RANDOM_INPUTS

    known = (*PROBE_CATEGORIES, RANDOM_INPUTS)
    names = set(distinct.tolist())
    return tuple(c for c in known if c in names) + tuple(sorted(names - set(known)))


def _probe_suites(cols: dict[str, np.ndarray], data: Any) -> tuple[Any, np.ndarray]:
    """(ProbeSuites over the training split, labels as trained int64 [N])."""
    from prunescope.workers.analyses.dynamics_training import NOT_A_PROBE, ProbeSuites
    from prunescope.workers.metrics.dynamics import split_probe_suites

    what, n = "probes", data.num_train
    example, names = cols["example"], np.char.strip(cols["suite"])
    if example.size == 0:
        raise InvalidInput("the probes file holds no rows; list at least one probe per suite")
    _check_ids(example, n, what, "training", data.name)
    repeated = np.flatnonzero(np.bincount(example, minlength=n) > 1)
    if repeated.size:
        raise InvalidInput(
            f"example(s) {', '.join(map(str, repeated[:5]))} appear in more than one row of "
            "the probes file; each probe belongs to exactly one suite"
        )
    if np.any(names == ""):
        raise InvalidInput("column 'suite' of the probes file has empty names; name every "
                           "probe's suite (e.g. typical, atypical, mislabeled, corrupted)")
    distinct, inverse = np.unique(names, return_inverse=True)
    categories = _suite_order(distinct)
    if len(categories) > MAX_SUITES:
        raise InvalidInput(f"the probes file names {len(categories)} suites; use at most "
                           f"{MAX_SUITES}")
    codes = np.array([categories.index(name) for name in distinct.tolist()])[inverse]
    suite = np.full(n, NOT_A_PROBE, dtype=np.int8)
    suite[example] = codes
    reference = np.zeros(n, dtype=bool)
    if "reference" in cols:
        reference[example] = cols["reference"]
        lacking = [c for i, c in enumerate(categories) if not reference[suite == i].any()]
        if lacking:
            raise InvalidInput(
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
        raise InvalidInput(
            f"the test predictions file has {example.size} rows, the test split of the "
            f"project's active dataset {data.name!r} has {m} examples; give one prediction "
            f"per test example (ids 0…{m - 1})"
        )
    _check_ids(example, m, what, "test", data.name)
    count = np.bincount(example, minlength=m)
    if np.any(count != 1):
        missing, repeated = np.flatnonzero(count == 0), np.flatnonzero(count > 1)
        raise InvalidInput(
            f"the test predictions file repeats example(s) {', '.join(map(str, repeated[:5]))} "
            f"and lacks {', '.join(map(str, missing[:5]))}; give each test example one row"
        )
    _check_classes(cols["prediction"], data.num_classes, what, "prediction")
    predictions = np.empty(m, dtype=np.int64)
    predictions[example] = cols["prediction"]
    return predictions


def _checked_run(run: str, mode: str, sparsity: float, seed: int) -> tuple[str, float]:
    run = (run or "").strip()
    if not run or len(run) > 200:
        raise InvalidInput("run must be a non-empty name of at most 200 characters")
    if mode not in RUN_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(RUN_MODES)}, got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")
    try:
        sparsity = float(sparsity)
    except (TypeError, ValueError):
        raise InvalidInput(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise InvalidInput(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if mode == "dense" and sparsity != 0.0:
        raise InvalidInput(f"a dense run has sparsity 0, got {sparsity}; give a pruned run "
                           "mode 'gmp' or 'finetune'")
    if mode != "dense" and sparsity == 0.0:
        raise InvalidInput(f"a {mode} run needs its final sparsity, a number in (0, 1)")
    return run, sparsity


def _check_run_name_free(session: Any, project_id: int, run: str) -> None:
    """Conflict when the project has recorded `run` or a queued job will record it."""
    from prunescope.workers.jobspec import run_name

    recorded = session.scalars(select(AnalysisResult.summary).where(
        AnalysisResult.project_id == project_id, AnalysisResult.kind.in_(RUN_RESULT_KINDS)))
    if any((summary or {}).get("run") == run for summary in recorded):
        raise Conflict(f"a training run named {run!r} is already recorded in this project; "
                       "choose another run name")
    pending = session.scalars(select(Job).where(
        Job.project_id == project_id, Job.kind == "train_dynamics",
        Job.state.in_(("queued", "running"))))
    for job in pending:
        if run_name(job.params or {}) == run:
            raise Conflict(f"job {job.id} (train_dynamics, {job.state}) will record a run named "
                           f"{run!r}; choose another run name")


def _active_data(project_id: int, settings: Settings) -> Any:
    from prunescope.workers.datasets import load_builtin, load_canonical
    from prunescope.workers.jobspec import JobInputError

    dataset = dataset_service.active_dataset(project_id, settings)
    if dataset is None:
        raise InvalidInput("this project has no dataset; add one before uploading a run")
    try:
        if dataset.artifact_digest:
            path = _store(settings).open_path(dataset.artifact_digest)
            return load_canonical(path, dataset.name)
        return load_builtin(dataset.builtin_name or "")
    except JobInputError as exc:
        raise InvalidInput(f"the active dataset cannot be read: {exc}") from exc


# ------------------------------------------------------------------------------ the service


def add_dynamics_run(
    project_id: int,
    trajectories: Path,
    probes: Path,
    test_predictions: Path,
    *,
    run: str,
    mode: str,
    sparsity: float,
    seed: int,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Validate a run recorded elsewhere and store it as "dynamics_run" + "dynamics_meta".

    The three files are CSV or Parquet (formats in the module docstring); they are read, not
    consumed. `mode` is dense, gmp or finetune; `sparsity` is in [0, 1), 0 exactly for dense
    and above 0 otherwise; `run` names the run, unique in the project. Returns {"run",
    "summary", "results": [ResultPublic of dynamics_run, dynamics_meta]}; the summary is
    {"run", "mode", "sparsity", "seed", "epochs", "test_accuracy", "source": "upload"}.
    """
    from prunescope.workers.analyses.dynamics_training import DynamicsWriter, read_dynamics

    settings = settings or get_settings()
    run, sparsity = _checked_run(run, mode, sparsity, seed)
    require_project(project_id, "edit", settings)
    with session_scope(settings) as s:
        _check_run_name_free(s, project_id, run)
    files = {"trajectories": Path(trajectories), "probes": Path(probes),
             "test predictions": Path(test_predictions)}
    for what, path in files.items():
        if path.stat().st_size > settings.max_upload_bytes:
            raise TooLarge(f"the {what} file exceeds the upload limit of "
                           f"{settings.max_upload_bytes} bytes; raise PRUNESCOPE_MAX_UPLOAD_BYTES "
                           "if it is expected")
    data = _active_data(project_id, settings)
    epochs, records = _trajectories(
        _read_columns(files["trajectories"], "trajectories", TRAJECTORY_COLUMNS, settings), data)
    suites, train_labels = _probe_suites(
        _read_columns(files["probes"], "probes", PROBE_COLUMNS, settings), data)
    predictions = _test_predictions(_read_columns(
        files["test predictions"], "test predictions", TEST_PREDICTION_COLUMNS, settings), data)
    y_test = np.asarray(data.y_test, dtype=np.int64)
    test_accuracy = float(np.mean(predictions == y_test)) if y_test.size else math.nan

    def final_only(value: float) -> np.ndarray:
        per_epoch = np.full(epochs.size, np.nan)
        per_epoch[-1] = value
        return per_epoch

    summary = {"run": run, "mode": mode, "sparsity": round(sparsity, 6), "seed": int(seed),
               "epochs": int(epochs.size), "test_accuracy": test_accuracy, "source": "upload"}
    store = _store(settings)
    work_dir = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="dynamics-"))
    added: list[str] = []
    try:
        parquet, meta = work_dir / "dynamics.parquet", work_dir / "meta.npz"
        with DynamicsWriter(parquet, data.num_train) as writer:
            for i, epoch in enumerate(epochs):
                writer(int(epoch), {name: values[i] for name, values in records.items()})
        try:
            read_dynamics(parquet)
        except ValueError as exc:
            raise InvalidInput(f"the trajectories cannot be stored: {exc}") from exc
        np.savez(meta, **suites.to_arrays(), train_labels=train_labels,
                 test_predictions=predictions, test_labels=y_test,
                 test_accuracy=final_only(test_accuracy), sparsity=final_only(sparsity),
                 train_loss=np.full(epochs.size, np.nan))
        digests = {}
        for kind, path in (("dynamics_run", parquet), ("dynamics_meta", meta)):
            digest = sha256_file(path)
            if not store.exists(digest):
                added.append(digest)
            digests[kind] = store.adopt(path, digest)
        with session_scope(settings) as s:
            _get_or_404(s, Project, project_id, "project", need="edit")
            _check_run_name_free(s, project_id, run)
            rows = [AnalysisResult(project_id=project_id, job_id=None, kind=kind,
                                   artifact_digest=digest, summary=dict(summary))
                    for kind, digest in digests.items()]
            s.add_all(rows)
            s.flush()
            results = [ResultPublic.model_validate(row) for row in rows]
    except BaseException:
        # Files another result already shared are left alone; only this upload's are removed.
        for digest in added:
            store.path(digest).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {"run": run, "summary": summary, "results": results}
