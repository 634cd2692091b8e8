"""The `prunescope` command line, run as a real subprocess against a data directory."""

import subprocess
import sys

import torch
from safetensors.torch import save_file

from models.registry import create_model
from server import services
from server.schemas import ProjectCreate


def _cli(*args: str, data_dir) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checkpoint_add_validates_and_stores(settings, tmp_path):
    services.create_project(ProjectCreate(name="cli", architecture="mlp"), settings)
    torch.manual_seed(0)
    good = tmp_path / "dense.safetensors"
    save_file(create_model("mlp").state_dict(), str(good))
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    data_dir = settings.resolved_data_dir

    ok = _cli("checkpoint", "add", "cli", str(good), "--role", "dense", data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr
    assert "stored checkpoint" in ok.stdout and "0.00% sparse" in ok.stdout

    refused = _cli("checkpoint", "add", "cli", str(bad), data_dir=data_dir)
    assert refused.returncode == 1 and "broken.pt" in refused.stderr
    missing = _cli("checkpoint", "add", "nope", str(good), data_dir=data_dir)
    assert missing.returncode == 2 and "no project named 'nope'" in missing.stderr

    (pid,) = [p.id for p in services.list_projects(settings)]
    assert [c.name for c in services.list_checkpoints(pid, settings)] == ["dense"]
