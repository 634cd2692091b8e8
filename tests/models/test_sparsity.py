"""Sparsity statistics: which weights count as prunable, and counts that survive JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunescope.models.registry import create_model
from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names


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


# ---------------------------------------------------------------- N:M and cost (ShrinkBench)


def test_n_m_patterns_on_hand_built_weights():
    from prunescope.models.sparsity import follows_n_m

    two_four = torch.tensor([[1.0, 0, 2, 0, 0, 3, 4, 0], [0, 0, 5, 6, 7, 0, 0, 0]])
    assert follows_n_m(two_four, 2, 4) and follows_n_m(two_four, 4, 8)
    three_in_a_group = two_four.clone()
    three_in_a_group[1, 1] = 1.0  # group [0, 1, 5, 6] now has three non-zeros
    assert not follows_n_m(three_in_a_group, 2, 4) and follows_n_m(three_in_a_group, 4, 8)
    assert not follows_n_m(torch.ones(2, 8), 2, 4)
    assert not follows_n_m(torch.zeros(2, 6), 4, 8)  # 6 inputs cannot form groups of 8
    # conv: groups run along input channels at each kernel position
    conv = torch.zeros(1, 4, 1, 2)
    conv[0, :2, 0, 0] = 1.0  # channels 0,1 at position (0,0): 2 of 4
    conv[0, 1:, 0, 1] = 1.0  # channels 1,2,3 at position (0,1): 3 of 4
    assert not follows_n_m(conv, 2, 4)
    conv[0, 3, 0, 1] = 0.0
    assert follows_n_m(conv, 2, 4)


def test_cost_of_cnn_small_matches_a_hand_count_and_pruning_scales_it():
    from prunescope.models.pruning import PRUNING_METHODS
    from prunescope.models.registry import create_model
    from prunescope.models.sparsity import sparsity_report

    model = create_model("cnn_small")
    dense = sparsity_report(model)
    # conv1: 8×8 outputs × (16·1·3·3); conv2: 4×4 × (32·16·3·3); fc: 512·64; classifier: 64·10
    hand = 64 * 144 + 16 * 4608 + 512 * 64 + 64 * 10
    assert dense["flops"] == dense["flops_nonzero"] == hand
    assert dense["theoretical_speedup"] == 1.0
    assert dense["compression_ratio"] == pytest.approx(1.0)
    assert dense["layers"]["conv1.0.weight"]["flops"] == 64 * 144

    PRUNING_METHODS["magnitude_global"](model, 0.75, seed=0)
    pruned = sparsity_report(model)
    layers = pruned["layers"].values()
    assert pruned["flops"] == hand
    assert pruned["flops_nonzero"] == sum(layer["flops_nonzero"] for layer in layers)
    assert pruned["theoretical_speedup"] == pytest.approx(hand / pruned["flops_nonzero"])
    assert pruned["theoretical_speedup"] > 1.0
    # ShrinkBench: every parameter counts for the compression ratio, biases included
    state = model.state_dict()
    nonzero = sum(int(torch.count_nonzero(t)) for t in state.values())
    assert pruned["compression_ratio"] == pytest.approx(pruned["total_params"] / nonzero)
