"""The Datasets page's upload: the label column typed on the page reaches the service layer."""

from __future__ import annotations

import base64
import csv
import io
import time

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


def _call(client: TestClient, trigger: str, inputs: list[dict], state: list[dict]) -> dict:
    """Run the page's callback that `trigger` (a component id) fires, as the browser does."""
    output, spec = next((key, spec) for key, spec in client.app.state.dash.callback_map.items()
                        if spec["inputs"][0]["id"] == trigger)
    # Outputs with several writers carry a hash after "@"; the response names them without it.
    parts = [part.rpartition(".") for part in output.strip(".").split("...")]
    body = {
        "output": output,
        "outputs": [{"id": component, "property": prop} for component, _, prop in parts],
        "inputs": inputs,
        "state": state,
        "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"],
    }
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code in (200, 204), r.text
    return r.json()["response"] if r.status_code == 200 else {}


def _upload(client: TestClient, pid: int, contents: str, label_column: str | None,
            name: str | None = None) -> dict:
    """Drop a file on the page, then poll as the page does until its validation ended."""
    first = _call(client, "dataset-upload",
                  [{"id": "dataset-upload", "property": "contents", "value": contents}],
                  [{"id": "dataset-upload", "property": "filename", "value": "pixels.csv"},
                   {"id": "dataset-name", "property": "value", "value": name},
                   {"id": "dataset-label-column", "property": "value", "value": label_column},
                   {"id": "dataset-activate", "property": "value", "value": []},
                   {"id": "datasets-project-id", "property": "data", "value": pid}])
    message = first["dataset-upload-message"]["children"]["props"]
    assert message["id"] == "dataset-upload-validating", message
    assert first["dataset-upload-poll"]["disabled"] is False
    job_id = first["dataset-upload-job"]["data"]
    for n in range(1, 600):
        polled = _call(client, "dataset-upload-poll",
                       [{"id": "dataset-upload-poll", "property": "n_intervals", "value": n}],
                       [{"id": "dataset-upload-job", "property": "data", "value": job_id},
                        {"id": "datasets-version", "property": "data", "value": {"n": 0}}])
        if polled:
            assert polled["dataset-upload-poll"]["disabled"] is True
            return polled
        time.sleep(0.1)
    raise AssertionError(f"the upload's job {job_id} did not end")


def test_an_upload_reads_its_labels_from_the_column_named_on_the_page(settings,
                                                                      ingest_worker) -> None:
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
