"""The architecture registry: building models, their configs, and errors users can cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models.registry import (
    UnknownArchitectureError,
    create_model,
    default_config,
    list_architectures,
    register,
)


@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_default_model_maps_its_input_shape_to_class_scores(name):
    model = create_model(name)
    x = torch.rand(5, *model.input_shape)
    assert model(x).shape == (5, default_config(name)["num_classes"])
    modules = dict(model.named_modules())
    assert all(layer in modules for layer in model.analysis_layers)
    assert model.analysis_layers[-1] == "classifier"
    assert isinstance(model.classifier, nn.Linear)


def test_architectures_and_their_analysis_layers():
    assert {"mlp", "cnn_small"} <= set(list_architectures())
    assert create_model("mlp").analysis_layers == ("fc1", "fc2", "classifier")
    assert create_model("mlp", hidden=[32]).analysis_layers == ("fc1", "classifier")
    assert create_model("cnn_small").analysis_layers == ("conv1", "conv2", "fc", "classifier")


@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_default_config_survives_a_json_round_trip(name):
    stored = json.loads(json.dumps(default_config(name)))
    assert stored == default_config(name)
    model = create_model(name, **stored)
    assert model.config == create_model(name).config


def test_config_overrides_change_the_network():
    mlp = create_model("mlp", in_features=10, hidden=[7, 5, 3], num_classes=4)
    assert mlp(torch.rand(2, 10)).shape == (2, 4)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [7, 5, 3, 4]
    cnn = create_model("cnn_small", in_channels=3, image_size=9, channels=[4, 6], num_classes=3)
    assert cnn(torch.rand(2, 3, 9, 9)).shape == (2, 3)  # odd sizes round up through stride 2


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UnknownArchitectureError) as info:
        create_model("resnet9000")
    assert isinstance(info.value, ValueError)
    assert "resnet9000" in str(info.value) and "cnn_small" in str(info.value)
    assert "mlp" in str(info.value)
    with pytest.raises(UnknownArchitectureError):
        default_config("resnet9000")


def test_unknown_config_key_is_named_with_the_known_keys():
    with pytest.raises(ValueError, match="wings") as info:
        create_model("mlp", wings=2)
    assert "hidden" in str(info.value)


@pytest.mark.parametrize(
    ("name", "config", "word"),
    [
        ("mlp", {"hidden": [0]}, "hidden"),
        ("mlp", {"hidden": "128"}, "hidden"),
        ("mlp", {"in_features": True}, "in_features"),
        ("mlp", {"num_classes": 2.5}, "num_classes"),
        ("cnn_small", {"channels": [16]}, "channels"),
        ("cnn_small", {"image_size": -8}, "image_size"),
    ],
)
def test_bad_config_values_are_refused(name, config, word):
    with pytest.raises(ValueError, match=word):
        create_model(name, **config)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("mlp")(type(create_model("mlp")))
