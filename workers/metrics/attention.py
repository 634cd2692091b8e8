"""Attention consistency: how far a pruned Transformer's attention drifts from the dense model's.

Movva & Zhao, "Dissecting Lottery Ticket Transformers: Structural and Behavioral Study of
Sparse Neural Machine Translation", BlackboxNLP 2020, report that attention stays consistent
as magnitude-pruning sparsity grows. The measures here test that claim per layer and head,
comparing, for every real query token, the dense model's attention distribution p over keys
with the pruned model's q on the same input:
- Jensen–Shannon divergence JS(p, q) in bits (0 for the same distribution, at most 1),
- entropy H(p) and H(q) in bits (how broad a head looks; Clark, Khandelwal, Levy & Manning,
  "What Does BERT Look At?", BlackboxNLP 2019, §3),
- top-k overlap |topk(p) ∩ topk(q)| / k: whether the same keys stay the most attended.

Inputs are attention probabilities as Hugging Face transformers returns them with
`output_attentions=True` (eager attention): one tensor per layer of shape
(batch, heads, query, key), each query row summing to 1 over keys, padding keys carrying ~0
weight. The functions below compute in float64. `AttentionConsistencyAccumulator`, which a
worker feeds batch by batch (memory O(layers · heads), attention neither stored nor copied to
the host), computes the elementwise terms (p log p, the mixture's entropy, the top-k ranks) in
the attention's own float32 and adds up per-row values in float64; see there for what that
costs in precision.

Conventions: distributions are first restricted to the valid keys and renormalised
(`restrict_to_keys`); a row with no mass on valid keys stays all zero and is left out of the
averages. Query tokens that count are chosen by `query_mask` (real tokens; [CLS]/[SEP] left
out as queries by default, see there). Averages are token-weighted (see the accumulator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# |Σ_keys p − 1| and the mass on padding keys allowed in a real query row. Eager attention in
# float32 is within ~1e-6 of 1; attention stored in bfloat16 (8-bit mantissa) within ~4e-3.
# Scores, logits or a transposed tensor miss by far more.
ROW_SUM_TOLERANCE = 1e-2
# The accumulator works on at most this many attention weights of one model at a time: on a
# CPU 2 MiB in float32, so that its temporaries stay in the processor's cache; on a GPU 64 MiB,
# few enough kernel launches per batch, and a long-sequence batch still needs no large copies.
_CHUNK_ELEMENTS = 1 << 19
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 24
# Top-k keys: key j of weight w sorts by w·(1 − j·2⁻⁴⁰) − j·2⁻¹⁰⁰⁰ in float64. The factor is a
# relative nudge of at most ~1e-10, far below float32's 6e-8 spacing, so distinct weights keep
# their order and equal positive weights go to the lower index; the offset, absorbed by any
# positive weight, orders the exact zeros the same way. Padding keys sort at −1, below all.
_KEY_NUDGE = 2.0**-40
_ZERO_NUDGE = 2.0**-1000


def _as_float64(x: Any, device: torch.device | None = None) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    return x.to(device=device if device is not None else x.device, dtype=torch.float64)


def _same_shape_pair(p: Any, q: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as_float64(p)
    q = _as_float64(q, p.device)
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must have the same shape (the same rows over the same keys), got "
            f"{tuple(p.shape)} and {tuple(q.shape)}"
        )
    return p, q


def _key_mask_like(key_mask: Any, attn: torch.Tensor) -> torch.Tensor:
    """key_mask as a bool tensor on attn's device that broadcasts against attn (keys last).

    A (batch, keys) mask for attention of shape (batch, …, keys) gets singleton middle axes;
    any other mask must already broadcast.
    """
    keys = torch.as_tensor(key_mask, device=attn.device).bool()
    if keys.ndim == 0 or keys.shape[-1] != attn.shape[-1]:
        raise ValueError(
            f"key_mask must mark the {attn.shape[-1]} keys on its last axis, got shape "
            f"{tuple(keys.shape)}"
        )
    if keys.ndim == 2 and attn.ndim > 2:
        keys = keys.reshape(keys.shape[0], *([1] * (attn.ndim - 2)), keys.shape[1])
    try:
        torch.broadcast_shapes(keys.shape, attn.shape)
    except RuntimeError:
        raise ValueError(
            f"key_mask of shape {tuple(keys.shape)} does not match attention of shape "
            f"{tuple(attn.shape)}: pass (batch, keys) or a shape that broadcasts"
        ) from None
    return keys


def query_mask(
    attention_mask: Any, special_tokens: Any = None, *, include_special: bool = False
) -> torch.Tensor:
    """Which query positions count, as a bool (batch, tokens) tensor on the mask's device.

    Real tokens (attention_mask == 1) count; padding never does. Special tokens ([CLS],
    [SEP]; `special_tokens` True there, e.g. the tokenizer's `special_tokens_mask`) are left
    out as queries unless include_special=True.

    Why that default: the rows of [CLS] and [SEP] are not the heads' linguistic behaviour —
    [CLS]'s row is shaped by the pooling/next-sentence objective, and [SEP]'s rows are broad or
    self-attending (Clark et al. 2019; Kovaleva, Romanov, Rogers & Rumshisky, "Revealing the
    Dark Secrets of BERT", EMNLP 2019) — so averaging them in mixes a second behaviour into
    every head. Their key columns are kept all the same (only the key mask of padding is
    applied): the mass an ordinary token puts on [SEP] is part of the distribution the model
    used — Clark et al. read it as a head's "no-op" — and removing those columns and
    renormalising would both distort every row and hide a pruned head that switches off by
    moving its mass onto [SEP] (or back).
    """
    mask = torch.as_tensor(attention_mask)
    if mask.ndim != 2:
        raise ValueError(
            f"attention_mask must be (batch, tokens), got shape {tuple(mask.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            "attention_mask must hold 0 (padding) and 1 (real token); an additive mask "
            "(0 / -inf) must be turned back into 0/1 first"
        )
    rows = mask.bool()
    if special_tokens is not None and not include_special:
        special = torch.as_tensor(special_tokens, device=rows.device).bool()
        if special.shape != rows.shape:
            raise ValueError(
                f"special_tokens must have the attention mask's shape {tuple(rows.shape)}, "
                f"got {tuple(special.shape)}"
            )
        rows = rows & ~special
    return rows


def restrict_to_keys(attn: Any, key_mask: Any) -> torch.Tensor:
    """Attention restricted to the valid keys and renormalised: p̃ⱼ = pⱼ·vⱼ / Σₖ pₖ·vₖ.

    attn: (…, keys) probabilities; key_mask: 1/True for valid (non-padding) keys, shape
    (batch, keys) for attention (batch, …, keys), or any shape that broadcasts. Returns
    float64 on attn's device. A row with no mass on valid keys stays all zero (it has no
    distribution to compare; the accumulator leaves such rows out).
    """
    attn = _as_float64(attn)
    kept = torch.where(_key_mask_like(key_mask, attn), attn, 0.0)
    mass = kept.sum(dim=-1, keepdim=True)
    has_mass = mass > 0
    return torch.where(has_mass, kept / torch.where(has_mass, mass, 1.0), 0.0)


def js_divergence(p: Any, q: Any, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Jensen–Shannon divergence in bits between distributions p and q along `dim`.

        JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m),   m = ½ (p + q),   KL(a ‖ m) = Σ aᵢ log₂(aᵢ / mᵢ)

    (Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 1991).
    Symmetric, exactly 0 for identical inputs, and at most 1 bit (disjoint supports); its
    square root is the metric scipy's `jensenshannon` returns. 0·log 0 = 0: weights at or below
    eps count as exact zeros (an underflowed float32 weight changes the value by less than
    eps·log₂(1/eps) ≈ 4e-11 bit). p and q must already be normalised along dim (see
    `restrict_to_keys`); the result, float64 on p's device, has dim removed and is clamped to
    [0, 1] against rounding.
    """
    p, q = _same_shape_pair(p, q)
    p = torch.where(p > eps, p, 0.0)
    q = torch.where(q > eps, q, 0.0)
    m = 0.5 * (p + q)

    def kl_to_mixture(a: torch.Tensor) -> torch.Tensor:
        positive = a > 0  # mᵢ ≥ aᵢ/2 > 0 there
        ratio = a / torch.where(positive, m, 1.0)
        return torch.where(positive, a * torch.log2(torch.where(positive, ratio, 1.0)), 0.0).sum(
            dim
        )

    return (0.5 * (kl_to_mixture(p) + kl_to_mixture(q))).clamp(0.0, 1.0)


def attention_entropy(p: Any, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in bits of distributions along `dim`: H(p) = −Σ pᵢ log₂ pᵢ, 0·log 0 = 0.

    log₂ n for a uniform distribution over n keys (padding keys, at weight 0, add nothing),
    0 for attention on a single key. Float64 on p's device, dim removed.
    """
    p = _as_float64(p).clamp(min=0.0)
    return -torch.special.xlogy(p, p).sum(dim) / math.log(2.0)


def _top_indices(p: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """(…, k) indices of each row's k highest-weighted valid keys, ties by lower index.

    `torch.topk` on the weights scaled by (1 − i·2⁻⁴⁰) for key i: a relative nudge of at most
    ~1e-10, far below float32's 6e-8 spacing, so distinct weights keep their order and exact
    ties go to the lower index — what a stable descending sort gives, without sorting.
    """
    positions = torch.arange(p.shape[-1], device=p.device, dtype=torch.float64)
    scores = torch.where(keys, p * (1.0 - positions * 2.0**-40), -math.inf)
    return torch.topk(scores, min(k, p.shape[-1]), dim=-1).indices


def _shared_top(p: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, k_row: torch.Tensor,
                k: int, top_p: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, how many of the first k_row top keys of p are among q's first k_row."""
    top_p = _top_indices(p, keys, k) if top_p is None else top_p
    top_q = _top_indices(q, keys, k)
    rank = torch.arange(top_p.shape[-1], device=p.device)
    valid = rank < k_row.unsqueeze(-1)  # (…, k)
    same = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)) & valid.unsqueeze(-1) \
        & valid.unsqueeze(-2)
    return same.sum(dim=(-1, -2))


