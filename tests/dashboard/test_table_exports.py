"""Every table the dashboard offers downloads as CSV and as Parquet, with the same rows."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from prunescope.server.main import create_app
from tests.dashboard.test_layer_figures import _evaluation


def _download_callbacks(dash_app) -> dict[str, list[str]]:  # noqa: ANN001
    """Output id of every dcc.Download callback → the ids of its inputs."""
    found: dict[str, list[str]] = {}
    for key, spec in dash_app.callback_map.items():
        for output in key.split(".."):
            component, _, prop = output.strip(".").rpartition(".")
            if prop == "data" and component.endswith("-download"):
                found[component] = [i["id"] for i in spec["inputs"]]
    return found


def test_every_download_answers_a_csv_and_a_parquet_button(settings):
    downloads = _download_callbacks(create_app(settings).state.dash)
    # the pages' tables: layers (5), attention (2), dynamics (3), geometry, comparison
    assert len(downloads) >= 11, sorted(downloads)
    downloads.pop("report-download")  # the HTML report, not a table
    for output, inputs in downloads.items():
        buttons = {i.rsplit("-", 1)[-1] for i in inputs if isinstance(i, str)}
        assert {"csv", "parquet"} <= buttons, (output, inputs)


def _project_with_evaluation(settings, tmp_path) -> int:
    from prunescope.server.db import session_scope
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services import projects as project_service
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import AnalysisResult

    pid = project_service.create_project(
        ProjectCreate(name="p", architecture="cnn_small"), settings).id
    path = tmp_path / "evaluation.npz"
    np.savez(path, **_evaluation())
    digest = artifact_store(settings).put_file(path)
    with session_scope(settings) as s:
        s.add(AnalysisResult(project_id=pid, kind="evaluation", artifact_digest=digest))
    return pid


def _press(client: TestClient, button: str, pid: int) -> dict:
    body = {
        "output": "metric-download.data",
        "outputs": {"id": "metric-download", "property": "data"},
        "inputs": [{"id": "metric-csv", "property": "n_clicks", "value": 1},
                   {"id": "metric-parquet", "property": "n_clicks", "value": 1}],
        "state": [{"id": "layers-metric", "property": "value", "value": "cka"},
                  {"id": "layers-project-id", "property": "data", "value": pid}],
        "changedPropIds": [f"{button}.n_clicks"],
    }
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.text
    return r.json()["response"]["metric-download"]["data"]


def test_a_layers_table_downloads_as_csv_and_parquet_with_equal_rows(settings, tmp_path):
    from prunescope.dashboard.figures.layers import metric_vs_sparsity_table

    pid = _project_with_evaluation(settings, tmp_path)
    expected = metric_vs_sparsity_table(_evaluation(), "cka")
    with TestClient(create_app(settings)) as client:
        as_csv = _press(client, "metric-csv", pid)
        as_parquet = _press(client, "metric-parquet", pid)
    assert as_csv["filename"] == f"project{pid}-cka-vs-sparsity.csv"
    assert as_parquet["filename"] == f"project{pid}-cka-vs-sparsity.parquet"
    assert as_parquet["base64"] is True
    table = pq.read_table(io.BytesIO(base64.b64decode(as_parquet["content"]))).to_pylist()
    rows = list(csv.DictReader(io.StringIO(as_csv["content"])))
    assert len(table) == len(rows) == len(expected) > 0
    assert list(table[0]) == list(rows[0]) == list(expected[0])
    for typed, text, want in zip(table, rows, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, float):  # Parquet keeps the type; CSV writes the number
                assert typed[key] == value and float(text[key]) == value
            else:
                assert typed[key] == value and text[key] == str(value)
