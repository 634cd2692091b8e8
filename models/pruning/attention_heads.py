"""Attention-head pruning for Transformers: remove whole heads, ranked by importance globally.

A head h of an attention block owns rows h·d … (h+1)·d − 1 of the query, key and value
projections (d the head size) and the same columns of the output projection. Removing it zeroes
those rows (weights and biases) and columns, so every shape stays as it is, the checkpoint loads
into the unpruned architecture, and the head's context — softmax(qkᵀ)·v with v = 0 — and with it
its contribution to the output are exactly zero: the function of Hugging Face's former
`prune_heads`, without changing shapes.

Recognised blocks: BERT family (`query`/`key`/`value` Linear children, output projection at
the parent's `output.dense`), the same with the projection beside them as `proj` (the project's
vit_small), DistilBERT (`q_lin`/`k_lin`/`v_lin`/`out_lin`) and `q_proj`/`k_proj`/`v_proj` with
`o_proj` or `out_proj` (LLaMA, Mistral, OPT, BART, …). Fused qkv projections (GPT-2's
`c_attn`, `nn.MultiheadAttention`) are not recognised.
Grouped-query attention is handled: a key/value head is zeroed only once every query head that
reads it is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.models.pruning.calibration import (
    Calibration,
    MissingLossError,
    batch_loss,
    require_calibration,
    scoring_mode,
)
from prunescope.models.pruning.common import check_sparsity

_PATTERNS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("q_proj", "k_proj", "v_proj", ("o_proj", "out_proj")),
    ("q_lin", "k_lin", "v_lin", ("out_lin",)),
)
# Output projections held beside `query`/`key`/`value` (ViT-style); BERT keeps it in the
# parent's `output.dense`.
_OWN_OUTPUTS = ("proj", "out_proj", "o_proj")


@dataclass(frozen=True)
class AttentionBlock:
    """The four projections of one multi-head attention block and its head layout."""

    name: str  # qualified name of the module holding the query projection
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    head_dim: int

    @property
    def num_heads(self) -> int:
        return self.query.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.key.out_features // self.head_dim


def _linear(module: nn.Module | None, attr: str) -> nn.Linear | None:
    child = getattr(module, attr, None) if module is not None else None
    return child if isinstance(child, nn.Linear) else None


def _head_dim(module: nn.Module, query: nn.Linear) -> int:
    for attr in ("attention_head_size", "head_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    for owner, attr in ((module, "num_attention_heads"), (module, "num_heads"),
                        (module, "n_heads"), (module, "heads"), (config, "num_attention_heads")):
        heads = getattr(owner, attr, None)
        if isinstance(heads, int) and heads > 0:
            return query.out_features // heads
    raise ValueError(f"cannot tell the number of heads of attention module {type(module).__name__}")


def find_attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Every recognised multi-head attention block of `model`, in registration order."""
    modules = dict(model.named_modules())
    blocks = []
    for name, module in modules.items():
        found = None
        q, k, v = (_linear(module, a) for a in ("query", "key", "value"))
        if q and k and v:
            parent = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
            out = next((o for a in _OWN_OUTPUTS if (o := _linear(module, a))), None)
            out = out or _linear(getattr(parent, "output", None), "dense")
            if out is not None:
                found = (q, k, v, out)
        for q_name, k_name, v_name, out_names in _PATTERNS:
            q, k, v = (_linear(module, a) for a in (q_name, k_name, v_name))
            out = next((o for a in out_names if (o := _linear(module, a))), None)
            if q and k and v and out:
                found = (q, k, v, out)
        if found:
            q, k, v, out = found
            blocks.append(AttentionBlock(name, q, k, v, out, _head_dim(module, q)))
    return blocks


def _require_blocks(model: nn.Module) -> list[AttentionBlock]:
    blocks = find_attention_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no attention blocks this method recognises "
            "(query/key/value + output.dense or proj, q_proj/k_proj/v_proj + o_proj/out_proj, "
            "q_lin/k_lin/v_lin + out_lin); attention_heads prunes Transformers only"
        )
    return blocks


def head_weight_norms(blocks: list[AttentionBlock]) -> list[torch.Tensor]:
    """Per head: the L2 norm of all its weights, √(‖W_Q,h‖² + ‖W_K,h‖² + ‖W_V,h‖² + ‖W_O,h‖²)
    (rows of Q/K/V, columns of the output projection; a shared key/value head counts for each
    query head that reads it)."""
    norms = []
    for b in blocks:
        d, per_kv = b.head_dim, b.num_heads // b.num_kv_heads
        sq = [
            b.query.weight.detach().reshape(b.num_heads, -1).pow(2).sum(1),
            b.output.weight.detach().T.reshape(b.num_heads, -1).pow(2).sum(1),
        ]
        for proj in (b.key, b.value):
            kv = proj.weight.detach().reshape(b.num_kv_heads, d, -1).pow(2).sum((1, 2))
            sq.append(kv.repeat_interleave(per_kv))
        norms.append(torch.stack(sq).sum(0).sqrt())
    return norms


