"""Service layer for a project's evaluation datasets: builtins, uploads, previews, the active one.

An upload is streamed to a staging file, read by `prunescope.workers.dataset_formats` (in a scratch
folder inside the store, removed afterwards), checked against the project's architecture, and
only then written as one canonical npz into the content-addressed store and given its row, so
a refused file leaves nothing behind. The original file is not kept: workers read the
canonical npz only (`prunescope.workers.datasets.load_canonical`).

Every project has exactly one active dataset, the one its jobs use (`prunescope.server.worker` resolves
it when a job starts). Projects start with a builtin; adding a dataset with `active=True` or
`set_active_dataset` moves the flag.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.schemas import DatasetDetail, DatasetPublic, ProjectPublic
from prunescope.server.services import (
    Conflict,
    InvalidInput,
    NotFound,
    TooLarge,
    _get_or_404,
    _store,
    get_project,
    require_project,
)
from prunescope.server.storage import UploadTooLarge
from prunescope.server.tables import Dataset, Project


def _limits(settings: Settings) -> Any:
    from prunescope.workers.dataset_formats import DatasetLimits

    # Unpacked archives and in-memory arrays get the same budget as the upload itself.
    return DatasetLimits(max_bytes=settings.max_upload_bytes)


@lru_cache(maxsize=8)
def _builtin_metadata(builtin_name: str) -> dict[str, Any]:
    """Column values of a builtin dataset (immutable, so computed once per process)."""
    from prunescope.workers.dataset_formats import preview
    from prunescope.workers.datasets import BUILTIN_DATASETS, load_builtin

    if builtin_name not in BUILTIN_DATASETS:
        return {}
    data = load_builtin(builtin_name)
    return _metadata(data, preview(data, "stratified"))


def _metadata(data: Any, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": data.kind,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "preview": summary,
    }


def _described(row: Dataset) -> Dataset:
    # Builtin rows made by create_project (or before migration 0003) carry only their name.
    if row.source == "builtin" and row.kind is None and row.builtin_name:
        for key, value in _builtin_metadata(row.builtin_name).items():
            setattr(row, key, value)
    return row


def _project_rows(session: Any, project_id: int, need: str = "view") -> list[Dataset]:
    _get_or_404(session, Project, project_id, "project", need)
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
        row = _get_or_404(s, Dataset, dataset_id, "dataset")
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
    return _store(settings).open_path(dataset.artifact_digest), f"{dataset.name}.npz"


@lru_cache(maxsize=4)
def _test_texts(source: str, key: str) -> tuple[str, ...]:
    # key: a builtin's name or an upload's content digest, so the cache never goes stale.
    from prunescope.workers.datasets import load_builtin, load_canonical

    data = load_builtin(key) if source == "builtin" else load_canonical(source, key)
    return () if data.texts_test is None else tuple(str(t) for t in data.texts_test)


def evaluation_sentences(project_id: int, settings: Settings | None = None) -> list[str]:
    """The active dataset's evaluation (test) sentences, in the order jobs index them
    (the attention viewer's `sentence`); [] for a dataset without text."""
    settings = settings or get_settings()
    dataset = active_dataset(project_id, settings)
    if dataset is None:
        return []
    if dataset.builtin_name and not dataset.artifact_digest:
        return list(_test_texts("builtin", dataset.builtin_name))
    path, _ = dataset_file(dataset.id, settings)
    return list(_test_texts(str(path), dataset.name))


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


def _checked_name(project_id: int, name: str | None, default: str, settings: Settings) -> str:
    """The name an addition will get; Conflict when the project already has it."""
    require_project(project_id, "edit", settings)
    name = (name or default or "dataset").strip()[:200]
    if not name:
        raise InvalidInput("the dataset name must not be empty")
    if any(d.name == name for d in list_datasets(project_id, settings)):
        raise Conflict(f"a dataset named {name!r} already exists in this project; rename it")
    return name


def _fit_to_project(data: Any, project: ProjectPublic) -> Any:
    """`data`, declaring the project model's class count; JobInputError if it cannot read it."""
    from prunescope.models.hf import HF_ARCHITECTURE
    from prunescope.models.registry import create_model
    from prunescope.workers.datasets import ModelInput, check_data_fits, model_input, with_num_classes

    if project.architecture == HF_ARCHITECTURE and not project.architecture_config:
        # No model yet (its first checkpoint brings config.json): it will read text.
        expected = ModelInput("text", None, None)
    else:
        try:
            model = create_model(project.architecture, **project.architecture_config)
            expected = model_input(model)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the project's architecture cannot be built: {exc}") from exc
    if expected.num_outputs is not None and data.num_classes < expected.num_outputs:
        data = with_num_classes(data, expected.num_outputs)
    check_data_fits(data, expected)
    return data


def _insert(
    project_id: int, row: Dataset, active: bool, settings: Settings
) -> DatasetDetail:
    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="edit")
        existing = s.scalars(select(Dataset).where(Dataset.project_id == project_id)).all()
        row.project_id = project_id
        row.active = active or not existing
        if row.active:
            for other in existing:
                other.active = False
        s.add(row)
        try:
            s.flush()
        except IntegrityError:
            raise Conflict(
                f"a dataset named {row.name!r} already exists in this project; rename it"
            ) from None
        return DatasetDetail.model_validate(row)


