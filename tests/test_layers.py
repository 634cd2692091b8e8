"""The layers as pyproject.toml's import-linter contracts state them: dashboard → server →
workers → models, nothing upward, no cycle between sibling modules, no torch in the dashboard.

The repository keeps the layers in top-level folders that install beneath `prunescope`, so the
check runs over a staged copy laid out as installed (prunescope/server, …), which is what
import-linter reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("server", "dashboard", "workers", "models")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _stage(target: Path) -> Path:
    package = target / "prunescope"
    shutil.copytree(ROOT / "prunescope", package,
                    ignore=shutil.ignore_patterns("__pycache__", *LAYERS))
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, package / layer,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return package


def _lint(stage: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(stage)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=stage, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.fail("import-linter is missing: install the dev extra")
    return tmp_path_factory.mktemp("layers")


def test_the_layers_point_down_and_no_modules_import_each_other(staged):
    _stage(staged)
    result = _lint(staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("planted", [
    ("models/registry.py", "from prunescope.workers import jobs  # climbs\n", "Layers point"),
    ("workers/jobspec.py", "import prunescope.server.config  # climbs\n", "Layers point"),
    ("dashboard/state.py", "import torch  # the web layer computes\n", "no torch"),
    ("server/errors.py", "from prunescope.server import access  # a cycle\n", "cycles"),
])
def test_an_import_that_climbs_or_circles_fails(tmp_path, planted):
    path, line, contract = planted
    package = _stage(tmp_path)
    target = package / path
    target.write_text(target.read_text() + line)
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout, result.stdout
