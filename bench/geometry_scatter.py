"""What the Geometry page's maps cost to send: bytes per point and server time, 10k and 100k points.

The scatter endpoint is the Dash callback that draws the two linked maps (`draw_maps` in
`dashboard/pages/geometry.py`), reached the way the browser reaches it: a POST to
`/_dash-update-component` of the real ASGI app (`prunescope.server.main.create_app`, in process
through httpx, so no network time), reading a stored geometry result through the service layer.
The result is synthetic but shaped like the job's (3 checkpoints, 10 classes, clustered 2-D
maps), stored as a real artifact in a temporary data directory.

Baseline, same figure, same run (../shared/BENCH.md): the payload Plotly would send with
every per-point array as a JSON list of numbers (what `fig.to_json()` gives for Python lists),
against ours, where per-point arrays travel as base64 typed arrays of small dtypes. Time:
median and p95 over warm repeats (the first call loads the artifact), against the page's
budget of 200 ms p95; selection changes send only `selectedpoints` (a Patch), also timed.

    .venv/bin/python bench/geometry_scatter.py [--sizes 10000 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_BYTES = 25.0
TARGET_P95_MS = 200.0


def synthetic_geometry(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k, c = 10, 3
    labels = rng.integers(0, k, n)
    centres = rng.normal(scale=8.0, size=(k, 2))
    dense = centres[labels] + rng.normal(size=(n, 2))
    moved = [dense, dense + rng.normal(scale=0.3, size=(n, 2)),
             dense + rng.normal(scale=2.0, size=(n, 2))]
    predictions = np.stack([np.where(rng.random(n) < acc, labels, rng.integers(0, k, n))
                            for acc in (0.97, 0.93, 0.4)])
    margin = rng.normal(size=(c, n)).astype(np.float32)
    return {
        "checkpoint_ids": np.arange(1, c + 1), "checkpoint_names": np.array(
            ["dense", "magnitude_global-95", "random-95"]),
        "checkpoint_roles": np.array(["dense", "pruned", "pruned"]),
        "checkpoint_methods": np.array(["", "magnitude_global", "random"]),
        "sparsity": np.array([0.0, 0.95, 0.95]), "reference": np.array(0),
        "labels": labels, "class_names": np.array([str(i) for i in range(k)]),
        "predictions": predictions,
        "confidence": rng.random((c, n)).astype(np.float32),
        "norm": rng.random((c, n)).astype(np.float32),
        "angle": (rng.random((c, n)) * 90).astype(np.float32),
        "margin": margin,
        "embedding": np.stack(moved).astype(np.float32),
        "embedding_method": np.array("umap (reference)"),
        "per_class_accuracy": rng.random((c, k)), "confusion": rng.integers(0, 50, (c, k, k)),
        "ece": rng.random(c), "reliability_confidence": rng.random((c, 15)),
        "reliability_accuracy": rng.random((c, 15)),
        "reliability_count": rng.integers(0, 9, (c, 15)), "disagreement": rng.random((c, c)),
        "groups": np.full(n, -1), "group_names": np.array([], dtype=np.str_),
        "per_group_accuracy": np.zeros((c, 0)), "example_ids": np.arange(n).astype(np.str_),
    }


def request_body(project_id: int, version: int, selection: list[int]) -> dict:
    return {
        "output": "..geometry-dense.figure...geometry-pruned.figure..",
        "outputs": [{"id": "geometry-dense", "property": "figure"},
                    {"id": "geometry-pruned", "property": "figure"}],
        "inputs": [
            {"id": "geometry-checkpoint", "property": "value", "value": "random-95"},
            {"id": "geometry-color", "property": "value", "value": "class"},
            {"id": "geometry-view", "property": "value", "value": "side"},
            {"id": "geometry-version", "property": "data", "value": version},
        ],
        "changedPropIds": ["geometry-checkpoint.value"],
        "state": [
            {"id": "geometry-selection", "property": "data", "value": selection},
            {"id": "geometry-project-id", "property": "data", "value": project_id},
        ],
    }


def selection_body(project_id: int, selection: list[int]) -> dict:
    import dash

    # Outputs shared with another callback carry a suffix Dash derives from the callback.
    output = next(k for k in dash.get_app().callback_map
                  if "geometry-selection-count.children" in k)
    parts = [p.rsplit(".", 1) for p in output.strip(".").split("...")]
    return {
        "output": output,
        "outputs": [{"id": i, "property": prop} for i, prop in parts],
        "inputs": [{"id": "geometry-selection", "property": "data", "value": selection}],
        "changedPropIds": ["geometry-selection.data"],
        "state": [
            {"id": "geometry-origin", "property": "data", "value": None},
            {"id": "geometry-checkpoint", "property": "value", "value": "random-95"},
            {"id": "geometry-color", "property": "value", "value": "class"},
            {"id": "geometry-view", "property": "value", "value": "side"},
            {"id": "geometry-project-id", "property": "data", "value": project_id},
        ],
    }


def naive_bytes(figures: list[dict]) -> int:
    """The same figures with every typed array written out as a JSON list of numbers."""
    import plotly.graph_objects as go

    def listed(value):  # noqa: ANN001, ANN202
        if isinstance(value, dict) and "bdata" in value and "dtype" in value:
            import base64

            raw = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            shape = value.get("shape")
            if shape:
                raw = raw.reshape([int(s) for s in str(shape).split(",")])
            return raw.tolist()
        if isinstance(value, dict):
            return {k: listed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [listed(v) for v in value]
        return value

    return sum(len(go.Figure(listed(f)).to_json()) for f in figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="geometry-bench-")
    os.environ["PRUNESCOPE_DATA_DIR"] = folder
    from fastapi.testclient import TestClient

    from prunescope.server.config import get_settings
    from prunescope.server.db import session_scope
    from prunescope.server.main import create_app
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services import projects
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import AnalysisResult

    get_settings.cache_clear()  # read PRUNESCOPE_DATA_DIR set above
    settings = get_settings()
    client = TestClient(create_app(settings))
    client.get("/")  # Dash sets itself up on the first request
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; data in {folder}")
    rows = []
    for n in args.sizes:
        pid = projects.create_project(ProjectCreate(name=f"bench-{n}",
                                                    architecture="cnn_small"), settings).id
        path = Path(folder) / f"geometry-{n}.npz"
        np.savez(path, **synthetic_geometry(n))
        with session_scope(settings) as s:
            row = AnalysisResult(project_id=pid, kind="geometry",
                                 artifact_digest=artifact_store(settings).put_file(path),
                                 summary={})
            s.add(row)
            s.flush()
            version = row.id
        body = request_body(pid, version, [])
        first = time.perf_counter()
        response = client.post("/_dash-update-component", json=body)
        cold_ms = (time.perf_counter() - first) * 1000
        response.raise_for_status()
        payload = len(response.content)
        figures = list(json.loads(response.content)["response"].values())
        figures = [f["figure"] for f in figures]
        naive = naive_bytes(figures)
        times, patch_times = [], []
        selection = list(range(0, n, 7))
        for _ in range(args.repeats):
            start = time.perf_counter()
            client.post("/_dash-update-component", json=body).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            patched = client.post("/_dash-update-component", json=selection_body(pid, selection))
            patched.raise_for_status()
            patch_times.append((time.perf_counter() - start) * 1000)
        p95 = float(np.percentile(times, 95))
        rows.append([n, payload / (2 * n), naive / (2 * n), naive / payload, cold_ms,
                     statistics.median(times), p95, len(patched.content) / len(selection),
                     float(np.percentile(patch_times, 95))])
    headers = ["points", "B/point", "naive B/point", "naive/ours", "cold ms", "warm ms median",
               "warm ms p95", "selection B/selected", "selection p95 ms"]
    print("two linked maps per response (dense + checkpoint); bytes per point per map")
    widths = [max(len(h), 10) for h in headers]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        cells = [f"{r[0]}", f"{r[1]:.1f}", f"{r[2]:.1f}", f"{r[3]:.1f}x", f"{r[4]:.0f}",
                 f"{r[5]:.0f}", f"{r[6]:.0f}", f"{r[7]:.1f}", f"{r[8]:.0f}"]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    largest = rows[-1]
    print(f"at {largest[0]} points: {largest[1]:.1f} B/point (target <= {TARGET_BYTES:.0f}; "
          f"naive JSON lists {largest[3]:.1f}x larger), warm p95 {largest[6]:.0f} ms "
          f"(target < {TARGET_P95_MS:.0f} ms: {largest[6] / TARGET_P95_MS:.2f}x of budget)")


if __name__ == "__main__":
    main()