def add_builtin_dataset(
    project_id: int,
    builtin_name: str,
    *,
    name: str | None = None,
    active: bool = False,
    settings: Settings | None = None,
) -> DatasetDetail:
    """Add a builtin dataset (checked against the project's architecture) to the project."""
    from prunescope.workers.datasets import BUILTIN_DATASETS, load_builtin
    from prunescope.workers.jobspec import JobInputError

    settings = settings or get_settings()
    if builtin_name not in BUILTIN_DATASETS:
        raise InvalidInput(
            f"unknown builtin dataset {builtin_name!r}; choose one of "
            f"{', '.join(sorted(BUILTIN_DATASETS))}"
        )
    name = _checked_name(project_id, name, builtin_name, settings)
    try:
        _fit_to_project(load_builtin(builtin_name), get_project(project_id, settings))
    except JobInputError as exc:
        raise InvalidInput(f"{builtin_name}: {exc}") from exc
    row = Dataset(name=name, source="builtin", builtin_name=builtin_name, format="builtin")
    for key, value in _builtin_metadata(builtin_name).items():
        setattr(row, key, value)
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
) -> DatasetDetail:
    """Read, validate and store an uploaded dataset file (any `UPLOAD_FORMATS`).

    `columns` (a `prunescope.workers.dataset_formats.ColumnNames`) names a table's label, text, id, group
    and split columns. Raises InvalidInput (422) naming the file and the problem, TooLarge
    (413) past the upload limit, Conflict (409) for a name the project already has.
    """
    settings = settings or get_settings()
    name = _checked_name(project_id, name, Path(filename).stem, settings)
    try:
        staged, _digest, size = _store(settings).write_stream(
            chunks, max_bytes=settings.max_upload_bytes
        )
    except UploadTooLarge as exc:
        raise TooLarge(
            f"{exc}; raise PRUNESCOPE_MAX_UPLOAD_BYTES if this dataset is expected"
        ) from exc
    return _adopt_dataset(project_id, staged, size, filename=filename, name=name, active=active,
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
) -> DatasetDetail:
    """Like `add_dataset` for a file already on the store's filesystem (a finished upload).

    The file is consumed whether or not it is accepted. `digest` (the upload's sha256) is
    accepted for symmetry with `services.add_checkpoint_file` and not needed: what is stored
    is the canonical npz made from the file, under its own digest.
    """
    del digest
    settings = settings or get_settings()
    store = _store(settings)
    try:
        name = _checked_name(project_id, name, Path(filename).stem, settings)
        size = path.stat().st_size
        if size > settings.max_upload_bytes:
            raise TooLarge(
                f"file exceeds the upload limit of {settings.max_upload_bytes} bytes; raise "
                "PRUNESCOPE_MAX_UPLOAD_BYTES if this dataset is expected"
            )
        fd, staged = store.staging_file()
        os.close(fd)
        shutil.move(path, staged)  # a rename, or a copy when the store is another disk
    finally:
        path.unlink(missing_ok=True)
    return _adopt_dataset(project_id, staged, size, filename=filename, name=name, active=active,
                          columns=columns, settings=settings)


def _adopt_dataset(
    project_id: int,
    staged: Path,
    size: int,
    *,
    filename: str,
    name: str,
    active: bool,
    columns: Any,
    settings: Settings,
) -> DatasetDetail:
    """Read a staged upload, fit it to the project, store its canonical npz, add its row."""
    from prunescope.workers.dataset_formats import DatasetFormatError, preview, read_dataset_file
    from prunescope.workers.datasets import save_canonical
    from prunescope.workers.jobspec import JobInputError

    project = get_project(project_id, settings)
    store = _store(settings)
    work_dir = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="dataset-"))
    canonical = work_dir / "canonical.npz"
    try:
        try:
            loaded = read_dataset_file(
                staged, name=name, filename=filename, columns=columns,
                limits=_limits(settings), scratch_dir=work_dir,
            )
            data = _fit_to_project(loaded.data, project)
        except (DatasetFormatError, JobInputError) as exc:
            raise InvalidInput(f"{filename}: {exc}") from exc
        summary = preview(data, loaded.split_rule)
        save_canonical(data, canonical)
        digest = store.adopt(canonical)
    finally:
        staged.unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    row = Dataset(
        name=name,
        source="upload",
        format=loaded.format,
        filename=Path(filename).name[:255],
        size_bytes=size,
        artifact_digest=digest,
        **_metadata(data, summary),
    )
    return _insert(project_id, row, active, settings)


def add_labelled_dataset(
    project_id: int,
    chunks: Iterable[bytes],
    *,
    label_column: str = "label",
    filename: str = "dataset",
    name: str | None = None,
    active: bool = False,
    settings: Settings | None = None,
) -> DatasetDetail:
    """`add_dataset` with a table's label column named by its name, for callers that hold no
    worker types (the dashboard); the other columns keep their default names."""
    # The dataset formats come with the workers' torch-backed datasets: load them only here.
    from prunescope.workers.dataset_formats import ColumnNames

    return add_dataset(project_id, chunks, filename=filename, name=name, active=active,
                       columns=ColumnNames(label=label_column), settings=settings)
