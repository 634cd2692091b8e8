"""The ingest_dynamics job: reads a training run recorded elsewhere (trajectories, probe
suites, test predictions) against the project's dataset on a worker; the server adopts the
canonical Parquet and npz it writes as the run's results."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.ingest_checkpoint import UPLOAD_PARAMS
from prunescope.workers.jobs.params import Param
from prunescope.workers.jobspec import JobInputError, JobOutput, JobSpec, ProgressFn

PARAMS: dict[str, Param] = {
    **UPLOAD_PARAMS,
    "run": Param(str, rule="the run's name"),
    "mode": Param(str, rule="dense, gmp or finetune"),
    "sparsity": Param(float, rule="a number in [0, 1)", valid=lambda v: 0.0 <= v < 1.0),
    "seed": Param(int, rule="an integer from -2**63 to 2**63 - 1",
                  valid=lambda v: -(2**63) <= v < 2**63),
}


def run_ingest_dynamics(spec: JobSpec, params: dict[str, Any],
                        progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.ingest import check_dynamics_run

    if spec.dataset is None:
        raise JobInputError("this project has no dataset; add one before uploading a run")
    progress(0.0, f"reading run {params['run']!r}")
    checked = check_dynamics_run(
        spec.inputs["trajectories"], spec.inputs["probes"], spec.inputs["test_predictions"],
        sparsity=params["sparsity"], dataset=spec.dataset, max_bytes=params["max_bytes"],
        scratch_dir=spec.scratch_dir,
    )
    progress(1.0, f"run {params['run']!r}: {checked.epochs} epochs, valid")
    return JobOutput(ingested=dataclasses.asdict(checked))


KIND = JobDeclaration(
    name="ingest_dynamics",
    position=920,
    params=PARAMS,
    handler=run_ingest_dynamics,
    internal=True,
    lane="ingest",
)
