"""The job table as a queue: exclusive claims, dependencies, heartbeats, retries, cancellation."""

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from prunescope.server import jobs
from prunescope.server.db import get_engine, session_scope
from prunescope.server.tables import Job, Project


def _project(settings) -> int:
    with session_scope(settings) as s:
        p = Project(name="p", architecture="mlp", architecture_config={})
        s.add(p)
        s.flush()
        return p.id


def _enqueue(settings, pid, n=1, **kw) -> list[int]:
    with session_scope(settings) as s:
        return [jobs.enqueue_job(s, project_id=pid, kind="analyze", **kw).id for _ in range(n)]


def _job(settings, job_id) -> Job:
    with session_scope(settings) as s:
        return s.get(Job, job_id)


def test_each_job_is_claimed_by_exactly_one_of_many_racing_workers(settings):
    pid = _project(settings)
    ids = _enqueue(settings, pid, n=30)
    engine = get_engine(settings)
    claims: dict[str, list[int]] = {}
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        start.wait()
        mine = claims.setdefault(name, [])
        while (job_id := jobs.claim_next_job(engine, name)) is not None:
            mine.append(job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [j for c in claims.values() for j in c]
    assert sorted(claimed) == ids  # every job once, none twice
    with session_scope(settings) as s:
        rows = s.scalars(select(Job)).all()
        assert {r.state for r in rows} == {"running"}
        assert all(r.attempts == 1 for r in rows)
        owner = {j: w for w, c in claims.items() for j in c}
        assert all(r.worker_id == owner[r.id] for r in rows)


def test_dependencies_gate_claims_and_failures_propagate(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (first,) = _enqueue(settings, pid)
    (second,) = _enqueue(settings, pid, depends_on=[first])
    assert jobs.claim_next_job(engine, "w") == first
    assert jobs.claim_next_job(engine, "w") is None  # second waits for first
    with session_scope(settings) as s:
        jobs.finish_job(s, first, "w", state="failed", message="failed", error="boom")
    assert jobs.claim_next_job(engine, "w") is None
    dependent = _job(settings, second)
    assert dependent.state == "failed" and f"job {first}" in dependent.error


def test_dependency_success_releases_the_next_job(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (first,) = _enqueue(settings, pid)
    (second,) = _enqueue(settings, pid, depends_on=[first])
    assert jobs.claim_next_job(engine, "w") == first
    with session_scope(settings) as s:
        jobs.finish_job(s, first, "w", state="succeeded", message="done")
    assert jobs.claim_next_job(engine, "w") == second


def test_stale_job_is_requeued_then_failed_after_the_attempt_limit(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (job_id,) = _enqueue(settings, pid, max_attempts=2)
    stale = timedelta(seconds=0.05)
    assert jobs.claim_next_job(engine, "dead-1") == job_id
    time.sleep(0.1)
    assert jobs.requeue_stale_jobs(engine, stale) == [job_id]
    job = _job(settings, job_id)
    assert job.state == "queued" and "dead-1" in job.message and job.worker_id is None
    # The presumed-dead worker wakes up: its writes are refused.
    with pytest.raises(jobs.LostJobOwnership):
        jobs.report_progress(engine, job_id, "dead-1", 0.5, "still here")
    assert jobs.claim_next_job(engine, "dead-2") == job_id
    time.sleep(0.1)
    jobs.requeue_stale_jobs(engine, stale)
    job = _job(settings, job_id)
    assert job.state == "failed" and job.attempts == 2
    assert "stopped responding" in job.error and "attempt 2 of 2" in job.error


def test_fresh_heartbeat_keeps_a_job_running(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (job_id,) = _enqueue(settings, pid)
    jobs.claim_next_job(engine, "w")
    time.sleep(0.15)
    assert jobs.heartbeat(engine, job_id, "w")
    assert jobs.requeue_stale_jobs(engine, timedelta(seconds=0.1)) == []
    assert _job(settings, job_id).state == "running"


def test_cancel_queued_at_once_and_running_at_next_progress(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    queued, running = _enqueue(settings, pid, n=2)
    with session_scope(settings) as s:
        jobs.request_cancel(s, running)  # still queued at this point too
    assert _job(settings, running).state == "cancelled"
    assert jobs.claim_next_job(engine, "w") == queued
    assert jobs.report_progress(engine, queued, "w", 0.3, "working") is False
    with session_scope(settings) as s:
        jobs.request_cancel(s, queued)
    assert jobs.report_progress(engine, queued, "w", 0.4, "working") is True
    progress = _job(settings, queued)
    assert progress.state == "running" and progress.cancel_requested


def test_a_lane_claims_only_its_kinds_and_every_worker_takes_first_kinds_first(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    with session_scope(settings) as s:
        analyze = jobs.enqueue_job(s, project_id=pid, kind="analyze").id
        ingest = jobs.enqueue_job(s, project_id=pid, kind="ingest_checkpoint").id
        later = jobs.enqueue_job(s, project_id=pid, kind="ingest_checkpoint").id
    # An ingest lane never takes the analysis, however old it is.
    assert jobs.claim_next_job(engine, "lane", kinds=("ingest_checkpoint",)) == ingest
    # A general worker takes the newer ingest job before the older analysis, then the analysis.
    assert jobs.claim_next_job(engine, "w", first=("ingest_checkpoint",)) == later
    assert jobs.claim_next_job(engine, "w", first=("ingest_checkpoint",)) == analyze
    assert jobs.claim_next_job(engine, "lane", kinds=("ingest_checkpoint",)) is None


def test_a_failed_job_keeps_its_error_code_until_it_is_claimed_again(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (job_id,) = _enqueue(settings, pid)
    assert jobs.claim_next_job(engine, "w") == job_id
    with session_scope(settings) as s:
        jobs.finish_job(s, job_id, "w", state="failed", message="failed", error="too big",
                        error_code="too_large")
    job = _job(settings, job_id)
    assert (job.state, job.error, job.error_code) == ("failed", "too big", "too_large")


def test_waiting_for_a_job_returns_its_final_state_or_none_after_the_timeout(settings):
    pid = _project(settings)
    engine = get_engine(settings)
    (job_id,) = _enqueue(settings, pid)
    started = time.monotonic()
    assert jobs.wait_until_finished(engine, job_id, timeout=0.3) is None
    assert time.monotonic() - started >= 0.3
    assert jobs.claim_next_job(engine, "w") == job_id

    def finish_soon() -> None:
        time.sleep(0.3)
        with session_scope(settings) as s:
            jobs.finish_job(s, job_id, "w", state="succeeded", message="done")

    threading.Thread(target=finish_soon).start()
    assert jobs.wait_until_finished(engine, job_id, timeout=30) == "succeeded"
    assert jobs.wait_until_finished(engine, 10**6, timeout=30) is None  # no such job
