"""The torch-free architecture catalogue: the same names, defaults, checks and messages as the
registry, and what a model reads and how large it is, from its config alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prunescope.models import architectures, hf, registry
from prunescope.models.configs import CNNSmallConfig, MLPConfig
from prunescope.models.registration import ARCHITECTURES, register

REGISTRY = ["mlp", "cnn_small", "resnet20", "resnet18", "vit_small"]
TINY_BERT = {"model_type": "bert", "vocab_size": 1000, "hidden_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "max_position_embeddings": 64}


def test_the_catalogue_and_the_registry_list_the_same_architectures():
    assert set(architectures.ARCHITECTURE_CONFIGS) == set(ARCHITECTURES) == set(REGISTRY)
    for name, cls in ARCHITECTURES.items():
        assert cls.config_class is architectures.ARCHITECTURE_CONFIGS[name]
    assert architectures.list_architectures() == registry.list_architectures()
    assert "huggingface" in architectures.list_architectures()
    for name in architectures.list_architectures():
        assert architectures.default_config(name) == registry.default_config(name)
    assert architectures.default_config("huggingface") == {}


SIZES = [
    ("mlp", {}),
    ("mlp", {"in_features": 10, "hidden": [7, 5, 3], "num_classes": 4}),
    ("cnn_small", {}),
    ("cnn_small", {"in_channels": 3, "image_size": 9, "channels": [4, 6], "num_classes": 3}),
    ("resnet20", {}),
    ("resnet20", {"shortcut": "B", "base_width": 8, "num_classes": 7}),
    ("resnet18", {"base_width": 8, "in_channels": 1, "num_classes": 5}),
    ("vit_small", {}),
    ("vit_small", {"dim": 32, "heads": 4, "depth": 2, "patch_size": 8, "mlp_ratio": 3,
                   "in_channels": 1, "num_classes": 2}),
]


@pytest.mark.parametrize(("name", "config"), SIZES)
def test_parameter_count_is_the_built_models(name, config):
    model = registry.create_model(name, **config)
    assert architectures.parameter_count(name, config) == sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "config"), SIZES)
def test_expected_input_is_what_the_built_model_reads_and_outputs(name, config):
    model = registry.create_model(name, **config).eval()
    expected = architectures.expected_input(name, config)
    assert expected.kind == "tensor" and expected.input_shape == tuple(model.input_shape)
    with torch.no_grad():
        assert expected.num_outputs == model(torch.zeros(1, *model.input_shape)).shape[1]


BAD = [
    ("mlp", {"wings": 2}),
    ("mlp", {"hidden": [0]}),
    ("mlp", {"hidden": "128"}),
    ("mlp", {"in_features": True}),
    ("mlp", {"num_classes": 2.5}),
    ("cnn_small", {"channels": [16]}),
    ("cnn_small", {"image_size": -8}),
    ("resnet20", {"shortcut": "C"}),
    ("resnet18", {"shortcut": "A"}),  # not a key of resnet18
    ("vit_small", {"patch_size": 5}),
    ("vit_small", {"heads": 5}),
    ("resnet9000", {}),
]


@pytest.mark.parametrize(("name", "config"), BAD)
def test_bad_configs_are_refused_with_the_registrys_message(name, config):
    with pytest.raises(ValueError) as built:
        registry.create_model(name, **config)
    with pytest.raises(ValueError) as checked:
        architectures.build_config(name, **config)
    assert str(checked.value) == str(built.value)
    assert type(checked.value) is type(built.value)
    with pytest.raises(ValueError) as counted:
        architectures.parameter_count(name, config)
    assert str(counted.value) == str(built.value)


@pytest.mark.parametrize("config", [
    {**TINY_BERT, "auto_map": {"AutoModel": "x.Y"}},
    {k: v for k, v in TINY_BERT.items() if k != "model_type"},
    {**TINY_BERT, "architectures": ["os.system"]},
])
def test_hugging_face_configs_get_the_same_refusals_without_transformers(config):
    with pytest.raises(hf.HFModelError) as built:
        registry.create_model("huggingface", **config)
    with pytest.raises(hf.HFModelError) as checked:
        architectures.build_config("huggingface", **config)
    assert str(checked.value) == str(built.value)


@pytest.mark.parametrize(("config", "outputs"), [
    ({}, None),  # a project before its first folder: it will read text
    (TINY_BERT, None),  # an encoder without a head
    ({**TINY_BERT, "architectures": ["BertModel"]}, None),
    ({**TINY_BERT, "architectures": ["BertForSequenceClassification"]}, 2),
    ({**TINY_BERT, "architectures": ["BertForSequenceClassification"],
      "id2label": {"0": "a", "1": "b", "2": "c"}}, 3),
    ({**TINY_BERT, "architectures": ["BertForSequenceClassification"], "num_labels": 4}, 4),
])
def test_hugging_face_models_read_text_and_have_num_labels_outputs_with_a_head(config, outputs):
    expected = architectures.expected_input("huggingface", config)
    assert (expected.kind, expected.input_shape, expected.num_outputs) == ("text", None, outputs)
    if config:
        model = registry.create_model("huggingface", **config)
        built = model.config.num_labels if type(model).__name__.endswith(
            "ForSequenceClassification") else None
        assert built == outputs


def test_hugging_face_size_is_estimated_from_the_config_sizes():
    model = registry.create_model("huggingface", **TINY_BERT)
    actual = sum(p.numel() for p in model.parameters())
    estimate = architectures.parameter_count("huggingface", TINY_BERT)
    # Embeddings and the layers' weight matrices; biases, norms, positions and pooler left out.
    assert 0.85 * actual <= estimate <= actual
    assert architectures.parameter_count("huggingface", {}) == 0
    huge = {**TINY_BERT, "hidden_size": 65536, "num_hidden_layers": 96}
    assert architectures.parameter_count("huggingface", huge) > 10**12


def test_registering_needs_a_config_that_describes_its_model(monkeypatch):
    from dataclasses import dataclass

    from torch import nn

    @dataclass(frozen=True)
    class Bare:
        width: int = 3

    class Net(nn.Module):
        config_class = Bare

    with pytest.raises(TypeError, match="input_shape, num_classes, parameter_count"):
        register("bare_net")(Net)
    monkeypatch.setitem(architectures.ARCHITECTURE_CONFIGS, "listed_net", MLPConfig)
    Net.config_class = CNNSmallConfig
    with pytest.raises(TypeError, match="must be MLPConfig"):
        register("listed_net")(Net)
    assert "bare_net" not in ARCHITECTURES and "listed_net" not in ARCHITECTURES
    assert "bare_net" not in architectures.ARCHITECTURE_CONFIGS


REFUSE_TORCH = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(name + ' is refused in this process')
sys.meta_path.insert(0, _Refuse())
"""


def test_the_catalogue_needs_no_torch():
    code = REFUSE_TORCH + (
        "import json\n"
        "from prunescope.models import architectures as a\n"
        "names = a.list_architectures()\n"
        "print(json.dumps({n: [a.default_config(n), a.parameter_count(n, a.default_config(n)),"
        " list(a.expected_input(n, a.default_config(n)).input_shape or [])] for n in names}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    listed = json.loads(out.stdout.splitlines()[-1])
    assert sorted(listed) == registry.list_architectures()
    for name, (default, count, shape) in listed.items():
        assert default == registry.default_config(name)
        if name != "huggingface":
            model = registry.create_model(name)
            assert count == sum(p.numel() for p in model.parameters())
            assert tuple(shape) == model.input_shape
