"""Workers run real jobs: train → prune → analyze, failures, and a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from prunescope.server.demo import DIGITS, DIGITS_DYNAMICS, MINILM, ensure_demo_project
from prunescope.server.schemas import JobCreate, ProjectCreate
from prunescope.server.services import analyses
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.worker import run_worker
from tests.postgres import stop_process


def _project(settings, name="cnn", architecture="cnn_small") -> int:
    return project_service.create_project(
        ProjectCreate(name=name, architecture=architecture), settings).id


def _submit(settings, pid, kind, depends_on=(), **params):  # noqa: ANN001, ANN202
    return job_service.submit_job(
        pid, JobCreate(kind=kind, params=params, depends_on=list(depends_on)), settings
    )


def test_train_prune_analyze_pipeline(settings):
    pid = _project(settings)
    train = _submit(settings, pid, "train", epochs=8, seed=0)
    mag = _submit(settings, pid, "prune", [train.id], method="magnitude_global", sparsity=0.5)
    rnd = _submit(settings, pid, "prune", [train.id], method="random", sparsity=0.9)
    analyze = _submit(settings, pid, "analyze", [mag.id, rnd.id])
    assert run_worker(settings, "test-worker", max_jobs=4) == 4
    states = {j.id: j.state for j in job_service.list_jobs(pid, settings)}
    assert states == dict.fromkeys([train.id, mag.id, rnd.id, analyze.id], "succeeded")

    ckpts = {c.name: c for c in checkpoint_service.list_checkpoints(pid, settings)}
    assert set(ckpts) == {"dense", "magnitude_global-50", "random-90"}
    assert abs(ckpts["magnitude_global-50"].measured_sparsity - 0.5) < 1e-3
    assert abs(ckpts["random-90"].measured_sparsity - 0.9) < 1e-3
    assert ckpts["magnitude_global-50"].parent_id == ckpts["dense"].id

    overview = analyses.project_overview(pid, settings)
    ev = overview["evaluation"]
    acc = dict(zip(ev["checkpoint_names"], ev["accuracy"], strict=True))
    assert acc["dense"] > 0.9
    assert acc["magnitude_global-50"] > acc["random-90"]
    cka = np.asarray(ev["cka"])
    dense_row = ev["checkpoint_names"].index("dense")
    np.testing.assert_allclose(cka[dense_row], 1.0, atol=1e-9)
    assert cka.shape == (3, len(ev["layers"])) and np.all((cka >= 0) & (cka <= 1 + 1e-9))
    job = job_service.get_job(analyze.id, settings)
    assert job.progress == 1.0 and job.finished_at is not None


def test_a_failing_job_records_its_error_and_the_worker_keeps_going(settings):
    pid = _project(settings)
    prune = _submit(settings, pid, "prune", method="random", sparsity=0.5)  # no dense yet
    dependent = _submit(settings, pid, "analyze", [prune.id])
    train = _submit(settings, pid, "train", epochs=1)
    assert run_worker(settings, "w", max_jobs=2) == 2
    failed = job_service.get_job(prune.id, settings)
    assert failed.state == "failed" and "no dense checkpoint" in failed.error
    assert failed.error_code == "invalid"  # a JobInputError: the user's input, a 422
    assert job_service.get_job(train.id, settings).state == "succeeded"
    assert job_service.get_job(dependent.id, settings).state == "failed"
    assert f"job {prune.id}" in job_service.get_job(dependent.id, settings).error


def wait_until_running(settings, job_id: int, timeout: float = 120.0):  # noqa: ANN001, ANN201
    """The job once it runs and has made some progress (so a kill lands mid-job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_service.get_job(job_id, settings)
        if job.state == "running" and job.progress > 0.05:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start running: {job}")


def _start_worker(settings, env_extra) -> subprocess.Popen:  # noqa: ANN001
    env = {**os.environ, "PRUNESCOPE_DATA_DIR": str(settings.resolved_data_dir), **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "prunescope.server.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _whole_artifacts(settings) -> int:  # noqa: ANN001
    """Every artifact the store shows is complete (its bytes hash to its name); their count."""
    from prunescope.server.storage import sha256_file

    files = [p for p in settings.artifacts_dir.joinpath("sha256").glob("*/*") if p.is_file()]
    for path in files:
        assert sha256_file(path) == path.name, f"partial artifact visible: {path}"
    return len(files)


def test_a_job_whose_worker_is_killed_is_requeued_and_completes(settings):
    pid = _project(settings)
    job = _submit(settings, pid, "train", epochs=30, seed=3)
    env = {
        "PRUNESCOPE_HEARTBEAT_SECONDS": "0.2",
        "PRUNESCOPE_STALE_AFTER_SECONDS": "2",
        "PRUNESCOPE_POLL_SECONDS": "0.2",
    }
    first = _start_worker(settings, env)
    try:
        j = wait_until_running(settings, job.id, timeout=60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    killed_by = j.worker_id
    assert _whole_artifacts(settings) == 0  # the killed attempt left nothing in the store
    second = _start_worker(settings, env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            _whole_artifacts(settings)  # checked all along: never half a file under a digest
            j = job_service.get_job(job.id, settings)
            if j.state in ("succeeded", "failed"):
                break
            time.sleep(0.2)
    finally:
        stop_process(second, timeout=10)
    assert j.state == "succeeded", j
    assert j.attempts == 2 and j.worker_id != killed_by
    (recovered,) = checkpoint_service.list_checkpoints(pid, settings)
    assert recovered.name == "dense"
    assert list(settings.artifacts_dir.joinpath("tmp").iterdir()) == []

    # The same job, undisturbed, gives the same bytes (content addressing: the same digest).
    undisturbed_project = _project(settings, name="undisturbed")
    _submit(settings, undisturbed_project, "train", epochs=30, seed=3)
    assert run_worker(settings, "undisturbed", max_jobs=1) == 1
    (undisturbed,) = checkpoint_service.list_checkpoints(undisturbed_project, settings)
    assert undisturbed.artifact_digest == recovered.artifact_digest
    assert _whole_artifacts(settings) == 1


def test_demo_is_idempotent(settings):
    pid, queued = ensure_demo_project(DIGITS, settings)
    n_prunes = len(DIGITS.methods) * len(DIGITS.sparsities)
    assert [j.kind for j in queued] == ["train"] + ["prune"] * n_prunes + ["analyze", "geometry"]
    again_pid, again = ensure_demo_project(DIGITS, settings)
    assert again_pid == pid and again == []
    assert len(project_service.list_projects(settings)) == 1
    assert len(job_service.list_jobs(pid, settings)) == len(queued)


def test_the_minilm_demo_queues_every_pruning_its_probes_and_a_sentences_maps(settings,
                                                                             ingest_worker):
    pid, queued = ensure_demo_project(MINILM, settings)
    # First the real MiniLM folder, uploaded as a browser would: its validation job.
    upload, queued = queued[0], queued[1:]
    assert upload.kind == "ingest_checkpoint" and upload.params["role"] == "dense"
    assert all(j.depends_on == [upload.id] for j in queued if j.kind == "prune")
    prunes = [(j.params["method"], j.params["sparsity"]) for j in queued if j.kind == "prune"]
    assert prunes == [("magnitude_global", s) for s in MINILM.sparsities] + list(
        MINILM.extra_prunings)
    assert {"wanda", "wanda_2of4", "magnitude_2of4"} <= {m for m, _ in prunes}
    calibrated = {j.params["method"]: j.params.get("calibration_batches") for j in queued
                  if j.kind == "prune"}
    assert calibrated == {"magnitude_global": None, "wanda": 2, "magnitude_2of4": None,
                          "wanda_2of4": 2}
    tail = queued[len(prunes):]
    assert [j.kind for j in tail] == ["analyze", "probe", "attention_maps"]
    assert tail[-1].params == {"sentence": 0}
    assert all(set(j.depends_on) == {upload.id} | {q.id for q in queued if q.kind == "prune"}
               for j in tail)
    assert ensure_demo_project(MINILM, settings)[1] == []  # the upload is pending: nothing new
    assert checkpoint_service.ingested(upload, settings).role == "dense"
    assert [c.role for c in checkpoint_service.list_checkpoints(pid, settings)] == ["dense"]
    assert ensure_demo_project(MINILM, settings)[1] == []


def test_the_dynamics_demo_queues_each_run_once_then_the_analysis(settings):
    pid, queued = ensure_demo_project(DIGITS_DYNAMICS, settings)
    runs = [j for j in queued if j.kind == "train_dynamics"]
    assert len(runs) == len(DIGITS_DYNAMICS.dynamics_runs) * len(DIGITS_DYNAMICS.dynamics_seeds)
    assert {(j.params["mode"], j.params["sparsity"]) for j in runs} == set(
        DIGITS_DYNAMICS.dynamics_runs)
    assert [j.kind for j in queued[len(runs):]] == ["dynamics"]
    assert set(queued[-1].depends_on) == {j.id for j in runs}
    assert checkpoint_service.list_checkpoints(pid, settings) == []
    assert ensure_demo_project(DIGITS_DYNAMICS, settings)[1] == []


def test_a_failed_job_shows_its_error_in_the_dashboard_panel(settings):
    from prunescope.dashboard.components import jobs_panel

    pid = _project(settings)
    job = _submit(settings, pid, "prune", method="random", sparsity=0.5)  # nothing to prune
    run_worker(settings, "w", max_jobs=1)
    (row,) = jobs_panel(job_service.list_jobs(pid, settings))
    text = str(row.to_plotly_json())
    assert row.id == f"job-{job.id}" and "failed" in row.className
    assert "no dense checkpoint" in text  # the worker's message, not a generic one
    assert "cancel-job" not in text  # finished jobs offer no cancel button


def test_a_pruning_sweep_queues_each_pair_then_an_analysis_and_reports_refusals(settings):
    pid = _project(settings)
    train = _submit(settings, pid, "train", epochs=4)
    run_worker(settings, "w", max_jobs=1)
    existing = _submit(settings, pid, "prune", method="random", sparsity=0.5)
    queued, refused = job_service.submit_pruning_sweep(
        pid, ["magnitude_layerwise", "l1_structured", "random"], [0.5], settings
    )
    assert [j.kind for j in queued] == ["prune", "prune", "analyze"]
    assert queued[-1].depends_on == [queued[0].id, queued[1].id]
    assert len(refused) == 1 and "already produces 'random-50'" in refused[0]
    run_worker(settings, "w", max_jobs=4)
    assert all(job_service.get_job(j.id, settings).state == "succeeded" for j in queued)
    names = {c.name for c in checkpoint_service.list_checkpoints(pid, settings)}
    assert {"magnitude_layerwise-50", "l1_structured-50", "random-50"} <= names
    again, refused = job_service.submit_pruning_sweep(
        pid, ["random", "random"], [0.5, 0.7], settings
    )
    assert [j.params.get("sparsity") for j in again] == [0.7, None]  # random-70, then analyze
    assert sum("'random-50' already exists" in r for r in refused) == 2
    assert sum("already produces 'random-70'" in r for r in refused) == 1 and len(refused) == 3
    assert train.id and existing.id


def test_a_pool_worker_leaves_when_its_server_is_killed(tmp_path):
    """A server killed outright (SIGKILL: no cleanup runs) must not leave workers claiming jobs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from prunescope.server.worker import worker_process_main\n"
        "from prunescope.workers.executors import LocalProcessPool\n"
        "if __name__ == '__main__':\n"
        "    pool = LocalProcessPool(1, worker_process_main)\n"
        "    pool.start()\n"
        "    print(pool._procs[0].pid, flush=True)\n"
        "    time.sleep(4)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    (tmp_path / "server_like.py").write_text(script)
    env = {**os.environ, "PRUNESCOPE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "server_like.py")], env=env,
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    worker_pid = int(proc.stdout.readline())
    assert proc.wait(30) == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        # A zombie (exited, parent gone) is reaped by init; /proc shows its state.
        try:
            if open(f"/proc/{worker_pid}/stat").read().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker_pid, 9)
        raise AssertionError("the worker outlived its server")


def test_a_local_worker_yields_to_its_server(tmp_path):
    code = (
        "import os, torch\n"
        "from prunescope.server.config import Settings\n"
        "from prunescope.server.worker import share_the_machine_with_the_server\n"
        "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "threads = share_the_machine_with_the_server(Settings(data_dir=r'%s', torch_threads=%s))\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0) - before, threads, torch.get_num_threads())\n"
    )
    for requested, expected in ((None, max(1, (os.cpu_count() or 2) - 1)), (3, 3)):
        out = subprocess.run([sys.executable, "-c", code % (tmp_path, requested)],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["5", str(expected), str(expected)], out
