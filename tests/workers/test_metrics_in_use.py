"""Every module in workers/metrics is reached from the app: editing one changes a page."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS = "prunescope.workers.metrics"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def unreached_metric_modules(root: Path) -> set[str]:
    """The workers/metrics modules that no server/dashboard/workers/models code reaches."""
    folder = root / "workers" / "metrics"
    metrics = {f"{METRICS}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    outside: set[str] = set()
    inside: dict[str, set[str]] = {}
    for layer in ("server", "dashboard", "workers", "models"):
        for path in (root / layer).rglob("*.py"):
            imported = _imported_modules(path) & metrics
            if path.parent == folder:
                inside[f"{METRICS}.{path.stem}"] = imported
            else:
                outside |= imported
    reached = set(outside)
    while True:  # a metric module used only by a used metric module is reached too
        more = set().union(*(inside.get(m, set()) for m in reached)) - reached
        if not more:
            return metrics - reached
        reached |= more


def test_every_metric_module_has_a_production_caller() -> None:
    assert unreached_metric_modules(ROOT) == set(), (
        "these workers/metrics modules are reached only from tests or bench: a reference "
        "formulation belongs in tests/reference/, dead code nowhere"
    )


def test_a_module_only_tests_import_is_reported(tmp_path: Path) -> None:
    files = {
        "workers/metrics/used.py": "from prunescope.workers.metrics.helper import f\n",
        "workers/metrics/helper.py": "def f(): ...\n",
        "workers/metrics/orphan.py": "def g(): ...\n",
        "workers/analyses/a.py": "def run():\n    from prunescope.workers.metrics import used\n",
        "tests/test_orphan.py": "from prunescope.workers.metrics.orphan import g\n",
        "bench/orphan.py": "from prunescope.workers.metrics.orphan import g\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert unreached_metric_modules(tmp_path) == {f"{METRICS}.orphan"}
