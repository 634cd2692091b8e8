"""Each page's URL ⇄ view state (`prunescope.dashboard.views`): a view written as a query reads
back as the same view, defaults write no more than they must, and values a result does not
offer fall back to the defaults."""

from __future__ import annotations

import pytest

from prunescope.dashboard.state import parse_query
from prunescope.dashboard.views import attention, datasets, dynamics, geometry, layers, project
from tests.dashboard import test_attention_figures as attention_data
from tests.dashboard import test_dynamics_figures as dynamics_data
from tests.dashboard import test_geometry_page as geometry_data
from tests.dashboard import test_layer_figures as layer_data


def test_project_methods() -> None:
    every = ["magnitude_global", "random", "wanda"]
    default = project.parse_view({})
    assert default == {"methods": None}
    assert project.view_query(default, every) == ""
    assert project.view_query({"methods": every[::-1]}, every) == ""  # all of them: the default
    chosen = {"methods": ["random", "wanda"]}
    query = project.view_query(chosen, every)
    assert query == "?methods=random%2Cwanda"
    assert project.parse_view(parse_query(query)) == chosen
    assert project.parse_view({"methods": ""}) == {"methods": []}


@pytest.mark.parametrize("asked, read", [({}, None), ({"dataset": "4"}, 4),
                                         ({"dataset": "four"}, None), ({"dataset": "-1"}, None)])
def test_datasets_preview(asked: dict, read: int | None) -> None:
    view = datasets.parse_view(asked)
    assert view == {"dataset": read}
    assert datasets.parse_view(parse_query(datasets.view_query(view))) == view
    assert datasets.datasets_href(3, read) == "/projects/3/datasets" + (
        f"?dataset={read}" if read is not None else "")


def _layers() -> tuple[dict, dict]:
    data = {"evaluation": layer_data._evaluation(), "masks": layer_data._masks(),
            "neurons": layer_data._neurons()}
    return data, layers.control_options(data)


def test_layers_round_trip_and_fall_back() -> None:
    data, options = _layers()
    default = layers.parse_view({}, options, data)
    assert layers.parse_view(parse_query(layers.view_query(default)), options, data) == default
    chosen = {"metric": "svcca", "rows": "mag-50", "checkpoint": "rnd-50",
              "matrix": "cka_debiased", "complexity": "twonn", "iou_layer": "conv.weight",
              "neuron_layer": "fc", "neuron_checkpoint": "rnd-50"}
    assert layers.parse_view(chosen, options, data) == chosen  # every value is offered
    query = layers.view_query(chosen)
    assert list(parse_query(query)) == list(layers.VIEW_KEYS)
    assert layers.parse_view(parse_query(query), options, data) == chosen
    unknown = {key: "nonsense" for key in layers.VIEW_KEYS}
    assert layers.parse_view(unknown, options, data) == default


def test_geometry_round_trip_and_fall_back() -> None:
    geom = geometry_data._geom()
    default = geometry.parse_view({}, geom)
    assert default == {"checkpoint": "a-90", "color": "class", "view": "side", "cls": "0",
                       "cmp": "dense"}
    n = geometry.example_count(geom)
    query = geometry.view_query(default, [], n)
    assert "sel" not in parse_query(query)
    assert geometry.parse_view(parse_query(query), geom) == default
    chosen = {"checkpoint": "b-50", "color": "correct", "view": "movement", "cls": "2",
              "cmp": "a-90"}
    query = geometry.view_query(chosen, [0, 4, 5], n)
    assert geometry.parse_view(parse_query(query), geom) == chosen
    assert geometry.parse_selection(parse_query(query), geom) == [0, 4, 5]
    unknown = {"checkpoint": "c-99", "color": "rainbow", "view": "3d", "cls": "7",
               "cmp": "nope", "sel": "not-a-selection"}
    assert geometry.parse_view(unknown, geom) == default
    assert geometry.parse_selection(unknown, geom) == []
    assert geometry.parse_view({}, None) == {"checkpoint": None, "color": "class",
                                             "view": "side", "cls": None, "cmp": None}


def test_dynamics_round_trip_and_fall_back() -> None:
    dyn = dynamics_data._dynamics()
    default = dynamics.parse_view({}, dyn)
    n = dynamics.example_count(dyn)
    assert dynamics.parse_view(parse_query(dynamics.view_query(default, n)), dyn) == default
    chosen = {"run": "gmp80-s1", "population": "finetune 50%", "color": "suite",
              "suite_view": "overlay", "cat": "typical", "sel": [0, 3, 4, 5, 11]}
    query = dynamics.view_query(chosen, n)
    assert dynamics.parse_view(parse_query(query), dyn) == chosen
    unknown = {"run": "dense-s7", "population": "gmp 1%", "color": "rainbow",
               "suite_view": "3d", "cat": "ood", "sel": "z!!"}
    assert dynamics.parse_view(unknown, dyn) == default


def test_attention_round_trip_and_fall_back() -> None:
    ev = attention_data._two_methods()
    tasks = ["length", "bigram_shift"]
    default = attention.parse_view({}, ev, 5, tasks)
    assert default == {"measure": "js", "method": "magnitude_global", "sparsity": 70,
                       "layer": 0, "head": 0, "sentence": 0, "task": "length", "drift": "cka"}
    query = attention.view_query(default)
    assert attention.parse_view(parse_query(query), ev, 5, tasks) == default
    chosen = {"measure": "entropy_change", "method": "wanda", "sparsity": 50, "layer": 2,
              "head": 3, "sentence": 4, "task": "bigram_shift", "drift": "effective_rank"}
    query = attention.view_query(chosen)
    assert list(parse_query(query)) == list(attention.VIEW_KEYS)
    assert attention.parse_view(parse_query(query), ev, 5, tasks) == chosen
    unknown = {"measure": "?", "method": "nope", "sparsity": "x", "layer": "9", "head": "-2",
               "sentence": "many", "task": "parsing", "drift": "?"}
    assert attention.parse_view(unknown, ev, 5, tasks) == default
    assert attention.parse_view({"task": "parsing"}, ev, 5, [])["task"] is None
