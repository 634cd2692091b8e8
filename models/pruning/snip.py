"""SNIP: prune at the weights whose removal changes the loss least, to first order."""

from __future__ import annotations

import torch
from torch import nn

from prunescope.models.pruning.calibration import (
    Calibration,
    require_calibration,
    scoring_mode,
    weight_gradients,
)
from prunescope.models.pruning.common import (
    apply_keep_masks,
    check_sparsity,
    global_keep_masks,
    prunable_weights,
)


def snip_scores(model: nn.Module, calibration: Calibration) -> dict[str, torch.Tensor]:
    """Connection sensitivity |g ⊙ w| = |∂L(c ⊙ w)/∂c| of every prunable weight (Lee et al. 2019).

    g = ∂L/∂w with L the mean cross-entropy over the calibration batches (eval mode). SNIP
    normalises by Σ|g ⊙ w|; a common factor does not change the ranking, so it is left out.
    Keys are the modules' qualified names.
    """
    batches = require_calibration("snip", calibration)
    named = prunable_weights(model)
    weights = [m.weight for _, m in named]
    with scoring_mode(model, weights):
        grads = weight_gradients(model, weights, batches)
    return {name: (g * w.detach()).abs() for (name, _), w, g in zip(named, weights, grads,
                                                                      strict=True)}


def snip_prune(model: nn.Module, sparsity: float, calibration: Calibration) -> nn.Module:
    """SNIP (Lee, Ajanthan & Torr, ICLR 2019, "SNIP: Single-shot Network Pruning based on
    Connection Sensitivity"): score s = |g ⊙ w|, g the loss gradient on calibration batches.

    The round(sparsity × N) weights of lowest score, ranked globally across all linear/conv
    layers, are zeroed; survivors keep their values. The paper applies it at initialisation;
    here it prunes whatever checkpoint it is given. Modifies `model` in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    scores = snip_scores(model, calibration)
    modules = [m for _, m in prunable_weights(model)]
    apply_keep_masks(modules, global_keep_masks(list(scores.values()), sparsity))
    return model
