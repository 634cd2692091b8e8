"""The Ray executor on a real local Ray instance: jobs run as Ray tasks end to end, GPU
requests are passed to Ray, and a task killed mid-job is re-queued by the job table."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import ray

from prunescope.server.config import Settings
from prunescope.server.ray_executor import RayExecutor, task_settings
from prunescope.server.schemas import JobCreate, ProjectCreate
from prunescope.server.services import analyses
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.worker import run_worker
from tests.server.test_worker import wait_until_running


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    yield
    ray.shutdown()


def _submit(settings, pid, kind, depends_on=(), **params):  # noqa: ANN001, ANN202
    return job_service.submit_job(
        pid, JobCreate(kind=kind, params=params, depends_on=list(depends_on)), settings)


def _wait_final(settings, job_ids, timeout=240.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [job_service.get_job(j, settings) for j in job_ids]
        if all(j.state in ("succeeded", "failed", "cancelled") for j in found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"jobs not finished: {[(j.id, j.state, j.message) for j in found]}")


def _executor(settings: Settings, **updates) -> RayExecutor:  # noqa: ANN003
    return RayExecutor(settings.model_copy(update={"executor": "ray", **updates}))


def test_tasks_get_the_dispatchers_database_and_artifacts(settings):
    shared = task_settings(settings)
    assert shared["database_url"] == settings.sqlalchemy_url
    assert shared["storage_url"] == str(settings.artifacts_dir)
    remote = task_settings(settings.model_copy(update={"storage_url": "s3://lab/prunescope"}))
    assert remote["storage_url"] == "s3://lab/prunescope"


def test_train_prune_analyze_run_as_ray_tasks_and_match_a_local_run(settings, ray_instance):
    pid = project_service.create_project(ProjectCreate(name="ray", architecture="mlp"), settings).id
    train = _submit(settings, pid, "train", epochs=3, seed=0)
    prune = _submit(settings, pid, "prune", [train.id], method="magnitude_global",
                    sparsity=0.7)
    analyze = _submit(settings, pid, "analyze", [prune.id])
    executor = _executor(settings)
    executor.start()
    try:
        done = _wait_final(settings, [train.id, prune.id, analyze.id])
    finally:
        executor.stop()
    assert [j.state for j in done] == ["succeeded"] * 3, [(j.state, j.error) for j in done]
    assert all(j.worker_id.startswith("ray@") and j.attempts == 1 for j in done)
    assert all(j.worker_id.split(":")[-1] != str(os.getpid()) for j in done)  # other processes

    by_ray = analyses.project_overview(pid, settings)["evaluation"]
    again = _submit(settings, pid, "analyze")
    assert run_worker(settings, "local", max_jobs=1) == 1  # the same analysis, in this process
    assert job_service.get_job(again.id, settings).state == "succeeded"
    local = analyses.project_overview(pid, settings)["evaluation"]
    assert by_ray["checkpoint_names"] == local["checkpoint_names"] == ["dense",
                                                                       "magnitude_global-70"]
    np.testing.assert_allclose(by_ray["accuracy"], local["accuracy"], atol=0)
    np.testing.assert_allclose(by_ray["cka"], local["cka"], rtol=1e-12)


def test_a_kind_asking_for_a_gpu_waits_for_one(settings, ray_instance):
    pid = project_service.create_project(ProjectCreate(name="gpu", architecture="mlp"), settings).id
    job = _submit(settings, pid, "train", epochs=1)
    executor = _executor(settings, ray_num_gpus={"train": 0.5, "default": 0.0})
    executor.connect()
    try:
        assert executor.dispatch_once() == [job.id]
        time.sleep(3)  # no node of this Ray instance has a GPU: the task cannot start
        waiting = job_service.get_job(job.id, settings)
        assert waiting.state == "queued", waiting
        assert "0.5 GPU" in waiting.message and "the cluster has 0 GPU" in waiting.message
        assert executor.dispatch_once() == []  # submitted once, not again while pending
    finally:
        ray.cancel(executor.in_flight[job.id], force=True)


def test_a_task_killed_mid_job_is_requeued_and_completes(settings, ray_instance):
    fast = {"heartbeat_seconds": 0.2, "stale_after_seconds": 2.0, "poll_seconds": 0.2}
    pid = project_service.create_project(ProjectCreate(name="kill", architecture="cnn_small"),
                                  settings).id
    job = _submit(settings, pid, "train", epochs=40, seed=3)
    executor = _executor(settings, **fast)
    executor.start()
    try:
        running = wait_until_running(settings, job.id)
        os.kill(int(running.worker_id.rsplit(":", 1)[1]), signal.SIGKILL)
        (done,) = _wait_final(settings, [job.id])
    finally:
        executor.stop()
    assert done.state == "succeeded", done
    assert done.attempts == 2 and done.worker_id != running.worker_id
    assert [c.name for c in checkpoint_service.list_checkpoints(pid, settings)] == ["dense"]
