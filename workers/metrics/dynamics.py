"""Per-example training dynamics: MAP-D probe classification, forgetting, cartography.

Every input is an array with one row per training example and one column per epoch
(N examples × E epochs), recorded by a no-grad evaluation pass after each epoch:
- `losses`: per-example cross-entropy,
- `correct`: whether the example's top-1 prediction was its (given) label,
- `p_gold`: the softmax probability of the given label.

MAP-D (Siddiqui, Rajkumar, Maharaj, Krueger & Hooker, "Metadata Archaeology: Unearthing Data
Subsets by Leveraging Training Dynamics", ICLR 2023): probe suites of examples with a known
property (typical, atypical, random outputs, corrupted, …) are kept in the training set; a
k-nearest-neighbour classifier (k = 20, uniform weights, Euclidean distance on the raw loss
vectors) fitted on the probes' loss trajectories assigns every example a probability for each
suite. `split_probe_suites` halves each suite into kNN references and held-out probes, and
`probe_validation` measures how well the held-out ones are recovered.

Baselines reported beside MAP-D: the mean loss over epochs (`mean_loss_score`), forgetting
events (Toneva et al., ICLR 2019) and the dataset-cartography statistics of Swayamdipta et al.
(EMNLP 2020). `auroc` and `enrichment` compare a score or a flag with a planted ground truth.
NaN or Inf in an input raise ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAPD_NEIGHBOURS = 20  # Siddiqui et al.'s k
LEARNED_NEVER = -1  # `learned_epoch` of an example that is wrong at the last epoch


@dataclass(frozen=True)
class MapDResult:
    """Suite probabilities of every example, columns in the order of `categories`."""

    categories: tuple[Any, ...]
    probabilities: np.ndarray  # [N, K] float, rows sum to 1
    top_category: np.ndarray  # [N] int index into `categories`
    top_probability: np.ndarray  # [N] float, probabilities[i, top_category[i]]
    neighbours: int  # the k actually used (clipped to the number of reference probes)

    def top_category_names(self) -> np.ndarray:
        """`top_category` as the category values themselves (object array)."""
        names = np.empty(len(self.categories), dtype=object)
        names[:] = list(self.categories)
        return names[self.top_category]


@dataclass(frozen=True)
class ProbeSplit:
    """Probe examples divided into kNN references and held-out probes, input order kept."""

    reference_index: np.ndarray
    reference_category: np.ndarray
    held_out_index: np.ndarray
    held_out_category: np.ndarray


@dataclass(frozen=True)
class ProbeValidation:
    """How well MAP-D recovers the suite of held-out probes."""

    categories: tuple[Any, ...]
    accuracy: float  # fraction of held-out probes whose top category is their suite
    confusion: np.ndarray  # [K, K] int: rows true suite, columns predicted, category order
    neighbours: int


@dataclass(frozen=True)
class SuiteCurves:
    """Per-suite loss statistics at each epoch (rows in the order of `categories`)."""

    categories: tuple[Any, ...]
    count: np.ndarray  # [K] examples per suite
    mean: np.ndarray  # [K, E]
    std: np.ndarray  # [K, E] population std (ddof = 0) across the suite's examples
    q25: np.ndarray  # [K, E] 25th percentile (linear interpolation)
    q75: np.ndarray  # [K, E] 75th percentile


def _per_epoch_matrix(a: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (examples × epochs), got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no epochs; record at least one evaluation pass")
    if dtype is bool:
        if a.dtype != bool:
            if not np.all((a == 0) | (a == 1)):
                raise ValueError(f"{name} must be boolean (or 0/1): whether each example was right")
            a = a.astype(bool)
        return a
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; drop or repair those examples first")
    return a


def _category_codes(values: Any, categories: Sequence[Any], name: str) -> np.ndarray:
    """Index of each value in `categories`, −1 where it is none of them."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    codes = np.full(values.shape[0], -1, dtype=np.int64)
    # One vectorised comparison per category (K is small), never a loop per example.
    for i, category in enumerate(categories):
        codes[np.asarray(values == category, dtype=bool)] = i
    return codes


