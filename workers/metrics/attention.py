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
weight. Everything is computed in float64 on the tensors' own device, so a worker can fold
attention into `AttentionConsistencyAccumulator` batch by batch (memory O(layers · heads))
without storing it or copying it to the host.

Conventions: distributions are first restricted to the valid keys and renormalised
(`restrict_to_keys`); a row with no mass on valid keys stays all zero and is left out of the
averages. Query tokens that count are chosen by `query_mask` (real tokens; [CLS]/[SEP] left
out as queries by default, see there). Averages are token-weighted (see the accumulator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# |Σ_keys p − 1| and the mass on padding keys allowed in a real query row. Eager attention in
# float32 is within ~1e-6 of 1; attention stored in bfloat16 (8-bit mantissa) within ~4e-3.
# Scores, logits or a transposed tensor miss by far more.
ROW_SUM_TOLERANCE = 1e-2
# The accumulator works on at most this many float64 attention weights at a time (32 MiB),
# so a long-sequence batch on a GPU does not need several float64 copies of its attention.
_CHUNK_ELEMENTS = 1 << 22

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
            sums = torch.zeros(5, self.num_layers, self.num_heads, dtype=torch.float64,
                               device=device)
            # Worst |Σ − 1| and padding mass per (model, layer), checked with one device sync.
            worst = torch.zeros(2, 2, self.num_layers, dtype=torch.float64, device=device)
            step = max(1, _CHUNK_ELEMENTS // max(1, self.num_heads * tokens * tokens))
            terms = {} if reference_terms is None else reference_terms
            for layer in range(self.num_layers):
                for start in range(0, batch, step):
                    part = slice(start, start + step)
                    key = (layer, start)
                    if key not in terms:
                        p = _as_float64(dense_attentions[layer][part], device)
                        errors = _row_errors(p, real[part])
                        p = restrict_to_keys(p, real[part])
                        k_row = real[part].sum(-1).clamp(max=self.topk)[:, None, None]
                        terms[key] = (p, errors, attention_entropy(p),
                                      _top_indices(p, real[part][:, None, None, :], self.topk),
                                      k_row)
                    p, (p_deviation, p_padding), entropy_p, top_p, k_row = terms[key]
                    q = _as_float64(pruned_attentions[layer][part], device)
                    q_deviation, q_padding = _row_errors(q, real[part])
                    for model, (deviation, padding_mass) in enumerate(
                            ((p_deviation, p_padding), (q_deviation, q_padding))):
                        worst[model, 0, layer] = torch.maximum(worst[model, 0, layer], deviation)
                        worst[model, 1, layer] = torch.maximum(worst[model, 1, layer],
                                                               padding_mass)
                    q = restrict_to_keys(q, real[part])
                    sums[:, layer] += self._layer_sums(p, q, real[part], rows[part], entropy_p,
                                                       top_p, k_row)
            _raise_unless_distributions(worst.cpu().numpy())
            if self._sums is None:
                self._sums = sums
            else:
                self._sums = self._sums.to(device) + sums

    def _layer_sums(
        self, p: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
        entropy_p: torch.Tensor, top_p: torch.Tensor, k_row: torch.Tensor,
    ) -> torch.Tensor:
        """(5, heads): sums over counted rows of JS, H(p), H(q), overlap, and the row count;
        p and q are already restricted to the valid keys."""
        counted = rows[:, None, :] & (p.sum(-1) > 0) & (q.sum(-1) > 0)  # (batch, heads, query)
        k_row = k_row.expand(counted.shape)
        shared = _shared_top(p, q, keys[:, None, None, :], k_row, self.topk, top_p)
        entropy_q = attention_entropy(q)
        # JS(p, q) = H(½(p + q)) − ½(H(p) + H(q)): one entropy more instead of two KL terms
        # (the same quantity; `js_divergence` computes it the direct way, and the tests
        # compare the two).
        js = (attention_entropy(0.5 * (p + q)) - 0.5 * (entropy_p + entropy_q)).clamp(0.0, 1.0)
        values = (
            js,
            entropy_p,
            entropy_q,
            shared.to(torch.float64) / k_row.clamp(min=1),
            torch.ones_like(counted, dtype=torch.float64),
        )
        return torch.stack([torch.where(counted, v, 0.0).sum(dim=(0, 2)) for v in values])

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


def _row_errors(attn: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Worst |Σ_keys − 1| and worst mass on padding keys over the real query rows (NaN → NaN).

    Reduced on the device (no host sync); 0 when the chunk has no real rows.
    """
    rows = real[:, None, :]
    deviation = torch.where(rows, (attn.sum(-1) - 1.0).abs(), 0.0).amax()
    padding = torch.where(rows, torch.where(real[:, None, None, :], 0.0, attn).sum(-1), 0.0)
    return deviation, padding.amax()


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
