"""The "dynamics" analysis: synthetic runs with planted probe suites and planted PIEs."""

from __future__ import annotations

import io
import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import t as student_t

from prunescope.workers.analyses.dynamics import (
    RunRecord,
    SuiteArrays,
    analyse_dynamics,
    category_enrichment,
    modal_category,
)
from prunescope.workers.metrics.dynamics import enrichment, map_d, probe_validation

CATEGORIES = ("typical", "atypical", "mislabeled", "corrupted")
TYPICAL, ATYPICAL, MISLABELED, CORRUPTED = range(4)
CLASS_NAMES = ("zero", "one", "two", "three")
N, E, M, C, K = 400, 16, 100, 4, 4
PER_SUITE = 40


def _templates() -> np.ndarray:
    """[K, E] noise-free loss curves: clean decays fast, atypical late, corrupted slowly,
    mislabeled stays high."""
    e = np.arange(E, dtype=np.float64)
    return np.stack([
        2.0 * np.exp(-e / 1.5),
        np.where(e < 10, 2.5, 2.5 * np.exp(-2.0 * (e - 9))),
        np.full(E, 3.0),
        2.3 * np.exp(-e / 6.0),
    ])


def _build_world():
    rng = np.random.default_rng(7)
    order = rng.permutation(N)
    suite = np.full(N, -1, dtype=np.int8)
    reference = np.zeros(N, dtype=bool)
    for k in range(K):
        members = order[k * PER_SUITE:(k + 1) * PER_SUITE]
        suite[members] = k
        reference[members[: PER_SUITE // 2]] = True
    ordinary = np.flatnonzero(suite == -1)
    original = rng.integers(0, C, N).astype(np.int64)
    train = original.copy()
    mislabeled = np.flatnonzero(suite == MISLABELED)
    train[mislabeled] = (original[mislabeled] + rng.integers(1, C, mislabeled.size)) % C
    suites = SuiteArrays(CATEGORIES, suite, reference, train, original)

    tie_example = int(ordinary[0])  # one dense seed each: atypical, mislabeled, corrupted
    train_pie = np.sort(np.concatenate([mislabeled[:15], ordinary[1:6]]))
    dense_noise = ordinary[10:20]  # one dense seed disagrees: the modal label does not move
    pruned_noise = ordinary[20:30]  # one pruned seed disagrees: no PIE
    base_final = np.where(suite == MISLABELED, (train + 1) % C, train)

    test_labels = rng.integers(0, C, M).astype(np.int64)
    wrong = rng.choice(M, 10, replace=False)
    base_test = test_labels.copy()
    base_test[wrong] = (base_test[wrong] + 1) % C
    test_pie = np.sort(np.concatenate([wrong[:4], np.setdiff1d(np.arange(M), wrong)[:8]]))
    others = np.setdiff1d(np.arange(M), test_pie)
    test_noise = others[:5]

    def make_run(name, mode, sparsity, seed, *, final=None, test=None, epochs=E):
        run_rng = np.random.default_rng(1000 + seed + 100 * len(name))
        curve = np.full(N, TYPICAL)
        curve[suite >= 0] = suite[suite >= 0]
        if mode == "dense":
            curve[tie_example] = (ATYPICAL, MISLABELED, CORRUPTED)[seed]
        loss = _templates()[curve][:, :epochs] + run_rng.normal(0, 0.05, (N, epochs))
        loss = np.abs(loss).T.astype(np.float32)  # [E, N]
        right = loss < 0.7
        right[:-1] &= run_rng.random((epochs - 1, N)) > 0.05  # some forgetting
        prediction = np.where(right, train, (train + 1) % C)
        prediction[-1] = base_final if final is None else final
        test_predictions = base_test if test is None else test
        return RunRecord(
            name=name, mode=mode, sparsity=sparsity, seed=seed, loss=loss,
            prediction=prediction.astype(np.int64), p_gold=np.exp(-loss.astype(np.float64)),
            test_predictions=test_predictions,
            test_accuracy=float(np.mean(test_predictions == test_labels)),
        )

    def changed(base, index, shift):
        out = base.copy()
        out[index] = (out[index] + shift) % C
        return out

    runs = [
        make_run("dense-s0", "dense", 0.0, 0, final=changed(base_final, dense_noise, 2)),
        make_run("dense-s1", "dense", 0.0, 1, test=changed(base_test, test_noise, 2)),
        make_run("dense-s2", "dense", 0.0, 2),
        make_run("gmp80-s0", "gmp", 0.8, 0, final=changed(base_final, train_pie, 3),
                 test=changed(base_test, test_pie, 3)),
        make_run("gmp80-s1", "gmp", 0.8, 1, final=changed(base_final, train_pie, 3),
                 test=changed(base_test, test_pie, 3)),
        make_run("gmp80-s2", "gmp", 0.8, 2, final=changed(base_final, pruned_noise, 2)),
        make_run("ft50-s0", "finetune", 0.5, 0),
        make_run("ft50-s1", "finetune", 0.5, 1),
    ]
    return SimpleNamespace(
        suites=suites, runs=runs, test_labels=test_labels, make_run=make_run,
        tie_example=tie_example, train_pie=train_pie, test_pie=test_pie,
        mislabeled=mislabeled,
    )


@pytest.fixture(scope="module")
def world():
    return _build_world()


@pytest.fixture(scope="module")
def result(world):
    calls = []
    out = analyse_dynamics(
        world.runs, world.suites, world.test_labels, CLASS_NAMES,
        progress=lambda f, message: calls.append(f),
    )
    out = dict(out)
    out["_progress"] = calls
    return out


def test_every_contract_key_has_its_dtype_and_shape(result):
    R, P = 8, 2
    contract = {
        "run_names": ("U", (R,)), "run_modes": ("U", (R,)), "run_sparsity": (np.float64, (R,)),
        "run_seeds": (np.int64, (R,)), "run_test_accuracy": (np.float64, (R,)),
        "epochs": (np.int64, (E,)), "categories": ("U", (K,)), "suite": (np.int8, (N,)),
        "reference": (np.bool_, (N,)), "train_labels": (np.int64, (N,)),
        "original_labels": (np.int64, (N,)), "loss": (np.float32, (R, N, E)),
        "mapd_probabilities": (np.float32, (R, N, K)), "mapd_top": (np.int8, (R, N)),
        "probe_accuracy": (np.float64, (R,)), "probe_confusion": (np.int64, (R, K, K)),
        "confidence": (np.float32, (R, N)), "variability": (np.float32, (R, N)),
        "correctness": (np.float32, (R, N)), "forgetting": (np.int32, (R, N)),
        "learned_epoch": (np.int32, (R, N)), "final_prediction": (np.int64, (R, N)),
        "mean_loss": (np.float32, (R, N)), "suite_mean": (np.float32, (R, K, E)),
        "suite_q25": (np.float32, (R, K, E)), "suite_q75": (np.float32, (R, K, E)),
        "population_names": ("U", (P,)), "population_modes": ("U", (P,)),
        "population_sparsity": (np.float64, (P,)), "population_size": (np.int64, (P,)),
        "dense_population_size": (np.int64, ()), "test_labels": (np.int64, (M,)),
        "test_predictions": (np.int64, (R, M)), "pie": (np.bool_, (P, M)),
        "pie_fraction": (np.float64, (P,)), "pie_accuracy": (np.float64, (P, 3, 2)),
        "class_recall_change": (np.float64, (P, C)), "class_recall_p": (np.float64, (P, C)),
        "train_pie": (np.bool_, (P, N)), "train_pie_category_count": (np.int64, (P, K)),
        "train_pie_category_enrichment": (np.float64, (P, K)),
        "dense_mapd_top": (np.int8, (N,)), "class_names": ("U", (C,)),
        "cie_distance": (np.float64, (P, M)), "category_transitions": (np.int64, (P, K, K)),
        "group_names": ("U", (0,)), "group_count": (np.int64, (0,)),
        "group_pie_fraction": (np.float64, (P, 0)), "group_accuracy_change": (np.float64, (P, 0)),
    }
    produced = {key for key in result if not key.startswith("_")}
    assert produced == set(contract)
    for key, (dtype, shape) in contract.items():
        value = result[key]
        assert isinstance(value, np.ndarray), key
        assert value.shape == shape, key
        if dtype == "U":
            assert value.dtype.kind == "U", key
        else:
            assert value.dtype == dtype, key


def test_npz_round_trip_without_pickle(result):
    buffer = io.BytesIO()
    arrays = {key: value for key, value in result.items() if not key.startswith("_")}
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        assert set(loaded.files) == set(arrays)
        for key, value in arrays.items():
            assert loaded[key].dtype == value.dtype, key
            assert np.array_equal(loaded[key], value, equal_nan=value.dtype.kind == "f"), key


def test_runs_and_suites_are_passed_through(world, result):
    assert list(result["run_names"]) == [run.name for run in world.runs]
    assert list(result["run_modes"]) == [run.mode for run in world.runs]
    assert list(result["run_sparsity"]) == [run.sparsity for run in world.runs]
    assert list(result["run_seeds"]) == [run.seed for run in world.runs]
    assert list(result["run_test_accuracy"]) == [run.test_accuracy for run in world.runs]
    assert list(result["epochs"]) == list(range(1, E + 1))
    assert tuple(result["categories"]) == CATEGORIES
    assert tuple(result["class_names"]) == CLASS_NAMES
    assert np.array_equal(result["suite"], world.suites.suite)
    assert np.array_equal(result["reference"], world.suites.reference)
    assert np.array_equal(result["train_labels"], world.suites.train_labels)
    assert np.array_equal(result["original_labels"], world.suites.original_labels)
    assert np.array_equal(result["test_labels"], world.test_labels)
    for r, run in enumerate(world.runs):
        assert np.array_equal(result["loss"][r], run.loss.T)
        assert np.array_equal(result["final_prediction"][r], run.prediction[-1])
        assert np.array_equal(result["test_predictions"][r], run.test_predictions)
    assert result["_progress"][-1] == 1.0
    assert result["_progress"] == sorted(result["_progress"])


def test_map_d_per_run_matches_direct_calls_with_named_categories(world, result):
    suite, reference = world.suites.suite, world.suites.reference
    names = np.asarray(CATEGORIES)
    ref = np.flatnonzero((suite >= 0) & reference)
    held = np.flatnonzero((suite >= 0) & ~reference)
    for r, run in enumerate(world.runs):
        direct = map_d(run.loss.T, ref, names[suite[ref]], CATEGORIES)
        assert np.allclose(result["mapd_probabilities"][r], direct.probabilities, atol=1e-6)
        assert np.array_equal(result["mapd_top"][r], direct.top_category)
        own_split = SimpleNamespace(
            reference_index=ref, reference_category=names[suite[ref]],
            held_out_index=held, held_out_category=names[suite[held]],
        )
        validation = probe_validation(run.loss.T, own_split, CATEGORIES)
        assert result["probe_accuracy"][r] == validation.accuracy
        assert np.array_equal(result["probe_confusion"][r], validation.confusion)
        # The suites are well separated: held-out probes are recovered.
        assert result["probe_accuracy"][r] >= 0.95
        assert result["probe_confusion"][r].sum() == held.size


def test_planted_mislabeled_examples_are_surfaced_as_mislabeled(world, result):
    planted = np.intersect1d(world.train_pie, world.mislabeled)
    assert planted.size == 15
    assert np.all(result["mapd_top"][:, planted] == MISLABELED)
    assert np.all(result["mapd_probabilities"][:, planted, MISLABELED] >= 0.9)


def test_dense_mapd_top_is_the_modal_category_ties_to_lowest(world, result):
    tie = world.tie_example
    assert list(result["mapd_top"][:3, tie]) == [ATYPICAL, MISLABELED, CORRUPTED]
    expected = np.where(world.suites.suite >= 0, world.suites.suite, TYPICAL)
    expected[tie] = ATYPICAL  # one vote each for 1, 2, 3: the lowest index wins
    assert np.array_equal(result["dense_mapd_top"], expected)


def test_per_example_statistics_match_plain_loops(world, result):
    labels = world.suites.train_labels
    for r in (0, 3, 6):
        run = world.runs[r]
        for n in range(0, N, 7):
            correct = [bool(run.prediction[e, n] == labels[n]) for e in range(E)]
            events = sum(1 for e in range(1, E) if correct[e - 1] and not correct[e])
            assert result["forgetting"][r, n] == events
            if not correct[-1]:
                learned = -1
            else:
                learned = next(e for e in range(E) if all(correct[e:]))
            assert result["learned_epoch"][r, n] == learned
            p = [float(run.p_gold[e, n]) for e in range(E)]
            assert result["confidence"][r, n] == pytest.approx(statistics.fmean(p), abs=1e-6)
            assert result["variability"][r, n] == pytest.approx(statistics.pstdev(p), abs=1e-6)
            assert result["correctness"][r, n] == pytest.approx(sum(correct) / E, abs=1e-6)
            losses = [float(run.loss[e, n]) for e in range(E)]
            assert result["mean_loss"][r, n] == pytest.approx(statistics.fmean(losses), abs=1e-5)
    assert result["forgetting"].max() > 0  # the planted flips do produce forgetting


def test_suite_curves_match_statistics_quantiles(world, result):
    run = world.runs[4]
    for k in range(K):
        rows = np.flatnonzero(world.suites.suite == k)
        for e in range(E):
            values = [float(run.loss[e, n]) for n in rows]
            q25, _, q75 = statistics.quantiles(values, n=4, method="inclusive")
            assert result["suite_mean"][4, k, e] == pytest.approx(statistics.fmean(values), 1e-5)
            assert result["suite_q25"][4, k, e] == pytest.approx(q25, rel=1e-5, abs=1e-6)
            assert result["suite_q75"][4, k, e] == pytest.approx(q75, rel=1e-5, abs=1e-6)


def test_populations_are_grouped_and_named(result):
    assert list(result["population_names"]) == ["finetune 50%", "gmp 80%"]
    assert list(result["population_modes"]) == ["finetune", "gmp"]
    assert list(result["population_sparsity"]) == [0.5, 0.8]
    assert list(result["population_size"]) == [2, 3]
    assert int(result["dense_population_size"]) == 3


def test_test_set_pies_are_the_planted_ones(world, result):
    gmp, finetune = 1, 0
    assert np.array_equal(np.flatnonzero(result["pie"][gmp]), world.test_pie)
    assert result["pie_fraction"][gmp] == world.test_pie.size / M == 0.12
    assert not result["pie"][finetune].any() and result["pie_fraction"][finetune] == 0.0


def _member_accuracy(predictions, labels, subset):
    hits = [predictions[m][i] == labels[i] for m in range(len(predictions)) for i in subset]
    return sum(hits) / len(hits) if hits else math.nan


def test_pie_accuracy_matches_a_plain_loop(world, result):
    labels = world.test_labels
    dense = [run.test_predictions for run in world.runs[:3]]
    for p, members in ((0, world.runs[6:]), (1, world.runs[3:6])):
        pruned = [run.test_predictions for run in members]
        pie = set(np.flatnonzero(result["pie"][p]).tolist())
        subsets = ([i for i in range(M) if i in pie], [i for i in range(M) if i not in pie],
                   list(range(M)))
        for s, subset in enumerate(subsets):
            for col, population in enumerate((dense, pruned)):
                expected = _member_accuracy(population, labels, subset)
                got = result["pie_accuracy"][p, s, col]
                assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    assert np.all(np.isnan(result["pie_accuracy"][0, 0]))  # the fine-tuned runs have no PIE


def _welch_p(a, b):
    """Two-sided Welch test written out (Welch–Satterthwaite degrees of freedom)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return math.nan if diff == 0 else 0.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * student_t.sf(abs(t), df)


def test_class_recall_change_subtracts_the_population_mean_accuracy(world, result):
    labels = world.test_labels

    def normalised(runs):
        rows = []
        accuracy = statistics.fmean(
            sum(run.test_predictions[i] == labels[i] for i in range(M)) / M for run in runs
        )
        for run in runs:
            row = []
            for c in range(C):
                members = [i for i in range(M) if labels[i] == c]
                hits = sum(run.test_predictions[i] == c for i in members)
                row.append(hits / len(members) - accuracy)
            rows.append(row)
        return rows

    dense = normalised(world.runs[:3])
    for p, members in ((0, world.runs[6:]), (1, world.runs[3:6])):
        pruned = normalised(members)
        for c in range(C):
            a, b = [row[c] for row in dense], [row[c] for row in pruned]
            difference = statistics.fmean(b) - statistics.fmean(a)
            assert result["class_recall_change"][p, c] == pytest.approx(difference, abs=1e-12)
            expected_p = _welch_p(a, b)
            got = result["class_recall_p"][p, c]
            assert (math.isnan(got) and math.isnan(expected_p)) or got == pytest.approx(expected_p)


def test_training_set_pies_and_their_enrichment(world, result):
    gmp, finetune = 1, 0
    assert np.array_equal(np.flatnonzero(result["train_pie"][gmp]), world.train_pie)
    assert not result["train_pie"][finetune].any()
    # 15 planted on mislabeled probes and 5 on ordinary (typical) examples; the dense MAP-D
    # categories are 279 typical (240 ordinary − the tie example + 40 probes), 41 atypical,
    # 40 mislabeled, 40 corrupted.
    assert list(result["train_pie_category_count"][gmp]) == [5, 0, 15, 0]
    expected = [(5 / 20) / (279 / 400), 0.0, (15 / 20) / (40 / 400), 0.0]
    assert np.allclose(result["train_pie_category_enrichment"][gmp], expected)
    assert result["train_pie_category_enrichment"][gmp, MISLABELED] == pytest.approx(7.5)
    for k in range(K):
        assert result["train_pie_category_enrichment"][gmp, k] == pytest.approx(
            enrichment(result["train_pie"][gmp], result["dense_mapd_top"] == k)
        )
    assert list(result["train_pie_category_count"][finetune]) == [0, 0, 0, 0]
    assert np.all(np.isnan(result["train_pie_category_enrichment"][finetune]))


def test_modal_category_ties_go_to_the_lowest_index():
    top = np.array([[1, 3, 0, 2], [2, 3, 1, 2], [3, 0, 1, 1]])
    # Column 0: 1, 2, 3 tie → 1; column 1: 3 twice; column 2: 1 twice; column 3: 2 twice.
    assert list(modal_category(top, 4)) == [1, 3, 1, 2]
    assert list(modal_category(np.array([[3], [2]]), 4)) == [2]


def test_category_enrichment_matches_the_metric_per_flag():
    rng = np.random.default_rng(3)
    category = rng.integers(0, 3, 50)  # category 3 never occurs
    flags = rng.random((4, 50)) < 0.3
    flags[2] = False  # a flag that marks nothing
    count, ratio = category_enrichment(flags, category, 4)
    for p in range(4):
        for k in range(4):
            assert count[p, k] == sum(
                1 for i in range(50) if flags[p, i] and category[i] == k
            )
            expected = enrichment(flags[p], category == k)
            assert (math.isnan(ratio[p, k]) and math.isnan(expected)) or \
                ratio[p, k] == pytest.approx(expected)
    assert np.all(np.isnan(ratio[2])) and np.all(np.isnan(ratio[:, 3]))


def test_population_grouping_sorted_with_single_member_populations(world):
    make = world.make_run
    runs = [
        make("gmp80-a", "gmp", 0.8, 0), make("ft50-a", "finetune", 0.5, 0),
        make("dense-a", "dense", 0.0, 0), make("gmp50-a", "gmp", 0.5, 1),
        make("ft50-b", "finetune", 0.5, 1), make("dense-b", "dense", 0.0, 1),
        make("gmp80-b", "gmp", 0.8, 2),
    ]
    out = analyse_dynamics(runs, world.suites, world.test_labels, CLASS_NAMES)
    assert list(out["population_names"]) == ["finetune 50%", "gmp 50%", "gmp 80%"]
    assert list(out["population_size"]) == [2, 1, 2]
    assert int(out["dense_population_size"]) == 2
    assert list(out["run_names"]) == [run.name for run in runs]  # runs keep their order
    assert np.all(np.isnan(out["class_recall_p"][1]))  # one member: no Welch test


def test_only_dense_runs_give_empty_population_arrays(world):
    out = analyse_dynamics(world.runs[:2], world.suites, world.test_labels, CLASS_NAMES)
    assert out["pie"].shape == (0, M) and out["train_pie"].shape == (0, N)
    assert out["train_pie_category_enrichment"].shape == (0, K)
    assert out["population_names"].dtype.kind == "U" and out["population_names"].size == 0


def test_no_held_out_probe_gives_nan_accuracy(world):
    suites = world.suites
    only_reference = SuiteArrays(
        CATEGORIES, suites.suite, suites.suite >= 0, suites.train_labels,
        suites.original_labels,
    )
    out = analyse_dynamics(world.runs[:1], only_reference, world.test_labels, CLASS_NAMES)
    assert np.isnan(out["probe_accuracy"][0]) and not out["probe_confusion"].any()


def test_from_probe_suites_takes_the_training_probe_suites(world):
    probe_suites = SimpleNamespace(
        categories=list(CATEGORIES), suite=world.suites.suite, reference=world.suites.reference,
        original_labels=world.suites.original_labels,
    )
    arrays = SuiteArrays.from_probe_suites(probe_suites, world.suites.train_labels)
    assert arrays.categories == CATEGORIES
    assert np.array_equal(arrays.train_labels, world.suites.train_labels)


def test_errors_name_the_problem(world):
    suites, labels = world.suites, world.test_labels
    with pytest.raises(ValueError, match="add a dense run"):
        analyse_dynamics(world.runs[3:], suites, labels, CLASS_NAMES)
    short = world.make_run("gmp80-short", "gmp", 0.8, 5, epochs=E - 2)
    with pytest.raises(ValueError, match="epochs") as info:
        analyse_dynamics([*world.runs[:2], short], suites, labels, CLASS_NAMES)
    message = str(info.value)
    assert "16 epochs: dense-s0, dense-s1" in message and "14 epochs: gmp80-short" in message
    truncated = RunRecord(**{**vars(world.runs[0]), "name": "cut",
                             "loss": world.runs[0].loss[:, :-1],
                             "prediction": world.runs[0].prediction[:, :-1],
                             "p_gold": world.runs[0].p_gold[:, :-1]})
    with pytest.raises(ValueError, match="'cut' records 399 training examples"):
        analyse_dynamics([world.runs[0], truncated], suites, labels, CLASS_NAMES)
    mismatched = RunRecord(**{**vars(world.runs[0]), "p_gold": world.runs[0].p_gold[:-1]})
    with pytest.raises(ValueError, match="p_gold has shape"):
        analyse_dynamics([mismatched], suites, labels, CLASS_NAMES)
    with pytest.raises(ValueError, match="mode 'magnitude'"):
        bad = RunRecord(**{**vars(world.runs[3]), "mode": "magnitude"})
        analyse_dynamics([world.runs[0], bad], suites, labels, CLASS_NAMES)
    with pytest.raises(ValueError, match="test_predictions has 99 entries"):
        bad = RunRecord(**{**vars(world.runs[0]), "test_predictions": labels[:-1]})
        analyse_dynamics([bad], suites, labels, CLASS_NAMES)
    with pytest.raises(ValueError, match="outside"):
        analyse_dynamics(world.runs[:1], suites, labels, CLASS_NAMES[:2])
    with pytest.raises(ValueError, match="unique"):
        analyse_dynamics([world.runs[0], world.runs[0]], suites, labels, CLASS_NAMES)
    with pytest.raises(ValueError, match="no probe is a kNN reference"):
        no_reference = SuiteArrays(CATEGORIES, suites.suite, np.zeros(N, bool),
                                   suites.train_labels, suites.original_labels)
        analyse_dynamics(world.runs[:1], no_reference, labels, CLASS_NAMES)


def test_cie_distance_transitions_and_groups_match_plain_loops(world):
    groups = np.array([f"g{i % 3}" for i in range(len(world.test_labels))])
    out = analyse_dynamics(world.runs, world.suites, world.test_labels, CLASS_NAMES,
                           test_groups=groups)
    modes = out["run_modes"].tolist()
    dense = [i for i, m in enumerate(modes) if m == "dense"]
    n_classes, n_categories = len(CLASS_NAMES), len(CATEGORIES)
    for p, name in enumerate(out["population_names"].tolist()):
        mode, level = name.split()
        members = [i for i, m in enumerate(modes) if m == mode and
                   round(100 * out["run_sparsity"][i]) == int(level[:-1])]
        preds = out["test_predictions"]
        for i in range(0, len(world.test_labels), 7):
            share = [np.mean([preds[r, i] == c for r in runs]) for runs in (dense, members)
                     for c in range(n_classes)]
            expected = sum(abs(share[c] - share[n_classes + c]) for c in range(n_classes))
            assert out["cie_distance"][p, i] == pytest.approx(expected)
        table = np.zeros((n_categories, n_categories), dtype=int)
        tops = out["mapd_top"]
        for x in range(tops.shape[1]):
            pruned_top = np.bincount(tops[members, x], minlength=n_categories).argmax()
            table[out["dense_mapd_top"][x], pruned_top] += 1
        assert np.array_equal(out["category_transitions"][p], table)
        assert out["group_names"].tolist() == ["g0", "g1", "g2"]
        for g, value in enumerate(["g0", "g1", "g2"]):
            rows = groups == value
            assert out["group_count"][g] == rows.sum()
            assert out["group_pie_fraction"][p, g] == pytest.approx(out["pie"][p][rows].mean())
            change = np.mean([(preds[r][rows] == world.test_labels[rows]).mean()
                              for r in members]) - np.mean(
                [(preds[r][rows] == world.test_labels[rows]).mean() for r in dense])
            assert out["group_accuracy_change"][p, g] == pytest.approx(change)
    with pytest.raises(ValueError, match="one value per test example"):
        analyse_dynamics(world.runs, world.suites, world.test_labels, CLASS_NAMES,
                         test_groups=groups[:3])
