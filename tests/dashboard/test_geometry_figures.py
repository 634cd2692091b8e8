"""Geometry page figures on hand-made results: traces against the arrays, point ↔ example,
colourings, orderings, empty states, table rows and the embedding's payload size."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.colors import hex_to_rgb, unlabel_rgb

from prunescope.dashboard.figures.geometry import (
    COLOR_BY,
    NO_GEOMETRY,
    NO_GROUP_COLOUR,
    NO_GROUPS,
    WRONG_COLOUR,
    angle_norm_figure,
    class_accuracy_figure,
    confusion_difference_figure,
    disagreement_figure,
    embedding_scatter,
    example_rows,
    group_accuracy_figure,
    movement_figure,
    reliability_figure,
)
from prunescope.dashboard.views.geometry import control_options

NAMES = ["dense", "mag-50", "mag-90"]
CLASSES = ["cat", "dog", "frog"]
GROUPS = ["indoor", "outdoor"]
BINS = 5


def _geometry(n: int = 50, groups: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """A consistent result: the summary arrays are counted from labels and predictions by
    plain loops, as a worker would store them."""
    rng = np.random.default_rng(seed)
    c, k = len(NAMES), len(CLASSES)
    labels = rng.integers(0, k, n)
    predictions = np.where(rng.random((c, n)) < 0.7, labels, rng.integers(0, k, (c, n)))
    predictions[0, :2] = labels[:2]  # the dense model gets these right ...
    predictions[2, :2] = (labels[:2] + 1) % k  # ... and the sparsest model wrong
    confidence = rng.uniform(0.34, 1.0, (c, n)).astype(np.float32)
    margin = rng.normal(size=(c, n)).astype(np.float32)
    group = rng.integers(-1, len(GROUPS), n) if groups else np.full(n, -1)
    confusion = np.zeros((c, k, k), dtype=np.int64)
    per_class = np.full((c, k), np.nan)
    per_group = np.full((c, len(GROUPS) if groups else 0), np.nan)
    disagreement = np.zeros((c, c))
    mean_conf, accuracy = np.full((c, BINS), np.nan), np.full((c, BINS), np.nan)
    count = np.zeros((c, BINS), dtype=np.int64)
    for ci in range(c):
        for i in range(n):
            confusion[ci, labels[i], predictions[ci, i]] += 1
        for kk in range(k):
            members = [i for i in range(n) if labels[i] == kk]
            if members:
                per_class[ci, kk] = np.mean([predictions[ci, i] == kk for i in members])
        for g in range(per_group.shape[1]):
            members = [i for i in range(n) if group[i] == g]
            if members:
                per_group[ci, g] = np.mean([predictions[ci, i] == labels[i] for i in members])
        for cj in range(c):
            disagreement[ci, cj] = np.mean(predictions[ci] != predictions[cj])
        for b in range(BINS):
            inside = [i for i in range(n) if min(int(confidence[ci, i] * BINS), BINS - 1) == b]
            count[ci, b] = len(inside)
            if inside:
                mean_conf[ci, b] = np.mean([confidence[ci, i] for i in inside])
                accuracy[ci, b] = np.mean([predictions[ci, i] == labels[i] for i in inside])
    return {
        "checkpoint_ids": np.array([7, 8, 9], dtype=np.int64),
        "checkpoint_names": np.array(NAMES),
        "checkpoint_methods": np.array(["dense", "magnitude_global", "magnitude_global"]),
        "checkpoint_roles": np.array(["dense", "pruned", "pruned"]),
        "sparsity": np.array([0.0, 0.5, 0.9]),
        "reference": np.array(0, dtype=np.int64),
        "labels": labels.astype(np.int64),
        "class_names": np.array(CLASSES),
        "predictions": predictions.astype(np.int64),
        "confidence": confidence,
        "norm": rng.uniform(1, 20, (c, n)).astype(np.float32),
        "angle": rng.uniform(0, 120, (c, n)).astype(np.float32),
        "margin": margin,
        "embedding": rng.normal(size=(c, n, 2)).astype(np.float32),
        "embedding_method": np.array("umap"),
        "per_class_accuracy": per_class,
        "confusion": confusion,
        "ece": np.array([0.0125, 0.05, 0.125]),
        "reliability_confidence": mean_conf,
        "reliability_accuracy": accuracy,
        "reliability_count": count,
        "disagreement": disagreement,
        "groups": group.astype(np.int64),
        "group_names": np.array(GROUPS if groups else [], dtype=str),
        "per_group_accuracy": per_group,
    }


@pytest.fixture
def geom() -> dict[str, np.ndarray]:
    return _geometry()


def _message(fig: go.Figure) -> str:
    assert len(fig.data) == 0
    return fig.layout.annotations[0].text


def _rgb(colour: str) -> tuple[float, ...]:
    return tuple(hex_to_rgb(colour)) if colour.startswith("#") else unlabel_rgb(colour)


def _colour_of(marker, value: float) -> str:
    """The colour a discrete (stepped) colorscale gives a value: its stop pairs bracket it."""
    position = (value - marker.cmin) / (marker.cmax - marker.cmin)
    scale = [(float(stop), colour) for stop, colour in marker.colorscale]
    for (low, colour), (high, colour_high) in zip(scale[::2], scale[1::2], strict=True):
        assert colour == colour_high  # steps, no blending
        if low <= position <= high:
            return colour
    raise AssertionError(f"{value} is outside the colorscale")


# ------------------------------------------------------------------ embedding


def test_embedding_is_one_webgl_trace_whose_point_i_is_example_i(geom):
    fig = embedding_scatter(geom, "mag-50")
    (trace,) = fig.data
    assert isinstance(trace, go.Scattergl)
    assert trace.x.dtype == np.float32 and trace.y.dtype == np.float32
    assert np.array_equal(trace.x, geom["embedding"][1, :, 0])
    assert np.array_equal(trace.y, geom["embedding"][1, :, 1])
    custom = np.asarray(trace.customdata)
    assert custom.dtype == np.uint8 and custom.shape == (50, 3)
    for i in range(50):  # row i describes example i
        assert custom[i, 0] == geom["labels"][i]
        assert custom[i, 1] == geom["predictions"][1, i]
        assert custom[i, 2] == round(100 * float(geom["confidence"][1, i]))
    assert "%{pointNumber}" in trace.hovertemplate  # the point index is the example index
    assert "%{customdata[2]}%" in trace.hovertemplate
    assert trace.selectedpoints is None
    assert fig.layout.dragmode == "lasso"
    assert not fig.layout.xaxis.showticklabels and not fig.layout.yaxis.showticklabels
    assert "mag-50" in fig.layout.title.text and "umap" in fig.layout.title.text
    # Another checkpoint and colouring keep the zoom and the lasso.
    assert embedding_scatter(geom, "dense", "correct").layout.uirevision == fig.layout.uirevision
    assert fig.layout.uirevision is not None


def test_selection_is_passed_through_and_stale_indices_are_dropped(geom):
    fig = embedding_scatter(geom, "dense", selected=[3, 7, 11])
    trace = fig.data[0]
    assert list(trace.selectedpoints) == [3, 7, 11]
    # Sent as a plain JSON list: Plotly.js does not decode a typed array in selectedpoints.
    import json

    assert json.loads(fig.to_json())["data"][0]["selectedpoints"] == [3, 7, 11]
    assert trace.unselected.marker.opacity < trace.selected.marker.opacity
    stale = embedding_scatter(geom, "dense", selected=[3, 50, -1]).data[0]
    assert list(stale.selectedpoints) == [3]
    assert embedding_scatter(geom, "dense", selected=[]).data[0].selectedpoints is None
    assert embedding_scatter(geom, "dense", selected=[99]).data[0].selectedpoints is None


def test_class_colouring_gives_each_class_its_own_colour_and_names_them(geom):
    marker = embedding_scatter(geom, "mag-90", "class").data[0].marker
    assert np.array_equal(marker.color, geom["labels"])
    colours = [_colour_of(marker, k) for k in range(len(CLASSES))]
    assert len(set(colours)) == len(CLASSES)
    for i, label in enumerate(geom["labels"]):
        assert _colour_of(marker, marker.color[i]) == colours[label]
    assert list(marker.colorbar.ticktext) == CLASSES
    assert list(marker.colorbar.tickvals) == [0, 1, 2]


def test_correct_colouring_has_two_colours_from_the_checkpoints_predictions(geom):
    marker = embedding_scatter(geom, "mag-90", "correct").data[0].marker
    correct = geom["predictions"][2] == geom["labels"]
    assert np.array_equal(marker.color, correct.astype(np.uint8))
    assert not correct[:2].any()
    assert _colour_of(marker, 0) == WRONG_COLOUR
    assert {_colour_of(marker, v) for v in marker.color} == {
        _colour_of(marker, 0), _colour_of(marker, 1)
    }
    assert list(marker.colorbar.ticktext) == ["wrong", "correct"]


def test_margin_change_colouring_is_diverging_at_zero_with_losses_red(geom):
    marker = embedding_scatter(geom, "mag-90", "margin_change").data[0].marker
    change = geom["margin"][2] - geom["margin"][0]
    assert np.array_equal(marker.color, change)
    assert marker.cmid == 0 and marker.cmin == -marker.cmax
    assert marker.cmax == pytest.approx(np.abs(change).max())
    position = (np.asarray(marker.color) - marker.cmin) / (marker.cmax - marker.cmin)
    assert np.array_equal(position < 0.5, change < 0) and (change < 0).any()
    red, green, blue = _rgb(marker.colorscale[0][1])
    assert red > blue  # a shrinking margin (towards the boundary) is red ...
    red, green, blue = _rgb(marker.colorscale[-1][1])
    assert blue > red  # ... a growing one blue
    same = embedding_scatter(geom, "dense", "margin_change").data[0].marker
    assert not np.any(same.color) and same.cmax > 0  # the dense model against itself


def test_group_colouring_codes_groups_with_grey_for_none(geom):
    marker = embedding_scatter(geom, "dense", "group").data[0].marker
    assert np.array_equal(marker.color, geom["groups"] + 1)
    none = geom["groups"] == -1
    assert none.any() and (~none).any()
    for i in range(50):
        expected = NO_GROUP_COLOUR if none[i] else _colour_of(marker, geom["groups"][i] + 1)
        assert _colour_of(marker, marker.color[i]) == expected
    assert _colour_of(marker, 1) != _colour_of(marker, 2) != NO_GROUP_COLOUR
    assert list(marker.colorbar.ticktext) == ["no group", *GROUPS]
    assert _message(embedding_scatter(_geometry(groups=False), "dense", "group")) == NO_GROUPS


def test_embedding_json_stays_below_25_bytes_per_point():
    n, k = 100_000, 10
    rng = np.random.default_rng(1)
    geom = {
        "checkpoint_names": np.array(["dense", "pruned"]),
        "reference": np.array(0),
        "labels": rng.integers(0, k, n),
        "class_names": np.array([f"class {i}" for i in range(k)]),
        "predictions": rng.integers(0, k, (2, n)),
        "confidence": rng.random((2, n)).astype(np.float32),
        "embedding": rng.normal(size=(2, n, 2)).astype(np.float32),
        "embedding_method": np.array("umap"),
    }
    for color_by in ("class", "correct"):
        fig = embedding_scatter(geom, "pruned", color_by)
        assert len(fig.data) == 1 and len(fig.data[0].x) == n
        per_point = len(fig.to_json()) / n
        assert per_point < 25, (color_by, per_point)


# ------------------------------------------------------------------ movement


def _segments(trace) -> np.ndarray:
    x, y = np.asarray(trace.x), np.asarray(trace.y)
    assert x.size % 3 == 0
    assert np.isnan(x[2::3]).all() and np.isnan(y[2::3]).all()  # a separator after each
    points = np.column_stack([x, y]).reshape(-1, 3, 2)[:, :2]
    assert np.isfinite(points).all()
    return points


def _drawn(geom, points: np.ndarray, checkpoint: int) -> list[int]:
    """The example each segment joins, checked to run from dense to the checkpoint."""
    examples = []
    for start, end in points:
        matches = np.flatnonzero((geom["embedding"][0] == start).all(axis=1))
        assert matches.size == 1
        examples.append(int(matches[0]))
        assert np.array_equal(end, geom["embedding"][checkpoint, matches[0]])
    return examples


def test_movement_draws_the_furthest_moves_without_a_selection(geom):
    fig = movement_figure(geom, "mag-90", max_lines=10)
    segments, dense, pruned = fig.data
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert segments.mode == "lines"
    drawn = _drawn(geom, _segments(segments), 2)
    e = geom["embedding"]
    moved = [math.hypot(*(e[2, i] - e[0, i]).astype(float)) for i in range(50)]
    furthest = sorted(range(50), key=lambda i: -moved[i])[:10]
    assert drawn == furthest  # longest first
    assert np.array_equal(dense.x, e[0, :, 0]) and np.array_equal(dense.y, e[0, :, 1])
    assert np.array_equal(pruned.x, e[2, :, 0]) and np.array_equal(pruned.y, e[2, :, 1])
    correct = geom["predictions"][2] == geom["labels"]
    assert np.array_equal(pruned.marker.color, correct.astype(np.uint8))
    assert "10" in fig.layout.title.text


def test_movement_draws_the_selected_examples(geom):
    fig = movement_figure(geom, "mag-50", selected=[5, 2, 5, 99])
    assert sorted(_drawn(geom, _segments(fig.data[0]), 1)) == [2, 5]
    assert "selected" in fig.layout.title.text
    capped = movement_figure(geom, "mag-50", selected=list(range(30)), max_lines=4)
    assert len(_drawn(geom, _segments(capped.data[0]), 1)) == 4
    assert len(movement_figure(geom, "mag-50", max_lines=0).data[0].x) == 0
    everything = movement_figure(geom, "mag-50", max_lines=10_000)
    assert sorted(_drawn(geom, _segments(everything.data[0]), 1)) == list(range(50))


# ------------------------------------------------------------------ per class


def test_angle_norm_shows_one_class_under_two_checkpoints_with_crosses_for_errors(geom):
    fig = angle_norm_figure(geom, 1, "dense", "mag-90")
    members = [i for i in range(50) if geom["labels"][i] == 1]
    assert [t.name for t in fig.data] == ["dense", "mag-90"]
    for trace, c in zip(fig.data, (0, 2), strict=True):
        assert np.array_equal(trace.x, geom["angle"][c, members])
        assert np.array_equal(trace.y, geom["norm"][c, members])
        assert np.asarray(trace.customdata)[:, 0].tolist() == members
        wrong = [geom["predictions"][c, i] != 1 for i in members]
        assert [s == "x" for s in trace.marker.symbol] == wrong
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert "dog" in fig.layout.title.text
    assert "angle" in fig.layout.xaxis.title.text and "length" in fig.layout.yaxis.title.text
    assert np.array_equal(angle_norm_figure(geom, "1", "dense", "mag-90").data[0].x,
                          fig.data[0].x)  # the dropdown's text value works too


def test_angle_norm_explains_a_class_it_cannot_show(geom):
    assert "'cow'" in _message(angle_norm_figure(geom, "cow", "dense", "mag-50"))
    assert "0..2" in _message(angle_norm_figure(geom, 3, "dense", "mag-50"))
    empty = {**geom, "labels": np.where(geom["labels"] == 2, 0, geom["labels"])}
    assert "no examples of class 'frog'" in _message(angle_norm_figure(empty, 2, "dense", "mag-50"))


def _by_drop_loop(reference: list[float], checkpoint: list[float]) -> list[int]:
    drops = [(reference[k] - checkpoint[k], k) for k in range(len(reference))]
    known = sorted((d for d in drops if not math.isnan(d[0])), key=lambda d: (-d[0], d[1]))
    return [k for _, k in known] + [k for d, k in drops if math.isnan(d)]


def test_classes_are_ordered_by_accuracy_drop_largest_first_nan_last(geom):
    names = ["a", "b", "c", "d", "e", "f", "g"]
    reference = [1.0, 0.75, 0.5, np.nan, 0.625, 0.5, 0.25]
    pruned = [0.875, 0.25, 0.5, 0.5, 0.125, 0.0, 0.5]
    table = {**geom, "class_names": np.array(names),
             "per_class_accuracy": np.array([reference, reference, pruned])}
    fig = class_accuracy_figure(table, "mag-90")
    order = [names.index(x) for x in fig.data[0].x]
    assert order == [1, 4, 5, 0, 2, 6, 3]  # ties (b, e, f) keep class order, NaN (d) last
    assert order == _by_drop_loop(reference, pruned)
    dense, checkpoint = fig.data
    assert np.allclose(dense.y, [100 * reference[k] for k in order], equal_nan=True)
    assert np.allclose(checkpoint.y, [100 * pruned[k] for k in order], equal_nan=True)
    assert checkpoint.customdata[0] == pytest.approx(50.0)  # drop in points
    for seed in range(5):  # random accuracies, against the loop
        rng = np.random.default_rng(seed)
        accuracy = np.round(rng.random((3, 7)), 1)
        accuracy[rng.random((3, 7)) < 0.15] = np.nan
        fig = class_accuracy_figure({**table, "per_class_accuracy": accuracy}, "mag-50")
        expected = _by_drop_loop(accuracy[0].tolist(), accuracy[1].tolist())
        assert [names.index(x) for x in fig.data[0].x] == expected


def test_confusion_difference_is_row_normalised_checkpoint_minus_dense(geom):
    fig = confusion_difference_figure(geom, "mag-90")
    (heatmap,) = fig.data
    z = np.asarray(heatmap.z, dtype=float)
    conf = geom["confusion"]
    for i in range(3):
        for j in range(3):
            expected = conf[2, i, j] / conf[2, i].sum() - conf[0, i, j] / conf[0, i].sum()
            assert z[i, j] == pytest.approx(expected)
    assert np.allclose(z.sum(axis=1), 0.0, atol=1e-12)
    assert list(heatmap.x) == list(heatmap.y) == CLASSES
    assert heatmap.zmid == 0 and heatmap.zmin == -heatmap.zmax
    assert heatmap.text[0][1] == f"{z[0, 1]:+.2f}" and heatmap.texttemplate == "%{text}"
    assert fig.layout.yaxis.title.text == "true class"
    missing = geom["confusion"].copy()
    missing[:, 2, :] = 0  # a class without examples has no shares
    z = np.asarray(confusion_difference_figure({**geom, "confusion": missing}, "mag-90").data[0].z,
                   dtype=float)
    assert np.isnan(z[2]).all() and np.allclose(z[:2].sum(axis=1), 0.0, atol=1e-12)


# ------------------------------------------------------------------ checkpoints compared


def test_reliability_draws_the_filled_bins_with_ece_in_the_legend(geom):
    geom["reliability_count"][1, 0] = 0  # an empty bin is left out
    geom["reliability_confidence"][1, 0] = np.nan
    geom["reliability_accuracy"][1, 0] = np.nan
    fig = reliability_figure(geom, ["mag-50", "dense"])
    diagonal, mag50, dense = fig.data
    assert list(diagonal.x) == [0, 1] and list(diagonal.y) == [0, 1]
    assert mag50.name == "mag-50 (ECE 0.050)" and dense.name == "dense (ECE 0.013)"
    for trace, c in ((mag50, 1), (dense, 0)):
        filled = [b for b in range(BINS) if geom["reliability_count"][c, b] > 0]
        assert list(trace.x) == [geom["reliability_confidence"][c, b] for b in filled]
        assert list(trace.y) == [geom["reliability_accuracy"][c, b] for b in filled]
        assert list(trace.customdata) == [geom["reliability_count"][c, b] for b in filled]
    assert 0 not in list(mag50.customdata)
    assert "'mag-70'" in _message(reliability_figure(geom, ["dense", "mag-70"]))
    assert "at least one" in _message(reliability_figure(geom, []))


def test_disagreement_heatmap_shows_the_matrix_with_percentages(geom):
    (heatmap,) = disagreement_figure(geom).data
    assert np.array_equal(np.asarray(heatmap.z), geom["disagreement"])
    assert list(heatmap.x) == list(heatmap.y) == NAMES
    assert heatmap.text[0][2] == f"{100 * geom['disagreement'][0, 2]:.1f}%"
    assert heatmap.text[1][1] == "0.0%"
    assert heatmap.zmin == 0 and heatmap.zmax == pytest.approx(geom["disagreement"].max())


def test_group_accuracy_has_a_bar_per_checkpoint_and_its_gap(geom):
    fig = group_accuracy_figure(geom)
    assert len(fig.data) == len(NAMES)
    gaps = []
    for c, trace in enumerate(fig.data):
        assert list(trace.x) == GROUPS
        assert np.allclose(trace.y, 100 * geom["per_group_accuracy"][c])
        values = [v for v in geom["per_group_accuracy"][c] if not math.isnan(v)]
        gaps.append(max(values) - min(values))
        assert trace.name == f"{NAMES[c]} (gap {100 * gaps[c]:.1f} pp)"
    widest = max(range(len(NAMES)), key=lambda c: gaps[c])
    assert f"{100 * gaps[widest]:.1f} pp ({NAMES[widest]})" in fig.layout.title.text
    assert _message(group_accuracy_figure(_geometry(groups=False))) == NO_GROUPS


# ------------------------------------------------------------------ empty states


BUILDERS = {
    "embedding": lambda g, name: embedding_scatter(g, name),
    "movement": lambda g, name: movement_figure(g, name),
    "angle_norm": lambda g, name: angle_norm_figure(g, 0, "dense", name),
    "class_accuracy": lambda g, name: class_accuracy_figure(g, name),
    "confusion": lambda g, name: confusion_difference_figure(g, name),
    "reliability": lambda g, name: reliability_figure(g, [name]),
}


@pytest.mark.parametrize("builder", list(BUILDERS))
def test_each_builder_explains_a_missing_result_or_checkpoint(geom, builder):
    build = BUILDERS[builder]
    assert _message(build(None, "dense")) == NO_GEOMETRY
    unknown = _message(build(geom, "mag-70"))
    assert "'mag-70'" in unknown and "mag-90" in unknown


@pytest.mark.parametrize(
    ("key", "build"),
    [
        ("embedding", lambda g: embedding_scatter(g, "dense")),
        ("confidence", lambda g: embedding_scatter(g, "dense")),
        ("margin", lambda g: embedding_scatter(g, "dense", "margin_change")),
        ("embedding", lambda g: movement_figure(g, "dense")),
        ("angle", lambda g: angle_norm_figure(g, 0, "dense", "mag-50")),
        ("per_class_accuracy", lambda g: class_accuracy_figure(g, "dense")),
        ("confusion", lambda g: confusion_difference_figure(g, "dense")),
        ("reference", lambda g: confusion_difference_figure(g, "dense")),
        ("ece", lambda g: reliability_figure(g, ["dense"])),
        ("disagreement", lambda g: disagreement_figure(g)),
        ("per_group_accuracy", lambda g: group_accuracy_figure(g)),
    ],
)
def test_a_missing_or_misshapen_array_gives_an_explanation(geom, key, build):
    absent = {k: v for k, v in geom.items() if k != key}
    message = _message(build(absent))
    assert f"'{key}'" in message and "run the geometry analysis again" in message
    misshapen = {**geom, key: np.zeros((2, 2, 2, 2))}
    assert f"{key} has shape (2, 2, 2, 2)" in _message(build(misshapen))


def test_other_unusable_inputs_give_an_explanation(geom):
    assert "'shape'" in _message(embedding_scatter(geom, "dense", "shape"))
    assert "names no checkpoint" in _message(movement_figure({**geom, "reference": 5}, "dense"))
    wrong = {**geom, "predictions": geom["predictions"] + 3}
    assert "outside the 3 classes" in _message(embedding_scatter(wrong, "dense"))
    assert _message(disagreement_figure(None)) == NO_GEOMETRY
    assert _message(group_accuracy_figure(None)) == NO_GEOMETRY


# ------------------------------------------------------------------ table and controls


def test_example_rows_hold_both_models_values_as_plain_json(geom):
    rows = example_rows(geom, [4, 0, 49, 50, -3], "mag-90")
    assert [r["index"] for r in rows] == [4, 0, 49]
    for row in rows:
        i = row["index"]
        assert row["label"] == CLASSES[geom["labels"][i]]
        for prefix, c in (("dense", 0), ("pruned", 2)):
            assert row[f"{prefix}_prediction"] == CLASSES[geom["predictions"][c, i]]
            for key, tolerance in (("confidence", 1e-4), ("norm", 1e-4), ("angle", 0.01),
                                   ("margin", 1e-4)):
                expected = float(geom[key][c, i])
                assert row[f"{prefix}_{key}"] == pytest.approx(expected, abs=tolerance / 2)
        change = float(geom["margin"][2, i]) - float(geom["margin"][0, i])
        assert row["margin_change"] == pytest.approx(change, abs=5e-5)
        assert all(type(v) in (int, float, str) for v in row.values())
    assert rows[1]["pruned_prediction"] != rows[1]["label"]  # example 0 broke under pruning
    assert json.loads(json.dumps(rows)) == rows
    assert len(example_rows(geom, range(50), "dense", limit=7)) == 7
    nan = {**geom, "margin": geom["margin"].copy()}
    nan["margin"][2, 4] = np.nan
    row = example_rows(nan, [4], "mag-90")[0]
    assert row["pruned_margin"] is None and row["margin_change"] is None
    assert json.dumps(row)  # NaN would not be valid JSON
    assert example_rows(geom, [1], "mag-70") == [] and example_rows(None, [1], "dense") == []
    assert example_rows(geom, [], "dense") == []


def test_view_options_list_checkpoints_classes_and_colourings(geom):
    options = control_options(geom)
    assert [o["value"] for o in options["checkpoints"]] == NAMES
    assert options["classes"] == [
        {"label": "cat", "value": "0"}, {"label": "dog", "value": "1"},
        {"label": "frog", "value": "2"},
    ]
    assert [o["value"] for o in options["color_by"]] == list(COLOR_BY)
    without_groups = control_options(_geometry(groups=False))
    assert "group" not in [o["value"] for o in without_groups["color_by"]]
    assert control_options(None) == {
        "checkpoints": [], "classes": [],
        "color_by": [o for o in options["color_by"] if o["value"] != "group"],
    }


def test_the_figures_module_does_not_import_torch():
    code = "import sys, prunescope.dashboard.figures.geometry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
