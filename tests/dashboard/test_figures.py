"""Figure builders are pure: data in, plotly Figure out."""

import numpy as np
import pytest

from prunescope.dashboard.figures.overview import (
    accuracy_vs_sparsity,
    checkpoint_rows,
    empty_figure,
    layer_cka_heatmap,
)
from prunescope.dashboard.state import parse_query
from prunescope.dashboard.views.project import parse_list, view_query

ROWS = [
    {
        "name": "dense",
        "role": "dense",
        "method": "dense",
        "measured_sparsity": 0.0,
        "accuracy": 0.98,
    },
    {
        "name": "m-80",
        "role": "pruned",
        "method": "magnitude_global",
        "measured_sparsity": 0.8,
        "accuracy": 0.95,
    },
    {
        "name": "m-50",
        "role": "pruned",
        "method": "magnitude_global",
        "measured_sparsity": 0.5,
        "accuracy": 0.97,
    },
    {
        "name": "r-50",
        "role": "pruned",
        "method": "random",
        "measured_sparsity": 0.5,
        "accuracy": 0.60,
    },
    {
        "name": "pending",
        "role": "pruned",
        "method": "random",
        "measured_sparsity": 0.9,
        "accuracy": None,
    },
]


def test_accuracy_lines_start_at_the_dense_model_and_are_sorted_by_sparsity():
    fig = accuracy_vs_sparsity(ROWS)
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert set(lines) == {"magnitude_global", "random"}
    mag = lines["magnitude_global"]
    assert list(mag.x) == [0.0, 50.0, 80.0]
    assert list(mag.y) == pytest.approx([98.0, 97.0, 95.0])
    assert list(lines["random"].text) == ["dense", "r-50"]  # the unevaluated one is left out


def test_accuracy_method_filter_and_empty_case():
    fig = accuracy_vs_sparsity(ROWS, methods=["random"])
    assert [t.name for t in fig.data if t.mode == "lines+markers"] == ["random"]
    empty = accuracy_vs_sparsity([{**ROWS[0], "accuracy": None}])
    assert len(empty.data) == 0 and "No evaluated" in empty.layout.annotations[0].text


def test_heatmap_puts_layers_on_y_and_checkpoints_on_x():
    cka = np.array([[1.0, 1.0, 1.0], [0.9, 0.7, 0.5]])  # (checkpoints, layers)
    fig = layer_cka_heatmap(["conv1", "conv2", "fc"], ["dense", "m-80"], cka)
    (hm,) = fig.data
    assert list(hm.y) == ["conv1", "conv2", "fc"] and list(hm.x) == ["dense", "m-80"]
    assert np.asarray(hm.z).shape == (3, 2)
    assert np.asarray(hm.z)[2, 1] == 0.5  # layer fc, checkpoint m-80
    with pytest.raises(ValueError, match="expected"):
        layer_cka_heatmap(["a"], ["dense", "m-80"], cka)


def test_checkpoint_rows_join_the_evaluation_by_id():
    checkpoints = [
        {
            "id": 7,
            "name": "dense",
            "role": "dense",
            "method": "dense",
            "target_sparsity": None,
            "measured_sparsity": 0.0,
            "num_params": 10,
            "num_nonzero": 10,
            "format": "safetensors",
        },
        {
            "id": 9,
            "name": "m-50",
            "role": "pruned",
            "method": "magnitude_global",
            "target_sparsity": 0.5,
            "measured_sparsity": 0.5,
            "num_params": 10,
            "num_nonzero": 5,
            "format": "safetensors",
        },
        {
            "id": 11,
            "name": "new",
            "role": "pruned",
            "method": "uploaded",
            "target_sparsity": None,
            "measured_sparsity": 0.3,
            "num_params": 10,
            "num_nonzero": 7,
            "format": "torch",
        },
    ]
    evaluation = {
        "checkpoint_ids": [9, 7],
        "accuracy": [0.9, 0.99],
        "cka": np.array([[0.8, 0.6], [1.0, 1.0]]),
    }
    rows = {r["id"]: r for r in checkpoint_rows(checkpoints, evaluation)}
    assert rows[9]["accuracy"] == 0.9 and rows[7]["accuracy"] == 0.99
    assert rows[9]["mean_cka"] == pytest.approx(0.7)
    assert rows[11]["accuracy"] is None and rows[11]["mean_cka"] is None


