"""A project's jobs: listing, submitting (checked against the project before they are queued)
and cancelling; the queue itself is `prunescope.server.jobs`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from prunescope.server import jobs as queue
from prunescope.server.access import get_or_404, visible
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, InvalidInput, ServiceError
from prunescope.server.schemas import JobCreate, JobPublic
from prunescope.server.tables import Job, Project
from prunescope.workers import jobs as job_declarations
from prunescope.workers.jobspec import JobInputError, default_pruned_name


def list_jobs(project_id: int | None = None, settings: Settings | None = None) -> list[JobPublic]:
    with session_scope(settings) as s:
        q = select(Job).order_by(Job.id)
        if project_id is not None:
            get_or_404(s, Project, project_id, "project")
            q = q.where(Job.project_id == project_id)
        else:
            q = visible(q, Job.project_id)
        return [JobPublic.model_validate(j) for j in s.scalars(q).all()]


def get_job(job_id: int, settings: Settings | None = None) -> JobPublic:
    with session_scope(settings) as s:
        return JobPublic.model_validate(get_or_404(s, Job, job_id, "job"))


def _pruned_name(params: dict[str, Any]) -> str:
    """The checkpoint name a prune job produces (the runner uses the same default)."""
    return params.get("name") or default_pruned_name(params.get("method"), params["sparsity"])


def _validate_job(body: JobCreate, project: Project, active_jobs: list[Job]) -> None:
    """The job's parameters against its declaration (`prunescope.workers.jobs`), then what only
    the project can tell: whose checkpoints it names, and names it would produce twice."""
    try:
        p = job_declarations.validate_params(body.kind, body.params)
    except JobInputError as exc:
        raise InvalidInput(str(exc)) from exc
    ids = {c.id for c in project.checkpoints}
    wanted = []
    for key in job_declarations.checkpoint_params(body.kind):
        value = p.get(key)
        wanted += value if isinstance(value, list) else [value]
    unknown = [i for i in wanted if i is not None and i not in ids]
    if unknown:
        raise InvalidInput(
            f"checkpoint(s) {unknown} do not belong to project {project.id}; "
            f"its checkpoints are {sorted(ids)}"
        )
    if body.kind == "prune":
        name = _pruned_name(p)
        if any(c.name == name for c in project.checkpoints):
            raise Conflict(f"a checkpoint named {name!r} already exists; pass params.name")
        if any(j.kind == "prune" and _pruned_name(j.params) == name for j in active_jobs):
            raise Conflict(f"a queued or running job already produces {name!r}; pass params.name")
    if body.kind == "train" and any(c.role == "dense" for c in project.checkpoints):
        raise Conflict("this project already has a dense checkpoint")


def _check_dependencies(s: Session, project_id: int, depends_on: list[int]) -> None:
    """A job may wait only for jobs of its own project. One answer for a job that does not
    exist and one of another project, so the refusal tells nobody which ids exist."""
    found = set(s.scalars(
        select(Job.id).where(Job.id.in_(set(depends_on)), Job.project_id == project_id)
    ).all())
    missing = [dep for dep in depends_on if dep not in found]
    if missing:
        raise InvalidInput(
            f"depends_on names job {missing[0]}, which is not a job of project {project_id}; "
            f"list the ids of this project's jobs (GET /api/v1/projects/{project_id}/jobs)"
        )


def submit_job(project_id: int, body: JobCreate, settings: Settings | None = None) -> JobPublic:
    settings = settings or get_settings()
    with session_scope(settings) as s:
        project = get_or_404(s, Project, project_id, "project", need="edit")
        active = s.scalars(
            select(Job).where(Job.project_id == project_id, Job.state.in_(("queued", "running")))
        ).all()
        _validate_job(body, project, list(active))
        _check_dependencies(s, project_id, body.depends_on)
        job = queue.enqueue_job(
            s,
            project_id=project_id,
            kind=body.kind,
            params=body.params,
            depends_on=body.depends_on,
            max_attempts=settings.max_attempts,
        )
        return JobPublic.model_validate(job)


def cancel_job(job_id: int, settings: Settings | None = None) -> JobPublic:
    with session_scope(settings) as s:
        get_or_404(s, Job, job_id, "job", need="edit")
        return JobPublic.model_validate(queue.request_cancel(s, job_id))


def submit_pruning_sweep(
    project_id: int,
    methods: list[str],
    sparsities: list[float],
    settings: Settings | None = None,
) -> tuple[list[JobPublic], list[str]]:
    """Queue one prune job per method × sparsity, then an analysis that waits for them.

    Returns the queued jobs and one message per combination that was refused (e.g. a
    checkpoint of that name exists already), so a partly valid request still does its part.
    """
    queued: list[JobPublic] = []
    refused: list[str] = []
    for method in methods:
        for sparsity in sparsities:
            try:
                body = JobCreate(kind="prune", params={"method": method, "sparsity": sparsity})
                queued.append(submit_job(project_id, body, settings))
            except ServiceError as exc:
                refused.append(f"{method} at {sparsity:g}: {exc.detail}")
    if queued:
        analysis = JobCreate(kind="analyze", depends_on=[j.id for j in queued])
        queued.append(submit_job(project_id, analysis, settings))
    return queued, refused
