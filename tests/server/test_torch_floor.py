"""torch's weights_only loading is the only guard against pickled code in an upload, and torch
before 2.6 can be talked past it (CVE-2025-32434): the package requires 2.6 and a worker on an
older torch refuses to start."""

from __future__ import annotations

import re
import threading

import pytest
import torch

from prunescope.server import worker
from tests.wheel_build import ROOT, pyproject

OLD_TORCH = "2.5.1"


def _floor(requirement: str) -> tuple[int, int]:
    found = re.search(r">=\s*(\d+)\.(\d+)", requirement)
    assert found, f"{requirement!r} sets no lower bound"
    return int(found[1]), int(found[2])


def test_the_package_requires_a_torch_that_fixes_weights_only():
    (torch_requirement,) = [d for d in pyproject()["project"]["dependencies"]
                            if re.match(r"torch\b(?!vision)", d)]
    assert _floor(torch_requirement) >= worker.SAFE_TORCH
    # What the Makefile and the image install lies in that range.
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = [re.search(r"torch==(\d+)\.(\d+)", makefile),
              re.search(r"TORCH_VERSION=(\d+)\.(\d+)", dockerfile)]
    assert all(p and (int(p[1]), int(p[2])) >= worker.SAFE_TORCH for p in pinned)
    assert "torch>=2.4" not in dockerfile


def test_a_worker_refuses_to_start_on_an_old_torch(monkeypatch, tmp_path):
    from prunescope.server.config import Settings

    stopped = threading.Event()
    stopped.set()  # a worker that starts returns at once instead of polling
    monkeypatch.setattr(torch, "__version__", OLD_TORCH)
    with pytest.raises(SystemExit, match=r"torch 2\.5\.1.*CVE-2025-32434.*torch>=2\.6"):
        worker.run_worker(Settings(data_dir=tmp_path), "old-torch", stopped)


@pytest.mark.parametrize("version", ["2.6.0", "2.13.0+cpu", "2.10.1", "3.0.0a0"])
def test_a_worker_starts_on_a_torch_with_the_fix(monkeypatch, version):
    monkeypatch.setattr(torch, "__version__", version)
    worker.require_safe_torch()  # no refusal


def test_a_job_handed_to_an_old_torch_fails_with_the_reason(settings, monkeypatch):
    """A Ray task or the CLI runs a job without run_worker: the job fails, saying why."""
    from prunescope.server.schemas import JobCreate, ProjectCreate
    from prunescope.server.services import jobs as job_service
    from prunescope.server.services import projects as project_service

    project = project_service.create_project(ProjectCreate(name="p", architecture="mlp"),
                                             settings)
    job = job_service.submit_job(project.id, JobCreate(kind="train", params={"epochs": 1}),
                                 settings)
    monkeypatch.setattr(torch, "__version__", OLD_TORCH)
    assert worker.run_here(settings, job.id) == "failed"
    failed = job_service.get_job(job.id, settings)
    assert "CVE-2025-32434" in failed.error and "torch>=2.6" in failed.error
