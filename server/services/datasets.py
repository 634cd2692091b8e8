"""A project's evaluation datasets: builtins, uploads, previews, the active one.

An upload goes through the ingest path (`prunescope.server.services.ingest`): staged by the
request, read and fitted to the project's architecture by an `ingest_dataset` job on a worker
(`prunescope.workers.ingest.check_dataset`), and only then written as one canonical npz into
the content-addressed store and given its row (`adopt_checked`), so a refused file leaves
nothing behind. The original file is not kept: workers
read the canonical npz only (`prunescope.workers.datasets.load_canonical`).

Every project has exactly one active dataset, the one its jobs use (`prunescope.server.worker`
resolves it when a job starts). Projects start with a builtin; adding a dataset with
`active=True` or `set_active_dataset` moves the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from prunescope.server.access import get_or_404, require_project
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, InvalidInput, NotFound
from prunescope.server.schemas import DatasetDetail, DatasetPublic, JobPublic
from prunescope.server.services import ingest, projects, results
from prunescope.server.storage import artifact_store
from prunescope.server.tables import Dataset, Project
from prunescope.workers.jobs.analyze import SENTENCES
from prunescope.workers.text_arrays import unpack_texts

SUBJECT = "this dataset"  # the upload limit's message: "... if this dataset is expected"


def _described(row: Dataset) -> Dataset:
    # Builtin rows made by create_project (or before migration 0003) carry only their name.
    if row.source == "builtin" and row.kind is None and row.builtin_name:
        for key, value in ingest.builtin_dataset_metadata(row.builtin_name).items():
            setattr(row, key, value)
    return row


def _project_rows(session: Session, project_id: int, need: str = "view") -> list[Dataset]:
    get_or_404(session, Project, project_id, "project", need)
    rows = session.scalars(
        select(Dataset).where(Dataset.project_id == project_id).order_by(Dataset.id)
    ).all()
    return [_described(r) for r in rows]


# ---------------------------------------------------------------------------- reading


def list_datasets(project_id: int, settings: Settings | None = None) -> list[DatasetPublic]:
    with session_scope(settings) as s:
        return [DatasetPublic.model_validate(r) for r in _project_rows(s, project_id)]


def get_dataset(dataset_id: int, settings: Settings | None = None) -> DatasetDetail:
    with session_scope(settings) as s:
        row = get_or_404(s, Dataset, dataset_id, "dataset")
        return DatasetDetail.model_validate(_described(row))


def active_dataset(project_id: int, settings: Settings | None = None) -> DatasetPublic | None:
    """The dataset the project's jobs use (None for a project without datasets)."""
    datasets = list_datasets(project_id, settings)
    return next((d for d in datasets if d.active), datasets[0] if datasets else None)


def dataset_file(dataset_id: int, settings: Settings | None = None) -> tuple[Path, str]:
    """The canonical npz of an uploaded dataset, and the name to download it as."""
    settings = settings or get_settings()
    dataset = get_dataset(dataset_id, settings)
    if not dataset.artifact_digest:
        raise NotFound(
            f"dataset {dataset_id} is the builtin {dataset.builtin_name!r}; it has no stored file"
        )
    return artifact_store(settings).open_path(dataset.artifact_digest), f"{dataset.name}.npz"


def evaluation_sentences(project_id: int, settings: Settings | None = None) -> list[str]:
    """The active dataset's evaluation (test) sentences, in the order jobs index them (the
    attention viewer's `sentence`), as the newest analysis of that dataset stored them
    (`prunescope.workers.jobs.analyze.SENTENCES`); [] before one has run, and for a dataset
    without text. Read from the result, so the web process never loads a dataset."""
    settings = settings or get_settings()
    dataset = active_dataset(project_id, settings)
    if dataset is None:
        return []
    # Only sentences of the active dataset: an attention_maps job indexes into that one.
    _, arrays = results.newest_arrays(
        project_id, "evaluation", settings,
        where=lambda summary: summary.get("sentences_dataset") == dataset.name)
    return (unpack_texts(arrays, SENTENCES) or []) if arrays is not None else []


# ---------------------------------------------------------------------------- writing


def set_active_dataset(
    project_id: int, dataset_id: int, settings: Settings | None = None
) -> DatasetPublic:
    """Make `dataset_id` the dataset the project's jobs use from now on."""
    with session_scope(settings) as s:
        rows = _project_rows(s, project_id, need="edit")
        if not any(r.id == dataset_id for r in rows):
            raise NotFound(f"dataset {dataset_id} not found in project {project_id}")
        for row in rows:
            row.active = row.id == dataset_id
        return DatasetPublic.model_validate(next(r for r in rows if r.id == dataset_id))


def _name_taken(name: str) -> str:
    return f"a dataset named {name!r} already exists in this project; rename it"


def _checked_name(project_id: int, name: str | None, default: str, settings: Settings) -> str:
    """The name an addition will get; Conflict when the project already has it."""
    require_project(project_id, "edit", settings)
    name = (name or default or "dataset").strip()[:200]
    if not name:
        raise InvalidInput("the dataset name must not be empty")
    if any(d.name == name for d in list_datasets(project_id, settings)):
        raise Conflict(_name_taken(name))
    return name


