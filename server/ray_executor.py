"""The Ray executor: each ready job becomes a Ray task that claims and runs it on a node with
the resources its kind asks for; the job table stays the truth for state, progress and retries.

The dispatcher (in the `serve` process) submits a task per job whose dependencies succeeded,
asking for `task_gpus` GPUs (fractions share a GPU: PRUNESCOPE_RAY_NUM_GPUS, else the share the
job kind's declaration gives) and `ray_num_cpus` CPUs.
The task claims its job with the same conditional update local workers use, so a job is never
run by two tasks at once, even when a restarted dispatcher submits it again. A task whose node
dies leaves its job's heartbeat to go stale; the dispatcher re-queues it (as local workers do)
and submits it anew, up to the job's `max_attempts`. Ray's own retries are off for this reason.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from prunescope.server import jobs
from prunescope.server.config import Settings
from prunescope.server.db import get_engine
from prunescope.server.logs import configure_logging, job_context
from prunescope.workers.jobs import JOB_KINDS

log = logging.getLogger(__name__)

# Settings a task takes from the dispatcher: what every machine must agree on. The data
# directory (only a cache when artifacts live at a URL) is the node's own PRUNESCOPE_DATA_DIR
# when it sets one, else the dispatcher's path.
SHARED_SETTINGS = ("heartbeat_seconds", "stale_after_seconds", "max_attempts", "poll_seconds",
                   "torch_threads", "log_level")


def task_settings(settings: Settings) -> dict[str, Any]:
    """What a task needs to reach the same database and artifacts as the dispatcher. Without
    a storage URL the artifacts are the dispatcher's own folder, which only works on one
    machine or a shared filesystem (docs/cluster.md)."""
    shared = {k: getattr(settings, k) for k in SHARED_SETTINGS}
    return {**shared, "database_url": settings.sqlalchemy_url,
            "storage_url": settings.storage_url or str(settings.artifacts_dir),
            "data_dir": str(settings.resolved_data_dir)}


def task_gpus(settings: Settings, kind: str, cluster_gpus: Callable[[], float]) -> float:
    """GPUs a job's Ray task asks for: PRUNESCOPE_RAY_NUM_GPUS's entry for the kind, else its
    "default" entry, else the share the kind's declaration gives (`JobDeclaration.gpus`).

    A declared share applies only where the cluster has that many GPUs (`cluster_gpus()`, asked
    only then): on a CPU-only cluster the job runs on CPUs instead of waiting for a GPU that
    never comes. A share set in the environment is asked for as it is.
    """
    if kind in settings.ray_num_gpus or "default" in settings.ray_num_gpus:
        return settings.gpus_for(kind)
    declared = JOB_KINDS[kind].gpus if kind in JOB_KINDS else 0.0
    return declared if declared > 0 and cluster_gpus() >= declared else 0.0


def run_job_task(overrides: dict[str, Any], job_id: int) -> str:
    """Body of a job's Ray task: claim the job, run it to a final state, free the device.
    Returns the state, or "taken" when the job was no longer queued."""
    from prunescope.server.worker import execute_job
    from prunescope.workers.device import release_device_memory

    if os.environ.get("PRUNESCOPE_DATA_DIR"):
        overrides = {k: v for k, v in overrides.items() if k != "data_dir"}
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    worker_id = f"ray@{socket.gethostname()}:{os.getpid()}"
    if not jobs.claim_job(get_engine(settings), job_id, worker_id):
        return "taken"
    try:
        with job_context(job_id, worker_id):
            return execute_job(settings, job_id, worker_id)
    finally:
        release_device_memory()


class RayExecutor:
    """Submits ready jobs as Ray tasks from a background thread until stopped.

    `address`: a Ray cluster ("auto", "ray://head:10001", or host:port); None reads RAY_ADDRESS
    and, when that is unset too, starts a local Ray instance with `init_kwargs`.
    """

    def __init__(self, settings: Settings, *, address: str | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self.init_kwargs = dict(init_kwargs or {})
        self.in_flight: dict[int, Any] = {}  # job id → the ObjectRef of its task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remote: Any = None
        self._started_ray = False

    def connect(self) -> None:
        import ray

        if not ray.is_initialized():
            # The tasks import this package; a local instance runs them from this checkout.
            kwargs = {"ignore_reinit_error": True, "include_dashboard": False,
                      "log_to_driver": True, **self.init_kwargs}
            ray.init(address=self.address or None, **kwargs)
            self._started_ray = True
        self._remote = ray.remote(max_retries=0)(run_job_task)

    def start(self) -> None:
        self.connect()
        self._thread = threading.Thread(target=self._loop, name="ray-dispatcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from datetime import timedelta

        from prunescope.server.resilience import Backoff, database_unavailable

        backoff = Backoff(first=self.settings.poll_seconds)
        engine = get_engine(self.settings)
        stale_after = timedelta(seconds=self.settings.stale_after_seconds)
        while not self._stop.is_set():
            try:
                jobs.requeue_stale_jobs(engine, stale_after)
                self.dispatch_once()
                backoff.reset()
                delay = self.settings.poll_seconds
            except Exception as exc:  # the database or Ray briefly gone: back off, go on
                delay = backoff.next_delay()
                if database_unavailable(exc):
                    log.warning("job table unreachable; retrying in %.1f s", delay)
                else:
                    log.exception("dispatching jobs failed; retrying in %.1f s", delay)
            self._stop.wait(delay)

    def dispatch_once(self) -> list[int]:
        """Forget finished tasks, then submit every ready job that has none; returns the ids
        submitted."""
        import ray

        if self.in_flight:
            refs = list(self.in_flight.values())
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            finished = {ref.hex() for ref in done}
            for job_id, ref in list(self.in_flight.items()):
                if ref.hex() in finished:
                    del self.in_flight[job_id]
                    try:
                        log.info("job %s task ended: %s", job_id, ray.get(ref))
                    except Exception as exc:  # noqa: BLE001 - a node or worker died
                        log.warning("job %s task failed in Ray (%s); the job table re-queues "
                                    "it once its heartbeat is stale", job_id, exc)
        submitted = []
        engine = get_engine(self.settings)
        overrides = task_settings(self.settings)
        # Asked once per round, and only when a GPU share needs it.
        cluster_gpus = functools.cache(lambda: float(ray.cluster_resources().get("GPU", 0.0)))
        for job_id, kind in jobs.ready_jobs(engine):
            if job_id in self.in_flight:
                continue
            gpus = task_gpus(self.settings, kind, cluster_gpus)
            self.in_flight[job_id] = self._remote.options(
                num_gpus=gpus, num_cpus=self.settings.ray_num_cpus,
                name=f"prunescope-job-{job_id}-{kind}",
            ).remote(overrides, job_id)
            message = (f"submitted to Ray; waiting for a node with {gpus:g} GPU and "
                       f"{self.settings.ray_num_cpus:g} CPU free")
            if gpus > 0 and cluster_gpus() < gpus:
                message += (f"; the cluster has {cluster_gpus():g} GPU now, so this waits "
                            "for a GPU node to join (or set PRUNESCOPE_RAY_NUM_GPUS for "
                            f"{kind!r} to 0)")
            jobs.note_queued(engine, job_id, message)
            submitted.append(job_id)
        return submitted

    def stop(self, timeout: float = 10.0) -> None:
        """Stop submitting. A local Ray instance this executor started is shut down with its
        tasks (a Ray client's tasks end some time after it disconnects): their jobs stop
        heartbeating and are re-queued like any dead worker's, costing one attempt."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
