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


TRANSPOSED_CONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NM_PATTERNS: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))


def follows_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of `m` consecutive input weights holds at most `n` non-zeros.

    Groups run along the input dimension (dim 1), as NVIDIA's sparse tensor cores and
    Wanda/SparseGPT's N:M variants define them: a linear weight (out, in) is grouped along
    `in`; a conv weight (out, in, *k) is grouped along input channels at each kernel position.
    A layer whose input dimension is not a multiple of `m` cannot follow the pattern.
    """
    if weight.dim() < 2 or weight.shape[1] % m:
        return False
    rows = weight.movedim(1, -1).reshape(-1, weight.shape[1] // m, m)
    return bool((torch.count_nonzero(rows, dim=-1) <= n).all())


def _cost_example(model: nn.Module) -> tuple[tuple, dict[str, Any]] | None:
    """(args, kwargs) for the one costing forward pass, or None when the cost is unknown.

    Registry models take a zero tensor of `input_shape`; token models (Hugging Face) provide
    `cost_inputs()` with a fixed sequence length, since their cost grows with it.
    """
    if callable(getattr(model, "cost_inputs", None)):
        return (), model.cost_inputs()
    input_shape = getattr(model, "input_shape", None)
    if input_shape:
        return (torch.zeros((1, *input_shape)),), {}
    return None


def _multiply_accumulates(
    model: nn.Module, example: tuple[tuple, dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    """(dense, non-zero) weight multiply-accumulates per example of each linear/conv layer.

    One forward pass of a zero input through hooks gives each layer's output size: a linear
    layer costs in×out per output row, a conv layer (in/groups·k) per output element, and the
    non-zero count scales by the share of non-zero weights (ShrinkBench's definition; biases,
    activations and normalisation are left out as there).
    """
    costs: dict[str, tuple[int, int]] = {}
    hooks = []

    def hook(name: str, module: nn.Module):  # noqa: ANN202
        def record(_m: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            # Every output position (a token for linear, a pixel for conv) applies the whole
            # weight once: out × in for linear, out × in/groups × k for conv.
            # From the weight, not `out_features`: structurally pruned layers may carry stale
            # size attributes.
            channels = module.weight.shape[0] if isinstance(module, nn.Linear) else output.shape[1]
            positions = output[0].numel() // channels
            nonzero = int(torch.count_nonzero(module.weight).item())
            costs[name] = (positions * module.weight.numel(), positions * nonzero)

        return record

    for name, module in prunable_modules(model):
        if not isinstance(module, TRANSPOSED_CONV_TYPES):  # they scatter; cost left unknown
            hooks.append(module.register_forward_hook(hook(name, module)))
    try:
        with torch.inference_mode():
            model.eval()(*example[0], **example[1])
    finally:
        for h in hooks:
            h.remove()
    return costs


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """checkpoint_stats plus cost: per layer its N:M patterns and FLOPs, and the totals.

    Adds, beside checkpoint_stats' keys: flops and flops_nonzero (conv/linear weight
    multiply-accumulates per example), compression_ratio = all parameters / non-zero
    parameters and theoretical_speedup = flops / flops_nonzero (ShrinkBench, Blalock et al.
    2020). Needs `model.input_shape` (or `model.cost_inputs()`) for the cost; without it the
    cost keys are None.
    """
    state = model.state_dict()
    stats = checkpoint_stats(state, prunable_parameter_names(model))
    example = _cost_example(model)
    costs = _multiply_accumulates(model, example) if example is not None else {}
    for name, module in prunable_modules(model):
        layer = stats["layers"][f"{name}.weight"]
        layer["n_m"] = [f"{n}:{m}" for n, m in NM_PATTERNS if follows_n_m(module.weight, n, m)]
        layer["flops"], layer["flops_nonzero"] = costs.get(name, (None, None))
    total_nonzero = sum(int(torch.count_nonzero(t).item()) for t in state.values())
    stats["total_nonzero"] = total_nonzero
    stats["compression_ratio"] = stats["total_params"] / total_nonzero if total_nonzero else None
    if costs:
        flops = sum(c[0] for c in costs.values())
        flops_nonzero = sum(c[1] for c in costs.values())
        stats["flops"], stats["flops_nonzero"] = flops, flops_nonzero
        stats["theoretical_speedup"] = flops / flops_nonzero if flops_nonzero else None
    else:
        stats["flops"] = stats["flops_nonzero"] = stats["theoretical_speedup"] = None
    return stats


def relative_to_dense(stats: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """A structurally pruned checkpoint's `sparsity_report` restated against the dense model.

    Torch-Pruning-style pruning removes whole units, so the pruned tensors are smaller rather
    than zero-filled; ShrinkBench's figures still compare against the dense network: removed
    weights count as pruned. Per layer (matched by name) `dense_numel` is added and sparsity is
    1 − nonzero / dense_numel; overall sparsity = 1 − num_nonzero / dense num_params,
    compression_ratio = dense total_params / non-zero parameters and theoretical_speedup =
    dense flops / flops_nonzero. `structural` is set to True.
    """
    out = {**stats, "layers": {k: dict(v) for k, v in stats["layers"].items()}}
    for name, layer in out["layers"].items():
        dense_numel = dense["layers"].get(name, {}).get("numel", layer["numel"])
        layer["dense_numel"] = dense_numel
        layer["sparsity"] = 1.0 - layer["nonzero"] / dense_numel if dense_numel else 0.0
    total_nonzero = stats["total_nonzero"]
    out["num_params"] = dense["num_params"]
    out["sparsity"] = 1.0 - stats["num_nonzero"] / dense["num_params"] if dense["num_params"] else 0
    out["total_params"] = dense["total_params"]
    out["compression_ratio"] = dense["total_params"] / total_nonzero if total_nonzero else None
    if dense.get("flops") and stats.get("flops_nonzero"):
        out["flops"] = dense["flops"]
        out["theoretical_speedup"] = dense["flops"] / stats["flops_nonzero"]
    out["structural"] = True
    return out
