"""Representation geometry and class-level behaviour of classifiers: what pruning changes where.

Per example, from the last-layer features f (the input of the final linear layer,
logits = W f + b with W of shape K × d), after Li et al., "Understanding Robustness Lottery:
A Geometric Visual Comparative Analysis of Neural Network Pruning Approaches" (IEEE TVCG 2024):
the feature length ‖f‖ (`feature_norm`), the angle between f and its true class's weight
vector W_y (`class_angle`) and the signed distance to the nearest decision boundary of the
true class (`decision_margin`), negative when the example is misclassified.

Per checkpoint, from top-1 predictions: per-class accuracy and confusion matrices (class-level
shifts, Hooker et al., "What Do Compressed Deep Neural Networks Forget?", 2019, and the classes
pruning "cannibalises"), calibration (reliability bins and the expected calibration error of
Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), how often two checkpoints
disagree, per-group accuracy and its gap, and the examples every checkpoint gets wrong
(systemic failures, Toups, Bommasani et al., "Ecosystem-level Analysis of Deployed Machine
Learning Reveals Homogeneous Outcomes", NeurIPS 2023) or that only pruning breaks.

Conventions: arrays in, arrays out, float64 throughout. Predictions are C × N (C checkpoints,
N examples; a 1-D array is one checkpoint, C = 1, and results keep the C axis). Class indices
are integers in [0, K). Undefined values are NaN and documented where they occur: the angle
of a zero vector, the accuracy of a class or group without examples, an empty reliability bin.
Everything a caller can get wrong (shapes, non-integer or out-of-range labels, NaN/Inf inputs)
raises ValueError saying what and how to fix it.
"""

from __future__ import annotations

import operator

import numpy as np
import numpy.typing as npt

# A squared row distance ‖w_i − w_j‖² taken from the Gram matrix as ‖w_i‖² + ‖w_j‖² − 2w_i·w_j
# carries an absolute error of a few ε·(‖w_i‖² + ‖w_j‖²); below this fraction of that scale
# the pair is recomputed from the difference itself (near-duplicate class rows).
_GRAM_CANCELLATION_RTOL = 1e-4
# Near-duplicate pairs are recomputed this many float64 elements at a time (32 MiB).
_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Argument checks


def _as_matrix(a: npt.ArrayLike, name: str, columns: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows × columns), got shape {a.shape}")
    if columns is not None and a.shape[1] != columns:
        raise ValueError(
            f"{name} must have {columns} columns to match the other inputs, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; remove or fix those rows first")
    return a


def _as_weight(weight: npt.ArrayLike, features: np.ndarray) -> np.ndarray:
    weight = _as_matrix(weight, "weight (classes × features)", features.shape[1])
    if weight.shape[0] == 0:
        raise ValueError("weight has no class row; pass the final layer's K × d weight, K ≥ 1")
    return weight


def _as_indices(
    a: npt.ArrayLike, name: str, ndim: int, upper: int | None, lower: int = 0
) -> np.ndarray:
    """An integer array of `ndim` dimensions with values in [lower, upper) (upper None: no cap)."""
    a = np.asarray(a)
    if a.size == 0 and a.dtype.kind == "f":  # an empty list arrives as float64
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer indices, got dtype {a.dtype}; convert with "
            ".astype(np.int64) (take argmax first if these are scores)"
        )
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    a = a.astype(np.int64, copy=False)
    if a.size:
        low, high = int(a.min()), int(a.max())
        if low < lower or (upper is not None and high >= upper):
            allowed = f"[{lower}, {upper})" if upper is not None else f"≥ {lower}"
            raise ValueError(
                f"{name} must lie in {allowed}, found values from {low} to {high}; "
                "check the class count and the label encoding"
            )
    return a


def _as_labels(labels: npt.ArrayLike, n: int, num_classes: int | None) -> np.ndarray:
    labels = _as_indices(labels, "labels", 1, num_classes)
    if labels.shape[0] != n:
        raise ValueError(f"labels must have one entry per example: {n} expected, got {labels.size}")
    return labels


