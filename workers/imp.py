"""Iterative magnitude pruning with weight rewinding, the lottery-ticket procedure, on a dataset."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from prunescope.models.pruning.common import check_sparsity, global_keep_masks, prunable_weights
from prunescope.workers.datasets import ClassificationData
from prunescope.workers.training import ProgressFn, train_classifier


def _no_progress(fraction: float, message: str) -> None:
    pass


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Target sparsity after each round: 1 − (1 − sparsity)^(r/rounds), i.e. every round
    removes the same fraction p = 1 − (1 − sparsity)^(1/rounds) of the weights still there."""
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def imp_rewind(
    model: nn.Module,
    data: ClassificationData,
    sparsity: float,
    *,
    rounds: int = 3,
    epochs_per_round: int = 2,
    rewind_epoch: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Iterative magnitude pruning with rewinding (Frankle, Dziugaite, Roy & Carbin 2019/2020,
    "Stabilizing the Lottery Ticket Hypothesis" / "Linear Mode Connectivity and the Lottery
    Ticket Hypothesis", Algorithm 2 there), starting from the given model's weights θ₀.

    1. Train θ₀ for `epochs_per_round` epochs (T), keeping the whole state θ_k after
       `rewind_epoch` (k) epochs; k = 0 rewinds to θ₀ itself, as Chen et al. 2020 do for
       pre-trained networks.
    2. Each of `rounds` rounds: prune p % of the remaining weights by global magnitude
       |w| of the trained weights (p = 1 − (1 − sparsity)^(1/rounds), so the last round ends at
       exactly round(sparsity × N) zeros), rewind every surviving parameter and buffer to
       θ_k, and retrain the masked network for T − k epochs.

    Masks are held by `torch.nn.utils.prune` during training, so pruned weights stay zero;
    each training run is `prunescope.workers.training.train_classifier` (Adam, a fresh optimizer per
    run, shuffling seeded by `seed` + round). The model ends as the retrained sparse network
    with plain dense weights. Returns the history: per round its target sparsity and final
    test accuracy, plus the dense run's.
    """
    sparsity = check_sparsity(sparsity)
    for key, value, low in (("rounds", rounds, 1), ("epochs_per_round", epochs_per_round, 1),
                            ("rewind_epoch", rewind_epoch, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an integer ≥ {low}, got {value!r}")
    if rewind_epoch >= epochs_per_round:
        raise ValueError(
            f"rewind_epoch ({rewind_epoch}) must be below epochs_per_round ({epochs_per_round}) "
            "so that each round retrains for at least one epoch"
        )
    progress = progress or _no_progress
    modules = [m for _, m in prunable_weights(model)]
    total_epochs = epochs_per_round + rounds * (epochs_per_round - rewind_epoch)
    done = 0

    def train(epochs: int, round_seed: int, label: str,
              at_epoch: dict[int, Any] | None = None) -> float:
        nonlocal done
        start = done

        def report(fraction: float, message: str) -> None:
            epoch = round(fraction * epochs)
            if at_epoch is not None and epoch in at_epoch:
                at_epoch[epoch] = copy.deepcopy(model.state_dict())
            progress((start + epoch) / total_epochs * 0.99, f"{label}: {message}")

        history = train_classifier(model, data, epochs=epochs, lr=lr, batch_size=batch_size,
                                   seed=round_seed, progress=report)
        done = start + epochs
        return history["test_accuracy"][-1]

    for module in modules:
        prune.identity(module, "weight")  # weight = weight_orig × weight_mask from here on
    try:
        snapshots: dict[int, Any] = {rewind_epoch: None}
        if rewind_epoch == 0:
            snapshots[0] = copy.deepcopy(model.state_dict())
        dense_accuracy = train(epochs_per_round, seed, "dense training", snapshots)
        rewind_state = {k: v for k, v in snapshots[rewind_epoch].items()
                        if not k.endswith("weight_mask")}
        history: dict[str, Any] = {
            "dense_test_accuracy": dense_accuracy, "round_sparsity": [], "round_test_accuracy": []
        }
        for r, target in enumerate(round_sparsities(sparsity, rounds), start=1):
            # Already pruned weights score −1, below every live |w|, so masks only shrink.
            scores = [torch.where(m.weight_mask.bool(), m.weight_orig.detach().abs(), -1.0)
                      for m in modules]
            with torch.no_grad():
                for module, keep in zip(modules, global_keep_masks(scores, target), strict=True):
                    module.weight_mask.copy_(keep.to(module.weight_mask.dtype))
            model.load_state_dict(rewind_state, strict=False)
            accuracy = train(epochs_per_round - rewind_epoch, seed + r,
                             f"round {r}/{rounds} at {target:.1%} sparsity")
            history["round_sparsity"].append(target)
            history["round_test_accuracy"].append(accuracy)
    finally:
        for module in modules:
            prune.remove(module, "weight")
    progress(1.0, f"imp_rewind: {rounds} rounds done")
    return history