def _check_categories(categories: Sequence[Any]) -> tuple[Any, ...]:
    categories = tuple(categories)
    if not categories:
        raise ValueError("categories is empty; name the probe suites, e.g. ('typical', ...)")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct, got {categories!r}")
    return categories


def _check_probes(
    probe_index: Any, probe_category: Any, categories: tuple[Any, ...], n: int
) -> tuple[np.ndarray, np.ndarray]:
    index = np.asarray(probe_index)
    if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
        raise ValueError("probe_index must be a 1-D array of integer row indices into losses")
    index = index.astype(np.int64)
    if index.size == 0:
        raise ValueError(
            "MAP-D needs reference probes and none were given; plant probe suites "
            "(e.g. typical, atypical, random_outputs, corrupted) in training first"
        )
    if index.min() < 0 or index.max() >= n:
        raise ValueError(f"probe_index must lie in [0, {n}) (rows of losses)")
    if np.unique(index).size != index.size:
        raise ValueError("probe_index repeats an example; each probe may be listed once")
    codes = _category_codes(probe_category, categories, "probe_category")
    if codes.size != index.size:
        raise ValueError(
            f"probe_index and probe_category differ in length ({index.size} vs {codes.size})"
        )
    if np.any(codes < 0):
        unknown = sorted({str(v) for v in np.asarray(probe_category)[codes < 0]})
        raise ValueError(f"probe_category has values not in categories: {unknown}")
    return index, codes


def _knn_probabilities(
    reference: np.ndarray,
    reference_codes: np.ndarray,
    query: np.ndarray,
    n_categories: int,
    k: int,
) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier  # heavy import, only needed here

    classifier = KNeighborsClassifier(n_neighbors=k, weights="uniform", metric="euclidean")
    classifier.fit(reference, reference_codes)
    probabilities = np.zeros((query.shape[0], n_categories))
    # predict_proba has a column only for suites with references; the others stay 0.
    probabilities[:, classifier.classes_] = classifier.predict_proba(query)
    return probabilities


def map_d(
    losses: Any,
    probe_index: Any,
    probe_category: Any,
    categories: Sequence[Any],
    k: int = MAPD_NEIGHBOURS,
) -> MapDResult:
    """MAP-D (Siddiqui et al. 2023): kNN suite probabilities of every example's loss curve.

    losses [N, E]; probe_index [P] rows of `losses` that are reference probes, with their
    suite in probe_category [P] (values from `categories`). A k-NN classifier (uniform weights,
    Euclidean distance on the raw loss vectors) is fitted on the P reference trajectories and
    every one of the N examples is classified: probabilities[i, c] = (number of i's k nearest
    references in suite c) / k, columns in the order of `categories` (a suite with no
    reference has a column of zeros). top_category is the argmax, the first category in
    `categories` order on a tie, and top_probability its probability.

    Probe examples are in the training set, so they are classified too, and each one's own
    trajectory is among the references at distance 0: its row is biased towards its own
    suite. Judge accuracy on held-out probes (`split_probe_suites`, `probe_validation`).
    k is clipped to P when fewer references exist (`neighbours` says the k used); no
    references at all raise ValueError.
    """
    losses = _per_epoch_matrix(losses, "losses")
    categories = _check_categories(categories)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index, codes = _check_probes(probe_index, probe_category, categories, losses.shape[0])
    neighbours = min(int(k), index.size)
    probabilities = _knn_probabilities(losses[index], codes, losses, len(categories), neighbours)
    top = np.argmax(probabilities, axis=1)
    return MapDResult(
        categories=categories,
        probabilities=probabilities,
        top_category=top,
        top_probability=probabilities[np.arange(top.size), top],
        neighbours=neighbours,
    )


