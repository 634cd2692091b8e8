"""The REST API: resources, validation errors, and refused uploads that leave nothing behind."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.registry import create_model, default_config
from prunescope.server.main import create_app


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


@pytest.fixture
def project(client) -> dict:
    r = client.post("/api/v1/projects", json={"name": "mlp-digits", "architecture": "mlp"})
    assert r.status_code == 201, r.text
    return r.json()


def _mlp_state(sparsity_seed: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if sparsity_seed is not None:
        for k, v in state.items():
            if k.endswith("weight"):
                v[v.abs() < v.abs().median()] = 0.0
    return state


def _torch_bytes(obj) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _artifact_files(settings) -> list[str]:
    root = settings.artifacts_dir / "sha256"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _upload(client, pid, content: bytes, filename="ckpt.safetensors", **form):  # noqa: ANN001
    return client.post(
        f"/api/v1/projects/{pid}/checkpoints",
        files={"file": (filename, content, "application/octet-stream")},
        data={k: str(v) for k, v in form.items()},
    )


def test_health_and_openapi(client):
    assert client.get("/api/v1/health").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/projects/{project_id}/checkpoints" in paths
    assert "/api/v1/jobs/{job_id}/cancel" in paths


def test_project_lifecycle_and_errors(client, project):
    assert client.get(f"/api/v1/projects/{project['id']}").json()["name"] == "mlp-digits"
    assert project["architecture_config"] == default_config("mlp")
    assert project["datasets"][0]["builtin_name"] == "digits"
    assert client.get("/api/v1/projects").json()["count"] == 1
    dup = client.post("/api/v1/projects", json={"name": "mlp-digits", "architecture": "mlp"})
    assert dup.status_code == 409 and "already have a project" in dup.json()["detail"]
    bad = client.post("/api/v1/projects", json={"name": "x", "architecture": "resnet9000"})
    assert bad.status_code == 422 and "mlp" in bad.json()["detail"]  # lists the known ones
    cfg = client.post(
        "/api/v1/projects",
        json={"name": "y", "architecture": "mlp", "architecture_config": {"wings": 2}},
    )
    assert cfg.status_code == 422 and "wings" in cfg.json()["detail"]
    for path in (
        "/api/v1/projects/999",
        "/api/v1/jobs/999",
        "/api/v1/checkpoints/999",
        "/api/v1/results/999",
        "/api/v1/projects/999/checkpoints",
    ):
        r = client.get(path)
        assert r.status_code == 404 and "999" in r.json()["detail"], path
    assert client.get("/api/v1/projects/abc").status_code == 422


def test_upload_safetensors_and_torch_state_dict(client, settings, project):
    pid = project["id"]
    dense = _upload(client, pid, safetensors_bytes(_mlp_state()), "dense.safetensors")
    assert dense.status_code == 201, dense.text
    body = dense.json()
    assert body["role"] == "dense" and body["format"] == "safetensors" and body["name"] == "dense"
    assert body["measured_sparsity"] == 0.0 and body["num_nonzero"] == body["num_params"] > 0
    pruned = _upload(
        client,
        pid,
        _torch_bytes(_mlp_state(sparsity_seed=1)),
        "half.pt",
        method="median",
        target_sparsity=0.5,
    )
    assert pruned.status_code == 201, pruned.text
    p = pruned.json()
    assert p["role"] == "pruned" and p["format"] == "torch_state_dict"
    assert p["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    detail = client.get(f"/api/v1/checkpoints/{p['id']}").json()
    assert set(detail["layer_stats"]) and all(
        0.4 < s["sparsity"] < 0.6 for s in detail["layer_stats"].values()
    )
    download = client.get(f"/api/v1/checkpoints/{body['id']}/download")
    assert download.status_code == 200 and download.content == safetensors_bytes(_mlp_state())
    assert len(_artifact_files(settings)) == 2
    again = _upload(client, pid, safetensors_bytes(_mlp_state()), "dense.safetensors")
    assert again.status_code == 409


class _Exploit:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch /tmp/prunescope-pwned",))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("garbage.pt", b"not a checkpoint at all", ""),
        ("truncated.safetensors", safetensors_bytes(_mlp_state())[:500], ""),
        ("exploit.pt", _torch_bytes({"w": _Exploit()}), "state_dict"),
        ("raw-pickle.pkl", pickle.dumps({"fc": _Exploit()}), ""),
        ("model.pt", _torch_bytes(torch.nn.Linear(2, 2)), "state_dict"),
        (
            "wrong-shape.safetensors",
            safetensors_bytes({**_mlp_state(), next(iter(_mlp_state())): torch.zeros(3, 3)}),
            "shape",
        ),
        ("missing.safetensors", safetensors_bytes(dict(list(_mlp_state().items())[1:])), "missing"),
        (
            "unexpected.safetensors",
            safetensors_bytes({**_mlp_state(), "extra.weight": torch.zeros(2)}),
            "unexpected",
        ),
        (
            "nan.safetensors",
            safetensors_bytes(
                {
                    k: v.fill_(float("nan")) if i == 0 else v
                    for i, (k, v) in enumerate(_mlp_state().items())
                }
            ),
            "nan",
        ),
    ],
)
def test_bad_uploads_get_4xx_and_leave_nothing(client, settings, project, name, content, expected):
    marker = "/tmp/prunescope-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    r = _upload(client, project["id"], content, name)
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    assert name in detail and expected in detail.lower()
    assert not os.path.exists(marker), "an uploaded pickle executed code"
    assert client.get(f"/api/v1/projects/{project['id']}/checkpoints").json()["count"] == 0
    assert _artifact_files(settings) == []
    assert list(settings.artifacts_dir.joinpath("tmp").iterdir()) == []


def test_oversized_upload_is_refused_before_it_is_read(settings, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MAX_UPLOAD_BYTES", "2048")
    from prunescope.server.config import get_settings

    get_settings.cache_clear()
    small = get_settings()
    with TestClient(create_app(small, dashboard=False)) as c:
        pid = c.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"}).json()["id"]
        r = _upload(c, pid, b"\0" * 200_000, "big.safetensors")
        assert r.status_code == 413 and "PRUNESCOPE_MAX_UPLOAD_BYTES" in r.json()["detail"]
        assert _artifact_files(small) == []


def test_job_submission_validates_parameters(client, project):
    pid = project["id"]
    ok = client.post(
        f"/api/v1/projects/{pid}/jobs", json={"kind": "train", "params": {"epochs": 2}}
    )
    assert ok.status_code == 201 and ok.json()["state"] == "queued"
    cases = [
        ({"kind": "explode"}, 422, ""),
        ({"kind": "prune", "params": {"method": "astrology", "sparsity": 0.5}}, 422, "magnitude"),
        ({"kind": "prune", "params": {"method": "random", "sparsity": 1.5}}, 422, "sparsity"),
        ({"kind": "train", "params": {"epochs": -1}}, 422, "epochs"),
        ({"kind": "analyze", "depends_on": [12345]}, 422, "12345"),
    ]
    for body, status, word in cases:
        r = client.post(f"/api/v1/projects/{pid}/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        assert word in str(r.json()["detail"])
    job = ok.json()
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert client.get(f"/api/v1/projects/{pid}/jobs").json()["count"] == 1


def test_upload_of_a_torch_prune_state_dict_measures_the_masked_sparsity(client, project):
    import torch.nn.utils.prune as tprune

    from prunescope.models.sparsity import prunable_modules

    torch.manual_seed(0)
    model = create_model("mlp", **default_config("mlp"))
    modules = [(m, "weight") for _, m in prunable_modules(model)]
    tprune.global_unstructured(modules, pruning_method=tprune.L1Unstructured, amount=0.7)
    r = _upload(client, project["id"], _torch_bytes(model.state_dict()), "gmp70.pt", role="dense")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "torch_state_dict+torch_prune"
    n = body["num_params"]
    assert abs(body["num_nonzero"] - round(0.3 * n)) <= 1  # within one weight of the target
    assert body["flops"] == n  # an MLP applies each prunable weight once per example
    assert body["flops_nonzero"] == body["num_nonzero"]
    assert body["theoretical_speedup"] == pytest.approx(n / body["num_nonzero"])
    assert 1.0 < body["compression_ratio"] < body["theoretical_speedup"]  # biases stay dense
    layers = client.get(f"/api/v1/checkpoints/{body['id']}").json()["layer_stats"]
    assert all(layer["n_m"] == [] for layer in layers.values())  # unstructured, not 2:4


def test_n_m_prune_jobs_refuse_a_sparsity_they_cannot_reach(client, project):
    url = f"/api/v1/projects/{project['id']}/jobs"
    bad = client.post(
        url, json={"kind": "prune", "params": {"method": "magnitude_2of4", "sparsity": 0.8}}
    )
    assert bad.status_code == 422 and "sparsity 0.5" in bad.json()["detail"]
    ok = client.post(
        url, json={"kind": "prune", "params": {"method": "magnitude_2of4", "sparsity": 0.5}}
    )
    assert ok.status_code == 201
