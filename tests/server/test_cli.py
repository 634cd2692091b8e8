"""The `prunescope` command line, run as a real subprocess against a data directory."""

import subprocess
import sys

import torch
from safetensors.torch import save_file

from prunescope.models.registry import create_model
from prunescope.server.schemas import ProjectCreate
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import projects as project_service


def _cli(*args: str, data_dir) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "prunescope.server.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checkpoint_add_validates_and_stores(settings, tmp_path):
    project_service.create_project(ProjectCreate(name="cli", architecture="mlp"), settings)
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

    (pid,) = [p.id for p in project_service.list_projects(settings)]
    assert [c.name for c in checkpoint_service.list_checkpoints(pid, settings)] == ["dense"]


def test_serve_with_several_processes_answers_from_each(tmp_path):
    """`serve --processes 2`: two HTTP processes, each a whole app on the same database."""
    import os
    import socket
    import time
    import urllib.request
    from pathlib import Path

    from tests.postgres import stop_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunescope.server.cli", "serve", "--port", str(port),
         "--workers", "0", "--processes", "2"],
        env={**os.environ, "PRUNESCOPE_DATA_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children() -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == proc.pid:
                found.add(int(stat.parent.name))
        return found

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status
        except OSError:
            return 0

    try:
        deadline = time.monotonic() + 120
        while get("/api/v1/health") != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        statuses = {get(p) for p in ("/api/v1/projects", "/", "/jobs") for _ in range(10)}
        assert statuses == {200}
        servers = [p for p in children()
                   if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")]
        assert len(servers) == 2, servers
    finally:
        stop_process(proc)