def _insert(project_id: int, row: Dataset, active: bool, settings: Settings,
            adopted: ingest.Adopted | None = None,
            finish: Callable[[Session, dict[str, Any]], None] | None = None) -> DatasetDetail:
    """The row step: add `row` (the only active one if `active`, or if it is the first);
    `finish`, when given, records the ingest job's success in the same transaction."""

    def write(s: Session) -> DatasetDetail:
        get_or_404(s, Project, project_id, "project", need="edit")
        existing = s.scalars(select(Dataset).where(Dataset.project_id == project_id)).all()
        row.project_id = project_id
        row.active = active or not existing
        if row.active:
            for other in existing:
                other.active = False
        s.add(row)
        s.flush()
        if finish is not None:
            finish(s, {"dataset_id": row.id, "name": row.name, "format": row.format})
        return DatasetDetail.model_validate(row)

    return ingest.add_rows(settings, adopted or ingest.Adopted(), write,
                           conflict=_name_taken(row.name))


def add_builtin_dataset(
    project_id: int,
    builtin_name: str,
    *,
    name: str | None = None,
    active: bool = False,
    settings: Settings | None = None,
) -> DatasetDetail:
    """Add a builtin dataset (checked against the project's architecture) to the project."""
    settings = settings or get_settings()
    builtins = ingest.builtin_dataset_names()
    if builtin_name not in builtins:
        raise InvalidInput(
            f"unknown builtin dataset {builtin_name!r}; choose one of {', '.join(builtins)}"
        )
    name = _checked_name(project_id, name, builtin_name, settings)
    project = projects.get_project(project_id, settings)
    checked = ingest.check_builtin_dataset(builtin_name, architecture=project.architecture,
                                           config=project.architecture_config)
    row = Dataset(name=name, source="builtin", builtin_name=builtin_name, format=checked.format,
                  **checked.metadata)
    return _insert(project_id, row, active, settings)


def add_dataset(
    project_id: int,
    chunks: Iterable[bytes],
    *,
    filename: str = "dataset",
    name: str | None = None,
    active: bool = False,
    columns: Any = None,
    settings: Settings | None = None,
) -> JobPublic:
    """Stage an uploaded dataset file (any `UPLOAD_FORMATS`) and queue the job that reads,
    validates and stores it; `ingested(job)` waits for the stored dataset.

    `columns` (a `prunescope.workers.dataset_formats.ColumnNames`, or a mapping of its
    fields) names a table's label, text, id, group and split columns. Raises InvalidInput
    (422) naming the file and the problem, TooLarge (413) past the upload limit, Conflict
    (409) for a name the project already has.
    """
    settings = settings or get_settings()
    name = _checked_name(project_id, name, Path(filename).stem, settings)
    staged = ingest.stage_stream(chunks, settings, subject=SUBJECT)
    return _ingest(project_id, staged, filename=filename, name=name, active=active,
                   columns=columns, settings=settings)


def add_dataset_file(
    project_id: int,
    path: Path,
    *,
    digest: str | None = None,
    filename: str = "dataset",
    name: str | None = None,
    active: bool = False,
    columns: Any = None,
    settings: Settings | None = None,
) -> JobPublic:
    """Like `add_dataset` for a file already on the store's filesystem (a finished upload).

    The file is consumed whether or not it is accepted. `digest` (the upload's sha256) is
    accepted for symmetry with `checkpoints.add_checkpoint_file` and not needed: what is
    stored is the canonical npz made from the file, under its own digest.
    """
    del digest
    settings = settings or get_settings()
    try:
        name = _checked_name(project_id, name, Path(filename).stem, settings)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    staged = ingest.stage_file(path, settings, subject=SUBJECT)
    return _ingest(project_id, staged, filename=filename, name=name, active=active,
                   columns=columns, settings=settings)


def _ingest(
    project_id: int,
    staged: ingest.Staged,
    *,
    filename: str,
    name: str,
    active: bool,
    columns: Any,
    settings: Settings,
) -> JobPublic:
    """Queue the `ingest_dataset` job for a staged upload."""
    if columns is not None and not isinstance(columns, dict):
        columns = {k: v for k, v in vars(columns).items() if v is not None}
    return ingest.queue_check(
        settings, project_id, "ingest_dataset", {"upload": staged},
        {"filename": filename, "name": name, "active": active, "columns": columns},
    )


def adopt_checked(settings: Settings, job: ingest.IngestJob, checked: dict[str, Any],
                  finish: Callable[[Session, dict[str, Any]], None]) -> None:
    """Adopt the canonical npz `prunescope.workers.ingest.check_dataset` wrote and add the
    dataset's row; `finish` records the job's success in the same transaction."""
    p = job.params
    size = Path(job.inputs["upload"]).stat().st_size
    adopted = ingest.adopt(settings, {"canonical": (Path(checked["canonical_path"]), None)})
    row = Dataset(
        name=p["name"],
        source="upload",
        format=checked["format"],
        filename=Path(p["filename"]).name[:255],
        size_bytes=size,
        artifact_digest=adopted.digests["canonical"],
        **checked["metadata"],
    )
    _insert(job.project_id, row, p["active"], settings, adopted, finish=finish)


def ingested(job: JobPublic, settings: Settings | None = None,
             timeout: float | None = None) -> DatasetDetail | None:
    """The dataset an `ingest_dataset` job stored, once it has (None while it still runs
    after `timeout`); its refusal as the error the upload answers."""
    settings = settings or get_settings()
    return ingest.outcome(settings, job.id,
                          lambda summary: get_dataset(summary["dataset_id"], settings), timeout)


def add_labelled_dataset(
    project_id: int,
    chunks: Iterable[bytes],
    *,
    label_column: str = "label",
    filename: str = "dataset",
    name: str | None = None,
    active: bool = False,
    settings: Settings | None = None,
) -> JobPublic:
    """`add_dataset` with a table's label column named by its name (the other columns keep
    their default names), for the dashboard's upload form."""
    return add_dataset(project_id, chunks, filename=filename, name=name, active=active,
                       columns={"label": label_column}, settings=settings)