def topk_overlap(p: Any, q: Any, k: int, key_mask: Any = None) -> torch.Tensor:
    """Share of the k most-attended keys two distributions have in common, per row (last axis).

        overlap(p, q) = |topₖ(p) ∩ topₖ(q)| / k′,   k′ = min(k, number of valid keys)

    in [0, 1], float64 on p's device, keys axis removed. Padding keys (key_mask False) are
    never chosen, and k is clipped per row to the valid keys, so a 5-token sentence with k = 8
    compares all 5 (overlap 1). Ties are broken by key index, lower first (a stable sort), so
    the result is deterministic; for an exactly uniform row that picks its first k′ keys. A row
    with no valid keys gives NaN (0/0: there is nothing to compare).
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    p, q = _same_shape_pair(p, q)
    if key_mask is None:
        keys = torch.ones_like(p, dtype=torch.bool)
    else:
        keys = _key_mask_like(key_mask, p).expand(p.shape)
    k_row = keys.sum(dim=-1).clamp(max=int(k))
    shared = _shared_top(p, q, keys, k_row, int(k))
    overlap = shared.to(torch.float64) / k_row.clamp(min=1)
    return torch.where(k_row > 0, overlap, math.nan)


class AttentionConsistencyAccumulator:
    """Token-weighted attention consistency of a pruned model against its dense model.

    `update` folds one batch of both models' attention (same inputs): for every layer l, head
    h and counted query token t (`query_mask`) whose restricted rows p (dense) and q (pruned)
    both have mass, it adds JS(p, q), H(p), H(q), the top-k overlap and 1 to per-(l, h) sums.
    Only those sums are kept (5 · layers · heads floats, on the attention's device); no
    per-example values are stored.

    `result()` divides by the token counts: the means are token-weighted, Σ_tokens x / N, so an
    example with more tokens weighs more. That is the usual choice for attention statistics
    (Clark et al. 2019 and Kovaleva et al. 2019 average over tokens) because the thing being
    measured is a query token's attention distribution; the mean estimates its expectation over
    the corpus's tokens, a short sentence's few rows do not get a long one's weight, and the
    value does not depend on how examples are batched or padded.

    Precision: the elementwise terms are computed in the attention's float32 (float64 when
    either model's attention is float64) — twice the arithmetic rate of float64 and half the
    memory traffic — and each row's entropies are summed over its keys in float32, then
    carried in float64. A row's entropy is thus off by ~1e-7 of itself (a few 1e-7 bit), and JS,
    formed from entropies, by as much in absolute terms. On MiniLM and its pruned copies the
    per-(layer, head) means stay within 7e-8 bit of the float64 formulation: ~1e-8 relative for
    a checkpoint's mean JS, 1e-4 for a head whose mean JS is itself only 2e-6 bit
    (bench/attention_consistency.py prints it). Identical attention still gives exactly JS 0
    and overlap 1, and top-k ranks are exact (see `_sort_keys`).
    """

    def __init__(self, num_layers: int, num_heads: int, topk: int = 3) -> None:
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads), ("topk", topk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.topk = topk
        # (5, layers, heads): sums of JS, H dense, H pruned, overlap, and the row count.
        self._sums: torch.Tensor | None = None

    def _check_shapes(
        self, dense: Sequence[Any], pruned: Sequence[Any], batch: int, tokens: int
    ) -> None:
        if len(dense) != self.num_layers or len(pruned) != self.num_layers:
            raise ValueError(
                f"expected attention for {self.num_layers} layers from each model, got "
                f"{len(dense)} dense and {len(pruned)} pruned"
            )
        expected = (batch, self.num_heads, tokens, tokens)
        for layer, (a, b) in enumerate(zip(dense, pruned, strict=True)):
            for model, t in (("dense", a), ("pruned", b)):
                if tuple(t.shape) != expected:
                    raise ValueError(
                        f"{model} attention of layer {layer} has shape {tuple(t.shape)}; "
                        f"expected (batch, heads, query, key) = {expected} from the attention "
                        f"mask's (batch, tokens) and num_heads"
                    )

    def update(
        self,
        dense_attentions: Sequence[Any],
        pruned_attentions: Sequence[Any],
        attention_mask: Any,
        special_tokens: Any = None,
        reference_terms: dict | None = None,
    ) -> None:
        """Fold one batch: per layer, (batch, heads, tokens, tokens) attention of both models.

        reference_terms: an empty dict shared by the accumulators of several pruned models
        compared with the same dense attention of one batch; the dense side's terms (its
        restricted rows, entropy, top keys and checks) are then computed once, not per model.

        attention_mask: (batch, tokens) of 0/1; special_tokens: optional bool (batch, tokens)
        marking [CLS]/[SEP], left out as queries (see `query_mask`). Raises ValueError, and
        folds nothing, when shapes disagree or a real query row is not a probability
        distribution (|Σ − 1| or the mass on padding keys above ROW_SUM_TOLERANCE, or NaN).
        """
        if len(dense_attentions) == 0:
            raise ValueError("no attention tensors given: pass one per layer")
        device = torch.as_tensor(dense_attentions[0]).device
        with torch.inference_mode():
            mask = torch.as_tensor(attention_mask, device=device)
            rows = query_mask(mask, special_tokens)
            real = mask.bool()
            batch, tokens = real.shape
            self._check_shapes(dense_attentions, pruned_attentions, batch, tokens)
            dense_layers = [torch.as_tensor(a, device=device) for a in dense_attentions]
            pruned_layers = [torch.as_tensor(a, device=device) for a in pruned_attentions]
            dtype = _working_dtype(dense_layers[0], pruned_layers[0])
            terms = {} if reference_terms is None else reference_terms
            layout = ("chunks", self.num_layers, self.num_heads)
            if layout not in terms:
                budget = _CHUNK_ELEMENTS if device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
                terms[layout] = _chunks(real, self.num_layers, self.num_heads, budget)
            sums = torch.zeros(5, self.num_layers, self.num_heads, dtype=torch.float64,
                               device=device)
            errors = []
            for chunk in terms[layout]:
                first, end, start, stop, lo, hi = chunk
                layers, part, window = slice(first, end), slice(start, stop), slice(lo, hi)
                key = (chunk, self.topk, dtype)
                if key not in terms:
                    terms[key] = _Reference.of(_window_rows(dense_layers, layers, part, window),
                                               window, real[part, window],
                                               rows[part, window], self.topk, dtype)
                reference = terms[key]
                pruned = _window_rows(pruned_layers, layers, part, window)
                compared = _RowTerms.of(pruned, window, reference.key_weights)
                errors.append((layers, reference.dense.errors, compared.errors))
                sums[:, layers] += _layer_sums(reference, compared, pruned, window)
            # Worst |Σ − 1| and padding mass per (model, layer), checked with one device sync.
            worst = torch.zeros(2, 2, self.num_layers, dtype=torch.float64, device=device)
            for layers, dense_errors, pruned_errors in errors:
                worst[0, :, layers] = torch.maximum(worst[0, :, layers], dense_errors)
                worst[1, :, layers] = torch.maximum(worst[1, :, layers], pruned_errors)
            _raise_unless_distributions(worst.cpu().numpy())
            if self._sums is None:
                self._sums = sums
            else:
                self._sums = self._sums.to(device) + sums

    def result(self) -> dict[str, np.ndarray]:
        """Token-weighted means, float64: [layers, heads] arrays and [layers] head means.

        Keys: js_divergence (bits), entropy_dense and entropy_pruned (bits), entropy_change
        (pruned − dense), topk_overlap, tokens (how many query rows were averaged), and
        layer_<metric> for each of the first five: the mean over heads. A (layer, head) that
        never had a countable row is NaN. Raises ValueError before any token was counted.
        """
        if self._sums is None or not bool(self._sums[4].sum() > 0):
            raise ValueError(
                "no query tokens were counted: call update() with batches that have real, "
                "non-special tokens"
            )
        sums = self._sums.cpu().numpy()
        tokens = sums[4]
        with np.errstate(invalid="ignore", divide="ignore"):
            js, entropy_dense, entropy_pruned, overlap = (sums[i] / tokens for i in range(4))
        means = {
            "js_divergence": js,
            "entropy_dense": entropy_dense,
            "entropy_pruned": entropy_pruned,
            "entropy_change": entropy_pruned - entropy_dense,
            "topk_overlap": overlap,
        }
        out = {**means, "tokens": tokens.copy()}
        out.update({f"layer_{name}": values.mean(axis=1) for name, values in means.items()})
        return out


def _working_dtype(*attentions: torch.Tensor) -> torch.dtype:
    """float64 if any attention is float64, else float32 (also for half precision)."""
    return torch.float64 if any(a.dtype == torch.float64 for a in attentions) else torch.float32


def _chunks(real: torch.Tensor, layers: int, heads: int, budget: int) -> list[tuple[int, ...]]:
    """How `update` splits a batch: (first layer, end layer, start, stop, lo, hi) per chunk,
    the layers × consecutive examples [start, stop) whose real tokens all lie in positions
    [lo, hi), of at most `budget` attention weights (or one layer of one example).

    Outside [lo, hi) every example of a chunk has padding only: its queries do not count and
    its keys carry no valid mass, so the work stays in the window (only the row sums that check
    the padding mass read all keys). Length-sorted batches (`text_batches`) lose most of their
    padding this way. Examples without a real token join a chunk without widening it; a chunk
    of only such examples is left out, having no row to check or count. Short sequences stack
    several layers into one chunk, so that each step works on enough weights to be worth it.
    """
    tokens = real.shape[1]
    present = real.any(-1).tolist()
    first = real.to(torch.int8).argmax(-1).tolist()
    last = (tokens - 1 - real.flip(-1).to(torch.int8).argmax(-1)).tolist()
    groups: list[tuple[int, int, int, int]] = []
    start, lo, hi = 0, -1, -1
    for example in range(real.shape[0]):
        if not present[example]:
            continue
        wider_lo = first[example] if lo < 0 else min(lo, first[example])
        wider_hi = last[example] + 1 if hi < 0 else max(hi, last[example] + 1)
        if lo >= 0 and (example + 1 - start) * heads * (wider_hi - wider_lo) ** 2 > budget:
            groups.append((start, example, lo, hi))
            start, wider_lo, wider_hi = example, first[example], last[example] + 1
        lo, hi = wider_lo, wider_hi
    if lo >= 0:
        groups.append((start, real.shape[0], lo, hi))
    out = []
    for start, stop, lo, hi in groups:
        step = max(1, budget // ((stop - start) * heads * (hi - lo) ** 2))
        out.extend((layer, min(layer + step, layers), start, stop, lo, hi)
                   for layer in range(0, layers, step))
    return out


def _window_rows(
    attentions: Sequence[torch.Tensor], layers: slice, part: slice, window: slice
) -> torch.Tensor:
    """(layers, examples, heads, query, all keys): the window's query rows of those layers."""
    rows = [a[part, :, window] for a in attentions[layers]]
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


