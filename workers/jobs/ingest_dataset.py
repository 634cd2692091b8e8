"""The ingest_dataset job: reads an uploaded dataset file on a worker and fits it to the
project's model; the server adopts the canonical npz it writes with the dataset's row."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.ingest_checkpoint import UPLOAD_PARAMS
from prunescope.workers.jobs.params import Param
from prunescope.workers.jobspec import JobOutput, JobSpec, ProgressFn

PARAMS: dict[str, Param] = {
    **UPLOAD_PARAMS,
    "name": Param(str, rule="the dataset's name"),
    "active": Param(bool, False, "true or false"),
    # A table's label, text, id, group and split columns (`dataset_formats.ColumnNames`).
    "columns": Param(dict, None, "a mapping of column roles to column names"),
}


def run_ingest_dataset(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.ingest import check_dataset

    progress(0.0, f"reading {params['filename']}")
    checked = check_dataset(
        spec.inputs["upload"], filename=params["filename"], name=params["name"],
        columns=params["columns"], architecture=spec.architecture,
        config=spec.architecture_config, max_bytes=params["max_bytes"],
        scratch_dir=spec.scratch_dir,
    )
    progress(1.0, f"{params['filename']}: {checked.format}, valid")
    return JobOutput(ingested=dataclasses.asdict(checked))


KIND = JobDeclaration(
    name="ingest_dataset",
    position=910,
    params=PARAMS,
    handler=run_ingest_dataset,
    internal=True,
    lane="ingest",
)
