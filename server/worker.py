"""A worker process: claim a job, resolve its inputs, run it, commit its results atomically."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from prunescope.server import jobs
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import get_engine, session_scope, upgrade_database
from prunescope.server.logs import configure_logging, job_context
from prunescope.server.resilience import Backoff, database_unavailable, retry_on_outage
from prunescope.server.storage import ArtifactStore, artifact_store, sha256_file
from prunescope.server.tables import AnalysisResult, Checkpoint, Job, Project
from prunescope.workers.jobspec import (
    RESULT_INPUTS,
    CheckpointRef,
    DatasetRef,
    JobCancelled,
    JobInputError,
    JobOutput,
    JobSpec,
    ResultRef,
)

log = logging.getLogger(__name__)

# Uploads are validated by these job kinds; every worker takes them first, and `serve` keeps a
# worker of its own for them so an upload never waits behind a long analysis.
INGEST_KINDS: tuple[str, ...] = ("ingest_checkpoint", "ingest_dataset", "ingest_dynamics")

# Write errors that mean "no room": a full disk, a file-size limit, a quota, a read-only store.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})
# The same, as libraries that wrap the OS error in their own exception word it (safetensors
# writes "I/O error: File too large (os error 27)").
_CODES = "|".join(str(e) for e in sorted(STORAGE_FULL_ERRNOS))
_WORDS = "|".join(re.escape(os.strerror(e)) for e in sorted(STORAGE_FULL_ERRNOS))
_STORAGE_FULL_TEXT = re.compile(rf"os error ({_CODES})\b|{_WORDS}")


def storage_full(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) says the disk or store had no room."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
            return True
        if _STORAGE_FULL_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _checkpoints_for(job: Job, project: Project) -> list[Checkpoint]:
    ckpts = list(project.checkpoints)
    if job.kind == "train":
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


def build_job_spec(session, job: Job, store: ArtifactStore, scratch_dir: str) -> JobSpec:  # noqa: ANN001
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
    wanted = RESULT_INPUTS.get(job.kind, ())
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
    )


def _commit_output(
    settings: Settings, store: ArtifactStore, job_id: int, worker_id: str, output: JobOutput
) -> None:
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
        what=f"recording the results of job {job_id}", give_up_after=_outage_patience(settings))


def _outage_patience(settings: Settings) -> float:
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


class _Heartbeat(threading.Thread):
    """Keeps the heartbeat fresh while a long step runs without reporting progress."""

    def __init__(self, settings: Settings, job_id: int, worker_id: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.done = threading.Event()

    def run(self) -> None:
        engine = get_engine(self.settings)
        with job_context(self.job_id, self.worker_id):  # a new thread starts without it
            while not self.done.wait(self.settings.heartbeat_seconds):
                try:
                    if not jobs.heartbeat(engine, self.job_id, self.worker_id):
                        return
                except Exception as exc:  # a DB hiccup must not kill the job; retried
                    if database_unavailable(exc):
                        log.warning("heartbeat for job %s missed: the database is "
                                    "unavailable", self.job_id)
                    else:
                        log.exception("heartbeat for job %s failed", self.job_id)


def execute_job(settings: Settings, job_id: int, worker_id: str) -> str:
    """Run one claimed job to a final state; returns that state."""
    from prunescope.workers.runner import run_job  # torch is imported only in worker processes

    engine = get_engine(settings)
    try:
        store = artifact_store(settings)
        # A worker killed mid-job leaves its scratch folder behind; the next attempt clears it.
        for leftover in store.tmp_dir.glob(f"job{job_id}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        scratch = tempfile.mkdtemp(prefix=f"job{job_id}-", dir=store.tmp_dir)
    except OSError as exc:  # the store cannot be used at all: the job fails, the worker lives
        return _record_final(settings, job_id, worker_id, "failed", "failed",
                             f"the artifact store cannot be used: {exc}")
    beat = _Heartbeat(settings, job_id, worker_id)
    last_write = [0.0]
    error_code = None

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last_write[0] < 0.2 and fraction < 1.0:
            return  # throttle DB writes; the heartbeat thread keeps the job alive
        last_write[0] = now
        try:
            cancelled = jobs.report_progress(engine, job_id, worker_id, fraction, message)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("job %s: progress not recorded, the database is unavailable", job_id)
            return  # the job goes on; the next report (or the heartbeat) tries again
        if cancelled:
            raise JobCancelled()

    try:
        def read_spec() -> JobSpec:
            with session_scope(settings) as session:
                return build_job_spec(session, session.get(Job, job_id), store, scratch)

        spec = retry_on_outage(read_spec, what=f"reading job {job_id}",
                               give_up_after=_outage_patience(settings))
        log.info("job %s (%s) started on %s", job_id, spec.kind, worker_id)
        beat.start()
        with job_context(kind=spec.kind):
            output = run_job(spec, progress)
            _commit_output(settings, store, job_id, worker_id, output)
        state, message, error = "succeeded", "done", None
    except jobs.LostJobOwnership:
        log.warning("job %s is no longer owned by %s; dropping its work", job_id, worker_id)
        return "lost"
    except JobCancelled:
        state, message, error = "cancelled", "cancelled by the user", None
    except JobInputError as exc:
        state, message, error = "failed", "failed", str(exc)
        error_code = getattr(exc, "code", "invalid")
    except Exception as exc:  # the job fails, the worker lives on
        state, message = "failed", "failed"
        if storage_full(exc):  # its output did not fit: say so, and that nothing else changed
            error = (f"the job could not write its output ({type(exc).__name__}: {exc}); free "
                     "space in the data directory or the store, then resubmit. Earlier "
                     "results are unaffected")
        else:
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            error = f"{type(exc).__name__}: {exc}"
    finally:
        beat.done.set()
        shutil.rmtree(scratch, ignore_errors=True)
    if state != "succeeded":
        return _record_final(settings, job_id, worker_id, state, message, error, error_code)
    log.info("job %s %s", job_id, state)
    return state


def _record_final(settings: Settings, job_id: int, worker_id: str, state: str, message: str,
                  error: str | None, error_code: str | None = None) -> str:
    """Record a job's end other than success (waiting out a database outage); the state, or
    "lost" when the job is no longer this worker's."""

    def record() -> None:
        with session_scope(settings) as session:
            jobs.finish_job(session, job_id, worker_id, state=state, message=message,
                            error=error, error_code=error_code)

    try:
        retry_on_outage(record, what=f"recording that job {job_id} {state}",
                        give_up_after=_outage_patience(settings))
    except jobs.LostJobOwnership:
        return "lost"
    log.info("job %s %s%s", job_id, state, f": {error}" if error else "")
    return state


