"""Which examples and classes compression changes: PIEs, CIE ranking, per-class recall tests.

Inputs are the top-1 predicted labels of two populations of independently trained models on
the same N examples, e.g. M_d dense models and M_p models pruned to one sparsity:
predictions [M, N] ints in [0, num_classes) (a 1-D array is one model).

- Pruning-identified exemplars (Hooker, Courville, Clark, Dauphin & Frome, "What Do
  Compressed Deep Neural Networks Forget?", 2019): examples whose modal label over the pruned
  population differs from the modal label over the dense population. The true label is not
  used. Modal-label ties go to the highest class index, as in the reference code
  (pandas `mode().max()`).
- Per-class impact: a Welch t-test per class of member recall, normalised by accuracy,
  between the populations.
- Compression-identified exemplars (Hooker, Moorosi, Clark, Bengio & Denton, "Characterising
  Bias in Compressed Models", 2020): the same flag for any compression (pruning,
  quantisation), ranked by the taxicab (L1) distance between the populations' label
  distributions.

Label counts are formed a block of examples at a time, so memory stays bounded for N × C
as large as ImageNet's 50,000 × 1,000.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Label-count blocks hold at most this many (example, class) cells (32 MiB of int64).
_BLOCK_CELLS = 1 << 22

RecallNormalisation = Literal["member_ratio", "population_difference", "none"]


@dataclass(frozen=True)
class ClassRecallChange:
    """Per-class recall of two populations and the test of their difference ([C] arrays)."""

    dense_recall: np.ndarray  # mean over dense members of raw class recall
    pruned_recall: np.ndarray  # same for the pruned (compressed) population
    dense_normalised: np.ndarray  # mean over dense members of normalised recall
    pruned_normalised: np.ndarray
    difference: np.ndarray  # pruned_normalised − dense_normalised
    t_statistic: np.ndarray  # Welch t of the normalised recall, sign of dense − pruned
    p_value: np.ndarray  # two-sided Welch p-value; NaN rules in `class_recall_change`
    class_count: np.ndarray  # examples of each class


@dataclass(frozen=True)
class CieRanking:
    """Taxicab distance between two populations' label distributions, and its ranking."""

    distance: np.ndarray  # [N] in [0, 2]
    order: np.ndarray  # [N] example indices, largest distance first, ties by index


@dataclass(frozen=True)
class GroupImpact:
    """Flag fraction and accuracy change per value of a group (metadata) column."""

    groups: np.ndarray  # [G] distinct group values, sorted
    count: np.ndarray  # [G] examples per group
    flagged_fraction: np.ndarray  # [G] fraction of the group flagged (PIE / CIE)
    dense_accuracy: np.ndarray  # [G] mean over dense members of top-1 accuracy on the group
    other_accuracy: np.ndarray  # [G] same for the compressed population
    accuracy_change: np.ndarray  # [G] other − dense