@dataclass(frozen=True)
class _RowTerms:
    """One model's attention rows of one chunk, reduced to what the comparison needs; shapes
    (layers, examples, heads, query[, key]) over the chunk's window."""

    probs: torch.Tensor  # restricted to the valid keys and renormalised
    entropy: torch.Tensor  # bits, float64
    has_mass: torch.Tensor  # bool: some mass on valid keys
    errors: torch.Tensor  # (2, layers) float64: worst |Σ − 1| and padding mass, real rows

    @classmethod
    def of(cls, attn: torch.Tensor, window: slice, key_weights: torch.Tensor) -> _RowTerms:
        """attn: `_window_rows` of one model; key_weights (examples, 1, 1, window): 1 for a
        valid key, 0 for padding, in the working dtype (which the rows are computed in)."""
        total = attn.sum(-1, dtype=key_weights.dtype)
        probs = attn[..., window] * key_weights
        mass = probs.sum(-1)
        probs.mul_(torch.where(mass > 0, mass.reciprocal(), 0.0).unsqueeze(-1))
        real = key_weights[..., 0, :] > 0  # (examples, 1, query): the real query rows
        # The padding mass is exactly 0 where padding keys carry exactly 0 weight: both sums
        # then add the same numbers.
        checks = torch.where(real, torch.stack([(total - 1.0).abs(), total - mass]), 0.0)
        return cls(probs, _row_entropy(probs), mass > 0,
                   checks.amax(dim=(-3, -2, -1)).to(torch.float64))


