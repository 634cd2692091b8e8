"""Global magnitude pruning: remove the weights of smallest absolute value across all layers."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from prunescope.models.pruning.common import global_unstructured_prune


def global_magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """One-shot global magnitude pruning (Han et al. 2015, "Learning both Weights and
    Connections for Efficient Neural Networks"; the criterion Zhu & Gupta 2017 apply gradually).

    Score s_i = |w_i| over every prunable weight (linear and conv `weight`s, biases excluded)
    pooled across layers; the round(sparsity × N) lowest-scoring weights are set to zero, so
    layers with many small weights end up sparser than others. No fine-tuning. Modifies
    `model` in place and returns it.
    """
    return global_unstructured_prune(model, sparsity, prune.L1Unstructured)
