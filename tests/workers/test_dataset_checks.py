"""Fitting datasets to a project's architecture from its config: the same answers as fitting
them to the built model, and no torch needed for builtins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunescope.models.architectures import expected_input
from prunescope.models.registry import create_model
from prunescope.workers import dataset_checks, ingest
from prunescope.workers.datasets import model_input
from prunescope.workers.jobspec import JobInputError

TINY_BERT = {"model_type": "bert", "vocab_size": 1000, "hidden_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "max_position_embeddings": 64}
PROJECTS = [
    ("mlp", {}),
    ("mlp", {"in_features": 32}),  # 8×8 digits have 64 values
    ("mlp", {"num_classes": 12}),  # more outputs than digits has classes: fits
    ("mlp", {"num_classes": 5}),  # labels 5..9 have no output
    ("cnn_small", {}),
    ("resnet20", {}),
    ("vit_small", {"in_channels": 1, "image_size": 8, "patch_size": 4, "dim": 16, "heads": 2,
                   "depth": 1}),
    ("huggingface", {}),
    ("huggingface", TINY_BERT),
    ("huggingface", {**TINY_BERT, "architectures": ["BertForSequenceClassification"]}),
]


def _built_input(name, config):  # noqa: ANN001, ANN202
    """What the model reads and outputs, measured on the built model (the former check)."""
    if name == "huggingface" and not config:
        return expected_input(name, config)
    return model_input(create_model(name, **config))


@pytest.mark.parametrize(("name", "config"), PROJECTS)
def test_the_expected_input_is_the_built_models(name, config):
    assert expected_input(name, config) == _built_input(name, config)


def _outcome(builtin: str, name: str, config: dict) -> tuple[str, object]:
    try:
        checked = dataset_checks.check_builtin_dataset(builtin, architecture=name, config=config)
    except JobInputError as exc:
        return "refused", str(exc)
    return "fits", checked.metadata["num_classes"]


@pytest.mark.parametrize("builtin", ["digits", "english_sentences"])
@pytest.mark.parametrize(("name", "config"), PROJECTS)
def test_builtins_fit_as_they_fit_the_built_model(builtin, name, config, monkeypatch):
    from_config = _outcome(builtin, name, config)
    monkeypatch.setattr(dataset_checks, "expected_input", _built_input)
    assert from_config == _outcome(builtin, name, config)


def test_what_is_refused_says_what_to_change():
    kind, message = _outcome("digits", "mlp", {"in_features": 32})
    assert kind == "refused" and message.startswith("digits: ") and "(64 values)" in message
    kind, message = _outcome("english_sentences", "cnn_small", {})
    assert kind == "refused" and "holds text" in message
    kind, message = _outcome("digits", "huggingface", {})
    assert kind == "refused" and "reads text" in message
    assert _outcome("digits_augmented", "cnn_small", {}) == ("fits", 10)
    kind, message = _outcome("digits", "mlp", {"hidden": [0]})
    assert message == ("the project's architecture cannot be built: mlp.hidden must be a "
                       "positive integer, got 0")


def test_builtin_metadata_and_the_workers_re_exports():
    meta = dataset_checks.builtin_dataset_metadata("digits")
    assert (meta["kind"], meta["input_shape"], meta["num_classes"]) == ("image", [1, 8, 8], 10)
    assert (meta["num_train"], meta["num_test"]) == (1347, 450) and meta["preview"]
    assert dataset_checks.builtin_dataset_metadata("astrology") == {}
    assert dataset_checks.builtin_dataset_names() == [
        "digits", "digits_augmented", "english_sentences"]
    for name in ("builtin_dataset_names", "builtin_dataset_metadata", "check_builtin_dataset"):
        assert getattr(ingest, name) is getattr(dataset_checks, name)
    assert ingest.CHECKS["builtin_dataset"] is dataset_checks.check_builtin_dataset


REFUSE_TORCH = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(name + ' is refused in this process')
sys.meta_path.insert(0, _Refuse())
"""


def test_builtins_are_described_and_fitted_without_torch():
    code = REFUSE_TORCH + (
        "import json\n"
        "from prunescope.workers import dataset_checks as d\n"
        "from prunescope.workers.jobspec import JobInputError\n"
        "out = {'names': d.builtin_dataset_names(),\n"
        "       'meta': d.builtin_dataset_metadata('english_sentences'),\n"
        "       'fits': d.check_builtin_dataset('digits', architecture='cnn_small', "
        "config={}).metadata}\n"
        "try:\n"
        "    d.check_builtin_dataset('digits', architecture='mlp', config={'in_features': 3})\n"
        "except JobInputError as exc:\n"
        "    out['refused'] = str(exc)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["names"] == dataset_checks.builtin_dataset_names()
    assert out["meta"] == json.loads(json.dumps(
        dataset_checks.builtin_dataset_metadata("english_sentences")))
    assert out["fits"] == json.loads(json.dumps(dataset_checks.builtin_dataset_metadata("digits")))
    assert out["refused"] == _outcome("digits", "mlp", {"in_features": 3})[1]
