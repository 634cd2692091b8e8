"""Which weights count as prunable, and how sparse a checkpoint is, overall and per layer.

Prunable weights are the `weight` tensors of linear and convolution layers, the convention of
ShrinkBench and of most pruning papers: biases and normalisation parameters are a tiny share
of the parameters and are left dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every linear/conv layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_MODULE_TYPES)]


def prunable_parameter_names(model: nn.Module) -> list[str]:
    """State-dict keys of the prunable weights, e.g. ["conv1.0.weight", …, "classifier.weight"]."""
    return [f"{name}.weight" for name, _ in prunable_modules(model)]


def checkpoint_stats(
    state_dict: Mapping[str, torch.Tensor], prunable_names: Iterable[str]
) -> dict[str, Any]:
    """Parameter counts and sparsity of a state_dict, as plain JSON-able numbers.

    Returns num_params and num_nonzero (over the prunable weights), sparsity
    (1 − num_nonzero / num_params, 0.0 when there is nothing prunable), total_params (every
    tensor in the state_dict) and layers: {name: {numel, nonzero, sparsity}} per prunable weight.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name in prunable_names:
        if name not in state_dict:
            raise ValueError(f"prunable weight {name!r} is not in the state_dict")
        tensor = state_dict[name]
        numel = int(tensor.numel())
        nonzero = int(torch.count_nonzero(tensor).item())
        layers[name] = {
            "numel": numel,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / numel if numel else 0.0,
        }
    num_params = sum(layer["numel"] for layer in layers.values())
    num_nonzero = sum(layer["nonzero"] for layer in layers.values())
    return {
        "num_params": num_params,
        "num_nonzero": num_nonzero,
        "sparsity": 1.0 - num_nonzero / num_params if num_params else 0.0,
        "total_params": sum(int(t.numel()) for t in state_dict.values()),
        "layers": layers,
    }
