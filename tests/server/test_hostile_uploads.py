"""Attacks on upload validation and project configs: compressed files that inflate far past
their size, JSON nested too deep to parse, model sizes without bounds. Each is refused with
a clear 4xx before the memory it asks for is spent."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.models.archives import ArchiveError, check_zip_expansion
from prunescope.models.safe_json import JSONRefused, loads_bounded
from prunescope.server.config import get_settings
from prunescope.server.main import create_app
from tests.server.hostile_files import deeply_nested_safetensors, lying_zip, model_folder_zip

# The database only holds what these tests check (files, HTTP framing): SQLite suffices.
pytestmark = pytest.mark.not_about_the_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(settings, ingest_worker):
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


def _project(client, architecture="mlp", **config) -> int:  # noqa: ANN001
    r = client.post("/api/v1/projects", json={"name": "p", "architecture": architecture,
                                              "architecture_config": config})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.slow
def test_compressed_uploads_are_refused_before_they_inflate(tmp_path):
    # A 0.3 MB deflated torch archive of 256 MB of zeros and a 0.1 MB Parquet file whose one
    # 913-character text repeats on a million rows (913 MB as Arrow strings, 3.6 GB as NumPy
    # text), uploaded in a fresh process so its peak memory tells what validating cost.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    run = subprocess.run([sys.executable, "-m", "tests.server.hostile_files",
                          str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    answers = {a["attack"]: a for a in map(json.loads, run.stdout.splitlines())}
    torch_answer, parquet_answer = answers["torch"], answers["parquet"]
    assert torch_answer["size"] < 1024 * 1024 and parquet_answer["size"] < 1024 * 1024
    assert torch_answer["status"] in (413, 422)
    assert "more than any checkpoint of the project's model" in torch_answer["detail"]
    assert parquet_answer["status"] in (413, 422)
    assert "column 'text' needs" in parquet_answer["detail"]
    # Before: +270 MB and +1,200 MB; refused from sizes alone, neither is inflated.
    assert torch_answer["grew_mb"] < 32, answers
    assert parquet_answer["grew_mb"] < 64, answers


def test_a_zip_member_larger_than_declared_is_refused_before_use(tmp_path):
    lying = tmp_path / "lying.pt"
    lying.write_bytes(lying_zip("archive/data/0", bytes(8 << 20), declared=1024))
    with pytest.raises(ArchiveError, match="holds more .* than its header declares"):
        check_zip_expansion(lying, 1 << 30)
    honest = tmp_path / "honest.pt"
    torch.save({"w": torch.zeros(1000)}, honest)  # stored records: nothing to inflate
    check_zip_expansion(honest, 1 << 20)
    with pytest.raises(ArchiveError, match="expands past the limit of 1,000 bytes"):
        check_zip_expansion(honest, 1000)


def test_a_torch_archive_over_the_upload_limit_is_refused_unread(settings, monkeypatch):
    from prunescope.models.checkpoints import CheckpointError, load_state_dict_file

    path = Path(settings.data_dir) / "big.pt"
    torch.save({"w": torch.zeros(300_000)}, path)
    with pytest.raises(CheckpointError, match="expands past the limit"):
        load_state_dict_file(path, max_expanded_bytes=1_000_000)
    assert load_state_dict_file(path)[0]["w"].shape == (300_000,)  # stored ones: no limit


def test_a_deeply_nested_safetensors_header_is_a_clear_422(client):
    pid = _project(client)
    r = client.post(f"/api/v1/projects/{pid}/checkpoints",
                    files={"file": ("w.safetensors", deeply_nested_safetensors())},
                    data={"role": "dense"})
    assert r.status_code == 422
    assert "safetensors header nests thousands of levels deep" in r.json()["detail"]
    assert "RecursionError" not in r.json()["detail"]  # before: the exception's own words
    good = io.BytesIO(safetensors_bytes({"w": torch.zeros(2)}))
    r = client.post(f"/api/v1/projects/{pid}/checkpoints",
                    files={"file": ("w.safetensors", good.getvalue())}, data={"role": "dense"})
    assert r.status_code == 422 and "missing keys" in r.json()["detail"]  # parsed, then fit


def test_bounded_json_refuses_depth_size_and_garbage():
    assert loads_bounded(b'{"a": [1, {"b": 2}]}', what="x", max_bytes=100) == {"a": [1, {"b": 2}]}
    for data, words in [(b"[" * 100 + b"]" * 100, "nests 100 levels"),
                        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests thousands"),
                        (b"[1,", "not valid JSON"), (b"\xff", "not valid JSON"),
                        (b"[" + b"0," * 10**6 + b"0]", "more than the limit")]:
        with pytest.raises(JSONRefused, match=words):
            loads_bounded(data, what="x", max_bytes=10**6)


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


@pytest.mark.parametrize(("config", "words"), [
    ({"in_features": 64, "hidden": [16384, 16384]}, "mlp.hidden must be at most 8,192"),
    ({"in_features": 10**7}, "mlp.in_features must be at most 4,194,304"),
    ({"hidden": [8] * 1000}, "mlp.hidden may have at most 256 entries"),
    ({"num_classes": 10**6}, "mlp.num_classes must be at most 10,000"),
])
def test_model_sizes_are_bounded_at_project_creation(client, config, words):
    # Before: 201 for each (the 16,384-wide MLP has 269 million parameters, under the
    # parameter limit; a worker building it takes 1 GB).
    before, started = _peak_mb(), time.monotonic()
    r = client.post("/api/v1/projects", json={"name": "big", "architecture": "mlp",
                                              "architecture_config": config})
    assert r.status_code == 422 and words in r.json()["detail"]
    assert time.monotonic() - started < 2 and _peak_mb() - before < 32


@pytest.mark.parametrize(("architecture", "config", "words"), [
    ("vit_small", {"image_size": 2048, "patch_size": 2, "in_channels": 1},
     "attend over 1,048,577 tokens"),
    ("cnn_small", {"image_size": 4096, "in_channels": 3, "channels": [1, 1], "hidden": 8},
     "has 50,331,648 values"),
    ("resnet20", {"in_channels": 10_000}, "resnet20.in_channels must be at most 8,192"),
    ("huggingface", {"model_type": "bert", "num_hidden_layers": 5000},
     "num_hidden_layers is 5,000, more than the 1,024 layers"),
    ("huggingface", {"model_type": "bert", "num_labels": 10**7}, "more than the 10,000"),
    ("huggingface", {"model_type": "bert", "max_position_embeddings": 10**9},
     "max_position_embeddings is 1,000,000,000"),
])
def test_other_sizes_are_bounded_too(client, architecture, config, words):
    r = client.post("/api/v1/projects", json={"name": "big", "architecture": architecture,
                                              "architecture_config": config})
    assert r.status_code == 422 and words in r.json()["detail"], r.text


def test_an_uploaded_folders_config_is_held_to_the_parameter_limit(settings, ingest_worker,
                                                                   monkeypatch):
    # The folder brings the configuration of a `huggingface` project: before, its model was
    # built whatever its size before the weights were read (here 11 million parameters
    # against a limit of 5 million; the same folder with 2 billion would take 8 GB).
    monkeypatch.setenv("PRUNESCOPE_MAX_MODEL_PARAMETERS", "5000000")
    get_settings.cache_clear()  # the API reads it through get_settings
    small = get_settings()
    config = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 256,
              "num_hidden_layers": 4, "intermediate_size": 1024, "num_attention_heads": 4}
    with TestClient(create_app(small, dashboard=False)) as client:
        client.params = {"wait": "true"}
        pid = _project(client, "huggingface")
        r = client.post(f"/api/v1/projects/{pid}/checkpoints",
                        files={"file": ("model.zip", model_folder_zip(config))},
                        data={"role": "dense"})
        assert r.status_code == 422
        assert "config.json: the model would have about 10,959,360" in r.json()["detail"]
        assert "PRUNESCOPE_MAX_MODEL_PARAMETERS" in r.json()["detail"]
        assert client.get(f"/api/v1/projects/{pid}").json()["architecture_config"] == {}
