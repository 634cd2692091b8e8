"""PIEs, modal labels, per-class recall tests, CIE taxicab ranking and group impact."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from prunescope.workers.metrics import pies as pies_module
from prunescope.workers.metrics.pies import (
    cie_ranking,
    class_recall,
    class_recall_change,
    group_impact,
    label_counts,
    modal_labels,
    pie_accuracy,
    pie_fraction,
    pies,
    pruning_identified_exemplars,
)


def _modal_loop(column):
    counts = Counter(int(v) for v in column)
    best = max(counts.values())
    return max(label for label, c in counts.items() if c == best)


def _population(rng, members, labels, num_classes, accuracy):
    """Members that predict the label with the given probability, a random class otherwise."""
    right = rng.random((members, labels.size)) < accuracy
    guess = rng.integers(0, num_classes, size=(members, labels.size))
    return np.where(right, labels, guess)


def test_modal_label_ties_go_to_the_highest_class():
    predictions = np.array(
        [
            [1, 0, 5, 2, 4],
            [1, 2, 5, 2, 4],
            [3, 2, 5, 0, 1],
            [3, 0, 5, 0, 1],
        ]
    )
    np.testing.assert_array_equal(modal_labels(predictions, 6), [3, 2, 5, 2, 4])
    np.testing.assert_array_equal(modal_labels([4, 0, 2], 6), [4, 0, 2])  # one model


@pytest.mark.parametrize("block_cells", [None, 7])
def test_modal_labels_and_counts_match_a_loop(monkeypatch, block_cells):
    if block_cells is not None:  # exercise the blocked path with many tiny blocks
        monkeypatch.setattr(pies_module, "_BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 5, size=(6, 400))  # even M: many ties
    np.testing.assert_array_equal(
        modal_labels(predictions, 5), [_modal_loop(predictions[:, i]) for i in range(400)]
    )
    counts = label_counts(predictions, 5)
    for i in range(0, 400, 37):
        for c in range(5):
            assert counts[i, c] == sum(1 for v in predictions[:, i] if v == c)


def test_pies_on_hand_built_populations():
    dense = np.array(
        [
            [0, 1, 2, 3, 4],
            [0, 1, 2, 3, 1],
            [0, 2, 2, 1, 1],
        ]
    )
    pruned = np.array(
        [
            [0, 2, 2, 3, 1],
            [1, 2, 0, 3, 4],
            [1, 1, 0, 1, 4],
        ]
    )
    # Dense modes: 0, 1, 2, 3, 1.  Pruned modes: 1, 2, 0, 3, 4.
    expected = [True, True, True, False, True]
    np.testing.assert_array_equal(pruning_identified_exemplars(dense, pruned, 5), expected)
    np.testing.assert_array_equal(pies(dense, pruned, 5), expected)
    assert pie_fraction(expected) == pytest.approx(0.8)
    assert np.isnan(pie_fraction([]))
    # A tie in the pruned population resolves upwards: {1, 3} → 3 = dense mode → no PIE.
    assert not pies([[3], [3]], [[1], [3]], 4)[0]
    assert pies([[1], [1]], [[1], [3]], 4)[0]


def test_pie_accuracy_matches_loops_and_is_nan_on_an_empty_subset():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=300)
    dense = _population(rng, 5, labels, 4, 0.8)
    pruned = _population(rng, 4, labels, 4, 0.6)
    result = pie_accuracy(dense, pruned, labels, 4)
    dense_modes = [_modal_loop(dense[:, i]) for i in range(300)]
    pruned_modes = [_modal_loop(pruned[:, i]) for i in range(300)]
    is_pie = [d != p for d, p in zip(dense_modes, pruned_modes, strict=True)]
    subsets = {
        "pie": [i for i in range(300) if is_pie[i]],
        "non_pie": [i for i in range(300) if not is_pie[i]],
        "all": list(range(300)),
    }
    for name, rows in subsets.items():
        assert result[name]["count"] == len(rows)
        for key, population in (("dense", dense), ("pruned", pruned)):
            member_means = [
                sum(population[m, i] == labels[i] for i in rows) / len(rows)
                for m in range(population.shape[0])
            ]
            assert result[name][key] == pytest.approx(sum(member_means) / len(member_means))
        for key, modes in (("dense_modal", dense_modes), ("pruned_modal", pruned_modes)):
            assert result[name][key] == pytest.approx(
                sum(modes[i] == labels[i] for i in rows) / len(rows)
            )
    # PIEs are where the modes differ, so at most one mode is right on each.
    pie = result["pie"]
    assert pie["dense_modal"] + pie["pruned_modal"] <= 1.0 + 1e-12

    same = pie_accuracy(dense, dense, labels, 4)
    assert same["pie"]["count"] == 0
    assert all(np.isnan(same["pie"][k]) for k in ("dense", "pruned", "dense_modal"))
    assert same["non_pie"]["dense"] == pytest.approx(same["all"]["dense"])


def test_class_recall_matches_a_loop_and_marks_absent_classes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=200)  # class 4 of 5 never occurs
    predictions = _population(rng, 3, labels, 5, 0.7)
    recall = class_recall(predictions, labels, 5)
    for m in range(3):
        for c in range(4):
            rows = [i for i in range(200) if labels[i] == c]
            assert recall[m, c] == pytest.approx(
                sum(predictions[m, i] == c for i in rows) / len(rows)
            )
    assert np.all(np.isnan(recall[:, 4]))


def _welch_by_hand(a, b):
    """t = (ā − b̄)/√(s²_a/n_a + s²_b/n_b), Welch–Satterthwaite df, two-sided p."""
    na, nb = len(a), len(b)
    va, vb = np.var(a, ddof=1) / na, np.var(b, ddof=1) / nb
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return t, 2 * stats.t.sf(abs(t), df)


@pytest.mark.parametrize("normalisation", ["member_ratio", "population_difference", "none"])
def test_class_recall_change_against_hand_normalisation_and_welch(normalisation):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=600)
    dense = _population(rng, 5, labels, 6, 0.85)
    pruned = _population(rng, 4, labels, 6, 0.65)
    result = class_recall_change(dense, pruned, labels, 6, normalisation=normalisation)

    def normalised(population):
        values = []
        accuracies = [np.mean(row == labels) for row in population]
        for m, row in enumerate(population):
            member = []
            for c in range(6):
                rows = labels == c
                recall = np.mean(row[rows] == c)
                if normalisation == "member_ratio":
                    member.append(recall / accuracies[m])
                elif normalisation == "population_difference":
                    member.append(recall - np.mean(accuracies))
                else:
                    member.append(recall)
            values.append(member)
        return np.array(values)

    dense_norm, pruned_norm = normalised(dense), normalised(pruned)
    np.testing.assert_allclose(result.dense_normalised, dense_norm.mean(axis=0))
    np.testing.assert_allclose(result.pruned_normalised, pruned_norm.mean(axis=0))
    np.testing.assert_allclose(result.difference, pruned_norm.mean(0) - dense_norm.mean(0))
    for c in range(6):
        t, p = _welch_by_hand(dense_norm[:, c], pruned_norm[:, c])
        assert result.t_statistic[c] == pytest.approx(t, rel=1e-9)
        assert result.p_value[c] == pytest.approx(p, rel=1e-7)
    np.testing.assert_array_equal(result.class_count, np.bincount(labels, minlength=6))
    np.testing.assert_allclose(result.dense_recall, class_recall(dense, labels, 6).mean(0))


def test_class_recall_change_nan_rules():
    labels = np.array([0, 0, 1, 1, 2, 2])
    dense = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]])
    single = np.array([[0, 0, 1, 0, 2, 2]])
    result = class_recall_change(dense, single, labels, 4)
    assert np.all(np.isnan(result.p_value)) and np.all(np.isnan(result.t_statistic))
    assert np.isfinite(result.difference[:3]).all()
    assert np.isnan(result.difference[3])  # class 3 has no examples
    # A member that is never right: its accuracy-normalised recall is undefined.
    wrong = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 2, 2]])
    assert np.isnan(class_recall_change(dense, wrong, labels, 3).pruned_normalised).all()
    with pytest.raises(ValueError, match="normalisation"):
        class_recall_change(dense, dense, labels, 3, normalisation="ratio")


def _taxicab_loop(dense, other, num_classes):
    distances = []
    for i in range(dense.shape[1]):
        d = Counter(int(v) for v in dense[:, i])
        o = Counter(int(v) for v in other[:, i])
        distances.append(
            sum(
                abs(Fraction(d[c], dense.shape[0]) - Fraction(o[c], other.shape[0]))
                for c in range(num_classes)
            )
        )
    return distances


def test_cie_ranking_matches_a_loop_with_exact_ties():
    rng = np.random.default_rng(4)
    dense = rng.integers(0, 3, size=(5, 250))
    other = rng.integers(0, 3, size=(3, 250))
    ranking = cie_ranking(dense, other, 3)
    exact = _taxicab_loop(dense, other, 3)
    np.testing.assert_allclose(ranking.distance, [float(x) for x in exact], rtol=1e-15)
    expected_order = sorted(range(250), key=lambda i: (-exact[i], i))
    np.testing.assert_array_equal(ranking.order, expected_order)
    assert len(set(exact)) < 250  # the data do contain ties


def test_cie_ranking_hand_case():
    dense = np.array([[0, 1, 2, 0], [0, 1, 2, 1]])
    other = np.array([[0, 2, 2, 1], [0, 2, 1, 0]])
    # Distances: identical 0; disjoint 2; {2,2} vs {2,1}: |1 − ½| + |0 − ½| = 1; same mix 0.
    ranking = cie_ranking(dense, other, 3)
    np.testing.assert_allclose(ranking.distance, [0.0, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(ranking.order, [1, 2, 0, 3])


def test_group_impact_matches_a_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=240)
    groups = rng.choice(["indoor", "outdoor", "night"], size=240)
    dense = _population(rng, 4, labels, 3, 0.8)
    other = _population(rng, 3, labels, 3, 0.5)
    impact = group_impact(groups, dense, other, labels, 3)
    flag = pies(dense, other, 3)
    assert list(impact.groups) == ["indoor", "night", "outdoor"]
    for g, name in enumerate(impact.groups):
        rows = [i for i in range(240) if groups[i] == name]
        assert impact.count[g] == len(rows)
        assert impact.flagged_fraction[g] == pytest.approx(sum(flag[i] for i in rows) / len(rows))
        accuracies = []
        for population in (dense, other):
            members = [sum(p[i] == labels[i] for i in rows) / len(rows) for p in population]
            accuracies.append(sum(members) / len(members))
        assert impact.dense_accuracy[g] == pytest.approx(accuracies[0])
        assert impact.other_accuracy[g] == pytest.approx(accuracies[1])
        assert impact.accuracy_change[g] == pytest.approx(accuracies[1] - accuracies[0])
    custom = group_impact(groups, dense, other, labels, 3, flag=np.ones(240, dtype=bool))
    np.testing.assert_array_equal(custom.flagged_fraction, [1.0, 1.0, 1.0])


def test_bad_predictions_are_refused():
    with pytest.raises(ValueError, match="outside"):
        modal_labels([[0, 5]], 5)
    with pytest.raises(ValueError, match="integer"):
        modal_labels([[0.5, 1.0]], 3)
    with pytest.raises(ValueError, match="same examples"):
        pies([[0, 1]], [[0, 1, 2]], 3)
    with pytest.raises(ValueError, match="labels"):
        pie_accuracy([[0, 1]], [[0, 1]], [0, 1, 1], 3)
    np.testing.assert_array_equal(modal_labels(np.array([[1.0, 2.0]]), 3), [1, 2])
