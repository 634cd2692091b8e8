"""The Geometry page's own logic: its view from the URL, failure sets, the example gallery."""

from __future__ import annotations

import numpy as np

from prunescope.dashboard.galleries import geometry_gallery
from prunescope.dashboard.state import decode_selection, parse_query
from prunescope.dashboard.views.geometry import parse_view, view_query
from prunescope.server.errors import Conflict
from prunescope.server.services.analyses import geometry_failures


def _geom() -> dict[str, np.ndarray]:
    labels = np.array([0, 1, 2, 0, 1, 2])
    predictions = np.array([
        [0, 1, 2, 1, 0, 2],  # dense: wrong on 3, 4
        [0, 2, 2, 1, 0, 0],  # pruned a: wrong on 1, 3, 4, 5
        [1, 1, 2, 1, 0, 2],  # pruned b: wrong on 0, 3, 4
    ])
    c, n = predictions.shape
    return {
        "checkpoint_names": np.array(["dense", "a-90", "b-50"]),
        "checkpoint_ids": np.array([1, 2, 3]), "reference": np.array(0),
        "sparsity": np.array([0.0, 0.9, 0.5]), "labels": labels, "predictions": predictions,
        "class_names": np.array(["zero", "one", "two"]),
        "confidence": np.full((c, n), 0.5, np.float32), "norm": np.ones((c, n), np.float32),
        "angle": np.ones((c, n), np.float32), "margin": np.ones((c, n), np.float32),
        "embedding": np.zeros((c, n, 2), np.float32), "group_names": np.array([], np.str_),
        "thumbnails": np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2),
        "example_ids": np.array([f"ex{i}" for i in range(n)]),
    }


def test_failure_sets_follow_their_definitions() -> None:
    geom = _geom()
    wrong = geom["predictions"] != geom["labels"]
    systemic = [i for i in range(6) if all(wrong[:, i])]
    pruned_only = [i for i in range(6) if not wrong[0, i] and any(wrong[1:, i])]
    assert geometry_failures(geom, "systemic") == systemic == [3, 4]
    assert geometry_failures(geom, "pruned_only") == pruned_only == [0, 1, 5]


def test_the_view_and_selection_round_trip_through_the_url() -> None:
    geom = _geom()
    view = parse_view({}, geom)
    assert view == {"checkpoint": "a-90", "color": "class", "view": "side", "cls": "0",
                    "cmp": "dense"}
    asked = {"checkpoint": "b-50", "color": "correct", "view": "movement", "cls": "2",
             "cmp": "a-90"}
    assert parse_view({**asked, "color": "nonsense"}, geom) == {**asked,
                                                                           "color": "class"}
    query = parse_query(view_query(asked, [1, 2, 5], 6))
    assert parse_view(query, geom) == asked
    assert decode_selection(query["sel"], 6) == [1, 2, 5]


def test_the_gallery_shows_inputs_and_both_predictions() -> None:
    geom = _geom()
    table = geometry_gallery(geom, [5, 1], "a-90")
    text = str(table.to_plotly_json())
    rows = table.children[1].children
    assert len(rows) == 2
    assert "ex5" in text and "ex1" in text and "data:image/png;base64," in text
    assert "two (0.50)" in text and "zero (0.50)" in text  # dense right, a-90 wrong on 5
    assert "Select examples" in str(geometry_gallery(geom, [], "a-90").to_plotly_json())


def test_a_queue_button_reports_the_job_or_the_servers_refusal() -> None:
    from types import SimpleNamespace

    from prunescope.dashboard.components import queued_message

    assert queued_message(lambda: SimpleNamespace(id=7), "Geometry") == "Geometry job #7 queued."

    def refused():  # noqa: ANN202
        raise Conflict("a geometry job is already queued")

    assert queued_message(refused, "Geometry") == "Not queued: a geometry job is already queued"
