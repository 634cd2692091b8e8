"""What a job reads and what its success writes: the JobSpec resolved from the database and the
store, and its JobOutput committed — files into the store first, then every row together with
the job's success, in one transaction.

Uploads' ingest jobs end here too: the files their check kept are adopted and the checkpoint,
dataset or run rows added by the service of that resource (its `adopt_checked`), in the
transaction that records the job's success; their staged uploads go once the job has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from prunescope.server import jobs
from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.resilience import retry_on_outage
from prunescope.server.services import checkpoints, datasets, dynamics_runs, ingest
from prunescope.server.storage import ArtifactStore, sha256_file
from prunescope.server.tables import AnalysisResult, Checkpoint, Job, Project
from prunescope.workers.jobs import lane_kinds, reads
from prunescope.workers.jobspec import (
    CheckpointRef,
    DatasetRef,
    JobInputError,
    JobOutput,
    JobSpec,
    ResultRef,
)

# Each ingest job kind's commit: the service that adopts what its check kept, with the row.
ADOPT_CHECKED: dict[str, Callable[..., None]] = {
    "ingest_checkpoint": checkpoints.adopt_checked,
    "ingest_dataset": datasets.adopt_checked,
    "ingest_dynamics": dynamics_runs.adopt_checked,
}
INGEST_KINDS: tuple[str, ...] = lane_kinds("ingest")


def _checkpoints_for(job: Job, project: Project) -> list[Checkpoint]:
    ckpts = list(project.checkpoints)
    if job.kind == "train" or job.kind in INGEST_KINDS:  # an upload's check reads none
        return []
    if job.kind == "prune":
        wanted = job.params.get("dense_checkpoint_id")
        dense = [c for c in ckpts if (c.id == wanted if wanted else c.role == "dense")]
        if not dense:
            raise JobInputError(
                "this project has no dense checkpoint to prune; upload one or run a train job"
            )
        return dense[:1]
    ids = job.params.get("checkpoint_ids")
    reference = job.params.get("reference_checkpoint_id")
    return [c for c in ckpts if ids is None or c.id in ids or c.id == reference]


def build_job_spec(session, job: Job, store: ArtifactStore, scratch_dir: str,  # noqa: ANN001
                   settings: Settings) -> JobSpec:
    project = session.get(Project, job.project_id)
    # The active dataset at the time the job starts (one per project; see services.datasets).
    dataset = next((d for d in project.datasets if d.active), None)
    dataset = dataset or (project.datasets[0] if project.datasets else None)
    dataset_ref = None
    if dataset is not None:
        dataset_ref = DatasetRef(
            name=dataset.name,
            source=dataset.source,
            builtin_name=dataset.builtin_name,
            path=str(store.open_path(dataset.artifact_digest)) if dataset.artifact_digest else None,
        )
    refs = [
        CheckpointRef(
            id=c.id,
            name=c.name,
            role=c.role,
            method=c.method,
            target_sparsity=c.target_sparsity,
            path=str(store.open_path(c.artifact_digest)),
            assets_path=str(store.open_path(c.assets_digest)) if c.assets_digest else None,
        )
        for c in _checkpoints_for(job, project)
    ]
    wanted = reads(job.kind)
    results = [
        ResultRef(id=r.id, kind=r.kind, path=str(store.open_path(r.artifact_digest)),
                  summary=dict(r.summary or {}))
        for r in session.scalars(
            select(AnalysisResult).where(AnalysisResult.project_id == project.id,
                                         AnalysisResult.kind.in_(wanted))
            .order_by(AnalysisResult.id)
        )
    ] if wanted else []
    return JobSpec(
        job_id=job.id,
        kind=job.kind,
        params=dict(job.params),
        architecture=project.architecture,
        architecture_config=dict(project.architecture_config),
        dataset=dataset_ref,
        checkpoints=refs,
        scratch_dir=scratch_dir,
        cache_dir=str(store.root / "cache"),
        results=results,
        inputs=ingest.staged_inputs(job.params, settings) if job.kind in INGEST_KINDS else {},
    )


def commit_output(
    settings: Settings, store: ArtifactStore, job_id: int, worker_id: str, output: JobOutput
) -> None:
    if output.ingested is not None:
        _commit_ingested(settings, job_id, worker_id, output)
        return
    # Files first (content-addressed, invisible until a row names them), then one transaction.
    try:
        adopted_ckpts = []
        for c in output.checkpoints:
            path = Path(c.path)
            size = path.stat().st_size
            adopted_ckpts.append((c, store.adopt(path, sha256_file(path)), size))
        adopted_results = [(r, store.adopt(Path(r.path))) for r in output.results]
    except OSError as exc:
        raise JobInputError(
            f"could not write the job's results to the artifact store: {exc}. Earlier results "
            "are unaffected; free space or make the store writable, then resubmit the job"
        ) from exc
    retry_on_outage(
        lambda: _record_output(settings, job_id, worker_id, adopted_ckpts, adopted_results,
                               output),
        what=f"recording the results of job {job_id}", give_up_after=outage_patience(settings))


def outage_patience(settings: Settings) -> float:
    """How long a worker holding a finished job waits for the database to return. Past
    `stale_after_seconds` another worker may take the job over; the ownership checks then
    make sure only one attempt is ever recorded."""
    return max(60.0, 10 * settings.stale_after_seconds)


def _record_output(settings: Settings, job_id: int, worker_id: str, adopted_ckpts: list,
                   adopted_results: list, output: JobOutput) -> None:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        for c, digest, size in adopted_ckpts:
            clash = session.scalar(
                select(Checkpoint.id).where(
                    Checkpoint.project_id == job.project_id, Checkpoint.name == c.name
                )
            )
            if clash is not None:
                raise JobInputError(
                    f"a checkpoint named {c.name!r} already exists in this project; "
                    "delete it or choose another name"
                )
            stats = c.stats or {}
            session.add(
                Checkpoint(
                    project_id=job.project_id,
                    name=c.name,
                    role=c.role,
                    source="trained" if job.kind == "train" else "pruned",
                    method=c.method,
                    target_sparsity=c.target_sparsity,
                    **Checkpoint.stat_columns(stats),
                    format="safetensors",
                    artifact_digest=digest,
                    size_bytes=size,
                    parent_id=c.parent_id,
                )
            )
        for r, digest in adopted_results:
            session.add(
                AnalysisResult(
                    project_id=job.project_id,
                    job_id=job_id,
                    kind=r.kind,
                    artifact_digest=digest,
                    summary=r.summary,
                )
            )
        jobs.finish_job(
            session, job_id, worker_id, state="succeeded", message="done", summary=output.summary
        )




def _commit_ingested(settings: Settings, job_id: int, worker_id: str, output: JobOutput) -> None:
    """An ingest job's success: its resource's service adopts the files the check kept and adds
    the row, recording the job's success (its summary naming the row) in that transaction."""
    with session_scope(settings) as s:
        row = s.get(Job, job_id)
        job = ingest.IngestJob(id=row.id, project_id=row.project_id, params=dict(row.params),
                               inputs=ingest.staged_inputs(row.params, settings))

    def finish(session: Session, summary: dict[str, Any]) -> None:
        jobs.finish_job(session, job_id, worker_id, state="succeeded", message="stored",
                        summary=summary)

    ADOPT_CHECKED[row.kind](settings, job, output.ingested, finish)


def discard_staged_uploads(settings: Settings, job_id: int) -> None:
    """Remove the uploads an ingest job staged, once it has ended (stored or refused)."""
    with session_scope(settings) as s:
        row = s.get(Job, job_id)
        params = dict(row.params) if row is not None and row.kind in INGEST_KINDS else None
    if params:
        ingest.discard_staged(params, settings)