@dataclass(frozen=True)
class _Reference:
    """What the comparisons of one chunk share, computed once per batch: the dense side's rows
    and top keys, and the chunk's masks."""

    dense: _RowTerms
    top: torch.Tensor  # (layers, examples, heads, query, k′): dense's top keys, rank order
    key_weights: torch.Tensor  # (examples, 1, 1, key): 1 valid, 0 padding, working dtype
    sort_factor: torch.Tensor  # (examples, 1, 1, key) float64: see `_sort_keys`
    sort_offset: torch.Tensor
    k_valid: torch.Tensor  # (examples, 1, 1, 1): min(k, valid keys)
    within_k: torch.Tensor  # (examples, 1, 1, k′) bool: rank r < min(k, valid keys)
    counted: torch.Tensor  # (layers, examples, heads, query): counted query, dense has mass

    @classmethod
    def of(cls, dense: torch.Tensor, window: slice, keys: torch.Tensor, queries: torch.Tensor,
           topk: int, dtype: torch.dtype) -> _Reference:
        """dense: `_window_rows` of the dense model; keys and queries (examples, window):
        valid keys and counted queries; dtype: the working dtype."""
        key_weights = keys.to(dtype)[:, None, None, :]
        rows = _RowTerms.of(dense, window, key_weights)
        position = torch.arange(keys.shape[-1], device=keys.device, dtype=torch.float64)
        valid = keys[:, None, None, :]
        factor = torch.where(valid, 1.0 - position * _KEY_NUDGE, 0.0)
        offset = torch.where(valid, -position * _ZERO_NUDGE, -1.0)
        top = _sort_keys(dense[..., window], factor, offset).topk(min(topk, keys.shape[-1]))
        k_valid = keys.sum(-1).clamp(max=topk)[:, None, None, None]
        within_k = torch.arange(top.indices.shape[-1], device=keys.device) < k_valid
        return cls(rows, top.indices, key_weights, factor, offset, k_valid, within_k,
                   queries[:, None, :] & rows.has_mass)


