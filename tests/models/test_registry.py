"""The architecture registry: building models, their configs, and errors users can cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunescope.models.capture import layer_outputs
from prunescope.models.registry import (
    UnknownArchitectureError,
    create_model,
    default_config,
    list_architectures,
    register,
)
from prunescope.models.sparsity import prunable_modules

ARCHITECTURES = ["mlp", "cnn_small", "resnet20", "resnet18", "vit_small"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_model_maps_its_input_shape_to_class_scores(name):
    model = create_model(name).eval()
    x = torch.rand(2, *model.input_shape)
    assert model(x).shape == (2, default_config(name)["num_classes"])
    modules = dict(model.named_modules())
    assert all(layer in modules for layer in model.analysis_layers)
    assert model.analysis_layers[-1] == "classifier"
    assert isinstance(model.classifier, nn.Linear)
    # Structured pruning leaves the last prunable layer whole because it is the classifier.
    assert prunable_modules(model)[-1][1] is model.classifier


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_layer_before_the_logits_is_what_the_classifier_reads(name):
    model = create_model(name).eval()
    logits, outputs = layer_outputs(model, torch.rand(2, *model.input_shape), model.analysis_layers)
    features = outputs[model.analysis_layers[-2]]
    assert features.shape[1] == model.classifier.in_features
    torch.testing.assert_close(model.classifier(features), logits)


def test_architectures_and_their_analysis_layers():
    assert set(ARCHITECTURES) <= set(list_architectures())
    assert create_model("mlp").analysis_layers == ("fc1", "fc2", "classifier")
    assert create_model("mlp", hidden=[32]).analysis_layers == ("fc1", "classifier")
    assert create_model("cnn_small").analysis_layers == ("conv1", "conv2", "fc", "classifier")
    stages = ("layer1", "layer2", "layer3")
    assert create_model("resnet20").analysis_layers == (*stages, "pool", "classifier")
    assert create_model("resnet18").analysis_layers == (*stages, "layer4", "pool", "classifier")
    vit = create_model("vit_small", depth=2)
    assert vit.analysis_layers == ("blocks.0.cls_out", "blocks.1.cls_out", "norm", "classifier")
    assert vit.attention_layers == ("blocks.0.attn.attn_probs", "blocks.1.attn.attn_probs")


@pytest.mark.parametrize("name", ARCHITECTURES)
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
