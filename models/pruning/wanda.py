"""Wanda: prune by weight magnitude times input activation norm, per output row, no update."""

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
    supports_n_m,
    weight_columns,
)


def wanda_scores(weight_cols: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ (Sun et al. 2023) for column-form weights.

    `weight_cols` is (groups, rows, columns), `input_sq_norms` the (groups, columns) sums of
    squares ‖X_j‖₂² of each input column over all calibration tokens.
    """
    return weight_cols.abs() * input_sq_norms.sqrt().unsqueeze(1).to(weight_cols.dtype)


def wanda_prune(
    model: nn.Module,
    sparsity: float,
    calibration: Calibration,
    *,
    n_m: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """Wanda (Sun, Liu, Bair & Kolter, 2023, "A Simple and Effective Pruning Approach for Large
    Language Models"): score S_ij = |W_ij| · ‖X_j‖₂, compared within each output row.

    X is the layer's input over every calibration token (all positions of all batches). For
    a convolution a column j is one (input channel, kernel position) pair of the unfolded
    input (see `prunescope.models.pruning.layer_inputs`), so ‖X_j‖₂ is that channel's norm over the
    positions that kernel tap reads, padding included. Each row loses the lowest-scoring
    fraction `sparsity` (rows differ by at most one weight; each layer is exact); with
    `n_m=(n, m)` each group of m consecutive input columns keeps its n highest scores
    instead, and layers whose input size is not a multiple of m are left dense. There is no
    weight update: survivors keep their values.

    Layers are pruned one after another in forward order, each measured on inputs from the
    already pruned earlier layers. Hugging Face Transformers go block by block, as the
    reference implementation does (sublayers of a block share one forward); a generic model
    has no block structure, so there every layer is its own step (GPTQ's "true sequential"
    order; see `layer_inputs.block_groups`).
    Layers without a column form (transposed convolutions) or never reached by the forward
    are pruned by |W_ij| within each row. Modifies `model` in place and returns it.
    """
    sparsity = check_sparsity(sparsity)
    batches = require_calibration("wanda", calibration)
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
            sums = accumulate_group_inputs(model, measured, batches,
                                           lambda x: (x * x).sum(dim=-1)) if measured else []
            norms = {id(m): total for m, (total, _) in zip(measured, sums, strict=True)}
            masks = []
            for module in group:
                weights = weight_columns(module)
                scores = wanda_scores(weights, norms[id(module)]) \
                    if id(module) in norms else weights.abs()
                masks.append(layer_keep_mask(module, scores, sparsity, n_m))
            apply_keep_masks(group, masks)
            progress((i + 1) / len(steps), f"Wanda: step {i + 1}/{len(steps)}")
        for module in unreached:
            if n_m and not supports_n_m(module, n_m[1]):
                continue
            scores = weight_columns(module).abs()
            apply_keep_masks([module], [layer_keep_mask(module, scores, sparsity, n_m)])
    return model
