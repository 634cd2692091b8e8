"""Pruning methods by name, all with the signature `(model, sparsity, *, seed=0) -> model`.

Each method prunes the model in place (weights zeroed, dense tensors) and returns it. The
registry keys are what jobs and checkpoints record as `method`.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from models.pruning.common import check_sparsity
from models.pruning.layerwise import l1_structured_prune, layerwise_magnitude_prune
from models.pruning.magnitude import global_magnitude_prune
from models.pruning.n_m import n_m_magnitude_prune
from models.pruning.random_unstructured import random_unstructured_prune


class PruningMethod(Protocol):
    def __call__(self, model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module: ...


def _magnitude_global(model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module:
    return global_magnitude_prune(model, sparsity)  # deterministic: the seed is unused


def _random(model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module:
    return random_unstructured_prune(model, sparsity, seed)


def _magnitude_layerwise(model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module:
    return layerwise_magnitude_prune(model, sparsity)


def _l1_structured(model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module:
    return l1_structured_prune(model, sparsity)


def _n_m(n: int, m: int) -> PruningMethod:
    def method(model: nn.Module, sparsity: float, *, seed: int = 0) -> nn.Module:
        error = sparsity_error(f"magnitude_{n}of{m}", check_sparsity(sparsity))
        if error:
            raise ValueError(error)
        return n_m_magnitude_prune(model, n, m)

    method.__doc__ = n_m_magnitude_prune.__doc__
    method.fixed_sparsity = 1 - n / m  # type: ignore[attr-defined]
    return method


_magnitude_global.__doc__ = global_magnitude_prune.__doc__
_magnitude_layerwise.__doc__ = layerwise_magnitude_prune.__doc__
_l1_structured.__doc__ = l1_structured_prune.__doc__
_random.__doc__ = random_unstructured_prune.__doc__

PRUNING_METHODS: dict[str, PruningMethod] = {
    "magnitude_global": _magnitude_global,
    "magnitude_layerwise": _magnitude_layerwise,
    "l1_structured": _l1_structured,
    "random": _random,
    "magnitude_2of4": _n_m(2, 4),
    "magnitude_4of8": _n_m(4, 8),
}


def sparsity_error(method: str, sparsity: float) -> str | None:
    """Why `method` cannot prune to `sparsity`, or None (N:M methods fix their sparsity)."""
    fixed = getattr(PRUNING_METHODS.get(method), "fixed_sparsity", None)
    if fixed is not None and abs(float(sparsity) - fixed) > 1e-9:
        return f"{method} always prunes {fixed:.0%} of each compatible layer; use sparsity {fixed}"
    return None

__all__ = [
    "PRUNING_METHODS",
    "PruningMethod",
    "check_sparsity",
    "global_magnitude_prune",
    "n_m_magnitude_prune",
    "sparsity_error",
    "l1_structured_prune",
    "layerwise_magnitude_prune",
    "random_unstructured_prune",
]
