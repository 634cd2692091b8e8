"""Layer capture: flattened outputs per batch, equal to a hand-written forward, hooks cleaned up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunescope.models.capture import capture_layer_outputs, layer_outputs
from prunescope.models.registry import create_model


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_outputs_are_flattened_and_match_the_hand_written_forward():
    torch.manual_seed(0)
    model = create_model("cnn_small").eval()
    x = torch.rand(6, 1, 8, 8)
    logits, outputs = layer_outputs(model, x, model.analysis_layers)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "conv1": (6, 16 * 8 * 8),
        "conv2": (6, 32 * 4 * 4),
        "fc": (6, 64),
        "classifier": (6, 10),
    }
    conv1 = F.relu(model.conv1[0](x))
    conv2 = F.relu(model.conv2[0](conv1))
    torch.testing.assert_close(outputs["conv1"], conv1.reshape(6, -1))
    torch.testing.assert_close(outputs["conv2"], conv2.reshape(6, -1))
    torch.testing.assert_close(outputs["classifier"], logits)
    assert not outputs["fc"].requires_grad


def test_each_forward_pass_overwrites_and_hooks_go_away():
    model = create_model("mlp").eval()
    with capture_layer_outputs(model, ["fc1", "classifier"]) as outputs, torch.no_grad():
        assert _hook_count(model) == 2
        first = model(torch.rand(3, 64))
        assert outputs["classifier"].shape == (3, 10)
        second = model(torch.rand(5, 64))
        torch.testing.assert_close(outputs["classifier"], second)
        assert not torch.equal(first[:3], second[:3])
    assert _hook_count(model) == 0


def test_hooks_are_removed_when_the_block_fails():
    model = create_model("mlp")
    with pytest.raises(RuntimeError), capture_layer_outputs(model, ["fc1"]):
        model(torch.rand(2, 7))  # wrong input width
    assert _hook_count(model) == 0


def test_unknown_layer_names_list_the_modules():
    with pytest.raises(ValueError, match="'fc9'") as info:
        with capture_layer_outputs(create_model("mlp"), ["fc1", "fc9"]):
            pass
    assert "classifier" in str(info.value)
