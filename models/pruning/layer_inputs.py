"""Layer-wise pruning from calibration inputs: weights as rows × columns, inputs as columns.

Wanda and SparseGPT treat a layer as y = W x: W has one row per output unit and one column per
input feature, and the statistics they need (‖X_j‖₂, XXᵀ) are over the columns of X, one
column entry per token. For a linear layer the columns are its input features and the tokens
are all leading positions (batch × sequence). A convolution is the same product once its input
is unfolded: a column is one (kernel position, input channel) pair and a token one output
position of one example, so W·X reproduces the convolution's output exactly (tested).

Column order for convolutions is kernel position major, input channel minor — the weight's
`(out, in, *k)` moved to `(out, *k, in)`. That puts the M consecutive input channels of one
kernel position next to each other, the N:M groups of
`prunescope.models.sparsity.follows_n_m`. A grouped convolution is G independent products,
one per group, so everything here carries a leading group dimension (G = 1 for linear
layers).

Transposed convolutions scatter rather than gather and have no such column form; the methods
prune them, and any layer the calibration forward never reaches, by |W_ij| within each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from prunescope.models.pruning.calibration import CalibrationBatch, run_model

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Unfolded conv inputs are built this many values at a time, so memory stays bounded.
_CHUNK_VALUES = 1 << 24


def has_column_form(module: nn.Module) -> bool:
    """True for linear and (non-transposed) convolution layers."""
    return isinstance(module, (nn.Linear, *_CONV_TYPES))


def weight_columns(module: nn.Module) -> torch.Tensor:
    """The weight as (groups, out/groups, columns), a copy in the column order described above.

    A layer without a column form (a transposed convolution) gets one group whose rows are
    the slices along its weight's first dimension, with dim 1 minor among the columns as for
    a convolution (so N:M groups still run along dim 1).
    """
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w.unsqueeze(0).clone()
    if not isinstance(module, _CONV_TYPES):
        return w.movedim(1, -1).reshape(1, w.shape[0], -1).clone()
    groups = module.groups
    out, in_g = w.shape[:2]
    moved = w.reshape(groups, out // groups, in_g, *w.shape[2:]).movedim(2, -1)
    return moved.reshape(groups, out // groups, -1).clone()


def columns_to_weight(module: nn.Module, columns: torch.Tensor) -> torch.Tensor:
    """The inverse of `weight_columns`: (groups, out/groups, columns) in the weight's layout."""
    shape = module.weight.shape
    if isinstance(module, nn.Linear):
        return columns.reshape(shape)
    if not isinstance(module, _CONV_TYPES):
        return columns.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
    kernel = shape[2:]
    new = columns.reshape(module.groups, shape[0] // module.groups, *kernel, shape[1])
    return new.movedim(-1, 2).reshape(shape)


def set_weight_columns(module: nn.Module, columns: torch.Tensor) -> None:
    """Write (groups, out/groups, columns) back into the module's weight, in place."""
    with torch.no_grad():
        module.weight.copy_(columns_to_weight(module, columns).to(module.weight.dtype))


def input_columns(module: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The layer input `x` as column data X of shape (groups, columns, tokens), in chunks of
    tokens, such that weight_columns(module) @ X is the layer's output without bias."""
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        step = max(1, _CHUNK_VALUES // max(1, flat.shape[1]))
        for start in range(0, flat.shape[0], step):
            yield flat[start : start + step].T.unsqueeze(0)
        return
    if not isinstance(module, _CONV_TYPES):
        raise TypeError(f"{type(module).__name__} has no column form")
    dims = len(module.kernel_size)
    if x.dim() == dims + 1:  # an unbatched input
        x = x.unsqueeze(0)
    # The conv module's own padding amounts, which also resolve padding="same".
    pads = list(module._reversed_padding_repeated_twice)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    per_example = x[0].numel() * kernel
    step = max(1, _CHUNK_VALUES // max(1, per_example))
    groups = module.groups
    in_g = x.shape[1] // groups
    for start in range(0, x.shape[0], step):
        part = x[start : start + step]
        if any(pads):
            part = F.pad(part, pads, mode=mode)
        for d in range(dims):
            span = (module.kernel_size[d] - 1) * module.dilation[d] + 1
            part = part.unfold(2 + d, span, module.stride[d])
            part = part[..., :: module.dilation[d]]
        # (n, C, *out, *k) → (groups, *k, in_g, n, *out) → (groups, k·in_g, n·out)
        n, out_shape = part.shape[0], part.shape[2 : 2 + dims]
        part = part.reshape(n, groups, in_g, *out_shape, *module.kernel_size)
        order = [1, *range(3 + dims, 3 + 2 * dims), 2, 0, *range(3, 3 + dims)]
        yield part.permute(order).reshape(groups, kernel * in_g, -1)


class _Captured(Exception):
    """Stops a calibration forward once the layer being measured has seen its input."""


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def forward_order(
    model: nn.Module, modules: list[nn.Module], batch: CalibrationBatch
) -> tuple[list[nn.Module], list[nn.Module]]:
    """(`modules` in the order a forward pass of `batch` first calls them, those it never
    calls). Must run in eval mode under no_grad, as the callers do."""
    called: list[nn.Module] = []
    seen: set[int] = set()

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            called.append(module)

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        run_model(model, batch[0])
    finally:
        for h in hooks:
            h.remove()
    return called, [m for m in modules if id(m) not in seen]


def accumulate_layer_inputs(
    model: nn.Module,
    module: nn.Module,
    batches: list[CalibrationBatch],
    statistic: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, int]:
    """(Σ statistic(X), number of tokens) over the column data X of `module`'s inputs for all
    calibration batches, with the model as it is now (earlier layers already pruned).

    Each forward stops as soon as `module` has its input, so measuring layer l costs a forward
    through layers < l only. A module called several times in one forward contributes its
    first call. `statistic` maps (groups, columns, tokens) to a tensor summed over tokens.
    """
    return accumulate_group_inputs(model, [module], batches, statistic)[0]


def accumulate_group_inputs(
    model: nn.Module,
    modules: list[nn.Module],
    batches: list[CalibrationBatch],
    statistic: Callable[[torch.Tensor], torch.Tensor],
) -> list[tuple[torch.Tensor, int]]:
    """`accumulate_layer_inputs` for several modules from the same forwards: each forward
    stops once every module of the group has seen its input. One (sum, tokens) per module."""
    totals: list[torch.Tensor | None] = [None] * len(modules)
    tokens = [0] * len(modules)
    seen: set[int] = set()

    def capture(index: int) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if index in seen:
                return
            seen.add(index)
            x = _first_input(args, kwargs).detach()
            dtype = torch.promote_types(x.dtype, torch.float32)
            for columns in input_columns(mod, x):
                value = statistic(columns.to(dtype))
                totals[index] = value if totals[index] is None else totals[index] + value
                tokens[index] += columns.shape[-1]
            if len(seen) == len(modules):
                raise _Captured

        return hook

    hooks = [m.register_forward_pre_hook(capture(i), with_kwargs=True)
             for i, m in enumerate(modules)]
    try:
        for inputs, _ in batches:
            seen.clear()
            try:
                run_model(model, inputs)
            except _Captured:
                pass
    finally:
        for h in hooks:
            h.remove()
    if any(t is None for t in totals):
        raise ValueError("the calibration forward never reached the layer being pruned")
    return [(t, n) for t, n in zip(totals, tokens, strict=True)]  # type: ignore[misc]


def block_groups(model: nn.Module, ordered: list[nn.Module]) -> list[list[nn.Module]]:
    """`ordered` (forward order) cut into the steps of sequential pruning.

    Hugging Face Transformers prune block by block, as the reference implementations of Wanda
    and SparseGPT do: the sublayers of one block (attention projections, feed-forward) are
    measured on the same forward, with every earlier block already pruned, then pruned
    together. Other models have no block structure: every layer is its own step (GPTQ's
    "true sequential" order). A layer outside the blocks (a pooler, a head) is a step alone.
    """
    transformer = hasattr(getattr(model, "config", None), "output_hidden_states")
    blocks = getattr(model, "analysis_layers", ()) if transformer else ()
    if not blocks:
        return [[m] for m in ordered]
    names = {id(m): n for n, m in model.named_modules()}

    def block_of(module: nn.Module) -> str | None:
        name = names.get(id(module), "")
        return next((b for b in blocks if name.startswith(b + ".")), None)

    groups: list[list[nn.Module]] = []
    previous: str | None = None
    for module in ordered:
        block = block_of(module)
        if groups and block is not None and block == previous:
            groups[-1].append(module)
        else:
            groups.append([module])
        previous = block
    return groups


def row_keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask over (rows, cols) scores removing the lowest scores within each row.

    The tensor loses exactly round(sparsity × rows × cols) entries: every row loses
    ⌊k / rows⌋ of its lowest, and the k mod rows rows whose next-lowest score is smallest lose
    one more, so rows differ by at most one weight and the layer hits its target exactly.
    """
    rows, cols = scores.shape
    k = round(sparsity * rows * cols)
    base, extra = divmod(k, rows)
    order = scores.argsort(dim=1, stable=True)
    counts = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    if extra:
        marginal = scores.gather(1, order[:, base : base + 1]).squeeze(1)
        counts[marginal.argsort(stable=True)[:extra]] += 1
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    pruned_sorted = ranks < counts.unsqueeze(1)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order, ~pruned_sorted)
    return keep


def n_m_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask over (rows, cols) scores keeping the n highest of every m consecutive columns."""
    groups = scores.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(scores.shape)


def layer_keep_mask(
    module: nn.Module, scores: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None
) -> torch.Tensor:
    """Keep-mask in the weight's layout from column-form scores (groups, rows, columns): the
    lowest scores of each row go (`row_keep_mask`), or all but the n highest of every m
    consecutive columns with `n_m=(n, m)`."""
    flat = scores.reshape(-1, scores.shape[-1])
    keep = n_m_keep_mask(flat, *n_m) if n_m else row_keep_mask(flat, sparsity)
    return columns_to_weight(module, keep.reshape(scores.shape))


def supports_n_m(module: nn.Module, m: int) -> bool:
    """True when the layer's input dimension (dim 1 of its weight) is a multiple of m."""
    return module.weight.dim() >= 2 and module.weight.shape[1] % m == 0