def _layer_sums(reference: _Reference, compared: _RowTerms, pruned: torch.Tensor,
                window: slice) -> torch.Tensor:
    """(5, layers, heads): sums over counted rows of JS, H(p), H(q), top-k overlap, and the
    row count, for dense rows p and pruned rows q (`pruned`: its `_window_rows`)."""
    p = reference.dense
    counted = reference.counted & compared.has_mass
    # JS(p, q) = H(½(p + q)) − ½(H(p) + H(q)): one entropy more instead of two KL terms (the
    # same quantity; `js_divergence` computes it the direct way, and the tests compare the
    # two). lerp gives exactly p where q = p, so identical rows give exactly 0.
    mixture = _row_entropy(torch.lerp(p.probs, compared.probs, 0.5))
    js = (mixture - 0.5 * (p.entropy + compared.entropy)).clamp(0.0, 1.0)
    # Of p's first k′ = min(k, valid keys) top keys, those among q's first k′.
    ranks = _outranking(_sort_keys(pruned[..., window], reference.sort_factor,
                                   reference.sort_offset), reference.top)
    shared = ((ranks < reference.k_valid) & reference.within_k).sum(-1)
    overlap = shared / reference.k_valid[..., 0].clamp(min=1).to(torch.float64)
    values = torch.stack([js, p.entropy, compared.entropy, overlap, counted.to(torch.float64)])
    return torch.where(counted, values, 0.0).sum(dim=(2, 4))


