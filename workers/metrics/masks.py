"""Pruning-mask overlap: how far two pruned checkpoints agree on which weights they keep.

A checkpoint stores pruned weights as zeros, so its mask is `weight ≠ 0` (`mask_of`). Two
overlap measures live here:

- Intersection over union (Jaccard index) of two masks, |A ∩ B| / |A ∪ B|, per layer and
  pooled over layers (`mask_iou`, `mask_overlap`). The sets are the *kept* weights by default:
  at the sparsities pruning papers report (50–99 %) the kept set is the small one, and the IoU
  of two large sets is high by chance alone — two independent random masks at 90 % sparsity
  share 82 % of their pruned sets but only 5 % of their kept sets. `of="pruned"` gives the IoU
  of the pruned sets, the more telling one at low sparsity. `independent_iou` gives the value
  two independent random masks with the same counts would reach, the baseline to read any
  IoU against.
- Top-magnitude overlap (`top_magnitude_overlap`): the share of the dense layer's k largest
  |w| that the pruned layer kept, k being how many it kept. It is 1.0 for magnitude pruning
  by construction and k/N in expectation for random pruning, so it places a method between
  "magnitude" and "chance".

Masks exist only where the pruned tensor has the dense tensor's shape. A structurally pruned
layer (Torch-Pruning removes whole units, so the tensor shrinks) has no positions in common
with the dense one; such layers raise ValueError naming the layer, or are left out and listed
with `skip_shape_mismatch=True`.

Counts are exact integers. Pair counts come from a float32 product of 0/1 matrices taken in
column chunks of at most 2²⁴ weights, below which every partial sum is an exactly
representable integer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MaskSet = Literal["kept", "pruned"]

# Integers up to 2^24 are exact in float32; a chunk never holds more ones than that.
_MAX_CHUNK = 1 << 24
# Per-chunk float32 matrix of C × chunk values stays near this many elements (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


def mask_of(weight: Any) -> np.ndarray:
    """The keep-mask of a weight tensor or array: True where the weight is non-zero."""
    if hasattr(weight, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, so compare first
        return (weight.detach() != 0).cpu().numpy()
    return np.asarray(weight) != 0


def _check_set(of: str) -> None:
    if of not in ("kept", "pruned"):
        raise ValueError(f"`of` must be 'kept' or 'pruned', got {of!r}")


def _iou_from_counts(
    both_kept: Any, kept_a: Any, kept_b: Any, numel: Any, of: MaskSet
) -> np.ndarray:
    """IoU from |A∩B|, |A|, |B| and N of kept sets; the pruned sets' counts follow from them
    (|Ā∩B̄| = N − |A∪B|, |Ā∪B̄| = N − |A∩B|). Both sets empty gives 1.0: the masks agree."""
    both_kept, kept_a, kept_b, numel = (np.asarray(v, dtype=np.float64)
                                        for v in (both_kept, kept_a, kept_b, numel))
    union_kept = kept_a + kept_b - both_kept
    if of == "kept":
        intersection, union = both_kept, union_kept
    else:
        intersection, union = numel - union_kept, numel - both_kept
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 1.0)


def mask_iou(a: Any, b: Any, *, of: MaskSet = "kept") -> float:
    """Jaccard index |A ∩ B| / |A ∪ B| of two masks of one layer (Jaccard 1901).

    `a` and `b` are keep-masks (booleans) or weights (non-zero = kept) of the same shape. The
    sets are the kept weights, or the pruned ones with `of="pruned"` (see the module docstring
    for why kept is the default). Two empty sets count as identical: 1.0.
    """
    _check_set(of)
    ma, mb = mask_of(a), mask_of(b)
    if ma.shape != mb.shape:
        raise ValueError(
            f"masks of shapes {ma.shape} and {mb.shape} cannot be compared position by position"
        )
    both = np.count_nonzero(ma & mb)
    return float(_iou_from_counts(both, np.count_nonzero(ma), np.count_nonzero(mb), ma.size, of))


def independent_iou(kept_a: Any, kept_b: Any, numel: Any, *, of: MaskSet = "kept") -> np.ndarray:
    """The IoU two independent uniformly random masks with these kept counts would reach.

    For kept sets of sizes k_a and k_b drawn independently among N weights the intersection is
    hypergeometric with mean k_a·k_b/N, so E|A∩B| = abN and E|A∪B| = (a + b − ab)N for kept
    fractions a, b; the ratio of these expectations, ab / (a + b − ab), is returned (the
    expected IoU itself differs from it by O(1/N)). Broadcasts over arrays.
    """
    _check_set(of)
    kept_a, kept_b, numel = (np.asarray(v, dtype=np.float64) for v in (kept_a, kept_b, numel))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_both = np.where(numel > 0, kept_a * kept_b / np.where(numel > 0, numel, 1), 0.0)
    return _iou_from_counts(expected_both, kept_a, kept_b, numel, of)


@dataclass(frozen=True)
class MaskIoUMatrix:
    """Checkpoint × checkpoint IoU of masks, per layer and pooled over layers.

    per_layer [L, C, C] and overall [C, C] are the IoUs; chance_per_layer and chance_overall
    the values for independent random masks of the same kept counts (`independent_iou`).
    """

    checkpoints: tuple[str, ...]
    layers: tuple[str, ...]
    of: MaskSet
    per_layer: np.ndarray
    overall: np.ndarray
    chance_per_layer: np.ndarray
    chance_overall: np.ndarray
    skipped_layers: tuple[str, ...]


@dataclass(frozen=True)
class MaskOverlap:
    """Exact mask counts of C checkpoints over L layers, from which every IoU follows.

    numel [L]: weights per layer; kept [C, L]: kept weights of each checkpoint per layer;
    both_kept [L, C, C]: weights kept by both checkpoints (its diagonal is `kept`).
    skipped_layers: layers left out because their shapes differ between checkpoints.
    """

    checkpoints: tuple[str, ...]
    layers: tuple[str, ...]
    numel: np.ndarray
    kept: np.ndarray
    both_kept: np.ndarray
    skipped_layers: tuple[str, ...]

    def iou_matrix(self, of: MaskSet = "kept") -> MaskIoUMatrix:
        """Per-layer and overall IoU matrices of kept (or pruned) sets.

        The overall matrix pools the counts, Σ_l |A∩B|_l / Σ_l |A∪B|_l: the IoU of the masks
        concatenated over the layers, so every weight counts once and a layer weighs by its
        size (equivalently, the mean of the per-layer IoUs weighted by each layer's union).
        """
        _check_set(of)
        numel = self.numel[:, None, None]
        kept_a = self.kept.T[:, :, None]
        kept_b = self.kept.T[:, None, :]
        per_layer = _iou_from_counts(self.both_kept, kept_a, kept_b, numel, of)
        chance = independent_iou(kept_a, kept_b, numel, of=of)
        total = self.numel.sum()
        kept_total = self.kept.sum(axis=1)
        overall = _iou_from_counts(
            self.both_kept.sum(axis=0), kept_total[:, None], kept_total[None, :], total, of
        )
        # Chance pools the per-layer expectations: random pruning keeps each layer's counts.
        expected_both = np.where(
            numel > 0, kept_a * kept_b / np.where(numel > 0, numel, 1), 0.0
        ).sum(axis=0)
        chance_overall = _iou_from_counts(
            expected_both, kept_total[:, None], kept_total[None, :], total, of
        )
        return MaskIoUMatrix(
            checkpoints=self.checkpoints,
            layers=self.layers,
            of=of,
            per_layer=per_layer,
            overall=overall,
            chance_per_layer=chance,
            chance_overall=chance_overall,
            skipped_layers=self.skipped_layers,
        )


def _layer_weights(
    state_dicts: Mapping[str, Mapping[str, Any]], layer: str
) -> dict[str, Any]:
    missing = [name for name, state in state_dicts.items() if layer not in state]
    if missing:
        raise ValueError(
            f"layer {layer!r} is not in checkpoint(s) {', '.join(map(repr, missing))}; pass "
            "state-dict keys of prunable weights that every checkpoint has"
        )
    return {name: state[layer] for name, state in state_dicts.items()}


def _shape_mismatch(layer: str, weights: Mapping[str, Any]) -> str | None:
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    if len(set(shapes.values())) <= 1:
        return None
    listed = ", ".join(f"{name!r}: {shape}" for name, shape in shapes.items())
    return (
        f"layer {layer!r} has different shapes in different checkpoints ({listed}): it was "
        "structurally pruned, so its weights have no positions in common and no mask to "
        "compare. Leave the layer out, or pass skip_shape_mismatch=True to skip it"
    )


def _pair_counts(masks: np.ndarray) -> np.ndarray:
    """masks (C, N) bool → (C, C) int64 counts of positions where both rows are True."""
    count, size = masks.shape
    chunk = max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // max(count, 1)))
    total = np.zeros((count, count), dtype=np.int64)
    for start in range(0, size, chunk):
        block = masks[:, start:start + chunk].astype(np.float32)
        total += np.rint(block @ block.T).astype(np.int64)
    return total


def mask_overlap(
    state_dicts: Mapping[str, Mapping[str, Any]],
    layers: Sequence[str],
    *,
    skip_shape_mismatch: bool = False,
) -> MaskOverlap:
    """Exact kept / both-kept counts of every checkpoint pair on every layer.

    `state_dicts` maps a checkpoint name to its state_dict (tensors or arrays, pruned weights
    zero); `layers` are state-dict keys of prunable weights (`prunable_parameter_names`).
    A layer whose shape differs between checkpoints raises ValueError, or with
    `skip_shape_mismatch=True` is left out and listed in `skipped_layers`.
    """
    if not state_dicts:
        raise ValueError("no checkpoints given; mask overlap needs at least one")
    if not layers:
        raise ValueError("no layers given; pass the state-dict keys of the prunable weights")
    names = tuple(state_dicts)
    used: list[str] = []
    skipped: list[str] = []
    numel: list[int] = []
    kept: list[np.ndarray] = []
    both: list[np.ndarray] = []
    for layer in layers:
        weights = _layer_weights(state_dicts, layer)
        problem = _shape_mismatch(layer, weights)
        if problem is not None:
            if not skip_shape_mismatch:
                raise ValueError(problem)
            skipped.append(layer)
            continue
        masks = np.stack([mask_of(weights[name]).reshape(-1) for name in names])
        counts = _pair_counts(masks)
        used.append(layer)
        numel.append(masks.shape[1])
        kept.append(np.diagonal(counts).copy())
        both.append(counts)
    if not used:
        raise ValueError(
            f"every layer ({', '.join(map(repr, skipped))}) changed shape between checkpoints; "
            "masks can only be compared on layers that were pruned without removing units"
        )
    return MaskOverlap(
        checkpoints=names,
        layers=tuple(used),
        numel=np.array(numel, dtype=np.int64),
        kept=np.stack(kept, axis=1).astype(np.int64),
        both_kept=np.stack(both).astype(np.int64),
        skipped_layers=tuple(skipped),
    )


def mask_iou_matrix(
    state_dicts: Mapping[str, Mapping[str, Any]],
    layers: Sequence[str],
    *,
    of: MaskSet = "kept",
    skip_shape_mismatch: bool = False,
) -> MaskIoUMatrix:
    """Per-layer checkpoint × checkpoint IoU matrices and the parameter-pooled overall one.

    Works for any set of checkpoints of one architecture: several methods at one sparsity, or
    one method at several sparsities. See `mask_overlap` for the arguments and
    `MaskOverlap.iou_matrix` for the pooling.
    """
    _check_set(of)
    overlap = mask_overlap(state_dicts, layers, skip_shape_mismatch=skip_shape_mismatch)
    return overlap.iou_matrix(of)


def _top_magnitude_hits(dense_weight: Any, kept: np.ndarray, layer: str) -> tuple[int, int]:
    """(kept weights among the dense top-k by |w|, k) where k = number kept.

    Ties at the k-th largest |w| make "the top k" ambiguous; kept weights tied there count as
    hits up to the number of places the tie has left, so any tie-breaking of a magnitude
    criterion scores 1.0.
    """
    magnitude = _as_float_array(dense_weight).reshape(-1)
    kept = kept.reshape(-1)
    if magnitude.shape != kept.shape:
        raise ValueError(
            f"layer {layer!r}: the dense weight has {magnitude.size} entries and the pruned one "
            f"{kept.size}; a structurally pruned layer has no mask to compare with the dense one"
        )
    if not np.all(np.isfinite(magnitude)):
        raise ValueError(f"layer {layer!r}: the dense weight contains NaN or Inf")
    magnitude = np.abs(magnitude)
    k = int(np.count_nonzero(kept))
    if k == 0:
        return 0, 0
    threshold = np.partition(magnitude, magnitude.size - k)[magnitude.size - k]
    above = magnitude > threshold
    at = magnitude == threshold
    places_at_threshold = k - int(np.count_nonzero(above))
    hits = int(np.count_nonzero(kept & above)) + min(
        int(np.count_nonzero(kept & at)), places_at_threshold
    )
    return hits, k


def _as_float_array(weight: Any) -> np.ndarray:
    if hasattr(weight, "detach"):
        return weight.detach().float().cpu().numpy()
    return np.asarray(weight, dtype=np.float64)


def top_magnitude_overlap(dense_weight: Any, pruned_weight: Any) -> float:
    """Share of the dense layer's k largest-|w| weights that the pruned layer kept.

    k = number of non-zero weights of `pruned_weight`; the overlap is |kept ∩ top_k(|w|)| / k,
    the agreement of a method's choice with the magnitude criterion (Han et al. 2015,
    "Learning both Weights and Connections for Efficient Neural Networks"). It is 1.0 when the
    method kept exactly the largest dense weights of this layer (layer-wise or global magnitude
    pruning), and k/N in expectation when it kept a uniformly random k of the N weights (the
    intersection is then hypergeometric with mean k²/N). Ties at the k-th magnitude are
    resolved in the method's favour. A layer that kept nothing gives 1.0 (the empty set is the
    top 0).
    """
    hits, k = _top_magnitude_hits(dense_weight, mask_of(pruned_weight), "weight")
    return hits / k if k else 1.0


@dataclass(frozen=True)
class TopMagnitudeOverlap:
    """Top-magnitude overlap of one pruned checkpoint, per layer and overall.

    per_layer [L]: `top_magnitude_overlap` of each layer; kept_fraction [L]: k/N, the value
    expected from random pruning. overall pools the per-layer counts, Σ hits_l / Σ k_l — the
    question "within each layer, were the largest weights kept?", apart from how the method
    spread its sparsity over layers. overall_global ranks all listed layers' weights together
    (global top-K, K = all kept): 1.0 only for global magnitude pruning, below 1 for a method
    that kept each layer's largest weights but allocated sparsity differently.
    """

    layers: tuple[str, ...]
    per_layer: np.ndarray
    kept_fraction: np.ndarray
    overall: float
    overall_global: float
    skipped_layers: tuple[str, ...]


def top_magnitude_overlap_layers(
    dense_state: Mapping[str, Any],
    pruned_state: Mapping[str, Any],
    layers: Sequence[str],
    *,
    skip_shape_mismatch: bool = False,
) -> TopMagnitudeOverlap:
    """`top_magnitude_overlap` for each of `layers` (state-dict keys) and pooled over them.

    A layer whose pruned shape differs from the dense one raises ValueError naming it, or with
    `skip_shape_mismatch=True` is left out and listed in `skipped_layers`.
    """
    if not layers:
        raise ValueError("no layers given; pass the state-dict keys of the prunable weights")
    used, skipped = [], []
    per_layer, fractions, hits_total, kept_total = [], [], 0, 0
    magnitudes, masks = [], []
    for layer in layers:
        weights = _layer_weights({"dense": dense_state, "pruned": pruned_state}, layer)
        problem = _shape_mismatch(layer, weights)
        if problem is not None:
            if not skip_shape_mismatch:
                raise ValueError(problem)
            skipped.append(layer)
            continue
        kept = mask_of(weights["pruned"])
        hits, k = _top_magnitude_hits(weights["dense"], kept, layer)
        used.append(layer)
        per_layer.append(hits / k if k else 1.0)
        fractions.append(k / kept.size if kept.size else 0.0)
        hits_total += hits
        kept_total += k
        magnitudes.append(_as_float_array(weights["dense"]).reshape(-1))
        masks.append(kept.reshape(-1))
    if not used:
        raise ValueError("every layer changed shape between the dense and the pruned checkpoint")
    global_hits, global_k = _top_magnitude_hits(
        np.concatenate(magnitudes), np.concatenate(masks), "all layers"
    )
    return TopMagnitudeOverlap(
        layers=tuple(used),
        per_layer=np.array(per_layer, dtype=np.float64),
        kept_fraction=np.array(fractions, dtype=np.float64),
        overall=hits_total / kept_total if kept_total else 1.0,
        overall_global=global_hits / global_k if global_k else 1.0,
        skipped_layers=tuple(skipped),
    )
