"""The ingest path (stage → validate → adopt → row): a name another request takes between the
check made before the bytes are read and the row's insert is the same 409 as that check and
leaves nothing behind; the validate step runs on plain data, without any server object."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model, default_config
from prunescope.server.db import session_scope
from prunescope.server.main import create_app
from prunescope.server.services import checkpoints, datasets, dynamics_runs
from prunescope.server.tables import AnalysisResult, Checkpoint, Dataset
from prunescope.workers import ingest as checks
from prunescope.workers.datasets import load_builtin
from prunescope.workers.jobspec import JobInputError
from tests.server.test_dynamics_upload import _files, _post, _run

ELSEWHERE = "0" * 64  # the clashing row's artifact: never in this store


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


@pytest.fixture
def pid(client) -> int:
    r = client.post("/api/v1/projects", json={"name": "mlp-digits", "architecture": "mlp"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _kept(settings) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """(files in the store, leftovers in its staging folder)."""
    root, tmp = settings.artifacts_dir / "sha256", settings.artifacts_dir / "tmp"
    files = sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return files, sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def _mlp_checkpoint() -> bytes:
    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    return safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})


def _digits_npz() -> bytes:
    digits = load_builtin("digits")
    buffer = io.BytesIO()
    np.savez(buffer, x=np.concatenate([digits.x_train, digits.x_test]),
             y=np.concatenate([digits.y_train, digits.y_test]))
    return buffer.getvalue()


def _upload_checkpoint(client, pid: int, how: str, content: bytes):  # noqa: ANN001, ANN202
    if how == "multipart":
        file = ("dense.safetensors", content, "application/octet-stream")
        return client.post(f"/api/v1/projects/{pid}/checkpoints", files={"file": file})
    tus = {"Tus-Resumable": "1.0.0"}
    metadata = "filename " + base64.b64encode(b"dense.safetensors").decode()
    made = client.post("/api/v1/uploads", headers={
        **tus, "Upload-Length": str(len(content)), "Upload-Metadata": metadata})
    assert made.status_code == 201, made.text
    upload_id = made.json()["id"]
    sent = client.patch(f"/api/v1/uploads/{upload_id}", content=content,
                        headers={**tus, "Upload-Offset": "0",
                                 "Content-Type": "application/offset+octet-stream"})
    assert sent.status_code == 204, sent.text
    return client.post(f"/api/v1/projects/{pid}/checkpoints/from-upload",
                       json={"upload_id": upload_id})


@pytest.mark.parametrize("how", ["multipart", "resumable"])
def test_a_checkpoint_name_taken_meanwhile_is_the_same_409(client, settings, pid, monkeypatch,
                                                           how):
    content = _mlp_checkpoint()
    checked = checkpoints._checkpoint_fields

    def then_taken(project_id, *args):  # noqa: ANN001, ANN002, ANN202
        fields = checked(project_id, *args)
        with session_scope(settings) as s:  # another request's insert wins the race
            s.add(Checkpoint(project_id=project_id, name=fields["name"], role="pruned",
                             source="upload", format="safetensors",
                             artifact_digest=ELSEWHERE, size_bytes=1))
        return fields

    monkeypatch.setattr(checkpoints, "_checkpoint_fields", then_taken)
    raced = _upload_checkpoint(client, pid, how, content)
    monkeypatch.undo()
    assert raced.status_code == 409, raced.text
    checked_first = _upload_checkpoint(client, pid, how, content)  # the pre-check refuses it
    assert checked_first.status_code == 409
    assert raced.json()["detail"] == checked_first.json()["detail"] == (
        "a checkpoint named 'dense' already exists in this project; rename it")
    assert _kept(settings) == ([], [])  # validated and adopted, then removed with the refusal
    assert [c["name"] for c in client.get(f"/api/v1/projects/{pid}/checkpoints").json()["data"]
            ] == ["dense"]  # only the row that won


def test_a_dataset_name_taken_meanwhile_is_the_same_409(client, settings, pid, monkeypatch):
    content = _digits_npz()
    checked = datasets._checked_name

    def then_taken(project_id, *args):  # noqa: ANN001, ANN002, ANN202
        name = checked(project_id, *args)
        with session_scope(settings) as s:
            s.add(Dataset(project_id=project_id, name=name, source="upload", format="npz",
                          artifact_digest=ELSEWHERE, active=False))
        return name

    def upload():  # noqa: ANN202
        return client.post(f"/api/v1/projects/{pid}/datasets",
                           files={"file": ("faces.npz", content, "application/octet-stream")})

    monkeypatch.setattr(datasets, "_checked_name", then_taken)
    raced = upload()
    monkeypatch.undo()
    checked_first = upload()
    assert raced.status_code == checked_first.status_code == 409, raced.text
    assert raced.json()["detail"] == checked_first.json()["detail"] == (
        "a dataset named 'faces' already exists in this project; rename it")
    assert _kept(settings) == ([], [])


def test_a_run_name_recorded_meanwhile_is_the_same_409(client, settings, pid, monkeypatch):
    files = _files(_run(0))
    looked_up = dynamics_runs.datasets.active_dataset

    def then_recorded(project_id, settings):  # noqa: ANN001, ANN202
        # Another upload records the name after this request checked it, before the row.
        with session_scope(settings) as s:
            s.add(AnalysisResult(project_id=project_id, kind="dynamics_run",
                                 artifact_digest=ELSEWHERE, summary={"run": "dense-s0"}))
        return looked_up(project_id, settings)

    monkeypatch.setattr(dynamics_runs.datasets, "active_dataset", then_recorded)
    raced = _post(client, pid, files)
    monkeypatch.undo()
    checked_first = _post(client, pid, files)
    assert raced.status_code == checked_first.status_code == 409, raced.text
    assert raced.json()["detail"] == checked_first.json()["detail"] == (
        "a training run named 'dense-s0' is already recorded in this project; "
        "choose another run name")
    assert _kept(settings) == ([], [])


def test_the_validate_step_takes_and_gives_plain_data(tmp_path):
    staged = tmp_path / "upload.bin"
    staged.write_bytes(_mlp_checkpoint())
    inputs = {"path": str(staged), "filename": "dense.safetensors", "role": "dense",
              "architecture": "mlp", "config": default_config("mlp"), "max_bytes": 10**8,
              "scratch_dir": str(tmp_path)}
    checked = checks.validate("checkpoint", inputs)
    assert checked.weights_path == str(staged) and checked.assets_path is None
    assert checked.format == "safetensors" and checked.stats["num_params"] > 0
    assert checked.project_config is None
    staged.write_bytes(b"not a checkpoint")
    with pytest.raises(JobInputError, match=r"^dense\.safetensors: "):
        checks.validate("checkpoint", inputs)


def test_the_validate_step_imports_nothing_of_the_server() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, prunescope.workers.ingest; "
         "print(sorted(m for m in sys.modules if m.startswith('prunescope.server')))"],
        capture_output=True, text=True, check=True,
    )
    assert loaded.stdout.strip() == "[]"
