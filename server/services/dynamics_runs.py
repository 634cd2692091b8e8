"""Training runs recorded by the user's own training loop, uploaded to join the dynamics analysis.

An uploaded run becomes the same two results a `train_dynamics` job writes: "dynamics_run",
the per-example trajectories as canonical Parquet (`DynamicsWriter`'s schema, one row group
per epoch), and "dynamics_meta", an npz with the run's probe suites, trained labels and
test predictions. The "dynamics" job then reads it like any recorded run. The three files
(trajectories, probes, test predictions; CSV or Parquet) are described, read and checked in
`prunescope.workers.recorded_runs`.

Nothing is half-written: the upload goes through the ingest path
(`prunescope.server.services.ingest`): the request checks the run's fields and stages the
files; an `ingest_dynamics` job reads and checks everything on a worker and builds the two
canonical files in its scratch folder, which only then enter the store and the database (one
transaction). A refused upload raises InvalidInput (422), TooLarge
(413), Conflict (409) or NotFound (404) with a message saying what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from prunescope.server.access import get_or_404, require_project
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, InvalidInput
from prunescope.server.schemas import JobPublic, ResultPublic
from prunescope.server.services import datasets, ingest
from prunescope.server.tables import AnalysisResult, Job, Project
from prunescope.workers.jobspec import run_name

RUN_MODES = ("dense", "gmp", "finetune")
RUN_RESULT_KINDS = ("dynamics_run", "dynamics_meta", "run_weights")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


def stage_upload(
    chunks: Iterable[bytes], filename: str, what: str, settings: Settings | None = None
) -> Path:
    """Stream one uploaded file into the store's staging folder, keeping its extension.

    Raises TooLarge past `settings.max_upload_bytes`; the caller removes the staged file.
    """
    settings = settings or get_settings()
    suffix = Path(filename or "").suffix.lower()
    staged = ingest.stage_stream(chunks, settings, subject="it", label=f"the {what} file: ",
                                 suffix=suffix if _SUFFIX.fullmatch(suffix) else "")
    return staged.path


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


def _check_run_name_free(session: Session, project_id: int, run: str) -> None:
    """Conflict when the project has recorded `run` or a queued job will record it."""
    recorded = session.scalars(select(AnalysisResult.summary).where(
        AnalysisResult.project_id == project_id, AnalysisResult.kind.in_(RUN_RESULT_KINDS)))
    if any((summary or {}).get("run") == run for summary in recorded):
        raise Conflict(_name_taken(run))
    pending = session.scalars(select(Job).where(
        Job.project_id == project_id, Job.kind == "train_dynamics",
        Job.state.in_(("queued", "running"))))
    for job in pending:
        if run_name(job.params or {}) == run:
            raise Conflict(f"job {job.id} (train_dynamics, {job.state}) will record a run named "
                           f"{run!r}; choose another run name")



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
) -> JobPublic:
    """Queue the validation of a run recorded elsewhere, stored by its `ingest_dynamics` job
    as "dynamics_run" + "dynamics_meta" results; `ingested(job)` waits for them.

    The three files are CSV or Parquet (`prunescope.workers.recorded_runs` describes them);
    they are consumed. `mode` is dense, gmp or finetune; `sparsity` is in [0, 1), 0 exactly
    for dense and above 0 otherwise; `run` names the run, unique in the project.
    """
    settings = settings or get_settings()
    files = {"trajectories": Path(trajectories), "probes": Path(probes),
             "test_predictions": Path(test_predictions)}
    try:
        run, sparsity = _checked_run(run, mode, sparsity, seed)
        require_project(project_id, "edit", settings)
        with session_scope(settings) as s:
            _check_run_name_free(s, project_id, run)
        if datasets.active_dataset(project_id, settings) is None:
            raise InvalidInput("this project has no dataset; add one before uploading a run")
        staged = {role: ingest.Staged(path, ingest.check_size(
            path, settings, subject="it", label=f"the {role.replace('_', ' ')} "))
            for role, path in files.items()}
    except BaseException:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    return ingest.queue_check(settings, project_id, "ingest_dynamics", staged,
                              {"filename": files["trajectories"].name, "run": run, "mode": mode,
                               "sparsity": sparsity, "seed": int(seed)})


def adopt_checked(settings: Settings, job: ingest.IngestJob, checked: dict[str, Any],
                  finish: Callable[[Session, dict[str, Any]], None]) -> None:
    """Adopt the run's canonical Parquet and npz (`prunescope.workers.ingest
    .check_dynamics_run`) as its two results; `finish` records the job's success with them."""
    p = job.params
    adopted = ingest.adopt(settings, {"dynamics_run": (Path(checked["parquet_path"]), None),
                                      "dynamics_meta": (Path(checked["meta_path"]), None)})
    summary = {"run": p["run"], "mode": p["mode"], "sparsity": round(p["sparsity"], 6),
               "seed": int(p["seed"]), "epochs": checked["epochs"],
               "test_accuracy": checked["test_accuracy"], "source": "upload"}

    def write(s: Session) -> None:
        get_or_404(s, Project, job.project_id, "project", need="edit")
        _check_run_name_free(s, job.project_id, p["run"])
        rows = [AnalysisResult(project_id=job.project_id, job_id=None, kind=kind,
                               artifact_digest=digest, summary=dict(summary))
                for kind, digest in adopted.digests.items()]
        s.add_all(rows)
        s.flush()
        finish(s, {"run": p["run"], "summary": summary, "result_ids": [r.id for r in rows]})

    ingest.add_rows(settings, adopted, write, conflict=_name_taken(p["run"]))


def ingested(job: JobPublic, settings: Settings | None = None,
             timeout: float | None = None) -> dict[str, Any] | None:
    """{"run", "summary", "results": [ResultPublic of dynamics_run, dynamics_meta]} once the
    job stored the run (None while it still runs after `timeout`); its refusal as the error
    the upload answers."""
    settings = settings or get_settings()

    def read(summary: dict[str, Any]) -> dict[str, Any]:
        with session_scope(settings) as s:
            rows = [s.get(AnalysisResult, i) for i in summary["result_ids"]]
            results = [ResultPublic.model_validate(r) for r in rows]
        return {"run": summary["run"], "summary": summary["summary"], "results": results}

    return ingest.outcome(settings, job.id, read, timeout)


def _name_taken(run: str) -> str:
    return (f"a training run named {run!r} is already recorded in this project; "
            "choose another run name")
