"""Training dynamics: MAP-D kNN, probe validation, forgetting, learned epoch, cartography."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from prunescope.workers.metrics.dynamics import (
    LEARNED_NEVER,
    auroc,
    cartography,
    enrichment,
    forgetting_events,
    learned_epoch,
    map_d,
    mean_loss_score,
    probe_validation,
    split_probe_suites,
    suite_curves,
)

SUITES = ("typical", "atypical", "random_outputs")


def _brute_force_knn(losses, probe_index, probe_codes, k, n_categories):
    """Probabilities by a plain loop: sort distances to every reference, count the k nearest."""
    probabilities = np.zeros((losses.shape[0], n_categories))
    for i, row in enumerate(losses):
        distances = [float(np.sqrt(np.sum((row - losses[j]) ** 2))) for j in probe_index]
        nearest = sorted(range(len(probe_index)), key=lambda r: distances[r])[:k]
        for r in nearest:
            probabilities[i, probe_codes[r]] += 1.0 / k
    return probabilities


def _random_probes(n, n_probes, n_suites, seed):
    rng = np.random.default_rng(seed)
    index = rng.choice(n, size=n_probes, replace=False)
    codes = rng.integers(0, n_suites, size=n_probes)
    return index, codes


def test_map_d_obvious_trajectories():
    # Suite "low" has losses near 0, suite "high" near 5; queries sit clearly in one of them.
    losses = np.array(
        [
            [0.0, 0.1, 0.0],
            [0.1, 0.0, 0.1],
            [0.0, 0.0, 0.2],
            [5.0, 5.1, 4.9],
            [4.9, 5.0, 5.2],
            [5.2, 4.8, 5.0],
            [0.3, 0.2, 0.1],  # query near "low"
            [4.5, 4.7, 5.5],  # query near "high"
        ]
    )
    result = map_d(losses, [0, 1, 2, 3, 4, 5], ["low"] * 3 + ["high"] * 3, ("low", "high"), k=3)
    assert result.neighbours == 3
    np.testing.assert_array_equal(result.probabilities[6], [1.0, 0.0])
    np.testing.assert_array_equal(result.probabilities[7], [0.0, 1.0])
    np.testing.assert_array_equal(result.top_category, [0, 0, 0, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(result.top_probability, np.ones(8))
    assert list(result.top_category_names()) == ["low"] * 3 + ["high"] * 3 + ["low", "high"]
    # The column order follows `categories`, whatever order the probes come in.
    swapped = map_d(losses, [0, 1, 2, 3, 4, 5], ["low"] * 3 + ["high"] * 3, ("high", "low"), k=3)
    np.testing.assert_array_equal(swapped.probabilities, result.probabilities[:, ::-1])


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (5, 1), (20, 2)])
def test_map_d_matches_a_brute_force_knn_loop(k, seed):
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 1.0, size=(80, 9))
    index, codes = _random_probes(80, 40, len(SUITES), seed)
    result = map_d(losses, index, np.array(SUITES)[codes], SUITES, k=k)
    expected = _brute_force_knn(losses, index, codes, k, len(SUITES))
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-12)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    # Top category: the first suite of largest probability, in category order.
    top = [max(range(len(SUITES)), key=lambda c: (row[c], -c)) for row in expected]
    np.testing.assert_array_equal(result.top_category, top)
    np.testing.assert_allclose(result.top_probability, expected.max(axis=1), atol=1e-12)


def test_probe_rows_count_themselves_among_their_neighbours():
    rng = np.random.default_rng(3)
    losses = rng.normal(size=(30, 5))
    index = np.arange(10)
    codes = np.array([0, 1] * 5)
    result = map_d(losses, index, np.array(SUITES[:2])[codes], SUITES[:2], k=1)
    # With k = 1 a probe's nearest reference is itself (distance 0): its own suite, surely.
    np.testing.assert_array_equal(result.top_category[:10], codes)
    np.testing.assert_array_equal(result.top_probability[:10], np.ones(10))


def test_k_is_clipped_to_the_number_of_references():
    losses = np.random.default_rng(4).normal(size=(12, 4))
    result = map_d(losses, [0, 1, 2, 3], ["a", "a", "a", "b"], ("a", "b", "c"), k=20)
    assert result.neighbours == 4
    # Every reference is a neighbour of every example: rows are the suite proportions, and a
    # suite without references ("c") has probability 0.
    np.testing.assert_array_equal(result.probabilities, np.tile([0.75, 0.25, 0.0], (12, 1)))


def test_a_probability_tie_goes_to_the_first_category():
    losses = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    result = map_d(losses, [0, 1], ["x", "y"], ("y", "x"), k=2)
    np.testing.assert_array_equal(result.probabilities, np.full((3, 2), 0.5))
    np.testing.assert_array_equal(result.top_category, [0, 0, 0])  # "y", first in order


def test_map_d_rejects_bad_probes():
    losses = np.zeros((5, 3))
    with pytest.raises(ValueError, match="no"):
        map_d(losses, [], [], ("a",))
    with pytest.raises(ValueError, match="not in categories"):
        map_d(losses, [0, 1], ["a", "zzz"], ("a", "b"))
    with pytest.raises(ValueError, match="repeats"):
        map_d(losses, [0, 0], ["a", "b"], ("a", "b"))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        map_d(losses, [0, 7], ["a", "b"], ("a", "b"))
    with pytest.raises(ValueError, match="same length|differ in length"):
        map_d(losses, [0, 1], ["a"], ("a", "b"))
    with pytest.raises(ValueError, match="NaN"):
        map_d(np.full((5, 3), np.nan), [0], ["a"], ("a",))
    with pytest.raises(ValueError, match="k must"):
        map_d(losses, [0], ["a"], ("a",), k=0)


def test_split_probe_suites_halves_each_suite_reproducibly():
    rng = np.random.default_rng(5)
    index = rng.permutation(1000)[:205]
    category = np.array(["typical"] * 100 + ["atypical"] * 101 + ["corrupted"] * 4)
    split = split_probe_suites(index, category, seed=7)
    for suite, n in (("typical", 100), ("atypical", 101), ("corrupted", 4)):
        assert np.sum(split.reference_category == suite) == -(-n // 2)
        assert np.sum(split.held_out_category == suite) == n // 2
    # A partition of the probes, each keeping its suite and the input order.
    both = np.concatenate([split.reference_index, split.held_out_index])
    np.testing.assert_array_equal(np.sort(both), np.sort(index))
    suite_of = dict(zip(index.tolist(), category.tolist(), strict=True))
    for idx, cat in zip(split.reference_index, split.reference_category, strict=True):
        assert suite_of[int(idx)] == cat
    position = {int(v): p for p, v in enumerate(index)}
    assert np.all(np.diff([position[int(v)] for v in split.held_out_index]) > 0)
    again = split_probe_suites(index, category, seed=7)
    np.testing.assert_array_equal(again.reference_index, split.reference_index)
    other = split_probe_suites(index, category, seed=8)
    assert not np.array_equal(other.reference_index, split.reference_index)
    with pytest.raises(ValueError, match="reference_fraction"):
        split_probe_suites(index, category, reference_fraction=1.0)


def test_probe_validation_against_a_loop_and_the_confusion_definition():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(6)
    epochs = np.arange(12)
    # Three overlapping suites: decay rates close enough that some held-out probes are missed.
    rates = np.array([0.35, 0.25, 0.0])[np.repeat(np.arange(3), 40)]
    losses = 2.0 * np.exp(-rates[:, None] * epochs) + rng.normal(0, 0.35, size=(120, 12))
    category = np.array(SUITES)[np.repeat(np.arange(3), 40)]
    split = split_probe_suites(np.arange(120), category, seed=1)
    validation = probe_validation(losses, split, SUITES, k=5)

    codes = {s: i for i, s in enumerate(SUITES)}
    ref_codes = [codes[c] for c in split.reference_category]
    held_codes = np.array([codes[c] for c in split.held_out_category])
    probabilities = _brute_force_knn(losses, split.reference_index, ref_codes, 5, 3)
    predicted = np.array([max(range(3), key=lambda c: (row[c], -c)) for row in probabilities])
    predicted = predicted[split.held_out_index]
    assert validation.accuracy == pytest.approx(np.mean(predicted == held_codes))
    np.testing.assert_array_equal(
        validation.confusion, confusion_matrix(held_codes, predicted, labels=[0, 1, 2])
    )
    assert validation.confusion.sum() == 60
    assert 0.5 < validation.accuracy < 1.0  # neither trivial nor broken
    with pytest.raises(ValueError, match="held-out"):
        empty = split_probe_suites(np.arange(3), np.array(["a", "b", "c"]))
        probe_validation(losses, empty, ("a", "b", "c"))


def _forgetting_loop(row):
    return sum(1 for e in range(1, len(row)) if row[e - 1] and not row[e])


def _learned_loop(row):
    for e in range(len(row)):
        if all(row[e:]):
            return e
    return -1


@pytest.mark.parametrize("epochs", [1, 2, 7, 30])
def test_forgetting_and_learned_epoch_match_plain_loops(epochs):
    rng = np.random.default_rng(epochs)
    correct = rng.random((200, epochs)) < rng.uniform(0.2, 0.95, size=(200, 1))
    correct[0] = True
    correct[1] = False
    np.testing.assert_array_equal(
        forgetting_events(correct), [_forgetting_loop(list(r)) for r in correct]
    )
    np.testing.assert_array_equal(learned_epoch(correct), [_learned_loop(list(r)) for r in correct])
    assert learned_epoch(correct)[1] == LEARNED_NEVER


def test_forgetting_and_learned_epoch_hand_case():
    correct = np.array([[0, 1, 1, 0, 1, 1], [1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(forgetting_events(correct), [1, 3, 0])
    np.testing.assert_array_equal(learned_epoch(correct), [4, -1, 0])
    with pytest.raises(ValueError, match="boolean"):
        forgetting_events(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="no epochs"):
        learned_epoch(np.zeros((3, 0), dtype=bool))


def test_cartography_matches_a_loop():
    rng = np.random.default_rng(9)
    p_gold = rng.random((50, 8))
    correct = rng.random((50, 8)) < p_gold
    stats = cartography(p_gold, correct)
    for i in range(50):
        assert stats["confidence"][i] == pytest.approx(statistics.fmean(p_gold[i]))
        assert stats["variability"][i] == pytest.approx(statistics.pstdev(p_gold[i]))
        assert stats["correctness"][i] == pytest.approx(sum(correct[i]) / 8)
    sample = cartography(p_gold, correct, ddof=1)["variability"]
    np.testing.assert_allclose(sample, [statistics.stdev(r) for r in p_gold])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cartography(p_gold + 1.0, correct)
    with pytest.raises(ValueError, match="same shape"):
        cartography(p_gold[:, :3], correct)


def test_mean_loss_score_and_suite_curves_match_loops():
    rng = np.random.default_rng(10)
    losses = rng.gamma(2.0, size=(90, 6))
    np.testing.assert_allclose(mean_loss_score(losses), [statistics.fmean(r) for r in losses])
    suite = np.array(["train"] * 30 + ["typical"] * 35 + ["corrupted"] * 25, dtype=object)
    suite[5] = None  # unlabelled examples are simply left out
    curves = suite_curves(losses, suite, ("typical", "corrupted", "atypical"))
    np.testing.assert_array_equal(curves.count, [35, 25, 0])
    for row, name in enumerate(("typical", "corrupted")):
        members = losses[suite == name]
        for e in range(6):
            column = list(members[:, e])
            q25, _, q75 = statistics.quantiles(column, n=4, method="inclusive")
            assert curves.mean[row, e] == pytest.approx(statistics.fmean(column))
            assert curves.std[row, e] == pytest.approx(statistics.pstdev(column))
            assert curves.q25[row, e] == pytest.approx(q25)
            assert curves.q75[row, e] == pytest.approx(q75)
    assert np.all(np.isnan(curves.mean[2])) and np.all(np.isnan(curves.q75[2]))


def test_auroc_matches_pair_counting_and_enrichment_hand_case():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties: each counts one half
    positive = rng.random(60) < 0.3
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p in scores[positive]
        for n in scores[~positive]
    ]
    assert auroc(scores, positive) == pytest.approx(statistics.fmean(pairs))
    assert np.isnan(auroc(scores, np.ones(60, dtype=bool)))

    flag = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    positive = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert enrichment(flag, positive) == pytest.approx((3 / 4) / (3 / 10))
    assert np.isnan(enrichment(np.zeros(10, dtype=bool), positive))
    assert np.isnan(enrichment(flag, np.zeros(10, dtype=bool)))


def _synthetic_trajectories(n, epochs, noise_fraction, rng, *, planted=True):
    """Loss curves of a made-up training run: clean examples are learned at varied speeds,
    mislabeled ones stay high and noisy (memorised only slightly, late). planted=False gives
    the mislabeled examples clean curves too, so nothing tells them apart."""
    t = np.arange(epochs)
    mislabeled = rng.random(n) < noise_fraction
    start = rng.uniform(1.5, 3.0, size=(n, 1))
    rate = rng.uniform(0.03, 0.4, size=(n, 1))
    clean = start * np.exp(-rate * t) + np.abs(rng.normal(0, 0.25, size=(n, epochs)))
    late_fit = np.clip((t - 0.7 * epochs) / epochs, 0, None)
    noisy = rng.uniform(2.0, 3.5, size=(n, 1)) * (1 - late_fit) + rng.normal(
        0, 0.8, size=(n, epochs)
    )
    if not planted:
        return clean, mislabeled
    return np.where(mislabeled[:, None], np.clip(noisy, 0.0, None), clean), mislabeled


def _map_d_noise_auroc(losses, mislabeled, rng):
    """AUROC of MAP-D's P(mislabeled) on non-probe examples, 100 + 100 planted probes."""
    probes = np.concatenate(
        [
            rng.choice(np.flatnonzero(~mislabeled), 100, replace=False),
            rng.choice(np.flatnonzero(mislabeled), 100, replace=False),
        ]
    )
    suites = np.array(["clean"] * 100 + ["mislabeled"] * 100)
    others = np.setdiff1d(np.arange(losses.shape[0]), probes)
    result = map_d(losses, probes, suites, ("clean", "mislabeled"))
    flagged = result.top_category[others] == 1
    return (
        auroc(result.probabilities[others, 1], mislabeled[others]),
        enrichment(flagged, mislabeled[others]),
        auroc(mean_loss_score(losses)[others], mislabeled[others]),
    )


def test_map_d_recovers_planted_label_noise():
    rng = np.random.default_rng(12)
    losses, mislabeled = _synthetic_trajectories(3000, 40, 0.10, rng)
    map_d_auroc, map_d_enrichment, mean_loss_auroc = _map_d_noise_auroc(losses, mislabeled, rng)
    assert map_d_auroc > 0.9
    assert map_d_enrichment > 5.0
    # The mean-loss baseline also separates this easy noise, as REFERENCES warns.
    assert mean_loss_auroc > 0.9


def test_map_d_finds_nothing_when_nothing_was_planted():
    # Control: the "mislabeled" flag is drawn but their curves are clean ones.
    rng = np.random.default_rng(13)
    losses, mislabeled = _synthetic_trajectories(3000, 40, 0.10, rng, planted=False)
    map_d_auroc, _, mean_loss_auroc = _map_d_noise_auroc(losses, mislabeled, rng)
    assert abs(map_d_auroc - 0.5) < 0.1
    assert abs(mean_loss_auroc - 0.5) < 0.1
