"""The job queue: the `jobs` table is the truth; these functions are its only writers.

States: queued → running → succeeded | failed | cancelled. Claiming is a conditional UPDATE
(`WHERE id = :id AND state = 'queued'`) whose row count tells the winner, which is race-free
on SQLite and PostgreSQL alike; on PostgreSQL the row is first taken with
`SELECT … FOR UPDATE SKIP LOCKED`, so racing workers skip a row another is claiming. A
running job carries the claiming worker's id and a heartbeat; every later write by that
worker is conditional on still owning the job, so a worker that was presumed dead and came
back cannot overwrite the job's newer state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from prunescope.server.tables import FINISHED_STATES, Job, utcnow

log = logging.getLogger(__name__)


class LostJobOwnership(Exception):
    """The job is no longer this worker's (re-queued after a missed heartbeat, or cancelled)."""


def enqueue_job(
    session,  # noqa: ANN001 - sqlalchemy.orm.Session
    *,
    project_id: int,
    kind: str,
    params: dict[str, Any] | None = None,
    depends_on: Sequence[int] = (),
    max_attempts: int = 3,
) -> Job:
    job = Job(
        project_id=project_id,
        kind=kind,
        params=dict(params or {}),
        depends_on=[int(d) for d in depends_on],
        state="queued",
        max_attempts=max_attempts,
        message="waiting for a worker" if not depends_on else "waiting for earlier jobs",
    )
    session.add(job)
    session.flush()
    return job


def _now() -> datetime:
    return utcnow()


def ready_jobs(
    engine: Engine, *, scan_limit: int = 100, kinds: Collection[str] | None = None
) -> list[tuple[int, str]]:
    """(id, kind) of the oldest queued jobs whose dependencies all succeeded, oldest first;
    only jobs of `kinds` when given.

    A job whose dependency failed or was cancelled is failed here with a message naming it.
    """
    query = select(Job.id, Job.kind, Job.depends_on).where(Job.state == "queued")
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    with engine.connect() as conn:
        queued = conn.execute(query.order_by(Job.id).limit(scan_limit)).all()
        dep_ids = {int(d) for _, _, deps in queued for d in (deps or [])}
        dep_states = (
            dict(conn.execute(select(Job.id, Job.state).where(Job.id.in_(dep_ids))).all())
            if dep_ids
            else {}
        )
    ready = []
    for job_id, kind, deps in queued:
        deps = [int(d) for d in (deps or [])]
        broken = [d for d in deps if dep_states.get(d, "failed") in ("failed", "cancelled")]
        if broken:
            _fail_queued(
                engine,
                job_id,
                f"job {broken[0]} that this job needs did not succeed "
                f"({dep_states.get(broken[0], 'missing')}); fix it and resubmit",
            )
            continue
        if all(dep_states.get(d) == "succeeded" for d in deps):
            ready.append((int(job_id), str(kind)))
    return ready


def claim_job(engine: Engine, job_id: int, worker_id: str) -> bool:
    """Claim one queued job for `worker_id`; False when it is not queued (any more), or
    another worker is claiming it at this moment."""
    now = _now()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Lock the row or pass it by: racing workers move on to the next job instead of
            # queueing behind one another's row lock. The UPDATE below stays conditional,
            # so the claim is exclusive on any database.
            free = conn.execute(
                select(Job.id)
                .where(Job.id == job_id, Job.state == "queued")
                .with_for_update(skip_locked=True)
            ).scalar()
            if free is None:
                return False
        won = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(
                state="running",
                worker_id=worker_id,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                started_at=now,
                progress=0.0,
                message="starting",
                error=None,
                error_code=None,
            )
        ).rowcount
    return won == 1


def claim_next_job(
    engine: Engine,
    worker_id: str,
    *,
    scan_limit: int = 100,
    kinds: Collection[str] | None = None,
    first: Collection[str] = (),
) -> int | None:
    """Claim the oldest ready job (of `kinds`, when given); returns its id or None.

    Jobs of the kinds in `first` go before the others: an upload's validation is a short job a
    person waits for, so it should not queue behind an hour of analysis.
    """
    ready = ready_jobs(engine, scan_limit=scan_limit, kinds=kinds)
    ready.sort(key=lambda job: job[1] not in first)  # stable: oldest first within each group
    for job_id, _kind in ready:
        if claim_job(engine, job_id, worker_id):
            return job_id
    return None