def run_worker(
    settings: Settings | None = None,
    worker_id: str | None = None,
    stop_event: Any = None,
    max_jobs: int | None = None,
    kinds: Collection[str] | None = None,
) -> int:
    """Claim and run jobs until stopped (or `max_jobs` ran); returns the number run.

    `kinds` limits the worker to those job kinds (the ingest lane); ingest jobs go first
    for every worker either way.
    """
    settings = settings or get_settings()
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    engine = get_engine(settings)
    stale_after = timedelta(seconds=settings.stale_after_seconds)
    ran = 0
    backoff = Backoff(first=settings.poll_seconds)
    while stop_event is None or not stop_event.is_set():
        try:
            jobs.requeue_stale_jobs(engine, stale_after)
            job_id = jobs.claim_next_job(engine, worker_id, kinds=kinds, first=INGEST_KINDS)
        except Exception as exc:  # database unavailable: back off, keep the worker
            delay = backoff.next_delay()
            if database_unavailable(exc):
                log.warning("the job table is unreachable (%s); retrying in %.1f s",
                            exc.__class__.__name__, delay)
            else:
                log.exception("could not poll the job table; retrying in %.1f s", delay)
            if stop_event is not None:
                stop_event.wait(delay)
            else:
                time.sleep(delay)
            continue
        backoff.reset()
        if job_id is None:
            if stop_event is not None:
                stop_event.wait(settings.poll_seconds)
            else:
                time.sleep(settings.poll_seconds)
            continue
        with job_context(job_id, worker_id):
            execute_job(settings, job_id, worker_id)
        from prunescope.workers.device import release_device_memory  # torch: worker processes only

        release_device_memory()
        ran += 1
        if max_jobs is not None and ran >= max_jobs:
            break
    return ran


def run_here(settings: Settings, job_id: int) -> str | None:
    """Run one queued job in this process unless a worker claimed it first; its final state,
    or None when it was not ours to run. The CLI validates its own uploads this way, so
    `prunescope checkpoint add` answers without a server running."""
    worker_id = f"here@{socket.gethostname()}:{os.getpid()}"
    if not jobs.claim_job(get_engine(settings), job_id, worker_id):
        return None
    with job_context(job_id, worker_id):
        return execute_job(settings, job_id, worker_id)


def exit_when_orphaned(parent_pid: int, poll_seconds: float = 1.0) -> threading.Thread:
    """Leave the process as soon as `parent_pid` is gone.

    A local pool worker belongs to its server: if the server dies without stopping it (killed,
    or stopped by a signal it does not handle), the worker must not go on claiming jobs. A job
    it was running keeps its last heartbeat and is re-queued like any dead worker's.
    """
    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                log.warning("the server (pid %d) is gone; this worker exits", parent_pid)
                os._exit(0)

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    return thread


def share_the_machine_with_the_server(settings: Settings) -> int:
    """A local worker shares its machine with the server it belongs to: it runs at a lower
    priority (nice 5) and, unless PRUNESCOPE_TORCH_THREADS says otherwise, leaves one core's
    worth of torch threads free, so pages and API calls stay quick while a job computes.
    Returns torch's thread count."""
    import torch

    try:
        os.nice(5)
    except OSError:  # not permitted here: run at the inherited priority
        log.info("could not lower this worker's priority")
    threads = settings.torch_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    return threads


def worker_process_main(
    name: str, stop_event: Any, kinds: Collection[str] | None = None
) -> None:
    """Entry point of a spawned local worker (settings come from the inherited environment);
    `kinds` limits it to those job kinds."""
    exit_when_orphaned(os.getppid())
    settings = get_settings()
    configure_logging(settings.log_level)
    share_the_machine_with_the_server(settings)
    worker_id = f"{name}@{socket.gethostname()}:{os.getpid()}"
    try:
        with job_context(worker_id=worker_id):
            run_worker(settings, worker_id, stop_event, kinds=kinds)
    except KeyboardInterrupt:
        pass


def standalone_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    upgrade_database(settings)
    run_worker(settings)
