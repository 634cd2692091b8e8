"""What the pruning methods share: the target check, global ranking of scores, prune-then-remove."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from prunescope.models.sparsity import prunable_modules


def check_sparsity(sparsity: float) -> float:
    """Return `sparsity` as a float, or raise ValueError unless it is a number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def global_unstructured_prune(
    model: nn.Module, sparsity: float, pruning_method: type[prune.BasePruningMethod]
) -> nn.Module:
    """Zero the fraction `sparsity` of all prunable weights, ranked together across layers.

    `torch.nn.utils.prune.global_unstructured` scores the concatenation of every prunable
    weight with `pruning_method` and prunes round(sparsity × total) entries; `prune.remove`
    then folds each `<name>_orig × <name>_mask` back into a plain dense `weight` with zeros,
    so the state_dict has the architecture's own keys. Modifies `model` in place.
    """
    sparsity = check_sparsity(sparsity)
    parameters = [(module, "weight") for _, module in prunable_modules(model)]
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no linear or convolution weights to prune")
    prune.global_unstructured(parameters, pruning_method=pruning_method, amount=sparsity)
    for module, name in parameters:
        prune.remove(module, name)
    return model


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`prunable_modules(model)`, or ValueError when the model has none."""
    modules = prunable_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no linear or convolution weights to prune")
    return modules


def global_keep_masks(
    scores: list[torch.Tensor], sparsity: float, *, remove_highest: bool = False
) -> list[torch.Tensor]:
    """Boolean keep-masks removing exactly round(sparsity × N) of the N scored weights, ranked
    together across tensors: the lowest scores, or the highest with `remove_highest` (GraSP).

    The count rounds as `torch.nn.utils.prune` does, so a method's measured sparsity is within
    one weight of the target; ties at the threshold are broken by `torch.topk`.
    """
    flat = torch.cat([s.detach().flatten().to(torch.float64) for s in scores])
    if flat.isnan().any():
        raise ValueError("pruning scores contain NaN; the model's weights or inputs are not finite")
    k = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k:
        keep[torch.topk(flat, k, largest=remove_highest, sorted=False).indices] = False
    return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores,
                                         strict=True)]


def apply_keep_masks(modules: list[nn.Module], masks: list[torch.Tensor]) -> None:
    """Zero each module's `weight` where its mask is False, via `prune.custom_from_mask` then
    `prune.remove`, leaving a plain dense weight (the architecture's own state_dict keys)."""
    for module, mask in zip(modules, masks, strict=True):
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
        prune.remove(module, "weight")
