"""The Datasets page's upload: the label column typed on the page reaches the service layer."""

from __future__ import annotations

import base64
import csv
import io

from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from prunescope.server.main import create_app
from prunescope.server.schemas import ProjectCreate
from prunescope.server.services import datasets as dataset_service
from prunescope.server.services import projects as project_service


def _digits_csv(label: str, count: int = 200) -> str:
    digits = load_digits()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*(f"p{j}" for j in range(64)), label])
    for i in range(count):
        writer.writerow([*digits.data[i].tolist(), int(digits.target[i])])
    return "data:text/csv;base64," + base64.b64encode(buffer.getvalue().encode()).decode()


def _upload(client: TestClient, pid: int, contents: str, label_column: str | None,
            name: str | None = None) -> dict:
    # The version store has several writers, so Dash names this output with a hash.
    output = next(key for key in client.app.state.dash.callback_map
                  if key.startswith("..dataset-upload-message.children..."))
    parts = [part.rpartition(".") for part in output.strip(".").split("...")]
    body = {
        "output": output,
        "outputs": [{"id": component, "property": prop} for component, _, prop in parts],
        "inputs": [{"id": "dataset-upload", "property": "contents", "value": contents}],
        "state": [{"id": "dataset-upload", "property": "filename", "value": "pixels.csv"},
                  {"id": "dataset-name", "property": "value", "value": name},
                  {"id": "dataset-label-column", "property": "value", "value": label_column},
                  {"id": "dataset-activate", "property": "value", "value": []},
                  {"id": "datasets-project-id", "property": "data", "value": pid},
                  {"id": "datasets-version", "property": "data", "value": {"n": 0}}],
        "changedPropIds": ["dataset-upload.contents"],
    }
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.text
    return r.json()["response"]


def test_an_upload_reads_its_labels_from_the_column_named_on_the_page(settings) -> None:
    pid = project_service.create_project(ProjectCreate(name="p", architecture="mlp"), settings).id
    with TestClient(create_app(settings)) as client:
        stored = _upload(client, pid, _digits_csv("digit"), " digit ")
        refused = _upload(client, pid, _digits_csv("digit"), None, "again")  # "label" by default
    message = stored["dataset-upload-message"]["children"]
    assert message["props"]["id"] == "dataset-upload-ok", message
    assert "200 examples, 10 classes" in message["props"]["children"]
    added = [d for d in dataset_service.list_datasets(pid, settings) if d.name == "pixels"]
    assert len(added) == 1 and stored["datasets-version"]["data"]["select"] == added[0].id
    error = refused["dataset-upload-message"]["children"]["props"]
    assert error["id"] == "dataset-upload-error", error
    assert "pixels.csv" in error["children"] and "label" in error["children"]
    assert [d.name for d in dataset_service.list_datasets(pid, settings)].count("again") == 0
