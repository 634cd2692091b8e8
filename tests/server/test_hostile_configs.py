"""No outbound request from user input: a configuration naming another repository (a DPT
`backbone`, say) is refused with a 422 at project creation and in an uploaded model folder,
and every model is built with the Hub offline. A local endpoint stands in for the Hub and
for any proxy, recording every request that reaches it: it must record none."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as safetensors_bytes

from prunescope.server.main import create_app
from tests.server.hostile_files import model_folder_zip

# The database only holds what these tests check (files, HTTP framing): SQLite suffices.
pytestmark = pytest.mark.not_about_the_database

DPT = {"model_type": "dpt", "backbone": "org/repo", "use_pretrained_backbone": False,
       "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 37}


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def _record(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_CONNECT = _record  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder(monkeypatch) -> Iterator[list[str]]:
    """Requests that reached the local endpoint standing in for the Hub and every proxy."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    for name in ("HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                 "ALL_PROXY"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants

    # The hub reads its endpoint once, at import: point the imported copy here as well.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        yield _Recorder.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(settings, ingest_worker, recorder):
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


def test_a_project_config_naming_a_backbone_repository_is_refused(client, recorder):
    r = client.post("/api/v1/projects", json={"name": "dpt", "architecture": "huggingface",
                                              "architecture_config": DPT})
    assert r.status_code == 422
    assert "backbone = 'org/repo'" in r.json()["detail"]
    assert "never downloads" in r.json()["detail"]
    assert recorder == []


@pytest.mark.parametrize(("entry", "shown"), [
    ({"backbone": "org/repo"}, "backbone = 'org/repo'"),
    ({"backbone_config": {"model_type": "bit", "backbone": "timm/resnet50"}},
     "backbone_config.backbone"),
    ({"text_config": {"model_type": "bert", "_name_or_path": "x/y",
                      "tokenizer_name_or_path": "org/tok"}}, "tokenizer_name_or_path"),
    ({"tokenizer_class": "org/repo"}, "tokenizer_class"),
    ({"use_pretrained_backbone": True}, "use_pretrained_backbone"),
    ({"trust_remote_code": True}, "trust_remote_code"),
])
def test_an_uploaded_folder_naming_another_repository_is_refused(client, recorder, entry, shown):
    pid = client.post("/api/v1/projects", json={"name": "hf", "architecture": "huggingface"}
                      ).json()["id"]
    config = {**{k: v for k, v in DPT.items() if k != "backbone"}, **entry}
    r = client.post(f"/api/v1/projects/{pid}/checkpoints",
                    files={"file": ("model.zip", model_folder_zip(config))}, data={"role": "dense"})
    assert r.status_code == 422, r.text
    assert shown in r.json()["detail"] and "outside the uploaded folder" in r.json()["detail"]
    assert recorder == []
    assert client.get(f"/api/v1/projects/{pid}").json()["architecture_config"] == {}


def test_bookkeeping_names_are_not_references():
    # save_pretrained writes the source repository as `_name_or_path`; building from the
    # config never reads it, so a real folder keeps working.
    from prunescope.models.architectures import check_hf_config

    config = {"model_type": "bert", "_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
              "architectures": ["BertModel"], "gradient_checkpointing": False}
    assert check_hf_config(config) == config


def test_models_are_built_with_the_hub_offline(recorder):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    from prunescope.models import hf

    model = hf.build_model({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 37,
                            "vocab_size": 99})
    assert sum(p.numel() for p in model.parameters()) > 0
    # Whatever asks the Hub in this process now is told it is offline, and nothing is sent.
    with pytest.raises((OfflineModeIsEnabled, huggingface_hub.errors.LocalEntryNotFoundError,
                        OSError)):
        huggingface_hub.hf_hub_download("org/repo", "config.json")
    assert recorder == []


@pytest.mark.parametrize(("tokenizer_config", "shown"), [
    (b'{"a":' * 200_000 + b"1" + b"}" * 200_000, "tokenizer_config.json nests thousands"),
    (json.dumps({"tokenizer_class": "org/repo"}).encode(), "tokenizer_config.json refers"),
])
def test_tokenizer_files_are_checked_like_the_config(client, recorder, tokenizer_config, shown):
    # Read by a tokenizer loader in later jobs: refused at upload instead of failing there.
    pid = client.post("/api/v1/projects", json={"name": "hf", "architecture": "huggingface"}
                      ).json()["id"]
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 99}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model/config.json", json.dumps(bert))
        zf.writestr("model/tokenizer_config.json", tokenizer_config)
        zf.writestr("model/model.safetensors", safetensors_bytes({"w": torch.zeros(2)}))
    r = client.post(f"/api/v1/projects/{pid}/checkpoints",
                    files={"file": ("model.zip", out.getvalue())}, data={"role": "dense"})
    assert r.status_code == 422 and shown in r.json()["detail"], r.text
    assert recorder == []