def _row_entropy(p: torch.Tensor) -> torch.Tensor:
    """−Σ p log₂ p over the last axis, elementwise in p's dtype, float64 out.

    0·log 0 = 0 by taking the log of max(p, tiny) (times p = 0). The clamp also keeps the log
    fast: its vectorised kernel falls back to a slow path on every vector holding a zero.
    """
    terms = torch.clamp_min(p, torch.finfo(p.dtype).tiny)
    return -terms.log2_().mul_(p).sum(-1).to(torch.float64)


def _sort_keys(attn: torch.Tensor, factor: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """float64 sort keys attn · factor + offset of attention weights (…, key): sorted in
    descending order, the keys follow a stable descending sort of the valid keys' weights,
    padding keys last (_KEY_NUDGE says why; exact for weights of float32 precision or less)."""
    # Converted first: a multiply across dtypes takes a slow path.
    return attn.to(torch.float64).mul_(factor).add_(offset)


def _outranking(sort_keys: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(…, k): how many keys of each row sort above the row's keys at positions `at` (…, k)
    — their 0-based ranks; one comparison pass per position instead of a top-k."""
    picked = sort_keys.gather(-1, at)
    count = torch.uint8 if sort_keys.shape[-1] < 256 else torch.int32
    ranks = [torch.gt(sort_keys, picked[..., r, None]).sum(-1, dtype=count)
             for r in range(at.shape[-1])]
    return torch.stack(ranks, -1) if ranks else at.to(count)


def _raise_unless_distributions(worst: np.ndarray) -> None:
    for model, name in enumerate(("dense", "pruned")):
        for layer, (deviation, padding) in enumerate(zip(*worst[model], strict=True)):
            if not deviation <= ROW_SUM_TOLERANCE:
                raise ValueError(
                    f"{name} attention of layer {layer} is not a probability distribution over "
                    f"keys (worst |row sum − 1| = {deviation:.3g}): pass the attention "
                    f"probabilities of output_attentions=True, not scores, laid out "
                    f"(batch, heads, query, key)"
                )
            if not padding <= ROW_SUM_TOLERANCE:
                raise ValueError(
                    f"{name} attention of layer {layer} puts {padding:.3g} of a row's mass on "
                    f"padding keys: run the model with the same attention_mask passed here"
                )
