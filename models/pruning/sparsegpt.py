"""SparseGPT: one-shot pruning that re-fits the remaining weights of each layer to its inputs."""

from __future__ import annotations

import torch
from torch import nn

from prunescope.models.pruning.calibration import (
    Calibration,
    ProgressFn,
    no_progress,
    require_calibration,
    scoring_mode,
)
from prunescope.models.pruning.common import apply_keep_masks, check_sparsity, prunable_weights
from prunescope.models.pruning.layer_inputs import (
    accumulate_group_inputs,
    block_groups,
    forward_order,
    has_column_form,
    layer_keep_mask,
    set_weight_columns,
    supports_n_m,
    weight_columns,
)

BLOCK_SIZE = 128
DAMPING = 0.01


def sparsegpt_hessian(gram: torch.Tensor, tokens: int, damping: float = DAMPING) -> torch.Tensor:
    """H = 2XXᵀ/n + λI with λ = `damping` × mean(diag(2XXᵀ/n)), from the Gram matrix XXᵀ of
    n tokens (Frantar & Alistarh 2023). λ = 1 when every input is zero."""
    h = 2.0 * gram / max(tokens, 1)
    damp = damping * float(h.diagonal().mean())
    return h + (damp if damp > 0 else 1.0) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """U with H⁻¹ = UᵀU; on a numerically indefinite H, the diagonal is raised and retried."""
    extra = float(h.diagonal().mean()) * DAMPING
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(h)
        if not info:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if not info:
                return upper
        h = h + extra * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        extra *= 10
    raise ValueError("SparseGPT's layer Hessian is not positive definite even after damping")


def _block_counts(total: int, cols: int, block_size: int) -> list[int]:
    """Split `total` pruned weights over the column blocks in proportion to their width, by
    cumulative rounding, so the counts add up exactly."""
    edges = [*range(0, cols, block_size), cols]
    cumulative = [round(total * e / cols) for e in edges]
    return [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]