def _as_predictions(predictions: npt.ArrayLike, num_classes: int | None) -> np.ndarray:
    """Predictions as C × N; a 1-D array is a single checkpoint."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 1:
        predictions = predictions[None, :]
    predictions = _as_indices(predictions, "predictions (checkpoints × examples)", 2, num_classes)
    if predictions.shape[0] == 0:
        raise ValueError("predictions hold no checkpoint; pass at least one row")
    return predictions


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_count(value: int, name: str) -> int:
    count = _as_int(value)
    if count is None or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


def _check_checkpoint(index: int, count: int, name: str) -> int:
    checked = _as_int(index)
    if checked is None or not 0 <= checked < count:
        raise ValueError(f"{name} must be a checkpoint index in 0..{count - 1}, got {index!r}")
    return checked


# ---------------------------------------------------------------------------------------------
# Geometry of last-layer features


def feature_norm(features: npt.ArrayLike) -> np.ndarray:
    """Feature length ‖f‖₂ of every row of features (N × d) (Li et al. 2024)."""
    features = _as_matrix(features, "features")
    return np.linalg.norm(features, axis=1)


def _unit_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length (zero rows left zero) and a mask of the zero rows."""
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0
    return a / np.where(zero, 1.0, norms)[:, None], zero


def class_angle(
    features: npt.ArrayLike,
    weight: npt.ArrayLike,
    labels: npt.ArrayLike,
    degrees: bool = True,
) -> np.ndarray:
    """Angle θ between each feature f and its true class's weight vector W_y (Li et al. 2024).

    θ = arccos(f·W_y / (‖f‖ ‖W_y‖)), in [0, 180] degrees (radians with degrees=False),
    evaluated as θ = 2·atan2(‖u − v‖, ‖u + v‖) with u = f/‖f‖, v = W_y/‖W_y‖, which equals
    it and keeps full precision near 0 and 180 degrees, where arccos loses half the digits.
    Invariant to positive scaling of f and of W_y and to a rotation of both.

    NaN where f or W_y is the zero vector (e.g. a dead feature or a pruned-away class row):
    there is no direction to measure an angle from.
    """
    features = _as_matrix(features, "features")
    weight = _as_weight(weight, features)
    labels = _as_labels(labels, features.shape[0], weight.shape[0])
    u, zero_feature = _unit_rows(features)
    unit_weight, zero_weight = _unit_rows(weight)
    v = unit_weight[labels]
    theta = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1))
    theta[zero_feature | zero_weight[labels]] = np.nan
    return np.degrees(theta) if degrees else theta