def split_probe_suites(
    probe_index: Any, probe_category: Any, *, reference_fraction: float = 0.5, seed: int = 0
) -> ProbeSplit:
    """Split every suite into kNN references and held-out probes, at random but reproducibly.

    Each suite of n probes gives ceil(reference_fraction · n) random members to the
    references (so every suite keeps at least one) and the rest to the held-out set; MAP-D
    uses 250 + 250 of 500. Deterministic in (probe_index, probe_category, reference_fraction,
    seed); both halves keep the input order.
    """
    if not 0 < reference_fraction < 1:
        raise ValueError(f"reference_fraction must be in (0, 1), got {reference_fraction!r}")
    index = np.asarray(probe_index)
    category = np.asarray(probe_category)
    if index.ndim != 1 or category.shape != index.shape:
        raise ValueError(
            "probe_index and probe_category must be 1-D and of the same length, got shapes "
            f"{index.shape} and {category.shape}"
        )
    suites, codes = np.unique(category, return_inverse=True)
    codes = codes.reshape(-1)
    # A random order within each suite: shuffle everything, then stable-sort by suite.
    order = np.random.default_rng(seed).permutation(index.size)
    order = order[np.argsort(codes[order], kind="stable")]
    sizes = np.bincount(codes, minlength=suites.size)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(index.size, dtype=np.int64)
    rank[order] = np.arange(index.size) - starts[codes[order]]
    is_reference = rank < np.ceil(reference_fraction * sizes)[codes]
    return ProbeSplit(
        reference_index=index[is_reference],
        reference_category=category[is_reference],
        held_out_index=index[~is_reference],
        held_out_category=category[~is_reference],
    )


def probe_validation(
    losses: Any, split: ProbeSplit, categories: Sequence[Any], k: int = MAPD_NEIGHBOURS
) -> ProbeValidation:
    """Held-out accuracy and confusion matrix of MAP-D's kNN fitted on the reference probes.

    Rows of `confusion` are the true suite, columns the predicted (top) suite, both in the
    order of `categories`. No held-out probe raises ValueError.
    """
    losses = _per_epoch_matrix(losses, "losses")
    categories = _check_categories(categories)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index, codes = _check_probes(
        split.reference_index, split.reference_category, categories, losses.shape[0]
    )
    held_index = np.asarray(split.held_out_index, dtype=np.int64)
    held_codes = _category_codes(split.held_out_category, categories, "held_out_category")
    if held_index.size == 0:
        raise ValueError("no held-out probes to validate on; split the suites first")
    if held_codes.size != held_index.size:
        raise ValueError("held_out_index and held_out_category differ in length")
    if held_index.min() < 0 or held_index.max() >= losses.shape[0]:
        raise ValueError(f"held_out_index must lie in [0, {losses.shape[0]}) (rows of losses)")
    if np.any(held_codes < 0):
        raise ValueError("held_out_category has values not in categories")
    neighbours = min(int(k), index.size)
    probabilities = _knn_probabilities(
        losses[index], codes, losses[held_index], len(categories), neighbours
    )
    predicted = np.argmax(probabilities, axis=1)
    n_categories = len(categories)
    confusion = np.bincount(
        held_codes * n_categories + predicted, minlength=n_categories**2
    ).reshape(n_categories, n_categories)
    return ProbeValidation(
        categories=categories,
        accuracy=float(np.mean(predicted == held_codes)),
        confusion=confusion,
        neighbours=neighbours,
    )


def forgetting_events(correct: Any) -> np.ndarray:
    """Forgetting events (Toneva et al. 2019): correct → incorrect transitions per example.

    correct [N, E] bool → int [N], the number of epochs e ≥ 1 with correct[e−1] and not
    correct[e]. An example never learned has 0 events here (Toneva rank such examples as the
    most forgettable); tell them apart with `learned_epoch` or the correctness.
    """
    correct = _per_epoch_matrix(correct, "correct", bool)
    return np.count_nonzero(correct[:, :-1] & ~correct[:, 1:], axis=1)