def sparsegpt_solve(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    prune_count: int = 0,
    n_m: tuple[int, int] | None = None,
    block_size: int = BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and updated W, keep-mask) for one (rows, cols) weight and its damped Hessian.

    Frantar & Alistarh 2023, Algorithm 1. With U the upper Cholesky factor of H⁻¹, U_jj² is
    [H_F⁻¹]_jj for F the columns from j on, so column j is handled as OBS would with the
    columns before it fixed. Per block of `block_size` columns the mask is chosen up front:
    the `prune_count` share of the block with the lowest w_j² / U_jj² (the OBS saliency
    w²/[H_F⁻¹]_jj), ranked over all rows and the block's columns together; with `n_m=(n, m)`
    instead, at every m-th column the m − n lowest of the next m in each row. Each column is
    then quantised to its mask and its error δ = (w_j − q_j)/U_jj spread over the block's
    later columns (W -= δ U_j,j:); the rest of the matrix receives the block's errors in one
    matmul at the end (lazy batch updates). Computes in at least float32.
    """
    if n_m is not None and block_size % n_m[1]:
        raise ValueError(f"block_size must be a multiple of {n_m[1]} for {n_m[0]}:{n_m[1]} pruning")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.to(dtype).clone()
    rows, cols = w.shape
    u = _upper_cholesky_of_inverse(hessian.to(dtype))
    keep = torch.ones_like(w, dtype=torch.bool)
    counts = _block_counts(prune_count, cols, block_size)
    for block, start in enumerate(range(0, cols, block_size)):
        end = min(start + block_size, cols)
        w1 = w[:, start:end].clone()
        u1 = u[start:end, start:end]
        d = u1.diagonal()
        pruned = torch.zeros_like(w1, dtype=torch.bool)
        if n_m is None and counts[block]:
            saliency = (w1**2 / d**2).flatten()
            pruned.view(-1)[torch.topk(saliency, counts[block], largest=False).indices] = True
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                saliency = w1[:, i : i + m] ** 2 / d[i : i + m] ** 2
                lowest = torch.topk(saliency, m - n, dim=1, largest=False).indices
                pruned[:, i : i + m].scatter_(1, lowest, True)
            column = w1[:, i]
            quantised = torch.where(pruned[:, i], torch.zeros_like(column), column)
            error = (column - quantised) / d[i]
            w1[:, i:] -= error.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = quantised  # exactly zero where pruned, not a rounding residue
            errors[:, i] = error
        w[:, start:end] = w1
        keep[:, start:end] = ~pruned
        w[:, end:] -= errors @ u[start:end, end:]
    return w.to(weight.dtype), keep


def sparsegpt_prune(
    model: nn.Module,
    sparsity: float,
    calibration: Calibration,
    *,
    n_m: tuple[int, int] | None = None,
    block_size: int = BLOCK_SIZE,
    damping: float = DAMPING,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """SparseGPT (Frantar & Alistarh, ICML 2023, "SparseGPT: Massive Language Models Can Be
    Accurately Pruned in One-Shot"): per layer, H = 2XXᵀ/n + λI (λ = 1 % of the mean
    diagonal), mask chosen per 128-column block by w²/[H⁻¹]_jj, OBS update of the rest.

    Layers are processed one after another in forward order; each layer's H comes from
    inputs that flow through the already pruned and updated earlier layers, as the paper
    does. Hugging Face Transformers step per block, as the reference code does (sublayers of
    a block share one forward); a generic model has no blocks, so every layer is its own step
    (GPTQ's "true sequential" order; see `layer_inputs.block_groups`). X is the layer's input
    over every calibration token; a convolution's input is unfolded so a column is one
    (kernel position, input channel) pair, and a grouped convolution gets one H per group
    (see `prunescope.models.pruning.layer_inputs`).

    Every layer loses exactly round(sparsity × numel) weights (per-row counts vary, as the
    block mask ranks all rows together); with `n_m=(n, m)` every group of m consecutive
    input columns keeps n, and layers whose input size is not a multiple of m are left
    untouched. Surviving weights change (the OBS update) and biases stay. Layers without a
    column form (transposed convolutions) or never reached by the forward are pruned by
    |W_ij| within each row, without update. Modifies `model` in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    batches = require_calibration("sparsegpt", calibration)
    progress = progress or no_progress
    modules = [m for _, m in prunable_weights(model)]
    if n_m and not any(supports_n_m(m, n_m[1]) for m in modules):
        raise ValueError(
            f"no layer of {type(model).__name__} has an input size divisible by {n_m[1]}"
        )
    with scoring_mode(model), torch.no_grad():
        ordered, unreached = forward_order(model, modules, batches[0])
        steps = block_groups(model, ordered)
        for i, group in enumerate(steps):
            group = [m for m in group if not n_m or supports_n_m(m, n_m[1])]
            measured = [m for m in group if has_column_form(m)]
            grams = accumulate_group_inputs(model, measured, batches,
                                            lambda x: x @ x.transpose(-1, -2)) if measured else []
            for module in group:
                if not has_column_form(module):
                    mask = layer_keep_mask(module, weight_columns(module).abs(), sparsity, n_m)
                    apply_keep_masks([module], [mask])
            for module, (gram, tokens) in zip(measured, grams, strict=True):
                columns = weight_columns(module)
                groups, rows, _ = columns.shape
                total = round(sparsity * columns.numel())
                for g in range(groups):
                    count = round(total * (g + 1) / groups) - round(total * g / groups)
                    hessian = sparsegpt_hessian(gram[g], tokens, damping)
                    columns[g], _ = sparsegpt_solve(
                        columns[g], hessian, prune_count=count, n_m=n_m, block_size=block_size
                    )
                set_weight_columns(module, columns)
            progress((i + 1) / len(steps), f"SparseGPT: step {i + 1}/{len(steps)}")
        for module in unreached:
            if n_m and not supports_n_m(module, n_m[1]):
                continue
            mask = layer_keep_mask(module, weight_columns(module).abs(), sparsity, n_m)
            apply_keep_masks([module], [mask])
    return model