def _row_distances(weight: np.ndarray) -> np.ndarray:
    """K × K matrix of ‖w_i − w_j‖, exactly 0 only for identical rows.

    From the Gram matrix (one K × K product), with near-duplicate pairs, where that form
    cancels, recomputed from their difference.
    """
    squared_norms = np.einsum("ij,ij->i", weight, weight)
    scale = squared_norms[:, None] + squared_norms[None, :]
    squared = scale - 2.0 * (weight @ weight.T)
    rows, cols = np.nonzero(np.triu(squared <= _GRAM_CANCELLATION_RTOL * scale, k=1))
    block = max(1, _BLOCK_ELEMENTS // max(weight.shape[1], 1))
    for start in range(0, rows.size, block):
        i, j = rows[start : start + block], cols[start : start + block]
        exact = np.einsum("ij,ij->i", weight[i] - weight[j], weight[i] - weight[j])
        squared[i, j] = squared[j, i] = exact
    np.fill_diagonal(squared, 0.0)
    return np.sqrt(np.maximum(squared, 0.0))


def decision_margin(
    features: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None,
    labels: npt.ArrayLike,
) -> np.ndarray:
    """Signed Euclidean distance from each feature f to its true class's nearest decision boundary.

    For logits z = W f + b and true class y (Li et al. 2024), the boundary between y and
    another class j is the hyperplane z_y = z_j, i.e. (w_y − w_j)·f + (b_y − b_j) = 0, and

        margin(f) = min_{j ≠ y} ((w_y − w_j)·f + (b_y − b_j)) / ‖w_y − w_j‖.

    Positive when f is on y's side of every boundary (correctly classified with no tie),
    negative when some other logit is larger (misclassified: the distance f must travel to
    become correct is then at least |margin|), 0 on a tie. For b = 0 it scales with f:
    margin(c·f) = c·margin(f) for c > 0. It is unchanged by adding one vector to every row of
    W and one constant to every entry of b (the softmax does not see such a shift).
    bias=None means a final layer without bias (b = 0).

    A class j whose weight row equals w_y has no boundary with y: z_y − z_j = b_y − b_j for
    every f. Such a j is the limit ‖w_y − w_j‖ → 0 of the formula and counts as +∞ when
    b_y > b_j (y always wins, no constraint), −∞ when b_y < b_j (y always loses, so the
    example can never be classified correctly) and 0 when b_y = b_j (a tie everywhere).
    So when every other class is of this kind the margin is +∞, −∞ or 0 by the sign of the
    smallest b_y − b_j; with a single class (K = 1) it is +∞.
    """
    features = _as_matrix(features, "features")
    weight = _as_weight(weight, features)
    num_classes = weight.shape[0]
    if bias is None:
        bias = np.zeros(num_classes)
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (num_classes,):
        raise ValueError(
            f"bias must have one entry per class (shape ({num_classes},)), got shape {bias.shape}"
        )
    if not np.all(np.isfinite(bias)):
        raise ValueError("bias contains NaN or Inf; fix the final layer's parameters first")
    labels = _as_labels(labels, features.shape[0], num_classes)

    distance = _row_distances(weight)  # ‖w_y − w_j‖, K × K
    no_boundary = distance == 0  # identical rows, the diagonal included
    safe_distance = np.where(no_boundary, 1.0, distance)
    # Where w_j = w_y the gap z_y − z_j is the constant b_y − b_j: ±∞, or 0 for a tie.
    bias_gap = bias[:, None] - bias[None, :]
    constant = np.where(bias_gap == 0, 0.0, np.copysign(np.inf, bias_gap))
    constant = np.where(no_boundary, constant, np.inf)
    np.fill_diagonal(constant, np.inf)  # y against itself is no constraint
    unbounded = constant.min(axis=1)  # per true class: +∞, 0 or −∞

    margin = np.empty(labels.size)
    block = max(1, _BLOCK_ELEMENTS // num_classes)  # N × K temporaries, bounded
    for start in range(0, labels.size, block):
        y = labels[start : start + block]
        logits = features[start : start + block] @ weight.T + bias
        gap = logits[np.arange(y.size), y][:, None] - logits  # z_y − z_j
        signed = gap / safe_distance[y]
        signed[no_boundary[y]] = np.inf
        margin[start : start + block] = np.minimum(signed.min(axis=1), unbounded[y])
    return margin


# ---------------------------------------------------------------------------------------------
# Confidence and class-level accuracy


def softmax_confidence(logits: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 softmax probability and predicted class of each row of logits (N × K).

    confidence = max_k softmax(z)_k = 1 / Σ_k exp(z_k − max z), which never overflows and lies
    in [1/K, 1]. predicted (int64) is the arg-max; ties go to the lowest class index.
    """
    logits = _as_matrix(logits, "logits (examples × classes)")
    if logits.shape[1] == 0:
        raise ValueError("logits have no class column; pass an N × K array with K ≥ 1")
    predicted = np.argmax(logits, axis=1)
    top = logits[np.arange(logits.shape[0]), predicted]
    confidence = 1.0 / np.exp(logits - top[:, None]).sum(axis=1)
    return confidence, predicted.astype(np.int64)


def _counts_per_checkpoint(
    keys: np.ndarray, weights: np.ndarray | None, num_keys: int
) -> np.ndarray:
    """C × num_keys sums of weights per key; keys and weights are C × N, keys in [0, num_keys)."""
    offset = keys + num_keys * np.arange(keys.shape[0])[:, None]
    flat_weights = None if weights is None else weights.ravel()
    counts = np.bincount(offset.ravel(), flat_weights, minlength=keys.shape[0] * num_keys)
    return counts.reshape(keys.shape[0], num_keys)


def per_class_accuracy(
    predictions: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int
) -> np.ndarray:
    """C × K accuracy of each checkpoint on the examples of each true class (per-class recall).

    acc[c, k] = |{i : y_i = k, ŷ_ci = k}| / |{i : y_i = k}| (Hooker et al. 2019 compare these
    between dense and pruned models). NaN for a class with no examples in labels.
    """
    num_classes = _check_count(num_classes, "num_classes")
    predictions = _as_predictions(predictions, num_classes)
    labels = _as_labels(labels, predictions.shape[1], num_classes)
    examples = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = (predictions == labels).astype(np.float64)
    hits = _counts_per_checkpoint(np.broadcast_to(labels, predictions.shape), correct, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(examples > 0, hits / examples, np.nan)


def confusion_matrices(
    predictions: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int
) -> np.ndarray:
    """C × K × K int64 confusion counts: [c, true class, predicted class]."""
    num_classes = _check_count(num_classes, "num_classes")
    predictions = _as_predictions(predictions, num_classes)
    labels = _as_labels(labels, predictions.shape[1], num_classes)
    cells = labels * num_classes + predictions  # broadcasts to C × N
    counts = _counts_per_checkpoint(cells, None, num_classes * num_classes)
    return counts.reshape(-1, num_classes, num_classes).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Calibration


def _as_confidence_and_correct(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int
) -> tuple[np.ndarray, np.ndarray, int]:
    bins = _check_count(bins, "bins")
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.ndim != 1:
        raise ValueError(f"confidence must be 1-D (one value per example), got {confidence.shape}")
    if confidence.size and not (np.all(confidence >= 0) and np.all(confidence <= 1)):
        raise ValueError(
            "confidence must lie in [0, 1] (and not be NaN); pass probabilities, "
            "e.g. from softmax_confidence, not logits"
        )
    correct = np.asarray(correct)
    if correct.shape != confidence.shape:
        raise ValueError(
            f"correct must have one entry per confidence value: {confidence.shape} vs "
            f"{correct.shape}"
        )
    if correct.dtype != np.bool_:
        if correct.size and not np.all((correct == 0) | (correct == 1)):
            raise ValueError("correct must be booleans (or 0/1), e.g. predicted == labels")
        correct = correct.astype(bool)
    return confidence, correct, bins


def reliability_bins(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram (Guo et al. 2017): per equal-width confidence bin, its mean
    confidence, its accuracy and its example count (int64).

    The edges are np.linspace(0, 1, bins + 1); bin b holds edge_b ≤ confidence < edge_{b+1},
    and the last bin also holds confidence 1.0. Mean confidence and accuracy are NaN for an
    empty bin.
    """
    confidence, correct, bins = _as_confidence_and_correct(confidence, correct, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, correct.astype(np.float64), minlength=bins) / count
    return mean_confidence, accuracy, count.astype(np.int64)


def expected_calibration_error(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = 15
) -> float:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over the bins of `reliability_bins`.

    Guo et al. 2017, eq. 3; 0 for a perfectly calibrated model, at most 1. Empty bins add
    nothing. Raises ValueError for N = 0, where the average is undefined.
    """
    mean_confidence, accuracy, count = reliability_bins(confidence, correct, bins)
    total = int(count.sum())
    if total == 0:
        raise ValueError("the expected calibration error needs at least one example")
    filled = count > 0
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    return float(np.sum(count[filled] * gaps) / total)


# ---------------------------------------------------------------------------------------------
# Agreement between checkpoints and the examples they fail on


def disagreement_matrix(predictions: npt.ArrayLike) -> np.ndarray:
    """C × C fraction of examples on which two checkpoints' top-1 predictions differ.

    Symmetric with a zero diagonal; it ignores the labels (two wrong but different predictions
    disagree). Raises ValueError when there are no examples.
    """
    predictions = _as_predictions(predictions, None)
    if predictions.shape[1] == 0:
        raise ValueError("disagreement needs at least one example")
    out = np.empty((predictions.shape[0],) * 2)
    # one checkpoint against all at a time: C × N memory instead of C × C × N
    for a, row in enumerate(predictions):
        out[a] = np.mean(predictions != row, axis=1)
    return out


def systemic_failures(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> np.ndarray:
    """Boolean mask of the examples every checkpoint misclassifies (Toups, Bommasani et al.
    2023: failures shared by the whole population of models, not caused by any one of them)."""
    predictions = _as_predictions(predictions, None)
    labels = _as_labels(labels, predictions.shape[1], None)
    return np.all(predictions != labels, axis=0)


def pruning_only_failures(
    predictions: npt.ArrayLike, labels: npt.ArrayLike, reference: int
) -> np.ndarray:
    """Boolean mask of the examples the reference (dense) checkpoint gets right and at least
    one other checkpoint gets wrong — errors that pruning introduced."""
    predictions = _as_predictions(predictions, None)
    labels = _as_labels(labels, predictions.shape[1], None)
    reference = _check_checkpoint(reference, predictions.shape[0], "reference")
    wrong = predictions != labels
    others_wrong = np.delete(wrong, reference, axis=0).any(axis=0)
    return ~wrong[reference] & others_wrong


def per_group_accuracy(
    predictions: npt.ArrayLike,
    labels: npt.ArrayLike,
    groups: npt.ArrayLike,
    num_groups: int,
) -> np.ndarray:
    """C × G accuracy of each checkpoint within each group of examples.

    groups[i] in [0, G) names example i's group; −1 leaves it out of every group. NaN for a
    group with no examples.
    """
    num_groups = _check_count(num_groups, "num_groups")
    predictions = _as_predictions(predictions, None)
    labels = _as_labels(labels, predictions.shape[1], None)
    groups = _as_indices(groups, "groups", 1, num_groups, lower=-1)
    if groups.shape[0] != predictions.shape[1]:
        raise ValueError(
            f"groups must have one entry per example: {predictions.shape[1]} expected, "
            f"got {groups.size} (use -1 for an example in no group)"
        )
    member = groups >= 0
    grouped = groups[member]
    examples = np.bincount(grouped, minlength=num_groups).astype(np.float64)
    correct = (predictions[:, member] == labels[member]).astype(np.float64)
    hits = _counts_per_checkpoint(np.broadcast_to(grouped, correct.shape), correct, num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(examples > 0, hits / examples, np.nan)


def group_accuracy_gap(per_group: npt.ArrayLike) -> np.ndarray:
    """Per checkpoint, best minus worst group accuracy over the groups that have examples.

    per_group is C × G as from `per_group_accuracy` (NaN = group without examples, skipped).
    NaN for a checkpoint with no such group; 0 with a single one.
    """
    per_group = np.asarray(per_group, dtype=np.float64)
    if per_group.ndim != 2:
        raise ValueError(f"per_group must be C × G (checkpoints × groups), got {per_group.shape}")
    if np.any(np.isinf(per_group)):
        raise ValueError("per_group contains Inf; pass accuracies in [0, 1] (NaN = no examples)")
    present = ~np.isnan(per_group)
    best = np.max(np.where(present, per_group, -np.inf), axis=1, initial=-np.inf)
    worst = np.min(np.where(present, per_group, np.inf), axis=1, initial=np.inf)
    return np.where(present.any(axis=1), best - worst, np.nan)


def cannibalized_classes(per_class: npt.ArrayLike, reference: int, checkpoint: int) -> np.ndarray:
    """Classes ordered by accuracy drop from `reference` to `checkpoint`, largest drop first.

    drop_k = per_class[reference, k] − per_class[checkpoint, k], per_class being C × K as from
    `per_class_accuracy`: the classes pruning sacrifices most come first (Hooker et al. 2019),
    those it helps last. Classes whose drop is NaN (no examples) come after all others; equal
    drops keep ascending class order. Returns int64 class indices, a permutation of 0..K−1.
    """
    per_class = np.asarray(per_class, dtype=np.float64)
    if per_class.ndim != 2:
        raise ValueError(f"per_class must be C × K (checkpoints × classes), got {per_class.shape}")
    reference = _check_checkpoint(reference, per_class.shape[0], "reference")
    checkpoint = _check_checkpoint(checkpoint, per_class.shape[0], "checkpoint")
    drop = per_class[reference] - per_class[checkpoint]
    # ascending sort of −drop puts NaN last; the stable sort keeps class order among ties
    return np.argsort(-drop, kind="stable").astype(np.int64)
