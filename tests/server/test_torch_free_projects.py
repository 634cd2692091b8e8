"""Projects and builtin datasets without torch in the web process: the API answers the same
with torch refused as with it, and configurations are checked (and sized) without a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prunescope.server.config import Settings
from prunescope.server.main import create_app
from prunescope.server.schemas import ProjectCreate

REGISTRY = ["mlp", "cnn_small", "resnet20", "resnet18", "vit_small"]
BAD_CONFIGS = [
    ("resnet9000", {}),
    ("mlp", {"wings": 2}),
    ("mlp", {"hidden": [0]}),
    ("mlp", {"num_classes": 2.5}),
    ("cnn_small", {"channels": [16]}),
    ("resnet20", {"shortcut": "C"}),
    ("vit_small", {"heads": 5}),
    ("huggingface", {"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}}),
    ("huggingface", {"vocab_size": 10}),
]
# 16,384 inputs and eight hidden layers of 16,384: 2.1 billion parameters, 8.6 GB of float32.
HUGE_MLP = {"in_features": 16384, "hidden": [16384] * 8, "num_classes": 10}
_ROW = ("name", "source", "builtin_name", "active", "kind", "num_train", "num_test",
        "num_classes", "input_shape")


def scenario(settings: Settings) -> dict[str, Any]:
    """What a client sees creating a project of every architecture with builtin datasets:
    the architectures listed, each project's config, each builtin added or refused (and why),
    the dataset rows, and the refusals of bad configurations."""
    seen: dict[str, Any] = {}
    with TestClient(create_app(settings, dashboard=False)) as client:
        seen["architectures"] = client.get("/api/v1/architectures").json()
        for architecture in [*REGISTRY, "huggingface"]:
            r = client.post("/api/v1/projects", json={"name": architecture,
                                                      "architecture": architecture})
            assert r.status_code == 201, r.text
            created = r.json()
            pid = created["id"]
            added = {}
            for builtin in ("digits", "english_sentences"):
                r = client.post(f"/api/v1/projects/{pid}/datasets/builtin",
                                json={"builtin": builtin, "name": f"added-{builtin}"})
                added[builtin] = [r.status_code, r.json().get("detail")]
            rows = client.get(f"/api/v1/projects/{pid}/datasets").json()["data"]
            seen[architecture] = {
                "config": created["architecture_config"],
                "added": added,
                "rows": [{k: row[k] for k in _ROW} for row in rows],
            }
        refusals = []
        for architecture, config in [*BAD_CONFIGS, ("mlp", HUGE_MLP)]:
            r = client.post("/api/v1/projects", json={
                "name": f"bad-{len(refusals)}", "architecture": architecture,
                "architecture_config": config})
            refusals.append([r.status_code, r.json()["detail"]])
        seen["refusals"] = refusals
    return seen


_REFUSE_TORCH = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(name + ' is refused in this process')
sys.meta_path.insert(0, _Refuse())
"""


@pytest.mark.not_about_the_database
def test_projects_and_builtins_answer_the_same_with_torch_refused(settings, tmp_path):
    code = _REFUSE_TORCH + (
        "import json\n"
        "from prunescope.server.config import get_settings\n"
        "from prunescope.server.db import upgrade_database\n"
        "from tests.server.test_torch_free_projects import scenario\n"
        "settings = get_settings()\n"
        "upgrade_database(settings)\n"
        "seen = scenario(settings)\n"
        "seen['loaded'] = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers'))\n"
        "print(json.dumps(seen))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESCOPE_")}
    env["PRUNESCOPE_DATA_DIR"] = str(tmp_path / "torch-free")
    env["PRUNESCOPE_ALLOWED_HOSTS"] = "testserver"  # TestClient's host name
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    without_torch = json.loads(result.stdout.splitlines()[-1])
    assert without_torch.pop("loaded") == []
    assert without_torch == json.loads(json.dumps(scenario(settings)))

    # The answers are the registry's: its defaults, and its messages for bad configurations.
    from prunescope.models.registry import create_model, default_config, list_architectures

    assert without_torch["architectures"] == {n: default_config(n) for n in list_architectures()}
    for (architecture, config), (code_, detail) in zip(BAD_CONFIGS, without_torch["refusals"],
                                                       strict=False):
        assert code_ == 422
        try:
            create_model(architecture, **{**default_config(architecture), **config})
        except ValueError as exc:
            expected = str(exc)
        if architecture in list_architectures():
            assert detail == f"invalid configuration for {architecture}: {expected}"
        else:
            assert detail == expected
    assert without_torch["refusals"][-1][0] == 422
    assert "PRUNESCOPE_MAX_MODEL_PARAMETERS" in without_torch["refusals"][-1][1]
    for architecture in REGISTRY:
        project = without_torch[architecture]
        assert project["config"] == default_config(architecture)
        # The project's own builtin row is there and described, whether or not it fits.
        assert project["rows"][0]["builtin_name"] == "digits"
        assert project["rows"][0]["num_test"] == 450
    assert without_torch["mlp"]["added"]["digits"] == [201, None]
    assert without_torch["resnet20"]["added"]["digits"][0] == 422
    assert without_torch["huggingface"]["added"]["english_sentences"] == [201, None]
    assert "reads text" in without_torch["huggingface"]["added"]["digits"][1]


def test_a_model_over_the_parameter_limit_is_refused(settings):
    from prunescope.server.errors import InvalidInput
    from prunescope.server.services import projects

    def create(architecture: str, config: dict, limited: Settings) -> Any:
        return projects.create_project(
            ProjectCreate(name=f"{architecture}-{len(config)}", architecture=architecture,
                          architecture_config=config), limited)

    with pytest.raises(InvalidInput) as refused:
        create("mlp", HUGE_MLP, settings)
    assert str(refused.value) == (
        "invalid configuration for mlp: the model would have 2,147,778,570 parameters, more "
        "than the limit of 2,000,000,000; choose smaller sizes, or raise "
        "PRUNESCOPE_MAX_MODEL_PARAMETERS if a model this large is expected")

    small = settings.model_copy(update={"max_model_parameters": 20_000})
    assert create("mlp", {}, small).architecture == "mlp"  # 17,226 parameters
    for architecture in ("cnn_small", "resnet20"):  # 38,282 and 269,722
        with pytest.raises(InvalidInput, match="than the limit of 20,000;"):
            create(architecture, {}, small)
    bert = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768,
            "num_hidden_layers": 12, "intermediate_size": 3072}
    with pytest.raises(InvalidInput, match=r"about 108,375,552 parameters \(estimated from "):
        create("huggingface", bert, small)
    assert create("huggingface", bert, settings).architecture_config == bert


def test_the_api_schema_names_every_builtin_dataset():
    from typing import get_args

    from prunescope.server.schemas import BuiltinDatasetName
    from prunescope.workers.builtin_datasets import builtin_dataset_names

    assert list(get_args(BuiltinDatasetName)) == builtin_dataset_names()
