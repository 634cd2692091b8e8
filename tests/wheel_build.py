"""Builds PruneScope's wheel from a clean copy of the sources, once per test session.

The copy holds what the build reads (pyproject.toml, the readme, `prunescope/` and the folders
that pyproject's package-dir maps into it), so a stale `build/` folder or the symlinks of a
development checkout cannot leak into the wheel, and the checkout itself is left untouched.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the suite's own interpreter
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_dirs() -> dict[str, str]:
    """pyproject's package-dir: import name → folder in the repository."""
    return dict(pyproject()["tool"]["setuptools"]["package-dir"])


def _ignore_for_copy(folder: str, names: list[str]) -> set[str]:
    # Symlinks: a development checkout links prunescope/<layer> to ../<layer> (git-excluded).
    return {
        n for n in names
        if n in ("__pycache__", "build") or n.endswith((".pyc", ".egg-info"))
        or (Path(folder) / n).is_symlink()
    }


def copy_sources(dest: Path) -> Path:
    """What building the wheel reads, copied to dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", pyproject()["project"]["readme"]):
        shutil.copy2(ROOT / name, dest / name)
    for folder in sorted(set(package_dirs().values())):
        shutil.copytree(ROOT / folder, dest / folder, ignore=_ignore_for_copy)
    return dest


def build_wheel(out: Path) -> Path:
    """Build the wheel into out with this interpreter's setuptools (no isolation, no network)."""
    source = copy_sources(out / "src")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out / "dist"), str(source)],
        capture_output=True, text=True, check=False, cwd=out, timeout=600,
    )
    assert done.returncode == 0, f"building the wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = list((out / "dist").glob("prunescope-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@functools.cache
def session_wheel() -> Path:
    """The wheel of the current sources, built once per session (test modules share it)."""
    out = Path(tempfile.mkdtemp(prefix="prunescope-wheel-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return build_wheel(out)
