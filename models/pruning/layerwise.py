"""Per-layer pruning: each layer loses the same fraction, unstructured or by whole output units."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from prunescope.models.pruning.common import check_sparsity
from prunescope.models.sparsity import prunable_modules


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    modules = prunable_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no linear or convolution weights to prune")
    return modules


def layerwise_magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Layer-wise (uniform) magnitude pruning (Han et al. 2015; Zhu & Gupta 2017).

    Score s_i = |w_i| ranked within each layer: every linear/conv weight tensor loses
    round(sparsity × numel) of its smallest-magnitude entries, so all layers end equally
    sparse — unlike global magnitude, which lets the largest layers absorb most of the
    pruning. Uses `torch.nn.utils.prune.l1_unstructured` per layer, then `prune.remove`.
    Modifies `model` in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    for _, module in _prunable(model):
        prune.l1_unstructured(module, "weight", amount=sparsity)
        prune.remove(module, "weight")
    return model


def l1_structured_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """L1-norm structured pruning of output channels / neurons (Li et al. 2017, "Pruning
    Filters for Efficient ConvNets").

    Score of output unit j of a layer: ‖W_j‖₁, the L1 norm of all its incoming weights (a
    conv filter, or a row of a linear weight). In every linear/conv layer but the last,
    round(sparsity × out) lowest-scoring units are zeroed whole; the last layer's outputs are
    the classes, so it is left whole. Shapes stay as they are (units are masked, not
    removed), so the checkpoint still loads into the dense architecture; the shrunken model
    that Torch-Pruning would build has the same function. Uses
    `torch.nn.utils.prune.ln_structured(n=1, dim=0)`, then `prune.remove`.
    """
    sparsity = check_sparsity(sparsity)
    modules = _prunable(model)
    if len(modules) < 2:
        raise ValueError("structured pruning needs a layer besides the output layer")
    for _, module in modules[:-1]:
        prune.ln_structured(module, "weight", amount=sparsity, n=1, dim=0)
        prune.remove(module, "weight")
    return model
