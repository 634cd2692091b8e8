"""Sparsity statistics: which weights count as prunable, and counts that survive JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models.registry import create_model
from models.sparsity import checkpoint_stats, prunable_parameter_names


def test_prunable_weights_are_linear_and_conv_weights_only():
    assert prunable_parameter_names(create_model("mlp")) == [
        "fc1.0.weight", "fc2.0.weight", "classifier.weight"
    ]
    assert prunable_parameter_names(create_model("cnn_small")) == [
        "conv1.0.weight", "conv2.0.weight", "fc.1.weight", "classifier.weight"
    ]
    mixed = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), nn.ConvTranspose2d(3, 2, 2))
    assert prunable_parameter_names(mixed) == ["0.weight", "2.weight"]


def test_stats_of_a_hand_made_state_dict():
    state = {
        "a.weight": torch.tensor([[0.0, 1.0], [2.0, 0.0]]),
        "a.bias": torch.tensor([0.0, 0.0, 1.0]),
        "b.weight": torch.tensor([0.0, 0.0, 0.0, 5.0]),
    }
    stats = checkpoint_stats(state, ["a.weight", "b.weight"])
    assert stats == {
        "num_params": 8,
        "num_nonzero": 3,
        "sparsity": 1 - 3 / 8,
        "total_params": 11,
        "layers": {
            "a.weight": {"numel": 4, "nonzero": 2, "sparsity": 0.5},
            "b.weight": {"numel": 4, "nonzero": 1, "sparsity": 0.75},
        },
    }
    assert json.loads(json.dumps(stats)) == stats
    assert isinstance(stats["num_params"], int) and isinstance(stats["sparsity"], float)


def test_dense_model_has_zero_sparsity():
    model = create_model("cnn_small")
    stats = checkpoint_stats(model.state_dict(), prunable_parameter_names(model))
    assert stats["sparsity"] == 0.0 and stats["num_nonzero"] == stats["num_params"]
    assert stats["total_params"] == sum(p.numel() for p in model.parameters())
    assert stats["num_params"] < stats["total_params"]  # biases are not counted as prunable


def test_a_prunable_name_missing_from_the_state_dict_is_an_error():
    with pytest.raises(ValueError, match="fc9.weight"):
        checkpoint_stats({"a.weight": torch.ones(2)}, ["fc9.weight"])
