"""SynFlow: data-free pruning that conserves synaptic flow, iterated to avoid layer collapse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunescope.models.pruning.calibration import ProgressFn, no_progress, scoring_mode
from prunescope.models.pruning.common import (
    apply_keep_masks,
    check_sparsity,
    global_keep_masks,
    prunable_weights,
)

DEFAULT_ITERATIONS = 100


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"SynFlow feeds an all-ones input, so it needs the shape of one example; "
            f"{type(model).__name__} has no `input_shape` (models that read token ids cannot "
            "be scored this way) — pass input_shape=..."
        )
    return tuple(int(s) for s in shape)


class _Linearized:
    """Replace every floating parameter and buffer by its absolute value; `restore` puts the
    original signs back (SynFlow's `linearize`/`nonlinearize`).

    Only signs are kept, not copies: |w| · sign(w) gives w back exactly, and a weight zeroed
    in between stays zero. Tensors shared by several modules are visited once.
    """

    def __init__(self, model: nn.Module) -> None:
        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        self._negative: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for t in tensors:
                self._negative.append((t, t < 0))
                t.abs_()

    def restore(self) -> None:
        with torch.no_grad():
            for t, negative in self._negative:
                t.copy_(torch.where(negative, -t, t))


def synflow_scores(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Synaptic saliency |θ ⊙ ∂R/∂θ| of every prunable weight (Tanaka et al. 2020).

    R = 1ᵀ f(1; |θ|): the network's output summed, for an all-ones input of one example,
    with every parameter and buffer replaced by its absolute value; for a bias-free chain of
    linear layers R = 1ᵀ|W_L|…|W_1|1. The model runs in eval mode, so a BatchNorm layer
    applies its (absolute) running statistics, as the reference code does. Every tensor is
    restored afterwards, signs included. Keys are the modules' qualified names.
    """
    named = prunable_weights(model)
    weights = [m.weight for _, m in named]
    shape = _input_shape(model, input_shape)
    linear = _Linearized(model)
    try:
        with scoring_mode(model, weights):
            like = weights[0]
            ones = torch.ones((1, *shape), dtype=like.dtype, device=like.device)
            flow = model(ones).sum()
            grads = torch.autograd.grad(flow, weights, allow_unused=True)
        scores = {
            name: (w.detach() * g).abs() if g is not None else torch.zeros_like(w)
            for (name, _), w, g in zip(named, weights, grads, strict=True)
        }
    finally:
        linear.restore()
    if not all(s.isfinite().all() for s in scores.values()):
        raise ValueError(
            "SynFlow's synaptic flow overflowed the model's float range (a deep network's "
            "product of |W| is too large); convert the model to float64 to prune it"
        )
    return scores


def synflow_prune(
    model: nn.Module,
    sparsity: float,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    input_shape: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020, "Pruning neural networks
    without any data by iteratively conserving synaptic flow"): data-free, score |θ ⊙ ∂R/∂θ|
    with R = 1ᵀ(∏|W|)1, recomputed on the masked network over `iterations` rounds.

    Round k of n keeps the fraction (1 − sparsity)^(k/n) of the prunable weights (the paper's
    exponential schedule), ranked globally across all linear/conv layers; weights pruned in
    an earlier round stay pruned. The last round removes exactly round(sparsity × N) weights.
    Because each round re-scores the survivors, a layer's remaining weights gain saliency as
    it thins, which is what prevents layer collapse (the paper's result for iterative,
    positive, conservative scores). Survivors keep their values and signs. Modifies `model`
    in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    progress = progress or no_progress
    modules = [m for _, m in prunable_weights(model)]
    _input_shape(model, input_shape)
    keep = [torch.ones_like(m.weight, dtype=torch.bool) for m in modules]
    original = [m.weight.detach().clone() for m in modules]
    report_every = max(1, iterations // 20)
    try:
        for k in range(1, iterations + 1):
            with torch.no_grad():
                for m, w0, mask in zip(modules, original, keep, strict=True):
                    m.weight.copy_(w0 * mask)
            scores = synflow_scores(model, input_shape)
            # Already pruned weights rank below every live one, so masks only ever shrink.
            ranked = [torch.where(mask, s, -1.0) for s, mask in zip(scores.values(), keep,
                                                                      strict=True)]
            keep = global_keep_masks(ranked, 1.0 - (1.0 - sparsity) ** (k / iterations))
            if k % report_every == 0 or k == iterations:
                progress(k / iterations, f"SynFlow iteration {k}/{iterations}")
    finally:
        with torch.no_grad():
            for m, w0 in zip(modules, original, strict=True):
                m.weight.copy_(w0)
    apply_keep_masks(modules, keep)
    return model