def as_predictions(predictions: Any, num_classes: int, name: str = "predictions") -> np.ndarray:
    """Predicted labels as an int64 [M models, N examples] array, checked against num_classes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    a = np.asarray(predictions)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [models, examples], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no models; a population needs at least one member")
    if a.dtype.kind not in "iu":
        # Integral floats (e.g. labels read back from a float column) are accepted.
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integer class labels (top-1 argmax)")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}); check num_classes "
            f"(found {a.min()}…{a.max()})"
        )
    return a


def _as_labels(labels: Any, num_classes: int, n: int) -> np.ndarray:
    labels = as_predictions(labels, num_classes, "labels")
    if labels.shape[0] != 1 or labels.shape[1] != n:
        raise ValueError(f"labels must be 1-D with one label per example ({n}), got {labels.shape}")
    return labels[0]


def _check_pair(
    dense: Any, other: Any, num_classes: int, other_name: str
) -> tuple[np.ndarray, np.ndarray]:
    dense = as_predictions(dense, num_classes, "dense_predictions")
    other = as_predictions(other, num_classes, other_name)
    if dense.shape[1] != other.shape[1]:
        raise ValueError(
            f"both populations must predict the same examples: {dense.shape[1]} vs "
            f"{other.shape[1]} columns"
        )
    return dense, other


def _label_count_blocks(
    predictions: np.ndarray, num_classes: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """(examples, counts[block, C]) with counts[i, c] = members predicting c for example i."""
    n = predictions.shape[1]
    block = max(1, _BLOCK_CELLS // num_classes)
    for start in range(0, n, block):
        columns = slice(start, min(start + block, n))
        part = predictions[:, columns]
        width = part.shape[1]
        # Offset each example's labels into its own range of C bins: one bincount per block.
        flat = (part + num_classes * np.arange(width)).ravel()
        yield columns, np.bincount(flat, minlength=width * num_classes).reshape(width, -1)


def label_counts(predictions: Any, num_classes: int) -> np.ndarray:
    """[N, C] int: how many members of the population predict each class for each example."""
    predictions = as_predictions(predictions, num_classes)
    counts = np.empty((predictions.shape[1], num_classes), dtype=np.int64)
    for columns, block in _label_count_blocks(predictions, num_classes):
        counts[columns] = block
    return counts


def modal_labels(predictions: Any, num_classes: int) -> np.ndarray:
    """The most frequent label per example over a population, [N]; ties → highest class."""
    predictions = as_predictions(predictions, num_classes)
    modal = np.empty(predictions.shape[1], dtype=np.int64)
    for columns, counts in _label_count_blocks(predictions, num_classes):
        # argmax returns the first maximum, so search the reversed class axis.
        modal[columns] = num_classes - 1 - np.argmax(counts[:, ::-1], axis=1)
    return modal


def pruning_identified_exemplars(
    dense_predictions: Any, pruned_predictions: Any, num_classes: int
) -> np.ndarray:
    """PIEs (Hooker et al. 2019): bool [N], modal pruned label ≠ modal dense label."""
    dense, pruned = _check_pair(
        dense_predictions, pruned_predictions, num_classes, "pruned_predictions"
    )
    return modal_labels(dense, num_classes) != modal_labels(pruned, num_classes)


pies = pruning_identified_exemplars


def pie_fraction(is_pie: Any) -> float:
    """Fraction of examples that are PIEs; NaN for no examples."""
    is_pie = np.asarray(is_pie, dtype=bool).ravel()
    return float(is_pie.mean()) if is_pie.size else float("nan")


def _member_accuracy(predictions: np.ndarray, labels: np.ndarray, subset: np.ndarray) -> float:
    if not subset.any():
        return float("nan")
    return float(np.mean(predictions[:, subset] == labels[subset]))


def pie_accuracy(
    dense_predictions: Any,
    pruned_predictions: Any,
    labels: Any,
    num_classes: int,
    is_pie: Any = None,
) -> dict[str, dict[str, float]]:
    """Top-1 accuracy of both populations on PIEs, non-PIEs and all examples.

    Returns {"pie" | "non_pie" | "all": {"count", "dense", "pruned", "dense_modal",
    "pruned_modal"}}: "dense"/"pruned" are the mean over the population's members of each
    member's accuracy on the subset, "*_modal" the accuracy of the population's modal label.
    is_pie defaults to `pruning_identified_exemplars` of the two populations. An empty
    subset has count 0 and NaN accuracies.
    """
    dense, pruned = _check_pair(
        dense_predictions, pruned_predictions, num_classes, "pruned_predictions"
    )
    labels = _as_labels(labels, num_classes, dense.shape[1])
    dense_modal = modal_labels(dense, num_classes)
    pruned_modal = modal_labels(pruned, num_classes)
    if is_pie is None:
        is_pie = dense_modal != pruned_modal
    is_pie = np.asarray(is_pie, dtype=bool)
    if is_pie.shape != labels.shape:
        raise ValueError(f"is_pie must have one entry per example ({labels.size})")
    subsets = {"pie": is_pie, "non_pie": ~is_pie, "all": np.ones_like(is_pie)}
    return {
        name: {
            "count": int(np.count_nonzero(subset)),
            "dense": _member_accuracy(dense, labels, subset),
            "pruned": _member_accuracy(pruned, labels, subset),
            "dense_modal": _member_accuracy(dense_modal[None], labels, subset),
            "pruned_modal": _member_accuracy(pruned_modal[None], labels, subset),
        }
        for name, subset in subsets.items()
    }


def class_recall(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """[M, C] recall of each member on each class; NaN for a class with no examples."""
    predictions = as_predictions(predictions, num_classes)
    labels = _as_labels(labels, num_classes, predictions.shape[1])
    members = predictions.shape[0]
    hit = predictions == labels
    offsets = (num_classes * np.arange(members))[:, None] + labels
    hits = np.bincount(offsets[hit], minlength=members * num_classes).reshape(members, -1)
    class_count = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / class_count


def class_recall_change(
    dense_predictions: Any,
    pruned_predictions: Any,
    labels: Any,
    num_classes: int,
    *,
    normalisation: RecallNormalisation = "member_ratio",
) -> ClassRecallChange:
    """Per-class recall change between populations with a Welch t-test (Hooker et al. 2019).

    For each member m and class c the recall r_mc is normalised to account for the
    population's overall drop in accuracy:
    - "member_ratio" (default): r_mc / a_m, a_m the member's top-1 accuracy over all examples,
    - "population_difference": r_mc − ā, ā the population's mean accuracy (Hooker et al.'s
      released code, which subtracts the population mean),
    - "none": r_mc.
    `difference` = mean over pruned members − mean over dense members of the normalised recall;
    the t statistic and p-value are scipy.stats.ttest_ind(dense, pruned, equal_var=False) per
    class. NaN rules: p_value (and t) are NaN unless both populations have ≥ 2 members; a class
    without examples is NaN throughout; a member with accuracy 0 has NaN member_ratio
    normalised recall; when both populations' values are constant for a class the test gives
    NaN if they are equal and p = 0 if they differ (zero variance).
    """
    from scipy.stats import ttest_ind  # heavy import, only needed here

    if normalisation not in ("member_ratio", "population_difference", "none"):
        raise ValueError(
            "normalisation must be 'member_ratio', 'population_difference' or 'none', got "
            f"{normalisation!r}"
        )
    dense, pruned = _check_pair(
        dense_predictions, pruned_predictions, num_classes, "pruned_predictions"
    )
    labels = _as_labels(labels, num_classes, dense.shape[1])
    recalls = [class_recall(p, labels, num_classes) for p in (dense, pruned)]
    normalised = []
    for predictions, recall in zip((dense, pruned), recalls, strict=True):
        accuracy = np.mean(predictions == labels, axis=1)  # [M]
        if normalisation == "member_ratio":
            with np.errstate(invalid="ignore", divide="ignore"):
                value = recall / accuracy[:, None]
            value[~np.isfinite(value)] = np.nan
        elif normalisation == "population_difference":
            value = recall - accuracy.mean()
        else:
            value = recall
        normalised.append(value)
    dense_norm, pruned_norm = normalised
    t_statistic = np.full(num_classes, np.nan)
    p_value = np.full(num_classes, np.nan)
    if dense.shape[0] >= 2 and pruned.shape[0] >= 2:
        with warnings.catch_warnings():
            # Zero-variance classes warn about precision loss; their result is documented.
            warnings.simplefilter("ignore", RuntimeWarning)
            test = ttest_ind(dense_norm, pruned_norm, axis=0, equal_var=False)
        t_statistic, p_value = np.asarray(test.statistic, float), np.asarray(test.pvalue, float)
    dense_mean, pruned_mean = dense_norm.mean(axis=0), pruned_norm.mean(axis=0)
    return ClassRecallChange(
        dense_recall=recalls[0].mean(axis=0),
        pruned_recall=recalls[1].mean(axis=0),
        dense_normalised=dense_mean,
        pruned_normalised=pruned_mean,
        difference=pruned_mean - dense_mean,
        t_statistic=t_statistic,
        p_value=p_value,
        class_count=np.bincount(labels, minlength=num_classes),
    )


def cie_ranking(dense_predictions: Any, other_predictions: Any, num_classes: int) -> CieRanking:
    """Taxicab ranking of compression-identified exemplars (Hooker, Moorosi et al. 2020).

    distance_i = Σ_c |n_d(i, c)/M_d − n_o(i, c)/M_o|, with n(i, c) the members of a
    population predicting c for example i: 0 when both populations predict the same label
    mix, 2 when they never share a label. It is computed as an exact integer
    Σ|n_d·M_o − n_o·M_d| divided once by M_d·M_o, so equal distances tie exactly. `order`
    lists examples by decreasing distance, ties in increasing index (a stable sort).
    """
    dense, other = _check_pair(
        dense_predictions, other_predictions, num_classes, "other_predictions"
    )
    m_dense, m_other = dense.shape[0], other.shape[0]
    numerator = np.empty(dense.shape[1], dtype=np.int64)
    dense_blocks = _label_count_blocks(dense, num_classes)
    other_blocks = _label_count_blocks(other, num_classes)
    for (columns, dense_counts), (_, other_counts) in zip(dense_blocks, other_blocks, strict=True):
        numerator[columns] = np.abs(dense_counts * m_other - other_counts * m_dense).sum(axis=1)
    distance = numerator / (m_dense * m_other)
    return CieRanking(distance=distance, order=np.argsort(-numerator, kind="stable"))


def group_impact(
    groups: Any,
    dense_predictions: Any,
    other_predictions: Any,
    labels: Any,
    num_classes: int,
    flag: Any = None,
) -> GroupImpact:
    """Flagged fraction and accuracy change per value of a metadata column (e.g. a subgroup).

    groups [N] any sortable values; flag [N] bool defaults to the modal-label disagreement
    of the two populations (PIEs, or CIEs for any compression). Accuracies are means over
    each population's members on the group's examples.
    """
    dense, other = _check_pair(
        dense_predictions, other_predictions, num_classes, "other_predictions"
    )
    labels = _as_labels(labels, num_classes, dense.shape[1])
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have one value per example ({labels.size})")
    if flag is None:
        flag = modal_labels(dense, num_classes) != modal_labels(other, num_classes)
    flag = np.asarray(flag, dtype=bool)
    if flag.shape != labels.shape:
        raise ValueError(f"flag must have one entry per example ({labels.size})")
    values, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    count = np.bincount(codes, minlength=values.size)

    def per_group_mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=x, minlength=values.size) / count

    # Mean over members of a member's group accuracy = group mean of the fraction correct.
    dense_accuracy = per_group_mean(np.mean(dense == labels, axis=0))
    other_accuracy = per_group_mean(np.mean(other == labels, axis=0))
    return GroupImpact(
        groups=values,
        count=count,
        flagged_fraction=per_group_mean(flag.astype(np.float64)),
        dense_accuracy=dense_accuracy,
        other_accuracy=other_accuracy,
        accuracy_change=other_accuracy - dense_accuracy,
    )
