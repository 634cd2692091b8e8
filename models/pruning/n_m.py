"""N:M semi-structured magnitude pruning: at most N non-zeros in every M consecutive inputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from prunescope.models.sparsity import prunable_modules


def n_m_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` largest |w| of every group of `m` consecutive inputs (dim 1) of each output.

    Groups follow `prunescope.models.sparsity.follows_n_m`: along the input dimension of a
    linear weight, along input channels at each kernel position of a conv weight.
    """
    moved = weight.detach().movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = groups.abs().topk(n, dim=-1).indices
    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
    return mask.reshape(moved.shape).movedim(-1, 1)


def n_m_magnitude_prune(model: nn.Module, n: int, m: int) -> nn.Module:
    """N:M magnitude pruning (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks";
    the N:M baseline of Wanda and SparseGPT).

    Score |w_ij| compared within each group of M consecutive input weights of an output
    unit; the N largest survive, so every compatible layer is exactly 1 − N/M sparse and
    runs on sparse tensor cores (2:4). Layers whose input dimension is not a multiple of M
    (e.g. a first conv with one input channel) cannot carry the pattern and are left dense,
    as NVIDIA's ASP does. Uses `torch.nn.utils.prune.custom_from_mask`, then `prune.remove`.
    """
    pruned = 0
    for _, module in prunable_modules(model):
        if module.weight.dim() < 2 or module.weight.shape[1] % m:
            continue
        prune.custom_from_mask(module, "weight", n_m_mask(module.weight, n, m))
        prune.remove(module, "weight")
        pruned += 1
    if not pruned:
        raise ValueError(f"no layer of {type(model).__name__} has an input size divisible by {m}")
    return model
