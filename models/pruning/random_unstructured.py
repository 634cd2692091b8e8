"""Random unstructured pruning: the baseline a pruning criterion has to beat."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from prunescope.models.pruning.common import check_sparsity, global_unstructured_prune


def random_unstructured_prune(model: nn.Module, sparsity: float, seed: int) -> nn.Module:
    """Zero round(sparsity × N) prunable weights chosen uniformly at random across all layers.

    The usual sanity baseline of the pruning literature (e.g. Blalock et al. 2020, "What is the
    State of Neural Network Pruning?"; Frankle et al. 2021, "Pruning Neural Networks at
    Initialization: Why Are We Missing the Mark?"): each layer loses about the same fraction.
    The same seed gives the same mask; the caller's random state is left as it was.
    Modifies `model` in place and returns it.
    """
    check_sparsity(sparsity)
    # RandomUnstructured draws from the global generator (torch.rand_like) and takes no
    # generator argument, so seed it inside a forked RNG scope that restores the state after.
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        return global_unstructured_prune(model, sparsity, prune.RandomUnstructured)
