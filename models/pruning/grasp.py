"""GraSP: prune the weights whose removal least reduces the gradient flow after pruning."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from prunescope.models.pruning.calibration import (
    Calibration,
    batch_loss,
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


def grasp_hessian_gradient(
    model: nn.Module, calibration: Calibration
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(g, Hg) over the prunable weights: the loss gradient and the Hessian-gradient product.

    g = ∂L/∂w with L = (1/B) Σ_b L_b over the calibration batches, then by double backprop
    Hg = ∂(gᵀ ∂L/∂w)/∂w with g held constant (Pearlmutter's trick), batch by batch:
    Hg = (1/B) Σ_b H_b g. H is the Hessian with respect to the prunable weights (linear/conv
    `weight`s), the block GraSP's reference code uses. Eval mode; `.grad` fields untouched.
    """
    batches = require_calibration("grasp", calibration)
    weights = [m.weight for _, m in prunable_weights(model)]
    # The fused attention kernels have no second derivative; the math kernel computes the same
    # attention with one (Hugging Face models use scaled_dot_product_attention by default).
    with scoring_mode(model, weights), sdpa_kernel([SDPBackend.MATH]):
        g = weight_gradients(model, weights, batches)
        hg = [torch.zeros_like(w) for w in weights]
        for inputs, labels in batches:
            grads = torch.autograd.grad(
                batch_loss(model, inputs, labels), weights, create_graph=True, allow_unused=True
            )
            z = sum((gi * g0).sum() for gi, g0 in zip(grads, g, strict=True) if gi is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue  # the loss is linear in the weights here: no curvature to add
            for acc, h in zip(hg, torch.autograd.grad(z, weights, allow_unused=True),
                              strict=True):
                if h is not None:
                    acc.add_(h.detach())
    return g, [h / len(batches) for h in hg]


def grasp_scores(model: nn.Module, calibration: Calibration) -> dict[str, torch.Tensor]:
    """GraSP score S(−θ) = −θ ⊙ Hg per prunable weight (Wang et al. 2020), keyed by the
    modules' qualified names. Large scores mark weights whose removal keeps the gradient flow."""
    _, hg = grasp_hessian_gradient(model, calibration)
    named = prunable_weights(model)
    return {name: -m.weight.detach() * h for (name, m), h in zip(named, hg, strict=True)}


def grasp_prune(model: nn.Module, sparsity: float, calibration: Calibration) -> nn.Module:
    """GraSP (Wang, Zhang & Grosse, ICLR 2020, "Picking Winning Tickets Before Training by
    Preserving Gradient Flow"): score S = −θ ⊙ Hg, Hg by double backprop on calibration batches.

    As in the paper, the round(sparsity × N) weights with the *highest* scores, ranked
    globally across all linear/conv layers, are removed: removing a weight with large S
    reduces the gradient norm least. Survivors keep their values. The reference code divides
    the logits by a temperature T = 200 when pruning at initialisation; here, on any
    checkpoint, the plain cross-entropy is used. Modifies `model` in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    scores = grasp_scores(model, calibration)
    modules = [m for _, m in prunable_weights(model)]
    masks = global_keep_masks(list(scores.values()), sparsity, remove_highest=True)
    apply_keep_masks(modules, masks)
    return model