def learned_epoch(correct: Any) -> np.ndarray:
    """First epoch (0-based) from which the example stays correct to the last epoch.

    correct [N, E] bool → int [N]; LEARNED_NEVER (−1) when the example is wrong at the last
    epoch, as in the MAP-D reference code.
    """
    correct = _per_epoch_matrix(correct, "correct", bool)
    epochs = correct.shape[1]
    wrong = ~correct
    last_wrong = epochs - 1 - np.argmax(wrong[:, ::-1], axis=1)
    learned = np.where(wrong.any(axis=1), last_wrong + 1, 0)
    learned[learned == epochs] = LEARNED_NEVER
    return learned


def cartography(p_gold: Any, correct: Any, *, ddof: int = 0) -> dict[str, np.ndarray]:
    """Dataset-cartography statistics (Swayamdipta et al. 2020) per example.

    p_gold [N, E] in [0, 1] and correct [N, E] → {"confidence": mean over epochs of p_gold,
    "variability": std over epochs of p_gold, "correctness": fraction of epochs correct},
    each [N]. The std is the population one (ddof = 0), as in the authors' code.
    """
    p_gold = _per_epoch_matrix(p_gold, "p_gold")
    correct = _per_epoch_matrix(correct, "correct", bool)
    if p_gold.shape != correct.shape:
        raise ValueError(
            f"p_gold and correct must have the same shape, got {p_gold.shape} and {correct.shape}"
        )
    if np.any((p_gold < 0) | (p_gold > 1)):
        raise ValueError("p_gold must be probabilities in [0, 1] (softmax of the given label)")
    return {
        "confidence": p_gold.mean(axis=1),
        "variability": p_gold.std(axis=1, ddof=ddof),
        "correctness": correct.mean(axis=1),
    }


def mean_loss_score(losses: Any) -> np.ndarray:
    """Baseline score beside MAP-D: each example's mean loss over epochs, [N]."""
    return _per_epoch_matrix(losses, "losses").mean(axis=1)


def suite_curves(losses: Any, suite_of_example: Any, categories: Sequence[Any]) -> SuiteCurves:
    """Mean, std and 25/75 % quantiles of the loss at each epoch over each suite's examples.

    suite_of_example [N] gives every example's suite; examples whose value is not in
    `categories` (e.g. ordinary training examples) are left out. A suite with no example has
    count 0 and NaN curves.
    """
    losses = _per_epoch_matrix(losses, "losses")
    categories = _check_categories(categories)
    codes = _category_codes(suite_of_example, categories, "suite_of_example")
    if codes.size != losses.shape[0]:
        raise ValueError(
            f"suite_of_example has {codes.size} entries for {losses.shape[0]} examples"
        )
    shape = (len(categories), losses.shape[1])
    mean, std, q25, q75 = (np.full(shape, np.nan) for _ in range(4))
    count = np.bincount(codes[codes >= 0], minlength=len(categories))
    for i in np.flatnonzero(count):
        rows = losses[codes == i]
        mean[i], std[i] = rows.mean(axis=0), rows.std(axis=0)
        q25[i], q75[i] = np.percentile(rows, [25, 75], axis=0)
    return SuiteCurves(categories=categories, count=count, mean=mean, std=std, q25=q25, q75=q75)


def auroc(scores: Any, is_positive: Any) -> float:
    """Area under the ROC curve of `scores` for the positives (scikit-learn's roc_auc_score).

    NaN when all examples are positive or all negative (the area is undefined).
    """
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(is_positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(
            f"scores and is_positive differ in length ({scores.size}, {positive.size})"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or Inf")
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def enrichment(flag: Any, positive: Any) -> float:
    """P(positive | flagged) / P(positive): how much a flag concentrates the positives.

    1 means the flag is no better than chance. NaN when nothing is flagged or nothing is
    positive (both probabilities of the ratio undefined or zero).
    """
    flag = np.asarray(flag, dtype=bool).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if flag.shape != positive.shape:
        raise ValueError(f"flag and positive differ in length ({flag.size}, {positive.size})")
    n_flagged, n_positive = np.count_nonzero(flag), np.count_nonzero(positive)
    if n_flagged == 0 or n_positive == 0:
        return float("nan")
    return float(np.count_nonzero(flag & positive) / n_flagged / (n_positive / positive.size))
