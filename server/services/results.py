"""A project's analysis results: their rows, their npz artifacts (read once, cached, shared
read-only) and each array as a file any tool opens (Parquet, CSV, `.npy`)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select

from prunescope.server.access import get_or_404
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import InvalidInput, NotFound
from prunescope.server.schemas import ResultPublic
from prunescope.server.storage import ArtifactNotFound, artifact_store
from prunescope.server.tables import AnalysisResult, Project

log = logging.getLogger(__name__)

ArrayFormat = Literal["parquet", "csv", "npy"]
MEDIA_TYPES: dict[str, str] = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "npy": "application/octet-stream",
}


class ArrayInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int]


class ArraysPublic(BaseModel):
    data: list[ArrayInfo]
    count: int


def list_results(project_id: int, settings: Settings | None = None) -> list[ResultPublic]:
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project")
        rows = s.scalars(
            select(AnalysisResult)
            .where(AnalysisResult.project_id == project_id)
            .order_by(AnalysisResult.id)
        ).all()
        return [ResultPublic.model_validate(r) for r in rows]


def get_result(result_id: int, settings: Settings | None = None) -> ResultPublic:
    with session_scope(settings) as s:
        return ResultPublic.model_validate(get_or_404(s, AnalysisResult, result_id, "result"))


def result_file(result_id: int, settings: Settings | None = None) -> tuple[Path, str]:
    settings = settings or get_settings()
    result = get_result(result_id, settings)
    path = artifact_store(settings).open_path(result.artifact_digest)
    return path, f"{result.kind}-{result.id}.npz"


@lru_cache(maxsize=64)
def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an npz artifact; cached, so callers read and never change them."""
    # Artifacts are immutable and content-addressed, so the path is a sound cache key.
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read-only views of `load_npz`'s shared arrays, so one caller's in-place edit cannot
    change what every later page sees."""
    views = {}
    for key, array in arrays.items():
        view = array.view()
        view.flags.writeable = False
        views[key] = view
    return views


def newest_arrays(
    project_id: int, kind: str, settings: Settings | None = None,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[ResultPublic | None, dict[str, np.ndarray] | None]:
    """The newest result of `kind` (whose summary satisfies `where`, if given) with its
    artifact still in the store, and its read-only arrays; (None, None) when there is none.
    A new analysis's page reads its result kind with this, as it is."""
    settings = settings or get_settings()
    for result in reversed(list_results(project_id, settings)):
        if result.kind != kind or (where is not None and not where(result.summary or {})):
            continue
        try:
            path = artifact_store(settings).open_path(result.artifact_digest)
        except ArtifactNotFound:
            log.warning("result %d (%s): artifact %s is missing from the store",
                        result.id, kind, result.artifact_digest)
            continue
        return result, read_only(load_npz(str(path)))
    return None, None


# ---------------------------------------------------------------- result arrays as files


def _result_arrays(result_id: int, settings: Settings | None) -> dict[str, np.ndarray]:
    path, _ = result_file(result_id, settings)
    # Cached and shared with the pages: read, never change.
    return load_npz(str(path))


def result_arrays(result_id: int, settings: Settings | None = None) -> list[ArrayInfo]:
    """Name, dtype and shape of every array of a result."""
    return [
        ArrayInfo(name=name, dtype=str(array.dtype), shape=list(array.shape))
        for name, array in _result_arrays(result_id, settings).items()
    ]


def array_table(array: np.ndarray, name: str):  # noqa: ANN201 - pyarrow.Table, imported lazily
    """`array` as a table: a 1-D array is one column named `name`; a 2-D array has one column
    per column index ("0", "1", …); more dimensions have no table form (InvalidInput)."""
    import pyarrow as pa  # deferred: a large library only exports need

    if array.ndim > 2:
        raise InvalidInput(
            f"array {name!r} has {array.ndim} dimensions {tuple(array.shape)}; a table holds "
            "at most 2. Download it whole with ?format=npy"
        )
    if array.ndim < 2:
        columns = {name: array.reshape(-1)}
    else:
        columns = {str(j): np.ascontiguousarray(array[:, j]) for j in range(array.shape[1])}
    try:
        return pa.table({key: pa.array(values) for key, values in columns.items()})
    except pa.ArrowException as exc:
        raise InvalidInput(
            f"array {name!r} of dtype {array.dtype} has no table form ({exc}); "
            "download it with ?format=npy"
        ) from None


def array_file(array: np.ndarray, name: str, fmt: ArrayFormat) -> bytes:
    """One array as a Parquet, CSV or `.npy` file (the latter without pickles)."""
    buffer = io.BytesIO()
    if fmt == "npy":
        np.save(buffer, array, allow_pickle=False)
    elif fmt == "parquet":
        import pyarrow.parquet as pq  # deferred: a large library only exports need

        pq.write_table(array_table(array, name), buffer)
    elif fmt == "csv":
        import pyarrow.csv as pcsv  # deferred: a large library only exports need

        pcsv.write_csv(array_table(array, name), buffer)
    else:
        raise InvalidInput(f"unknown format {fmt!r}; choose parquet, csv or npy")
    return buffer.getvalue()


def export_result_array(
    result_id: int, name: str, fmt: ArrayFormat, settings: Settings | None = None
) -> tuple[bytes, str, str]:
    """(file content, file name, media type) of array `name` of result `result_id`."""
    arrays = _result_arrays(result_id, settings)
    if name not in arrays:
        raise NotFound(
            f"result {result_id} has no array {name!r}; it has: {', '.join(sorted(arrays))}"
        )
    result = get_result(result_id, settings)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{result.kind}-{result.id}-{name}")
    return array_file(arrays[name], name, fmt), f"{stem}.{fmt}", MEDIA_TYPES[fmt]