def test_view_state_round_trips_through_the_query_string():
    all_methods = ["magnitude_global", "random"]
    assert view_query({"methods": None}, all_methods) == ""
    assert view_query({"methods": all_methods[::-1]}, all_methods) == ""
    query = view_query({"methods": ["random"]}, all_methods)
    assert parse_list(parse_query(query)["methods"]) == ["random"]
    assert parse_list(None) is None and parse_list("") == []


def test_empty_figure_says_why():
    assert empty_figure("nothing yet").layout.annotations[0].text == "nothing yet"


def test_sparsity_lists_parse_percentages_and_name_bad_entries():
    from prunescope.dashboard.state import parse_sparsities

    assert parse_sparsities("0.8, 50%;.95, 0.8") == [0.5, 0.8, 0.95]
    for text, word in [("0.5, lots", "'lots'"), ("1.0", "outside"), ("", "at least one")]:
        with pytest.raises(ValueError, match=word):
            parse_sparsities(text)


def test_layer_sparsity_heatmap_shows_percent_zeros_and_gaps():
    from prunescope.dashboard.figures.overview import layer_sparsity_heatmap

    fig = layer_sparsity_heatmap(
        ["conv1.0.weight", "classifier.weight"], ["dense", "m-50"], [[0.0, 0.2], [0.0, None]]
    )
    (hm,) = fig.data
    assert list(hm.y) == ["conv1.0", "classifier"]
    z = np.asarray(hm.z, dtype=float)
    assert z[0, 1] == 20.0 and np.isnan(z[1, 1])
    with pytest.raises(ValueError, match="expected"):
        layer_sparsity_heatmap(["a"], ["dense", "m-50"], [[0.0]])


def test_layer_sparsity_heatmap_labels_sparse_layers_that_follow_an_n_m_pattern():
    from prunescope.dashboard.figures.overview import layer_sparsity_heatmap

    fig = layer_sparsity_heatmap(
        ["fc.weight", "out.weight"],
        ["dense", "2of4", "random"],
        [[0.0, 0.5, 0.5], [0.0, 0.0, 0.5]],
        [[["2:4", "4:8"], ["2:4", "4:8"], []], [["2:4", "4:8"], ["2:4", "4:8"], []]],
    )
    (hm,) = fig.data
    # Dense cells are not labelled (every dense layer trivially follows the patterns).
    assert [list(r) for r in hm.text] == [["0", "50 · 2:4, 4:8", "50"], ["0", "0", "50"]]
    assert hm.customdata[0][2] == "none" and hm.customdata[0][1] == "2:4, 4:8"
    assert "No checkpoints" in layer_sparsity_heatmap([], [], []).layout.annotations[0].text


def test_models_without_a_classifier_head_get_no_accuracy_and_say_why():
    from prunescope.dashboard.figures.overview import accuracy_vs_sparsity, checkpoint_rows

    checkpoints = [
        {"id": 1, "name": "dense", "role": "dense", "method": "dense", "measured_sparsity": 0.0,
         "num_params": 10, "num_nonzero": 10, "format": "safetensors"},
        {"id": 2, "name": "m-50", "role": "pruned", "method": "m", "measured_sparsity": 0.5,
         "num_params": 10, "num_nonzero": 5, "format": "safetensors"},
    ]
    evaluation = {"checkpoint_ids": [1, 2], "accuracy": [float("nan")] * 2,
                  "cka": np.array([[1.0, 1.0], [0.9, 0.5]])}
    rows = checkpoint_rows(checkpoints, evaluation)
    assert [r["accuracy"] for r in rows] == [None, None]
    assert rows[1]["mean_cka"] == 0.7
    fig = accuracy_vs_sparsity(rows)
    assert "no classifier head" in fig.layout.annotations[0].text


def test_the_loading_placeholder_is_the_empty_figure_and_each_copy_is_its_own():
    import json

    from prunescope.dashboard.figures.overview import empty_figure, loading_figure

    first = loading_figure()
    assert first == json.loads(empty_figure("loading…").to_json())
    assert first["layout"]["annotations"][0]["text"] == "loading…"
    first["layout"]["annotations"][0]["text"] = "changed"
    assert loading_figure()["layout"]["annotations"][0]["text"] == "loading…"
    assert loading_figure("No result yet.")["layout"]["annotations"][0]["text"] == "No result yet."