def head_importance(
    model: nn.Module, blocks: list[AttentionBlock], batches: Calibration
) -> list[torch.Tensor]:
    """Michel, Levy & Neubig 2019 importance I_h = Σ_batches |∂L/∂ξ_h|, normalised to unit L2
    norm within each layer as their code does.

    ξ_h is a gate (= 1) multiplying head h's context where it enters the output projection,
    so ∂L/∂ξ_h is the first-order change of the loss when the head is removed. Raises
    MissingLossError when the batches give no loss.
    """
    gates = [torch.ones(b.num_heads, dtype=b.output.weight.dtype, device=b.output.weight.device,
                        requires_grad=True) for b in blocks]

    def gate_hook(gate: torch.Tensor, head_dim: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] * gate.repeat_interleave(head_dim), *args[1:])

        return hook

    hooks = [b.output.register_forward_pre_hook(gate_hook(g, b.head_dim))
             for b, g in zip(blocks, gates, strict=True)]
    importance = [torch.zeros_like(g, requires_grad=False) for g in gates]
    try:
        with scoring_mode(model):
            for inputs, labels in batches:
                grads = torch.autograd.grad(batch_loss(model, inputs, labels), gates,
                                            allow_unused=True)
                for acc, g in zip(importance, grads, strict=True):
                    if g is not None:
                        acc.add_(g.detach().abs())
    finally:
        for h in hooks:
            h.remove()
    return [imp / imp.norm().clamp_min(torch.finfo(imp.dtype).tiny) for imp in importance]


def zero_attention_heads(blocks: list[AttentionBlock], heads: Mapping[str, Iterable[int]]) -> None:
    """Remove heads, given as {block name: head indices}, by zeroing their Q/K/V rows and
    biases and their output-projection columns; a key/value head is zeroed once all the query
    heads reading it are removed."""
    by_name = {b.name: b for b in blocks}
    with torch.no_grad():
        for name, indices in heads.items():
            b = by_name[name]
            removed = sorted(set(indices))
            d = b.head_dim
            for h in removed:
                rows = slice(h * d, (h + 1) * d)
                b.query.weight[rows] = 0
                if b.query.bias is not None:
                    b.query.bias[rows] = 0
                b.output.weight[:, rows] = 0
            per_kv = b.num_heads // b.num_kv_heads
            for kv in range(b.num_kv_heads):
                if all(h in removed for h in range(kv * per_kv, (kv + 1) * per_kv)):
                    rows = slice(kv * d, (kv + 1) * d)
                    for proj in (b.key, b.value):
                        proj.weight[rows] = 0
                        if proj.bias is not None:
                            proj.bias[rows] = 0


def attention_head_prune(
    model: nn.Module, sparsity: float, calibration: Calibration | None = None
) -> dict[str, list[int]]:
    """Attention-head pruning (Michel, Levy & Neubig, NeurIPS 2019, "Are Sixteen Heads Really
    Better than One?"): remove round(sparsity × H) of all H heads, ranked globally.

    Scores: with calibration batches that give a loss (labels, or a model that returns
    `output.loss`), the head importance |∂L/∂ξ_h| of Michel et al., normalised per layer;
    without calibration data, or with batches that give no loss, the L2 norm of the head's
    weights (`head_weight_norms`). The lowest-scoring heads are removed, ties broken by
    position. `sparsity` is the fraction of heads, not of weights; a layer may lose all its
    heads. Modifies `model` in place; returns {block name: removed head indices}.
    """
    sparsity = check_sparsity(sparsity)
    blocks = _require_blocks(model)
    scores = None
    if calibration is not None:
        try:
            scores = head_importance(model, blocks, require_calibration("attention_heads",
                                                                        calibration))
        except MissingLossError:
            scores = None
    if scores is None:
        scores = head_weight_norms(blocks)
    flat = torch.cat([s.to(torch.float64).cpu() for s in scores])
    k = round(sparsity * flat.numel())
    lowest = flat.argsort(stable=True)[:k].tolist()
    owners = [(b.name, h) for b in blocks for h in range(b.num_heads)]
    removed: dict[str, list[int]] = {}
    for i in sorted(lowest):
        name, h = owners[i]
        removed.setdefault(name, []).append(h)
    zero_attention_heads(blocks, removed)
    return removed