def wait_until_finished(
    engine: Engine, job_id: int, *, timeout: float, poll_seconds: float = 0.1
) -> str | None:
    """The job's final state as soon as it has one; None when `timeout` seconds pass first.

    For callers that want a synchronous answer from a short job (an upload's validation).
    """
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            state = conn.execute(select(Job.state).where(Job.id == job_id)).scalar()
        if state is None or state in FINISHED_STATES:
            return state
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def note_queued(engine: Engine, job_id: int, message: str) -> None:
    """Set a queued job's message (e.g. where it waits); nothing once it left the queue."""
    with engine.begin() as conn:
        conn.execute(
            update(Job).where(Job.id == job_id, Job.state == "queued").values(message=message[:500])
        )


def _fail_queued(engine: Engine, job_id: int, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="failed", error=error, message="failed", finished_at=_now())
        )


def _owned(job_id: int, worker_id: str):  # noqa: ANN202
    return (Job.id == job_id) & (Job.state == "running") & (Job.worker_id == worker_id)


def report_progress(
    engine: Engine, job_id: int, worker_id: str, fraction: float, message: str
) -> bool:
    """Record progress and heartbeat; returns True when the user asked to cancel.

    Raises LostJobOwnership when the job is no longer running on this worker.
    """
    fraction = min(max(float(fraction), 0.0), 1.0)
    with engine.begin() as conn:
        n = conn.execute(
            update(Job)
            .where(_owned(job_id, worker_id))
            .values(progress=fraction, message=message[:500], heartbeat_at=_now())
        ).rowcount
        if n != 1:
            raise LostJobOwnership(job_id)
        return bool(conn.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one())


def heartbeat(engine: Engine, job_id: int, worker_id: str) -> bool:
    """Refresh the heartbeat; False when the job is no longer this worker's."""
    with engine.begin() as conn:
        return (
            conn.execute(
                update(Job).where(_owned(job_id, worker_id)).values(heartbeat_at=_now())
            ).rowcount
            == 1
        )


def finish_job(
    session,  # noqa: ANN001 - sqlalchemy.orm.Session, committed by the caller
    job_id: int,
    worker_id: str,
    *,
    state: str,
    message: str,
    error: str | None = None,
    error_code: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Move an owned running job to a final state inside the caller's transaction.

    The caller adds the job's results in the same transaction, so results and the
    'succeeded' state become visible together or not at all.
    """
    assert state in FINISHED_STATES
    values: dict[str, Any] = dict(state=state, message=message, error=error,
                                  error_code=error_code, finished_at=_now())
    if state == "succeeded":
        values["progress"] = 1.0
    if summary is not None:
        values["result_summary"] = summary
    n = session.execute(update(Job).where(_owned(job_id, worker_id)).values(**values)).rowcount
    if n != 1:
        raise LostJobOwnership(job_id)


def request_cancel(session, job_id: int) -> Job:  # noqa: ANN001
    """Cancel a queued job at once; ask a running one to stop at its next progress report."""
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(job_id)
    if job.state == "queued":
        job.state = "cancelled"
        job.message = "cancelled before it started"
        job.finished_at = _now()
    elif job.state == "running":
        job.cancel_requested = True
        job.message = "cancelling…"
    return job


def requeue_stale_jobs(engine: Engine, stale_after: timedelta) -> list[int]:
    """Re-queue running jobs whose heartbeat stopped (worker died); fail them past max_attempts."""
    cutoff = _now() - stale_after
    touched: list[int] = []
    with engine.connect() as conn:
        stale = conn.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.heartbeat_at, Job.worker_id).where(
                Job.state == "running", Job.heartbeat_at < cutoff
            )
        ).all()
    for job_id, attempts, max_attempts, beat, worker in stale:
        seconds = int(stale_after.total_seconds())
        if attempts >= max_attempts:
            values = dict(
                state="failed",
                finished_at=_now(),
                message="failed",
                error=(
                    f"the worker running this job ({worker}) stopped responding for over "
                    f"{seconds} s on attempt {attempts} of {max_attempts}; giving up. "
                    "Check the worker's log (out of memory? killed?) and resubmit the job."
                ),
            )
        else:
            values = dict(
                state="queued",
                worker_id=None,
                message=f"re-queued: worker {worker} stopped responding (attempt {attempts} "
                f"of {max_attempts})",
            )
        with engine.begin() as conn:
            # Conditional on the heartbeat we saw, so a worker that just reported wins.
            n = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "running", Job.heartbeat_at == beat)
                .values(**values)
            ).rowcount
        if n == 1:
            log.warning("job %s: %s", job_id, values.get("error") or values["message"])
            touched.append(int(job_id))
    return touched
