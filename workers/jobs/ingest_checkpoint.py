"""The ingest_checkpoint job: validates an uploaded checkpoint on a worker, where torch lives.

The server staged the upload and queued this job; the check (`prunescope.workers.ingest`)
loads it safely, matches it to the project's architecture and measures its sparsity. What
the job returns (`JobOutput.ingested`) the server adopts with the checkpoint's row, in the
transaction that records the job's success.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import Param
from prunescope.workers.jobspec import JobOutput, JobSpec, ProgressFn

UPLOAD_PARAMS: dict[str, Param] = {
    # role → [staging key, sha256]: where the server staged each uploaded file.
    "staged": Param(dict, rule="the staged files, set by the server"),
    "filename": Param(str, "upload", "the uploaded file's name"),
    "max_bytes": Param(int, rule="the upload limit in bytes", valid=lambda v: v > 0),
}
PARAMS: dict[str, Param] = {
    **UPLOAD_PARAMS,
    "name": Param(str, rule="the checkpoint's name"),
    "role": Param(str, rule="dense or pruned", valid=lambda v: v in ("dense", "pruned")),
    "method": Param(str, None, "the pruning method, if known"),
    "target_sparsity": Param(float, None, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "max_parameters": Param(int, None, "the model size limit (PRUNESCOPE_MAX_MODEL_PARAMETERS)",
                            lambda v: v > 0),
}


def run_ingest_checkpoint(spec: JobSpec, params: dict[str, Any],
                          progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.ingest import check_checkpoint

    progress(0.0, f"validating {params['filename']}")
    checked = check_checkpoint(
        spec.inputs["upload"], filename=params["filename"], role=params["role"],
        architecture=spec.architecture, config=spec.architecture_config,
        max_bytes=params["max_bytes"], scratch_dir=spec.scratch_dir,
        max_parameters=params["max_parameters"],
    )
    progress(1.0, f"{params['filename']}: {checked.format}, valid")
    return JobOutput(ingested=dataclasses.asdict(checked))


KIND = JobDeclaration(
    name="ingest_checkpoint",
    position=900,
    params=PARAMS,
    handler=run_ingest_checkpoint,
    internal=True,
    lane="ingest",
)
