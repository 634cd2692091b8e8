"""What every global unstructured pruning method shares: the target check and prune-then-remove."""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils import prune

from models.sparsity import prunable_modules


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
