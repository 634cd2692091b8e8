"""Representation geometry and class-level metrics against loops, sklearn and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix

from prunescope.workers.metrics import geometry
from prunescope.workers.metrics.geometry import (
    cannibalized_classes,
    class_angle,
    confusion_matrices,
    decision_margin,
    disagreement_matrix,
    expected_calibration_error,
    feature_norm,
    group_accuracy_gap,
    per_class_accuracy,
    per_group_accuracy,
    pruning_only_failures,
    reliability_bins,
    softmax_confidence,
    systemic_failures,
)


def _classifier(n: int = 60, k: int = 5, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)),
        rng.normal(size=(k, d)),
        rng.normal(size=k),
        rng.integers(0, k, size=n),
    )


def _rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


# --- feature norm and angle ------------------------------------------------------------------


def test_feature_norm_hand_case_and_loop():
    assert feature_norm([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]).tolist() == [5.0, 0.0, 1.0]
    features = _classifier()[0]
    expected = [math.sqrt(sum(v * v for v in row)) for row in features]
    np.testing.assert_allclose(feature_norm(features), expected, rtol=1e-14)


def test_class_angle_hand_cases_in_two_dimensions():
    weight = np.array([[1.0, 1.0], [2.0, 0.0]])
    features = np.array([[1.0, 0.0], [1.0, 0.0], [-5.0, 0.0], [0.0, -1.0], [3.0, 3.0]])
    labels = np.array([0, 1, 1, 0, 0])
    np.testing.assert_allclose(
        class_angle(features, weight, labels), [45.0, 0.0, 180.0, 135.0, 0.0], atol=1e-12
    )
    np.testing.assert_allclose(
        class_angle(features, weight, labels, degrees=False),
        np.radians([45.0, 0.0, 180.0, 135.0, 0.0]),
        atol=1e-14,
    )


def test_class_angle_matches_the_arccos_formula_in_a_loop():
    features, weight, _, labels = _classifier(d=6, seed=1)
    expected = []
    for f, y in zip(features, labels, strict=True):
        w = weight[y]
        cosine = float(f @ w) / (math.sqrt(float(f @ f)) * math.sqrt(float(w @ w)))
        expected.append(math.degrees(math.acos(max(-1.0, min(1.0, cosine)))))
    np.testing.assert_allclose(class_angle(features, weight, labels), expected, atol=1e-9)


def test_class_angle_in_two_dimensions_is_the_difference_of_polar_angles():
    features, weight, _, labels = _classifier(d=2, seed=2)
    polar_f = np.arctan2(features[:, 1], features[:, 0])
    polar_w = np.arctan2(weight[labels, 1], weight[labels, 0])
    difference = np.abs(np.degrees(polar_f - polar_w)) % 360.0
    expected = np.minimum(difference, 360.0 - difference)
    np.testing.assert_allclose(class_angle(features, weight, labels), expected, atol=1e-10)


def test_class_angle_invariances():
    features, weight, _, labels = _classifier(d=5, seed=3)
    angle = class_angle(features, weight, labels)
    scales = np.random.default_rng(4).uniform(0.01, 100.0, size=(features.shape[0], 1))
    np.testing.assert_allclose(class_angle(features * scales, weight, labels), angle, atol=1e-10)
    np.testing.assert_allclose(class_angle(features, weight * 7.5, labels), angle, atol=1e-10)
    q = _rotation(5, 5)
    np.testing.assert_allclose(class_angle(features @ q.T, weight @ q.T, labels), angle, atol=1e-9)
    # negating f gives the supplementary angle
    np.testing.assert_allclose(class_angle(-features, weight, labels), 180.0 - angle, atol=1e-10)


def test_class_angle_is_accurate_for_nearly_parallel_vectors():
    # arccos of a rounded cosine would give ~1e-6 degrees here, not ~1e-14.
    weight = np.random.default_rng(6).normal(size=(3, 50))
    features = np.vstack([3.0 * weight[1], -0.5 * weight[2]])
    angle = class_angle(features, weight, [1, 2])
    assert angle[0] < 1e-10 and angle[1] > 180.0 - 1e-10


def test_class_angle_resolves_tiny_angles():
    # cos(1e-10) rounds to 1.0, so an arccos of the cosine would report exactly 0 and 180.
    weight = np.array([[2.0, 0.0], [0.0, 1.0]])
    features = np.array([[1.0, 1e-10], [-1.0, 1e-10], [1e-12, 1.0]])
    expected = np.degrees([1e-10, math.pi - 1e-10, 1e-12])  # atan(t) = t to 1e-20 here
    np.testing.assert_allclose(class_angle(features, weight, [0, 0, 1]), expected, rtol=1e-9)
    assert class_angle(features[:1], weight, [0])[0] > 0


def test_class_angle_of_a_zero_vector_is_nan():
    weight = np.array([[1.0, 0.0], [0.0, 0.0]])
    features = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    angle = class_angle(features, weight, [0, 1, 0])
    assert np.isnan(angle[0]) and np.isnan(angle[1])
    assert angle[2] == pytest.approx(90.0)


# --- decision margin -------------------------------------------------------------------------


def _margin_loop(features, weight, bias, labels) -> list[float]:
    """The definition, one example and one rival class at a time."""
    margins = []
    for f, y in zip(features, labels, strict=True):
        best = math.inf
        for j in range(weight.shape[0]):
            if j == y:
                continue
            difference = weight[y] - weight[j]
            gap = float(difference @ f) + float(bias[y] - bias[j])
            length = math.sqrt(float(difference @ difference))
            if length == 0.0:  # no boundary: the constant gap decides
                gap = float(bias[y] - bias[j])
                value = math.inf if gap > 0 else -math.inf if gap < 0 else 0.0
            else:
                value = gap / length
            best = min(best, value)
        margins.append(best)
    return margins


def test_decision_margin_hand_case_in_two_dimensions():
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = np.array([[2.0, 1.0], [2.0, 1.0]])
    # y = 0: boundary with class 1 is the line x = y, at distance |2 − 1|/√2; with class 2
    # the line x = 0, at distance 2. y = 1: the same line, on the wrong side.
    np.testing.assert_allclose(
        decision_margin(f, weight, None, [0, 1]), [1 / math.sqrt(2), -1 / math.sqrt(2)], rtol=1e-15
    )
    # A bias of 1 on class 1 moves its boundary with class 0 to x − y = 1, through f: a tie.
    tie = decision_margin(f[:1], weight, [0.0, 1.0, 0.0], [0])
    assert tie[0] == 0.0


def test_decision_margin_matches_a_brute_force_loop():
    features, weight, bias, labels = _classifier(n=80, k=6, d=3, seed=7)
    weight[4] = weight[1]  # classes 1 and 4 share a row: no boundary between them
    bias[4] = bias[1] - 0.5
    expected = _margin_loop(features, weight, bias, labels)
    margin = decision_margin(features, weight, bias, labels)
    np.testing.assert_allclose(margin, expected, rtol=1e-12)
    # class 1 outscores class 4 by 0.5 everywhere: every class-4 example is lost for good,
    # while class 1 examples keep finite margins set by their other rivals
    assert np.all(margin[labels == 4] == -np.inf) and np.any(labels == 4)
    assert np.all(np.isfinite(margin[labels != 4]))


def test_decision_margin_sign_is_correctness():
    features, weight, bias, labels = _classifier(n=200, k=7, d=5, seed=8)
    margin = decision_margin(features, weight, bias, labels)
    predicted = np.argmax(features @ weight.T + bias, axis=1)
    np.testing.assert_array_equal(margin > 0, predicted == labels)


def test_decision_margin_scaling_and_invariances():
    features, weight, bias, labels = _classifier(n=50, k=4, d=3, seed=9)
    unbiased = decision_margin(features, weight, None, labels)
    np.testing.assert_allclose(unbiased, decision_margin(features, weight, np.zeros(4), labels))
    for c in (0.25, 3.0):
        np.testing.assert_allclose(
            decision_margin(c * features, weight, None, labels), c * unbiased, rtol=1e-12
        )
    margin = decision_margin(features, weight, bias, labels)
    shifted = decision_margin(features, weight + [1.0, -2.0, 0.5], bias + 3.0, labels)
    np.testing.assert_allclose(shifted, margin, rtol=1e-10, atol=1e-12)
    q = _rotation(3, 10)
    rotated = decision_margin(features @ q.T, weight @ q.T, bias, labels)
    np.testing.assert_allclose(rotated, margin, rtol=1e-10, atol=1e-12)
    # scaling every logit by s > 0 (W and b together) keeps the boundaries
    np.testing.assert_allclose(decision_margin(features, 4 * weight, 4 * bias, labels), margin)


def test_decision_margin_moves_f_exactly_onto_the_nearest_boundary():
    features, weight, bias, labels = _classifier(n=30, k=5, d=4, seed=11)
    margin = decision_margin(features, weight, bias, labels)
    logits = features @ weight.T + bias
    for f, y, m in zip(features, labels, margin, strict=True):
        # walk |m| along the normal of each boundary; the nearest one is reached exactly
        reached = []
        for j in range(weight.shape[0]):
            if j != y:
                normal = (weight[y] - weight[j]) / np.linalg.norm(weight[y] - weight[j])
                z = (f - m * normal) @ weight.T + bias
                reached.append(abs(z[y] - z[j]))
        assert min(reached) < 1e-10 * (1 + np.abs(logits).max())


def test_decision_margin_without_any_boundary():
    weight = np.ones((3, 2))
    f = np.array([[1.0, -4.0]] * 3)
    # every rival shares y's row: the sign of the smallest bias gap decides
    np.testing.assert_array_equal(
        decision_margin(f, weight, [1.0, 0.0, -1.0], [0, 1, 2]), [np.inf, -np.inf, -np.inf]
    )
    np.testing.assert_array_equal(decision_margin(f, weight, [2.0, 2.0, 2.0], [0, 1, 2]), 0.0)
    # a rival that always wins makes the example misclassified whatever the other boundaries
    weight = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    margin = decision_margin([[5.0, 0.0]], weight, [0.0, 0.1, 0.0], [0])
    assert margin[0] == -np.inf
    assert decision_margin([[5.0, 0.0]], weight[:1], None, [0])[0] == np.inf  # K = 1


def test_decision_margin_near_duplicate_rows_keep_their_distance():
    # ‖w_0 − w_1‖ = 1e-7 · √2 next to ‖w‖ ≈ 10: the Gram form ‖w_0‖² + ‖w_1‖² − 2w_0·w_1 loses
    # every digit here; the margin must still follow the definition.
    rng = np.random.default_rng(12)
    weight = rng.normal(size=(3, 40)) * 1.5
    weight[1] = weight[0] + 1e-7 * np.r_[1.0, -1.0, np.zeros(38)]
    features = rng.normal(size=(5, 40))
    features[:, 0] += 3.0
    labels = np.array([0, 1, 0, 1, 2])
    bias = np.zeros(3)
    expected = _margin_loop(features, weight, bias, labels)
    np.testing.assert_allclose(decision_margin(features, weight, bias, labels), expected, rtol=1e-6)


def test_decision_margin_in_small_blocks_equals_the_loop(monkeypatch):
    features, weight, bias, labels = _classifier(n=23, k=5, d=3, seed=26)
    weight[3] = weight[0] * (1 + 1e-12)  # a near-duplicate pair to recompute exactly
    monkeypatch.setattr(geometry, "_BLOCK_ELEMENTS", 7)  # 1-example blocks, 2-pair blocks
    expected = _margin_loop(features, weight, bias, labels)
    np.testing.assert_allclose(decision_margin(features, weight, bias, labels), expected, rtol=1e-3)
    assert decision_margin(np.zeros((0, 3)), weight, bias, []).shape == (0,)


# --- softmax confidence ----------------------------------------------------------------------


def test_softmax_confidence_matches_scipy_and_argmax():
    logits = np.random.default_rng(13).normal(size=(40, 6)) * 3
    confidence, predicted = softmax_confidence(logits)
    np.testing.assert_allclose(confidence, softmax(logits, axis=1).max(axis=1), rtol=1e-14)
    np.testing.assert_array_equal(predicted, logits.argmax(axis=1))
    assert predicted.dtype == np.int64


def test_softmax_confidence_is_stable_and_breaks_ties_to_the_lowest_class():
    confidence, predicted = softmax_confidence(
        [[1000.0, 0.0, -1000.0], [-1e4, -1e4 - np.log(3.0), -1e4 - np.log(3.0)], [7.0, 7.0, 7.0]]
    )
    np.testing.assert_allclose(confidence, [1.0, 0.6, 1 / 3], rtol=1e-12)
    assert predicted.tolist() == [0, 0, 0]


# --- per-class accuracy and confusion --------------------------------------------------------


def _predictions(c: int = 3, n: int = 90, k: int = 5, seed: int = 14):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k - 1, size=n)  # the last class never occurs
    predictions = np.where(rng.random((c, n)) < 0.6, labels, rng.integers(0, k, size=(c, n)))
    return predictions, labels, k


def test_per_class_accuracy_matches_a_loop_and_is_nan_for_absent_classes():
    predictions, labels, k = _predictions()
    accuracy = per_class_accuracy(predictions, labels, k)
    assert accuracy.shape == (3, k)
    for c in range(3):
        for cls in range(k - 1):
            members = [i for i in range(labels.size) if labels[i] == cls]
            hits = sum(predictions[c, i] == cls for i in members)
            assert accuracy[c, cls] == pytest.approx(hits / len(members), rel=1e-15)
    assert np.all(np.isnan(accuracy[:, k - 1]))


def test_per_class_accuracy_is_the_confusion_diagonal_over_row_sums():
    predictions, labels, k = _predictions(seed=15)
    reference = confusion_matrix(labels, predictions[1], labels=range(k))
    with np.errstate(invalid="ignore"):
        recall = np.diag(reference) / reference.sum(axis=1)
    np.testing.assert_allclose(per_class_accuracy(predictions[1], labels, k)[0], recall)


def test_confusion_matrices_match_sklearn():
    predictions, labels, k = _predictions(seed=16)
    matrices = confusion_matrices(predictions, labels, k)
    assert matrices.dtype == np.int64 and matrices.shape == (3, k, k)
    for c in range(3):
        np.testing.assert_array_equal(
            matrices[c], confusion_matrix(labels, predictions[c], labels=range(k))
        )
    single = confusion_matrices(predictions[0], labels, k)
    np.testing.assert_array_equal(single, matrices[:1])


def test_class_level_metrics_with_no_examples():
    assert confusion_matrices(np.zeros((2, 0), np.int64), [], 3).sum() == 0
    assert np.all(np.isnan(per_class_accuracy(np.zeros((2, 0), np.int64), [], 3)))


# --- calibration -----------------------------------------------------------------------------


def _bins_loop(confidence, correct, bins):
    edges = np.linspace(0.0, 1.0, bins + 1)
    members = [[] for _ in range(bins)]
    for p, ok in zip(confidence, correct, strict=True):
        for b in range(bins):
            last = b == bins - 1
            if edges[b] <= p < edges[b + 1] or (last and p == 1.0):
                members[b].append((p, ok))
                break
    mean = [sum(p for p, _ in m) / len(m) if m else math.nan for m in members]
    accuracy = [sum(ok for _, ok in m) / len(m) if m else math.nan for m in members]
    return mean, accuracy, [len(m) for m in members]


def _ece_loop(confidence, correct, bins):
    mean, accuracy, count = _bins_loop(confidence, correct, bins)
    total = sum(count)
    return sum(n / total * abs(a - m) for m, a, n in zip(mean, accuracy, count, strict=True) if n)


def _calibration_sample(n: int = 300, seed: int = 17):
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.2, 1.0, size=n)
    correct = rng.random(n) < confidence**2
    return confidence, correct


def test_reliability_bins_match_a_loop_with_edge_values():
    confidence, correct = _calibration_sample()
    edges = np.linspace(0, 1, 11)
    confidence[:12] = [0.0, 1.0, 1.0, edges[3], edges[7], edges[9], 0.5, 0.3, 0.7, 0.1, 0.9, 0.6]
    mean, accuracy, count = reliability_bins(confidence, correct, bins=10)
    expected_mean, expected_accuracy, expected_count = _bins_loop(confidence, correct, 10)
    np.testing.assert_array_equal(count, expected_count)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-14)
    np.testing.assert_allclose(accuracy, expected_accuracy, rtol=1e-14)
    assert count.dtype == np.int64 and count.sum() == confidence.size


def test_reliability_bins_match_sklearn_calibration_curve():
    confidence, correct = _calibration_sample(seed=18)  # no value on an edge
    mean, accuracy, count = reliability_bins(confidence, correct, bins=15)
    fraction, predicted = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    filled = count > 0
    np.testing.assert_allclose(accuracy[filled], fraction, rtol=1e-12)
    np.testing.assert_allclose(mean[filled], predicted, rtol=1e-12)
    assert np.all(np.isnan(mean[~filled])) and np.all(np.isnan(accuracy[~filled]))
    assert not filled[0]  # nothing below 0.2: the first bins are empty


def test_top_and_bottom_confidence_fall_in_the_outer_bins():
    mean, accuracy, count = reliability_bins([1.0, 1.0, 0.0], [True, False, True], bins=4)
    assert count.tolist() == [1, 0, 0, 2]
    assert accuracy[3] == 0.5 and mean[0] == 0.0


def test_expected_calibration_error_matches_a_loop_and_hand_cases():
    confidence, correct = _calibration_sample(seed=19)
    for bins in (1, 10, 15):
        assert expected_calibration_error(confidence, correct, bins) == pytest.approx(
            _ece_loop(confidence, correct, bins), rel=1e-12
        )
    # 10 examples at 0.75 with 7 right and 10 at 0.25 with 3 right: |0.7 − 0.75| and |0.3 − 0.25|
    hand_confidence = [0.75] * 10 + [0.25] * 10
    hand_correct = [1] * 7 + [0] * 3 + [1] * 3 + [0] * 7
    assert expected_calibration_error(hand_confidence, hand_correct, 10) == pytest.approx(0.05)
    # one bin: the gap between overall accuracy and mean confidence, |0.5 − 0.5| = 0
    assert expected_calibration_error(hand_confidence, hand_correct, 1) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([1.0, 1.0], [False, False]) == 1.0


# --- agreement and failures ------------------------------------------------------------------


def test_disagreement_matrix_matches_a_loop():
    predictions, _, _ = _predictions(c=4, seed=20)
    matrix = disagreement_matrix(predictions)
    for a in range(4):
        for b in range(4):
            differ = sum(x != y for x, y in zip(predictions[a], predictions[b], strict=True))
            assert matrix[a, b] == pytest.approx(differ / predictions.shape[1], rel=1e-15)
    np.testing.assert_array_equal(matrix, matrix.T)
    assert np.all(np.diag(matrix) == 0)
    hand = disagreement_matrix([[0, 1, 2, 3], [0, 1, 0, 0], [1, 1, 2, 0]])
    np.testing.assert_allclose(hand, [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def test_systemic_and_pruning_only_failures_hand_case():
    labels = np.array([0, 1, 2, 0, 1])
    predictions = np.array(
        [
            [0, 1, 0, 1, 1],  # reference: wrong on examples 2 and 3
            [0, 0, 1, 1, 1],  # wrong on 1, 2, 3
            [0, 1, 0, 2, 0],  # wrong on 2, 3, 4
        ]
    )
    assert systemic_failures(predictions, labels).tolist() == [False, False, True, True, False]
    assert pruning_only_failures(predictions, labels, 0).tolist() == [
        False,
        True,
        False,
        False,
        True,
    ]
    # seen from checkpoint 1: it gets 0 and 4 right; checkpoint 2 fails 4
    assert pruning_only_failures(predictions, labels, 1).tolist() == [
        False,
        False,
        False,
        False,
        True,
    ]
    assert not pruning_only_failures(predictions[:1], labels, 0).any()  # no other checkpoint


def test_failure_masks_match_loops():
    predictions, labels, _ = _predictions(c=4, n=200, seed=21)
    wrong = [[predictions[c, i] != labels[i] for c in range(4)] for i in range(labels.size)]
    assert systemic_failures(predictions, labels).tolist() == [all(w) for w in wrong]
    assert pruning_only_failures(predictions, labels, 2).tolist() == [
        (not w[2]) and any(w[:2] + w[3:]) for w in wrong
    ]


# --- groups ----------------------------------------------------------------------------------


def test_per_group_accuracy_matches_a_loop_and_ignores_ungrouped_examples():
    predictions, labels, _ = _predictions(c=3, n=120, seed=22)
    groups = np.random.default_rng(23).integers(-1, 3, size=labels.size)  # group 3 left empty
    accuracy = per_group_accuracy(predictions, labels, groups, 4)
    assert accuracy.shape == (3, 4)
    for c in range(3):
        for g in range(3):
            members = [i for i in range(labels.size) if groups[i] == g]
            hits = sum(predictions[c, i] == labels[i] for i in members)
            assert accuracy[c, g] == pytest.approx(hits / len(members), rel=1e-15)
    assert np.all(np.isnan(accuracy[:, 3]))


def test_group_accuracy_gap():
    per_group = np.array([[0.9, np.nan, 0.6, 0.75], [0.5, np.nan, 0.5, 0.5]])
    np.testing.assert_allclose(group_accuracy_gap(per_group), [0.3, 0.0])
    assert np.isnan(group_accuracy_gap([[np.nan, np.nan]])[0])
    # end to end: group 0 all right, group 1 half right
    accuracy = per_group_accuracy([[0, 1, 0, 1]], [0, 1, 0, 0], [0, 0, 1, 1], 2)
    np.testing.assert_allclose(group_accuracy_gap(accuracy), [0.5])


# --- cannibalised classes --------------------------------------------------------------------


def test_cannibalized_classes_hand_case():
    per_class = np.array([[0.9, 0.8, np.nan, 0.7, 0.6], [0.5, 0.9, np.nan, 0.3, 0.6]])
    # drops 0.4, −0.1, NaN, 0.4, 0: ties keep class order, NaN last
    order = cannibalized_classes(per_class, 0, 1)
    assert order.tolist() == [0, 3, 4, 1, 2] and order.dtype == np.int64


def test_cannibalized_classes_matches_a_sorted_loop():
    predictions, labels, k = _predictions(c=3, n=400, k=12, seed=24)
    per_class = per_class_accuracy(predictions, labels, k)
    # and many classes with few distinct drops, so ties and NaN are everywhere
    coarse = np.random.default_rng(25).choice([0.0, 0.5, 1.0, np.nan], size=(2, 200))
    for table, reference, checkpoint in ((per_class, 0, 2), (coarse, 1, 0)):
        drop = table[reference] - table[checkpoint]
        expected = sorted(range(drop.size), key=lambda c: (math.isnan(drop[c]), -drop[c], c))
        assert cannibalized_classes(table, reference, checkpoint).tolist() == expected


# --- argument checks -------------------------------------------------------------------------


def test_user_errors_say_what_was_wrong():
    features, weight, bias, labels = _classifier(n=10, k=3, d=4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        decision_margin(features, weight, bias, np.full(10, 3))
    with pytest.raises(ValueError, match="one entry per example"):
        class_angle(features, weight, labels[:5])
    with pytest.raises(ValueError, match="integer indices"):
        class_angle(features, weight, labels.astype(float))
    with pytest.raises(ValueError, match="4 columns"):
        class_angle(features, weight[:, :3], labels)
    with pytest.raises(ValueError, match="no class row"):
        decision_margin(np.zeros((0, 4)), np.zeros((0, 4)), None, [])
    with pytest.raises(ValueError, match="bias must have one entry per class"):
        decision_margin(features, weight, bias[:2], labels)
    with pytest.raises(ValueError, match="NaN or Inf"):
        feature_norm(np.where(features > 1, np.nan, features))
    with pytest.raises(ValueError, match=r"confidence must lie in \[0, 1\]"):
        reliability_bins([0.5, 1.2], [True, False])
    with pytest.raises(ValueError, match="at least one example"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match="booleans"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="checkpoint index in 0..1"):
        pruning_only_failures([[0, 1], [1, 1]], [0, 1], 2)
    with pytest.raises(ValueError, match="predictions .* must lie"):
        confusion_matrices([[0, 5]], [0, 1], 3)
    with pytest.raises(ValueError, match="groups must lie"):
        per_group_accuracy([[0, 1]], [0, 1], [0, -2], 2)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        per_class_accuracy([[0, 1]], [0, 1], 0)
