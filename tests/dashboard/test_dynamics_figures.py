"""The Dynamics page's figures, tables and view from hand-built "dynamics" arrays, and the page's
layout with and without a result."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from prunescope.dashboard.figures.dynamics import (
    BACKGROUND_COLOUR,
    CATEGORY_COLOURS,
    DENSE_COLOUR,
    NO_DYNAMICS,
    NO_POPULATION,
    PIE_COLOUR,
    category_colour,
    class_recall_figure,
    class_recall_order,
    data_map_figure,
    example_rows,
    modal_labels,
    mode_colour,
    pie_accuracy_figure,
    pie_enrichment_figure,
    pie_fraction_figure,
    pie_rows,
    population_runs,
    probe_confusion_figure,
    run_members,
    selection_from_event,
    suite_loss_figure,
    surfaced_indices,
    surfaced_rows,
)
from prunescope.dashboard.galleries import pie_table, selection_gallery, surfaced_gallery
from prunescope.dashboard.state import decode_selection, parse_query
from prunescope.dashboard.views.dynamics import parse_view, view_query

RUNS = ["dense-s0", "dense-s1", "gmp80-s0", "gmp80-s1", "ft50-s0", "gmp50-s0"]
MODES = ["dense", "dense", "gmp", "gmp", "finetune", "gmp"]
SPARSITY = [0.0, 0.0, 0.8, 0.8, 0.5, 0.5]
# Deliberately not in (mode, sparsity) order: figures must sort for themselves.
POPULATIONS = [("gmp 80%", "gmp", 0.8), ("finetune 50%", "finetune", 0.5),
               ("gmp 50%", "gmp", 0.5)]
CATEGORIES = ["typical", "atypical", "mislabeled"]
CLASSES = ["zero", "one", "two"]


def _modal(column: list[int], highest: bool = True) -> int:
    """Most common value of a list, plainly; ties to the highest (or lowest) value."""
    counts = Counter(column)
    best = max(counts.values())
    tied = [v for v, c in counts.items() if c == best]
    return max(tied) if highest else min(tied)


def _members(population: str) -> list[int]:
    if population == "dense":
        return [r for r in range(len(RUNS)) if MODES[r] == "dense"]
    _, mode, sparsity = next(p for p in POPULATIONS if p[0] == population)
    return [r for r in range(len(RUNS)) if MODES[r] == mode and SPARSITY[r] == sparsity]


def _dynamics() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    r, n, e, k, m, c, p = len(RUNS), 12, 4, len(CATEGORIES), 10, len(CLASSES), len(POPULATIONS)
    suite = np.array([-1, 0, 0, 1, 1, 2, 2, -1, -1, 0, 1, 2], dtype=np.int8)
    train_labels = rng.integers(0, c, n)
    original = train_labels.copy()
    original[suite == 2] = (train_labels[suite == 2] + 1) % c  # the mislabeled probes' truth
    probabilities = rng.random((r, n, k)).astype(np.float32)
    probabilities /= probabilities.sum(axis=2, keepdims=True)
    mapd_top = probabilities.argmax(axis=2).astype(np.int8)
    mapd_top[0, 4], mapd_top[1, 4] = 2, 1  # a dense tie: the lowest category wins
    final = rng.integers(0, c, (r, n))
    test_labels = rng.integers(0, c, m)
    test_predictions = rng.integers(0, c, (r, m))
    test_predictions[:, 0] = [1, 1, 2, 2, 0, 0]  # dense 1 vs gmp 80% 2: a PIE
    test_predictions[:, 1] = [0, 2, 0, 2, 2, 1]  # dense tie → 2, gmp 80% tie → 2: not a PIE

    def pies(predictions: np.ndarray) -> np.ndarray:
        dense = [_modal(list(predictions[_members("dense"), i])) for i in
                 range(predictions.shape[1])]
        return np.array([[_modal(list(predictions[_members(name), i])) != dense[i]
                          for i in range(predictions.shape[1])] for name, _, _ in POPULATIONS])

    pie, train_pie = pies(test_predictions), pies(final)
    learned = rng.integers(-1, e, (r, n)).astype(np.int32)
    learned[:, 0] = [2, 3, 1, 1, 1, 1]
    learned[:, 1] = [2, -1, 1, 1, 1, 1]
    change = np.array([[0.05, -0.10, np.nan], [-0.02, -0.02, 0.03], [0.0, 0.01, -0.3]])
    p_value = np.array([[0.5, 0.01, np.nan], [0.2, 0.04, 0.9], [np.nan] * 3])
    enrichment = np.array([[0.5, 2.0, 1.5], [np.nan] * 3, [1.0, 1.0, 1.0]])
    suite_q = rng.random((3, r, k, e)).astype(np.float32)
    return {
        "run_names": np.array(RUNS), "run_modes": np.array(MODES),
        "run_sparsity": np.array(SPARSITY), "run_seeds": np.array([0, 1, 0, 1, 0, 0]),
        "run_test_accuracy": rng.random(r), "epochs": np.arange(1, e + 1),
        "categories": np.array(CATEGORIES), "suite": suite,
        "reference": (np.arange(n) % 2 == 0) & (suite >= 0),
        "train_labels": train_labels, "original_labels": original,
        "loss": rng.random((r, n, e)).astype(np.float32),
        "mapd_probabilities": probabilities, "mapd_top": mapd_top,
        "probe_accuracy": np.array([0.9, 0.7, 0.6, 0.5, 0.4, 0.3]),
        "probe_confusion": rng.integers(0, 5, (r, k, k)),
        "confidence": rng.random((r, n)).astype(np.float32),
        "variability": (0.5 * rng.random((r, n))).astype(np.float32),
        "correctness": rng.random((r, n)).astype(np.float32),
        "forgetting": rng.integers(0, 3, (r, n)).astype(np.int32),
        "learned_epoch": learned, "final_prediction": final,
        "mean_loss": rng.random((r, n)).astype(np.float32),
        "suite_mean": suite_q[0], "suite_q25": np.minimum(suite_q[0], suite_q[1]),
        "suite_q75": np.maximum(suite_q[0], suite_q[2]),
        "population_names": np.array([name for name, _, _ in POPULATIONS]),
        "population_modes": np.array([mode for _, mode, _ in POPULATIONS]),
        "population_sparsity": np.array([s for _, _, s in POPULATIONS]),
        "population_size": np.array([len(_members(name)) for name, _, _ in POPULATIONS]),
        "dense_population_size": np.array(2),
        "test_labels": test_labels, "test_predictions": test_predictions,
        "pie": pie, "pie_fraction": pie.mean(axis=1),
        "pie_accuracy": rng.random((p, 3, 2)),
        "class_recall_change": change, "class_recall_p": p_value,
        "train_pie": train_pie,
        "train_pie_category_count": rng.integers(0, 4, (p, k)),
        "train_pie_category_enrichment": enrichment,
        "dense_mapd_top": np.array([_modal(list(mapd_top[:2, i]), highest=False)
                                    for i in range(n)], dtype=np.int8),
        "class_names": np.array(CLASSES),
        "train_thumbnails": rng.integers(0, 255, (n, 4, 4)).astype(np.uint8),
        "test_thumbnails": rng.integers(0, 255, (m, 4, 4)).astype(np.uint8),
    }


def _message(fig) -> str:  # noqa: ANN001
    return " ".join(a.text for a in fig.layout.annotations)


# ------------------------------------------------------------------ runs and populations


def test_populations_are_the_runs_of_one_mode_and_sparsity() -> None:
    dyn = _dynamics()
    for name in ["dense", *(p[0] for p in POPULATIONS)]:
        assert population_runs(dyn, name).tolist() == _members(name)
    assert population_runs(dyn, "gmp 90%").size == 0
    assert run_members(dyn, "mean:gmp 80%").tolist() == [2, 3]
    assert run_members(dyn, "ft50-s0").tolist() == [4]


@pytest.mark.parametrize("highest", [True, False])
def test_modal_labels_match_a_plain_count_with_either_tie_rule(highest: bool) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (5, 300))
    labels[:, 0] = [3, 3, 1, 1, 0]  # a tie between 1 and 3
    got = modal_labels(labels, ties="highest" if highest else "lowest")
    expected = [_modal(list(labels[:, i]), highest) for i in range(labels.shape[1])]
    assert got.tolist() == expected
    assert got[0] == (3 if highest else 1)
    assert modal_labels(np.array([2, 0, 1])).tolist() == [2, 0, 1]  # one run: itself


def test_modal_labels_agree_with_the_results_own_pie_flags() -> None:
    dyn = _dynamics()
    dense = modal_labels(dyn["test_predictions"][[0, 1]])
    for p, (name, _, _) in enumerate(POPULATIONS):
        pruned = modal_labels(dyn["test_predictions"][_members(name)])
        assert (pruned != dense).tolist() == dyn["pie"][p].tolist()
    assert dyn["pie"][0, 0] and not dyn["pie"][0, 1]


# ------------------------------------------------------------------ loss per probe suite


def _traces(fig, side: str, stat: str) -> list:  # noqa: ANN001
    return [t for t in fig.data if t.meta and t.meta["side"] == side and t.meta["stat"] == stat]


def test_suite_panels_average_the_member_runs_with_their_quartile_band() -> None:
    dyn = _dynamics()
    fig = suite_loss_figure(dyn, "gmp 80%", "panels")
    assert len(fig.data) == 2 * 3 * len(CATEGORIES)  # 2 sides × (q25, q75, mean) × suites
    for side, members in (("dense", [0, 1]), ("gmp 80%", [2, 3])):
        for stat, key in (("mean", "suite_mean"), ("q25", "suite_q25"), ("q75", "suite_q75")):
            traces = _traces(fig, side, stat)
            assert [t.meta["category"] for t in traces] == CATEGORIES
            for k, trace in enumerate(traces):
                expected = [sum(float(dyn[key][r, k, e]) for r in members) / len(members)
                            for e in range(4)]
                np.testing.assert_allclose(trace.y, expected, rtol=1e-6)
                assert list(trace.x) == [1, 2, 3, 4]
    for i, trace in enumerate(fig.data):  # each band fills from its q25 up to its q75
        if trace.meta["stat"] == "q75":
            below = fig.data[i - 1]
            assert trace.fill == "tonexty" and below.meta == {**trace.meta, "stat": "q25"}
    assert {t.line.color for t in _traces(fig, "dense", "mean")} == {DENSE_COLOUR}
    assert {t.line.color for t in _traces(fig, "gmp 80%", "mean")} == {mode_colour("gmp")}
    assert mode_colour("gmp") != mode_colour("finetune") != DENSE_COLOUR


def test_suite_overlay_colours_by_category_and_dashes_the_pruned_side() -> None:
    fig = suite_loss_figure(_dynamics(), "finetune 50%", "overlay")
    for trace in _traces(fig, "dense", "mean"):
        assert trace.line.color == CATEGORY_COLOURS[trace.meta["category"]]
        assert trace.line.dash == "solid"
    pruned = _traces(fig, "finetune 50%", "mean")
    assert len(pruned) == 3 and {t.line.dash for t in pruned} == {"dash"}


def test_suite_figure_without_a_result_or_population() -> None:
    assert NO_DYNAMICS in _message(suite_loss_figure(None, "gmp 80%"))
    fig = suite_loss_figure(_dynamics(), "no such population")
    assert {t.meta["side"] for t in fig.data} == {"dense"}


# ------------------------------------------------------------------------- data map


def test_data_map_groups_one_runs_examples_by_its_mapd_category() -> None:
    dyn = _dynamics()
    fig = data_map_figure(dyn, "ft50-s0", "mapd")
    seen: list[int] = []
    for trace in fig.data:
        k = CATEGORIES.index(trace.meta["group"])
        expected = [i for i in range(12) if dyn["mapd_top"][4, i] == k]
        assert list(trace.customdata) == expected
        np.testing.assert_allclose(trace.x, dyn["variability"][4, expected], rtol=1e-6)
        np.testing.assert_allclose(trace.y, dyn["confidence"][4, expected], rtol=1e-6)
        assert trace.marker.color == category_colour(CATEGORIES[k])
        assert trace.type == "scattergl"
        seen += expected
    assert sorted(seen) == list(range(12))  # every example once
    assert fig.layout.dragmode == "lasso"


def test_a_population_mean_averages_runs_and_takes_the_modal_category() -> None:
    dyn = _dynamics()
    fig = data_map_figure(dyn, "mean:dense", "mapd")
    groups = {t.meta["group"]: t for t in fig.data}
    for k, category in enumerate(CATEGORIES):
        expected = [i for i in range(12) if dyn["dense_mapd_top"][i] == k]
        if not expected:
            assert category not in groups
            continue
        trace = groups[category]
        assert list(trace.customdata) == expected
        mean = [(float(dyn["variability"][0, i]) + float(dyn["variability"][1, i])) / 2
                for i in expected]
        np.testing.assert_allclose(trace.x, mean, rtol=1e-6)
    assert 4 in groups["atypical"].customdata  # the dense tie (2 vs 1) goes to the lower


def test_data_map_by_suite_and_by_train_pie() -> None:
    dyn = _dynamics()
    by_suite = data_map_figure(dyn, "dense-s0", "suite")
    assert by_suite.data[0].meta["group"] == "not a probe"
    assert by_suite.data[0].marker.color == BACKGROUND_COLOUR
    assert list(by_suite.data[0].customdata) == [0, 7, 8]
    assert list(by_suite.data[3].customdata) == [5, 6, 11]  # mislabeled, drawn on top
    by_pie = data_map_figure(dyn, "dense-s0", "pie", "gmp 80%")
    pies = [t for t in by_pie.data if t.marker.color == PIE_COLOUR]
    expected = np.flatnonzero(dyn["train_pie"][0]).tolist()
    assert (list(pies[0].customdata) if pies else []) == expected
    assert NO_POPULATION in _message(data_map_figure(
        {**dyn, "population_names": np.array([], str)}, "dense-s0", "pie", None))
    assert "no run or population" in _message(data_map_figure(dyn, "nope", "mapd"))
    assert "unknown colouring" in _message(data_map_figure(dyn, "dense-s0", "rainbow"))
    assert NO_DYNAMICS in _message(data_map_figure(None, "dense-s0"))


def test_a_selection_marks_the_same_examples_in_every_trace() -> None:
    dyn = _dynamics()
    chosen = [0, 3, 5, 11]
    fig = data_map_figure(dyn, "dense-s1", "suite", selection=chosen)
    marked = [int(t.customdata[i]) for t in fig.data for i in (t.selectedpoints or [])]
    assert sorted(marked) == chosen
    assert all(t.selectedpoints is None for t in data_map_figure(dyn, "dense-s1", "suite").data)


def test_a_lasso_event_gives_example_indices_from_customdata() -> None:
    event = {"points": [{"curveNumber": 1, "pointIndex": 0, "customdata": 7},
                        {"curveNumber": 0, "pointIndex": 2, "customdata": 3},
                        {"curveNumber": 2, "pointIndex": 0, "customdata": [9, "extra"]},
                        {"curveNumber": 0, "pointIndex": 4, "customdata": 3},
                        {"curveNumber": 0, "pointIndex": 5}]}
    assert selection_from_event(event) == [3, 7, 9]
    assert selection_from_event(None) == [] == selection_from_event({"points": []})


# ---------------------------------------------------------------------------- PIEs


def test_pie_fraction_is_one_line_per_mode_in_sparsity_order() -> None:
    dyn = _dynamics()
    fig = pie_fraction_figure(dyn)
    assert [t.name for t in fig.data] == ["gmp", "finetune"]
    gmp = fig.data[0]
    assert list(gmp.text) == ["gmp 50%", "gmp 80%"]
    np.testing.assert_allclose(gmp.x, [50.0, 80.0])
    np.testing.assert_allclose(gmp.y, [100 * dyn["pie"][2].mean(), 100 * dyn["pie"][0].mean()])
    assert gmp.line.color == mode_colour("gmp")
    assert list(fig.data[1].customdata) == [1]  # population size
    assert NO_POPULATION in _message(pie_fraction_figure(
        {**dyn, "population_names": np.array([], str)}))


def test_pie_accuracy_bars_are_dense_and_pruned_per_subset() -> None:
    dyn = _dynamics()
    fig = pie_accuracy_figure(dyn, "gmp 80%")
    dense, pruned = fig.data
    np.testing.assert_allclose(dense.y, 100 * dyn["pie_accuracy"][0, :, 0])
    np.testing.assert_allclose(pruned.y, 100 * dyn["pie_accuracy"][0, :, 1])
    pies = int(dyn["pie"][0].sum())
    assert list(dense.x) == [f"PIEs (n={pies})", f"non-PIEs (n={10 - pies})", "all (n=10)"]
    assert dense.marker.color == DENSE_COLOUR and pruned.marker.color == mode_colour("gmp")
    assert "no pruned population" in _message(pie_accuracy_figure(dyn, "gmp 99%"))


def test_class_recall_bars_put_the_most_harmed_first_and_star_significant_ones() -> None:
    dyn = _dynamics()
    fig = class_recall_figure(dyn, "gmp 80%")
    bar = fig.data[0]
    change = dyn["class_recall_change"][0]
    expected = sorted(range(3), key=lambda c: (np.isnan(change[c]),
                                               0 if np.isnan(change[c]) else change[c], c))
    assert list(bar.x) == [CLASSES[c] for c in expected] == ["one", "zero", "two"]
    np.testing.assert_allclose(bar.y[:2], [-10.0, 5.0])
    assert list(bar.text) == ["*", "", ""]  # p 0.01 only
    assert list(bar.marker.color) == ["#d62728", BACKGROUND_COLOUR, BACKGROUND_COLOUR]
    # Ties keep class order; a population without p-values says why.
    assert class_recall_order(np.array([-0.02, -0.02, 0.03])).tolist() == [0, 1, 2]
    assert "at least 2 runs" in class_recall_figure(dyn, "gmp 50%").layout.title.text


# --------------------------------------------------------------------------- MAP-D


def test_probe_confusion_sums_counts_and_colours_by_row_share() -> None:
    dyn = _dynamics()
    fig = probe_confusion_figure(dyn, "mean:gmp 80%")
    heat = fig.data[0]
    counts = dyn["probe_confusion"][2] + dyn["probe_confusion"][3]
    assert np.asarray(heat.text).astype(int).tolist() == counts.tolist()
    for i in range(3):
        total = counts[i].sum()
        expected = counts[i] / total if total else np.zeros(3)
        np.testing.assert_allclose(np.asarray(heat.z)[i], expected)
    assert "55.0%" in fig.layout.title.text  # mean of 0.6 and 0.5
    assert list(heat.x) == CATEGORIES == list(heat.y)


def test_enrichment_bars_in_category_colours_with_a_line_at_one() -> None:
    dyn = _dynamics()
    fig = pie_enrichment_figure(dyn, "gmp 80%")
    bar = fig.data[0]
    np.testing.assert_allclose(bar.y, [0.5, 2.0, 1.5])
    assert list(bar.marker.color) == [CATEGORY_COLOURS[c] for c in CATEGORIES]
    assert list(bar.customdata) == dyn["train_pie_category_count"][0].tolist()
    assert [s.y0 for s in fig.layout.shapes] == [1.0]
    assert "No train PIEs" in _message(pie_enrichment_figure(dyn, "finetune 50%"))


# ---------------------------------------------------------------------------- tables


def test_example_rows_report_one_run_as_stored() -> None:
    dyn = _dynamics()
    rows = example_rows(dyn, [5, 0, 99], "gmp80-s1", "gmp 80%")
    assert [r["index"] for r in rows] == [5, 0]  # order kept, out of range dropped
    row = rows[0]
    assert row["label"] == CLASSES[dyn["train_labels"][5]]
    assert row["original_label"] == CLASSES[dyn["original_labels"][5]] != row["label"]
    assert row["suite"] == "mislabeled" and rows[1]["suite"] == ""
    top = int(dyn["mapd_top"][3, 5])
    assert row["mapd_category"] == CATEGORIES[top]
    assert row["mapd_probability"] == pytest.approx(float(dyn["mapd_probabilities"][3, 5, top]))
    for key in ("confidence", "variability", "correctness", "forgetting", "mean_loss"):
        assert row[key] == pytest.approx(float(dyn[key][3, 5]))
    assert row["prediction"] == CLASSES[dyn["final_prediction"][3, 5]]
    assert row["train_pie"] == bool(dyn["train_pie"][0, 5])
    assert rows[1]["learned_epoch"] == 1
    assert example_rows(dyn, [1], "nope") == [] == example_rows(None, [1], "dense-s0")


def test_example_rows_of_a_population_are_member_means() -> None:
    dyn = _dynamics()
    rows = example_rows(dyn, [0, 1], "mean:dense")
    assert rows[0]["confidence"] == pytest.approx(float(dyn["confidence"][:2, 0].mean()))
    assert rows[0]["learned_epoch"] == 3  # learned by every dense run by epoch 3
    assert rows[1]["learned_epoch"] is None  # dense-s1 never learned it
    assert "train_pie" not in rows[0]


def test_surfaced_examples_are_a_categorys_members_by_probability() -> None:
    dyn = _dynamics()
    for k, category in enumerate(CATEGORIES):
        members = [i for i in range(12) if dyn["mapd_top"][2, i] == k]
        expected = sorted(members, key=lambda i: (-float(dyn["mapd_probabilities"][2, i, k]), i))
        assert surfaced_indices(dyn, "gmp80-s0", category, None) == expected
        assert surfaced_indices(dyn, "gmp80-s0", category, 1) == expected[:1]
    rows = surfaced_rows(dyn, "gmp80-s0", CATEGORIES[0], None)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert {r["mapd_category"] for r in rows} <= {CATEGORIES[0]}
    assert surfaced_indices(dyn, "gmp80-s0", "nonsense") == []


def test_surfaced_ties_in_probability_go_by_index() -> None:
    dyn = _dynamics()
    probabilities = np.zeros((6, 12, 3), np.float32)
    probabilities[:, :, 1] = 0.5
    probabilities[:, :, 0] = 0.25
    probabilities[:, :, 2] = 0.25
    tied = {**dyn, "mapd_probabilities": probabilities, "mapd_top": np.ones((6, 12), np.int8)}
    assert surfaced_indices(tied, "dense-s0", "atypical", None) == list(range(12))


def test_pie_rows_list_each_pie_with_every_populations_modal_prediction() -> None:
    dyn = _dynamics()
    rows = pie_rows(dyn, "gmp 80%")
    assert [r["index"] for r in rows] == np.flatnonzero(dyn["pie"][0]).tolist()
    for row in rows:
        i = row["index"]
        assert row["label"] == CLASSES[dyn["test_labels"][i]]
        for name in ["dense", *(p[0] for p in POPULATIONS)]:
            column = list(dyn["test_predictions"][_members(name), i])
            assert row[f"{name} prediction"] == CLASSES[_modal(column)]
        assert row["dense prediction"] != row["gmp 80% prediction"]
        dense = list(dyn["test_predictions"][[0, 1], i])
        assert row["dense agreement"] == dense.count(_modal(dense)) / 2
    assert rows[0]["index"] == 0 and rows[0]["gmp 80% prediction"] == "two"
    train = pie_rows(dyn, "gmp 80%", "train")
    assert [r["index"] for r in train] == np.flatnonzero(dyn["train_pie"][0]).tolist()
    assert pie_rows(dyn, "gmp 80%", limit=1) == rows[:1]
    assert pie_rows(dyn, "nope") == [] == pie_rows(None, "gmp 80%")
    with pytest.raises(ValueError, match="split"):
        pie_rows(dyn, "gmp 80%", "validation")


# ------------------------------------------------------------------------ view state


def test_the_view_defaults_and_replaces_bad_values() -> None:
    dyn = _dynamics()
    default = {"run": "mean:dense", "population": "gmp 80%", "color": "mapd",
               "suite_view": "panels", "cat": "atypical", "sel": []}
    assert parse_view({}, dyn) == default
    bad = {"run": "dense-s9", "population": "gmp 99%", "color": "rainbow",
           "suite_view": "3d", "cat": "ood", "sel": "not-a-selection"}
    assert parse_view(bad, dyn) == default
    assert parse_view({"sel": "3-5.40-50"}, dyn)["sel"] == [3, 4, 5]
    empty = parse_view({"run": "dense-s0", "sel": "1"}, None)
    assert empty == {"run": None, "population": None, "color": "mapd", "suite_view": "panels",
                     "cat": None, "sel": []}


def test_the_view_round_trips_through_the_url() -> None:
    dyn = _dynamics()
    asked = {"run": "mean:gmp 80%", "population": "finetune 50%", "color": "pie",
             "suite_view": "overlay", "cat": "mislabeled", "sel": [1, 2, 3, 7, 11]}
    query = view_query(asked, 12)
    parsed = parse_query(query)
    assert decode_selection(parsed["sel"], 12) == asked["sel"]
    assert parse_view(parsed, dyn) == asked
    assert "sel" not in parse_query(view_query({**asked, "sel": []}, 12))
    without_dense = {**dyn, "run_modes": np.array(["gmp"] * 6)}
    assert parse_view({}, without_dense)["run"] == "mean:gmp 80%"


# ------------------------------------------------------------------------------ page


@pytest.fixture
def dynamics_page(monkeypatch):  # noqa: ANN201
    """The page module as the dashboard registers it, with the services it reads replaced
    (no database)."""
    import sys

    import dash
    from fastapi import FastAPI

    from prunescope.dashboard.app import create_dash
    from prunescope.server.services import jobs, projects

    create_dash(FastAPI())
    page = next(p for p in dash.page_registry.values()
                if p.get("path_template") == "/projects/<project_id>/dynamics")
    assert page["title"] == "PruneScope — dynamics"
    project = SimpleNamespace(id=3, name="digits", architecture="cnn_small")
    monkeypatch.setattr(projects, "get_project", lambda pid, *a, **k: project)
    monkeypatch.setattr(jobs, "list_jobs", lambda pid=None, *a, **k: [])
    module = sys.modules[page["module"]]
    assert module.layout is page["layout"]
    return module


def _find(component, id_: str):  # noqa: ANN001, ANN202
    if getattr(component, "id", None) == id_:
        return component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children]:
        if child is not None and not isinstance(child, (str, int, float)) and \
                (found := _find(child, id_)) is not None:
            return found
    return None


def test_the_page_without_a_result_offers_to_run_the_analysis(dynamics_page,  # noqa: ANN001
                                                              monkeypatch) -> None:
    from prunescope.server.services import analyses

    monkeypatch.setattr(analyses, "dynamics_analysis",
                        lambda pid, *a, **k: {"dynamics": None, "result_id": None},
                        raising=False)
    page = dynamics_page.layout(project_id="3", run="dense-s0", sel="1-3")
    text = str(page.to_plotly_json())
    assert "Run the dynamics analysis" in text and "train_dynamics" in text
    assert _find(page, "dynamics-compute") is not None
    assert _find(page, "dynamics-selection").data == []
    assert NO_DYNAMICS in _message(_find(page, "dynamics-pie-fraction").figure)


def test_the_page_with_a_result_restores_the_view_from_the_url(dynamics_page,  # noqa: ANN001
                                                               monkeypatch) -> None:
    from prunescope.server.services import analyses

    dyn = _dynamics()
    monkeypatch.setattr(analyses, "dynamics_analysis",
                        lambda pid, *a, **k: {"dynamics": dyn, "result_id": 4}, raising=False)
    page = dynamics_page.layout(project_id="3", run="gmp80-s1", population="gmp 50%", color="suite",
                         cat="typical", sel="2.5", suite_view="overlay")
    assert _find(page, "dynamics-title").children == "digits: dynamics"
    assert _find(page, "dynamics-run").value == "gmp80-s1"
    assert _find(page, "dynamics-population").value == "gmp 50%"
    assert _find(page, "dynamics-color").value == "suite"
    assert _find(page, "dynamics-cat").value == "typical"
    assert _find(page, "dynamics-suite_view").value == "overlay"
    assert _find(page, "dynamics-selection").data == [2, 5]
    assert _find(page, "dynamics-version").data == 4
    assert "12 training and 10 test examples" in str(_find(page, "dynamics-about").children)
    assert "Project not found" in str(dynamics_page.layout(project_id="x").to_plotly_json())


def test_the_galleries_show_thumbnails_and_rows() -> None:
    dyn = _dynamics()
    table = selection_gallery(dyn, [5, 1], "dense-s0", "gmp 80%")
    rows = table.children[1].children
    assert len(rows) == 2 and "data:image/png;base64," in str(table.to_plotly_json())
    assert [r.children[1].children for r in rows] == ["5", "1"]  # after the thumbnail
    assert "Lasso examples" in str(selection_gallery(dyn, [], "dense-s0", None)
                                   .to_plotly_json())
    pies = pie_table(dyn, "gmp 80%")
    assert len(pies.children[1].children) == int(dyn["pie"][0].sum())
    surfaced = surfaced_gallery(dyn, "dense-s0", "atypical").children[1].children
    ranked = surfaced_indices(dyn, "dense-s0", "atypical")
    assert [r.children[1].children for r in surfaced] == [str(i + 1) for i in range(len(ranked))]
    assert [r.children[2].children for r in surfaced] == [str(i) for i in ranked]
    without = {k: v for k, v in dyn.items() if k != "train_thumbnails"}
    plain = selection_gallery(without, [5], "dense-s0", None)
    assert "data:image" not in str(plain.to_plotly_json())


def test_category_transitions_groups_and_the_taxicab_column() -> None:
    from prunescope.dashboard.figures.dynamics import (
        category_transition_figure,
        group_impact_figure,
    )

    dyn = _dynamics()
    k, p, m = len(CATEGORIES), len(POPULATIONS), len(dyn["test_labels"])
    rng = np.random.default_rng(3)
    table = rng.integers(0, 6, (p, k, k))
    table[1, 2] = 0  # a category no example holds under dense: its row share stays 0
    dyn["category_transitions"] = table
    name = POPULATIONS[1][0]
    heat = category_transition_figure(dyn, name).data[0]
    assert np.asarray(heat.text).tolist() == table[1].tolist()
    rows = table[1].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float),
                               table[1] / np.maximum(rows, 1))
    assert "predates" in category_transition_figure(_dynamics(), name).layout.annotations[0].text
    assert "no group column" in group_impact_figure(dyn, name).layout.annotations[0].text
    dyn.update(group_names=np.array(["clean", "noisy"]), group_count=np.array([6, 4]),
               group_pie_fraction=rng.random((p, 2)),
               group_accuracy_change=rng.random((p, 2)) - 0.5)
    bars = group_impact_figure(dyn, name).data
    np.testing.assert_allclose(bars[0].y, 100 * dyn["group_pie_fraction"][1])
    np.testing.assert_allclose(bars[1].y, 100 * dyn["group_accuracy_change"][1])
    assert list(bars[0].x) == ["clean", "noisy"]
    dyn["cie_distance"] = rng.random((p, m))
    rows = pie_rows(dyn, name)
    assert rows
    for row in rows:
        assert row["taxicab distance"] == dyn["cie_distance"][1, row["index"]]


def test_a_webgl_lasso_without_customdata_maps_back_through_the_drawn_traces() -> None:
    from prunescope.dashboard.figures.dynamics import data_map_figure, map_traces

    dyn = _dynamics()
    run = RUNS[0]
    fig = data_map_figure(dyn, run, "mapd")
    traces = map_traces(dyn, run, "mapd")
    assert [list(t.customdata) for t in fig.data] == [t.tolist() for t in traces]
    # What dash sends for Scattergl: curveNumber and pointIndex, no customdata.
    points = [{"curveNumber": c, "pointIndex": i} for c in range(len(traces))
              for i in range(0, len(traces[c]), 2)]
    expected = sorted(int(traces[c][i]) for c in range(len(traces))
                      for i in range(0, len(traces[c]), 2))
    assert selection_from_event({"points": points}, traces) == expected
    assert selection_from_event({"points": points}) == []
    assert selection_from_event({"points": [{"curveNumber": 99, "pointIndex": 0}]},
                                traces) == []
