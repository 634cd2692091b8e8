"""A worker process: claim a job, resolve its inputs, run it, commit its results atomically."""

from __future__ import annotations

import ctypes
import errno
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from prunescope.server import jobs
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import get_engine, session_scope, upgrade_database
from prunescope.server.errors import ERROR_CODES, ServiceError
from prunescope.server.job_io import (
    INGEST_KINDS,
    build_job_spec,
    commit_output,
    discard_staged_uploads,
    outage_patience,
)
from prunescope.server.logs import configure_logging, job_context
from prunescope.server.resilience import Backoff, database_unavailable, retry_on_outage
from prunescope.server.storage import artifact_store
from prunescope.server.tables import Job
from prunescope.workers.executors import INTERRUPTED, REFUSED
from prunescope.workers.jobspec import JobCancelled, JobInputError, JobSpec

log = logging.getLogger(__name__)

# Uploads are validated by the ingest kinds (INGEST_KINDS); every worker takes them first, and
# `serve` keeps a worker of its own for them so an upload never waits behind a long analysis.

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


# torch.load(weights_only=True) is all that keeps pickled code in an upload from running; before
# torch 2.6 a crafted file gets past it (CVE-2025-32434).
SAFE_TORCH = (2, 6)


class UnsafeTorch(SystemExit):
    """A worker refuses to start on a torch whose weights_only loading can be bypassed."""


def require_safe_torch() -> None:
    """Raise UnsafeTorch (its message says what to install) on a torch older than SAFE_TORCH."""
    import torch  # deferred: only worker processes load torch

    found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if found and tuple(map(int, found.groups())) >= SAFE_TORCH:
        return
    floor = ".".join(map(str, SAFE_TORCH))
    raise UnsafeTorch(
        f"this worker runs torch {torch.__version__}, which lets a crafted checkpoint run code "
        f"despite weights_only=True (CVE-2025-32434); install torch>={floor} "
        f"(pip install 'torch>={floor}') and start the worker again")


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
        require_safe_torch()  # a Ray task or the CLI runs jobs without run_worker's check
    except UnsafeTorch as exc:
        return _record_final(settings, job_id, worker_id, "failed", "failed", str(exc))
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
                return build_job_spec(session, session.get(Job, job_id), store, scratch, settings)

        spec = retry_on_outage(read_spec, what=f"reading job {job_id}",
                               give_up_after=outage_patience(settings))
        log.info("job %s (%s) started on %s", job_id, spec.kind, worker_id)
        beat.start()
        with job_context(kind=spec.kind):
            output = run_job(spec, progress)
            commit_output(settings, store, job_id, worker_id, output)
        state, message, error = "succeeded", "done", None
    except jobs.LostJobOwnership:
        log.warning("job %s is no longer owned by %s; dropping its work", job_id, worker_id)
        return "lost"
    except JobCancelled:
        state, message, error = "cancelled", "cancelled by the user", None
    except JobInputError as exc:
        state, message, error = "failed", "failed", str(exc)
        error_code = getattr(exc, "code", "invalid")
    except ServiceError as exc:  # an ingest job's row refused (a name taken meanwhile, …)
        state, message, error = "failed", "failed", exc.detail
        error_code = ERROR_CODES.get(type(exc), "invalid")
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
        state = _record_final(settings, job_id, worker_id, state, message, error, error_code)
    else:
        log.info("job %s %s", job_id, state)
    if state != "lost":
        try:
            discard_staged_uploads(settings, job_id)
        except Exception:  # a leftover staged file must not fail a decided job
            log.warning("job %s: its staged uploads could not be removed", job_id,
                        exc_info=True)
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
                        give_up_after=outage_patience(settings))
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
    require_safe_torch()
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
    it was running keeps its last heartbeat and is re-queued like any dead worker's. On Linux
    the kernel also sends SIGTERM the moment the parent dies (PR_SET_PDEATHSIG); the poll is
    the portable net, and the first look is at once: a worker still starting when its server
    died already has another parent.
    """
    _terminate_with_parent()

    def orphaned() -> bool:
        if os.getppid() == parent_pid:
            return False
        log.warning("the server (pid %d) is gone; this worker exits", parent_pid)
        return True

    if orphaned():
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if orphaned():
                os._exit(0)

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    return thread


def _terminate_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the poll alone watches the parent
        log.info("parent-death signal unavailable; polling for the server instead")


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
    # The pid the pool passed at spawn, not getppid(): by now the server may already be gone.
    server = mp.parent_process()
    exit_when_orphaned(server.pid if server is not None else os.getppid())
    settings = get_settings()
    configure_logging(settings.log_level)
    share_the_machine_with_the_server(settings)
    worker_id = f"{name}@{socket.gethostname()}:{os.getpid()}"
    try:
        with job_context(worker_id=worker_id):
            run_worker(settings, worker_id, stop_event, kinds=kinds)
    except KeyboardInterrupt:  # a Ctrl-C: say so, so the pool waits to see if its server stops
        sys.exit(INTERRUPTED)
    except UnsafeTorch as exc:  # say why once; the pool does not restart a refusing worker
        log.error("%s", exc)
        sys.exit(REFUSED)


def standalone_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    upgrade_database(settings)
    run_worker(settings)
