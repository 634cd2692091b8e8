"""Layers page figures on hand-made results: traces, axes, shape checks, empty states, CSV."""

from __future__ import annotations

import csv
import io

import numpy as np
import plotly.graph_objects as go
import pytest

from prunescope.dashboard.components import rows_to_csv
from prunescope.dashboard.figures.layers import (
    NO_EVALUATION,
    NO_MASKS,
    NO_NEURONS,
    SIMILARITY_METRICS,
    checkpoint_id,
    complexity_by_layer,
    complexity_table,
    dense_name,
    layer_by_layer_heatmap,
    layer_by_layer_table,
    layer_pair_heatmap,
    layer_pair_table,
    mask_iou_heatmap,
    mask_iou_table,
    metric_vs_sparsity,
    metric_vs_sparsity_table,
    wasserstein_neurons_scatter,
    wasserstein_neurons_table,
)
from prunescope.dashboard.figures.overview import METHOD_COLOURS
from prunescope.dashboard.state import parse_query
from prunescope.dashboard.views.layers import control_options, parse_view, view_query

LAYERS = ["conv", "fc", "head"]
# Rows deliberately out of sparsity order: the lines must sort them.
NAMES = ["dense", "mag-90", "mag-50", "rnd-50"]


def _evaluation() -> dict[str, np.ndarray]:
    c, n = len(NAMES), len(LAYERS)
    grid = np.arange(c * n, dtype=float).reshape(c, n)
    return {
        "checkpoint_ids": np.array([1, 2, 3, 4], dtype=np.int64),
        "checkpoint_names": np.array(NAMES),
        "checkpoint_roles": np.array(["dense", "pruned", "pruned", "pruned"]),
        "checkpoint_methods": np.array(["dense", "magnitude_global", "magnitude_global", ""]),
        "sparsity": np.array([0.0, 0.9, 0.5, 0.5]),
        "layers": np.array(LAYERS),
        "widths": np.array([[8, 16, 10]] * c, dtype=np.int64),
        # Each metric gets different numbers, so a test notices the wrong array being drawn.
        "cka": 1.0 - grid / 20,
        "cka_debiased_diag": 1.0 - grid / 10,
        "svcca": 1.0 - grid / 30,
        "pwcca": 1.0 - grid / 40,
        "procrustes": grid / 25,
        "effective_rank": 10 + grid,
        "participation_ratio": 5 + grid / 2,
        "dims_99": 3 + grid,
        "twonn": 2 + grid / 3,
        "cka_layers": np.arange(c * n * n, dtype=float).reshape(c, n, n) / (c * n * n),
        "cka_debiased": np.arange(c * n * n, dtype=float).reshape(c, n, n) / 50 - 0.1,
    }


def _by_panel(fig: go.Figure) -> dict[str, list]:
    panels: dict[str, list] = {}
    for trace in fig.data:
        panels.setdefault(trace.xaxis, []).append(trace)
    return panels


def _csv_rows(rows: list[dict]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(rows_to_csv(rows))))


# ------------------------------------------------------------------ similarity vs sparsity


@pytest.mark.parametrize("metric", list(SIMILARITY_METRICS))
def test_every_layer_panel_has_one_line_per_method_starting_at_the_dense_model(metric):
    ev = _evaluation()
    values = ev[SIMILARITY_METRICS[metric].key]
    fig = metric_vs_sparsity(ev, metric)
    panels = _by_panel(fig)
    assert list(panels) == ["x", "x2", "x3"]
    assert [a.text for a in fig.layout.annotations] == LAYERS  # panel titles
    for j, (axis, traces) in enumerate(panels.items()):
        lines = {t.name: t for t in traces}
        assert set(lines) == {"magnitude_global", "uploaded"}  # "" method reads "uploaded"
        mag, upl = lines["magnitude_global"], lines["uploaded"]
        assert list(mag.x) == [0.0, 50.0, 90.0] and list(mag.text) == ["dense", "mag-50", "mag-90"]
        assert list(mag.y) == [values[0, j], values[2, j], values[1, j]]
        assert list(upl.x) == [0.0, 50.0] and list(upl.y) == [values[0, j], values[3, j]]
        assert mag.line.color == METHOD_COLOURS["magnitude_global"], axis
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["magnitude_global", "uploaded"]  # once, from the first panel
    assert all(t.legendgroup == t.name for t in fig.data)
    assert fig.layout.yaxis.title.text == SIMILARITY_METRICS[metric].label
    assert fig.layout.xaxis.title.text == "measured sparsity (%)"
    assert fig.layout.yaxis2.matches == "y"  # one scale across panels


def test_panels_wrap_into_rows():
    fig = metric_vs_sparsity(_evaluation(), columns=2)
    assert fig.layout.xaxis3.anchor == "y3" and fig.layout.xaxis3.domain == fig.layout.xaxis.domain
    assert fig.layout.yaxis3.domain[1] < fig.layout.yaxis.domain[0]  # second row, below


def test_similarity_checks_its_input():
    ev = _evaluation()
    with pytest.raises(ValueError, match="unknown metric 'cca'"):
        metric_vs_sparsity(ev, "cca")
    with pytest.raises(ValueError, match=r"svcca has shape \(4, 2\), expected \(4, 3\)"):
        metric_vs_sparsity({**ev, "svcca": ev["svcca"][:, :2]}, "svcca")
    with pytest.raises(ValueError, match="sparsity has shape"):
        metric_vs_sparsity({**ev, "sparsity": ev["sparsity"][:3]})
    empty = metric_vs_sparsity(None)
    assert len(empty.data) == 0 and empty.layout.annotations[0].text == NO_EVALUATION
    old = {k: v for k, v in ev.items() if k != "pwcca"}
    message = metric_vs_sparsity(old, "pwcca").layout.annotations[0].text
    assert "'pwcca'" in message and "run the analysis job again" in message
    only_dense = {k: v if k == "layers" else v[:1] for k, v in ev.items()}
    assert "No pruned checkpoints" in metric_vs_sparsity(only_dense).layout.annotations[0].text


def test_similarity_table_holds_every_checkpoint_and_layer():
    ev = _evaluation()
    rows = _csv_rows(metric_vs_sparsity_table(ev, "procrustes"))
    assert len(rows) == len(NAMES) * len(LAYERS)
    table = np.array([float(r["procrustes"]) for r in rows]).reshape(len(NAMES), len(LAYERS))
    assert np.array_equal(table, ev["procrustes"])  # repr floats read back exactly
    assert [r["layer"] for r in rows[:3]] == LAYERS
    assert [float(r["sparsity"]) for r in rows[:: len(LAYERS)]] == ev["sparsity"].tolist()
    assert rows[9]["checkpoint"] == "rnd-50" and rows[9]["method"] == "uploaded"
    assert metric_vs_sparsity_table(None) == [] and rows_to_csv([]) == ""


# ------------------------------------------------------------------ layer × layer


def test_layer_heatmap_puts_dense_layers_on_y_and_annotates_values():
    ev = _evaluation()
    fig = layer_by_layer_heatmap(ev, "mag-90")
    (heatmap,) = fig.data
    z = np.asarray(heatmap.z)
    assert np.array_equal(z, ev["cka_layers"][1])
    assert list(heatmap.x) == LAYERS and list(heatmap.y) == LAYERS
    # z[i][j] is dense layer i (row, y) against the checkpoint's layer j (column, x).
    assert heatmap.text[0][2] == f"{ev['cka_layers'][1, 0, 2]:.2f}"
    assert heatmap.texttemplate == "%{text}"
    assert fig.layout.yaxis.title.text == "layer of dense"
    assert fig.layout.xaxis.title.text == "layer of mag-90"
    debiased = layer_by_layer_heatmap(ev, "dense", "cka_debiased").data[0]
    assert np.array_equal(np.asarray(debiased.z), ev["cka_debiased"][0])
    assert debiased.zmin < 0  # debiased CKA can fall below zero; the scale shows it


def test_layer_heatmap_checks_its_input():
    ev = _evaluation()
    missing = layer_by_layer_heatmap(ev, "nope").layout.annotations[0].text
    assert "'nope'" in missing and "mag-90" in missing
    assert layer_by_layer_heatmap(None, "dense").layout.annotations[0].text == NO_EVALUATION
    with pytest.raises(ValueError, match="cka_layers has shape"):
        layer_by_layer_heatmap({**ev, "cka_layers": ev["cka"]}, "dense")
    with pytest.raises(ValueError, match="unknown layer matrix"):
        layer_by_layer_heatmap(ev, "dense", "rbf")


def test_layer_table_equals_the_matrix():
    ev = _evaluation()
    rows = _csv_rows(layer_by_layer_table(ev, "mag-50", "cka_debiased"))
    table = np.array([float(r["cka_debiased"]) for r in rows]).reshape(3, 3)
    assert np.array_equal(table, ev["cka_debiased"][2])
    assert (rows[1]["dense_layer"], rows[1]["checkpoint_layer"]) == ("conv", "fc")
    assert layer_by_layer_table(ev, "nope") == []


# ------------------------------------------------------------------ complexity


def test_complexity_draws_every_checkpoint_with_the_dense_one_bold_and_black():
    ev = _evaluation()
    fig = complexity_by_layer(ev, "twonn")
    names = [t.name for t in fig.data]
    assert names == ["dense", "mag-50", "mag-90", "rnd-50"]  # dense first, then by method
    dense = fig.data[0]
    assert dense.line.color == METHOD_COLOURS["dense"] and dense.line.width == 4
    assert all(t.line.width < 4 for t in fig.data[1:])
    for trace in fig.data:
        c = NAMES.index(trace.name)
        assert list(trace.x) == LAYERS and list(trace.y) == ev["twonn"][c].tolist()
    mag50, mag90 = fig.data[1], fig.data[2]
    assert mag50.line.color == mag90.line.color and mag50.opacity < mag90.opacity
    assert list(mag50.customdata) == [8, 16, 10]  # widths in the hover
    assert fig.layout.yaxis.title.text == "TwoNN intrinsic dimension"
    assert fig.layout.xaxis.title.text == "layer"


def test_complexity_checks_its_input_and_exports_its_table():
    ev = _evaluation()
    with pytest.raises(ValueError, match="unknown complexity measure"):
        complexity_by_layer(ev, "rank")
    with pytest.raises(ValueError, match="dims_99 has shape"):
        complexity_by_layer({**ev, "dims_99": ev["dims_99"].T}, "dims_99")
    assert complexity_by_layer(None).layout.annotations[0].text == NO_EVALUATION
    rows = _csv_rows(complexity_table(ev, "effective_rank"))
    table = np.array([float(r["effective_rank"]) for r in rows]).reshape(4, 3)
    assert np.array_equal(table, ev["effective_rank"])
    assert [int(r["width"]) for r in rows[:3]] == [8, 16, 10]


# ------------------------------------------------------------------ masks


def _masks() -> dict[str, np.ndarray]:
    names = np.array(["mag-50", "mag-90", "rnd-50"])
    iou = np.array([[1.0, 0.4, 0.3], [0.4, 1.0, 0.1], [0.3, 0.1, 1.0]])
    return {
        "checkpoint_names": names,
        "layers": np.array(["conv.weight", "fc.weight"]),
        "iou_kept_overall": iou,
        "iou_kept_chance_overall": np.full((3, 3), 0.2),
        "iou_kept": np.stack([iou / 2, iou / 4]),
        "iou_kept_chance": np.stack([np.full((3, 3), 0.25), np.full((3, 3), 0.05)]),
    }


def test_mask_iou_over_all_layers_and_one_layer_with_chance_in_the_hover():
    masks = _masks()
    overall = mask_iou_heatmap(masks)
    (hm,) = overall.data
    assert np.array_equal(np.asarray(hm.z), masks["iou_kept_overall"])
    assert list(hm.x) == list(hm.y) == ["mag-50", "mag-90", "rnd-50"]
    assert np.array_equal(np.asarray(hm.customdata), masks["iou_kept_chance_overall"])
    assert "chance" in hm.hovertemplate and "%{customdata" in hm.hovertemplate
    assert "all layers" in overall.layout.title.text
    fc = mask_iou_heatmap(masks, "fc.weight")
    assert np.array_equal(np.asarray(fc.data[0].z), masks["iou_kept"][1])
    assert np.array_equal(np.asarray(fc.data[0].customdata), masks["iou_kept_chance"][1])
    assert "fc" in fc.layout.title.text and ".weight" not in fc.layout.title.text
    assert np.array_equal(np.asarray(mask_iou_heatmap(masks, "all").data[0].z), hm.z)


def test_mask_iou_checks_its_input_and_exports_its_table():
    masks = _masks()
    assert mask_iou_heatmap(None).layout.annotations[0].text == NO_MASKS
    assert "'bias'" in mask_iou_heatmap(masks, "bias").layout.annotations[0].text
    with pytest.raises(ValueError, match="iou_kept_overall has shape"):
        mask_iou_heatmap({**masks, "iou_kept_overall": np.eye(2)})
    with pytest.raises(ValueError, match="iou_kept has shape"):
        mask_iou_heatmap({**masks, "iou_kept": masks["iou_kept"][:1]}, "conv.weight")
    rows = _csv_rows(mask_iou_table(masks, "conv.weight"))
    assert np.array_equal(np.array([float(r["iou_kept"]) for r in rows]).reshape(3, 3),
                          masks["iou_kept"][0])
    assert {float(r["iou_kept_chance"]) for r in rows} == {0.25}
    assert (rows[1]["checkpoint_a"], rows[1]["checkpoint_b"]) == ("mag-50", "mag-90")


# ------------------------------------------------------------------ Wasserstein neurons


def _neurons() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    num_units = np.array([3, 5])
    dense = rng.random((2, 5))
    dense[0, 3:] = np.nan  # padding of the narrower layer
    return {
        "checkpoint_names": np.array(["mag-50", "rnd-50"]),
        "layers": np.array(["conv", "fc"]),
        "num_units": num_units,
        "dense_w1_scaled": dense,
        "pruned_fraction": rng.random((2, 2, 5)),
        "shift_w1": rng.random((2, 2, 5)),
        "rho_w1_scaled": np.array([[-0.5, 0.25], [np.nan, 0.0]]),
    }


def test_neuron_scatter_plots_the_layers_real_units_with_index_and_shift_in_the_hover():
    nr = _neurons()
    fig = wasserstein_neurons_scatter(nr, "conv", "mag-50")
    (points,) = fig.data
    assert isinstance(points, go.Scattergl)
    assert np.array_equal(np.asarray(points.x), nr["dense_w1_scaled"][0, :3])  # no padding
    assert np.array_equal(np.asarray(points.y), nr["pruned_fraction"][0, 0, :3])
    custom = np.asarray(points.customdata)
    assert custom[:, 0].tolist() == [0, 1, 2]
    assert np.array_equal(custom[:, 1], nr["shift_w1"][0, 0, :3])
    assert "neuron %{customdata[0]}" in points.hovertemplate
    assert "%{customdata[1]" in points.hovertemplate
    assert "Spearman ρ = -0.500" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "share of incoming weights pruned"
    assert "W1" in fig.layout.xaxis.title.text
    assert "undefined" in wasserstein_neurons_scatter(nr, "conv", "rnd-50").layout.title.text


def test_neuron_scatter_checks_its_input_and_exports_its_table():
    nr = _neurons()
    assert wasserstein_neurons_scatter(None, "conv", "x").layout.annotations[0].text == NO_NEURONS
    assert "'attn'" in wasserstein_neurons_scatter(nr, "attn", "mag-50").layout.annotations[0].text
    with pytest.raises(ValueError, match="shift_w1 has shape"):
        wasserstein_neurons_scatter({**nr, "shift_w1": nr["shift_w1"][:1]}, "conv", "mag-50")
    with pytest.raises(ValueError, match="num_units"):
        wasserstein_neurons_scatter({**nr, "num_units": np.array([3, 9])}, "conv", "mag-50")
    rows = _csv_rows(wasserstein_neurons_table(nr, "fc", "rnd-50"))
    assert [int(r["neuron"]) for r in rows] == [0, 1, 2, 3, 4]
    for key, expected in (("dense_w1_scaled", nr["dense_w1_scaled"][1]),
                          ("pruned_fraction", nr["pruned_fraction"][1, 1]),
                          ("shift_w1", nr["shift_w1"][1, 1])):
        assert np.array_equal([float(r[key]) for r in rows], expected)


# ------------------------------------------------------------------ view state


def test_the_view_comes_from_the_url_with_defaults_for_what_it_lacks_or_gets_wrong():
    data = {"evaluation": _evaluation(), "masks": _masks(), "neurons": _neurons()}
    options = control_options(data)
    assert [o["value"] for o in options["iou_layer"]] == ["all", "conv.weight", "fc.weight"]
    assert [o["label"] for o in options["iou_layer"]] == ["all layers", "conv", "fc"]
    default = parse_view({}, options, data)
    assert default == {
        "metric": "cka", "rows": "dense", "checkpoint": "mag-90", "matrix": "cka",
        "complexity": "effective_rank", "iou_layer": "all", "neuron_layer": "conv",
        "neuron_checkpoint": "mag-50",  # the sparsest (mag-90) has no neuron result here
    }
    asked = {"metric": "procrustes", "checkpoint": "rnd-50", "iou_layer": "fc.weight",
             "neuron_layer": "fc", "complexity": "nonsense"}
    view = parse_view(asked, options, data)
    assert {k: view[k] for k in asked} == {**asked, "complexity": "effective_rank"}
    # The query names every control, and reading it back gives the same view.
    query = view_query(view)
    assert "metric=procrustes" in query and "iou_layer=fc.weight" in query
    assert parse_view(parse_query(query), options, data) == view
    empty = parse_view({"checkpoint": "x"}, control_options({}), {})
    assert empty["checkpoint"] is None and empty["metric"] == "cka"
    assert "checkpoint" not in view_query(empty)


# ------------------------------------------------------------------ the service


def test_layer_analysis_returns_the_newest_result_of_each_kind_read_only(settings, tmp_path):
    from prunescope.server.db import session_scope
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services import analyses
    from prunescope.server.services import projects as project_service
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import AnalysisResult

    pid = project_service.create_project(
        ProjectCreate(name="p", architecture="cnn_small"), settings).id
    assert analyses.layer_analysis(pid, settings) == {
        "evaluation": None, "masks": None, "neurons": None, "layer_comparison": None,
        "result_ids": {"evaluation": None, "masks": None, "neurons": None,
                       "layer_comparison": None},
    }
    store = artifact_store(settings)

    def add(kind: str, arrays: dict) -> int:
        path = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}.npz"
        np.savez(path, **arrays)
        with session_scope(settings) as s:
            row = AnalysisResult(project_id=pid, kind=kind, artifact_digest=store.put_file(path))
            s.add(row)
            s.flush()
            return row.id

    old = _evaluation()
    add("evaluation", {**old, "cka": old["cka"] * 0})
    newest = add("evaluation", old)
    masks = add("masks", _masks())
    add("other", {"x": np.zeros(1)})
    with session_scope(settings) as s:  # a result whose file has gone from the store
        s.add(AnalysisResult(project_id=pid, kind="neurons", artifact_digest="0" * 64))
    data = analyses.layer_analysis(pid, settings)
    assert data["result_ids"] == {"evaluation": newest, "masks": masks, "neurons": None,
                                  "layer_comparison": None}
    assert np.array_equal(data["evaluation"]["cka"], old["cka"]) and data["neurons"] is None
    with pytest.raises(ValueError, match="read-only"):
        data["evaluation"]["cka"][0, 0] = 5.0
    assert analyses.layer_analysis(pid, settings)["evaluation"]["cka"][0, 0] == old["cka"][0, 0]


def test_a_layer_pair_heatmap_names_both_checkpoints_and_says_what_is_missing():
    values = np.arange(9, dtype=float).reshape(3, 3) / 10
    fig = layer_pair_heatmap(values, LAYERS, "mag-50", "rnd-50", "cka")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), values)
    assert fig.layout.yaxis.title.text == "layer of mag-50"
    assert fig.layout.xaxis.title.text == "layer of rnd-50"
    rows = layer_pair_table(values, LAYERS, "mag-50", "rnd-50")
    assert len(rows) == 9 and rows[5] == {
        "rows_checkpoint": "mag-50", "rows_layer": LAYERS[1], "columns_checkpoint": "rnd-50",
        "columns_layer": LAYERS[2], "cka_layers": 0.5,
    }
    missing = layer_pair_heatmap(None, LAYERS, "a", "b", missing="press Compute")
    assert missing.layout.annotations[0].text == "press Compute"
    assert layer_pair_table(None, LAYERS, "a", "b") == []
    with pytest.raises(ValueError, match="shape"):
        layer_pair_heatmap(np.zeros((2, 2)), LAYERS, "a", "b")
    ev = _evaluation()
    assert dense_name(ev) == "dense" and checkpoint_id(ev, "mag-50") == 3
    assert dense_name({**ev, "reference_id": np.array(2)}) == "mag-90"
    assert checkpoint_id(ev, "nope") is None and dense_name(None) is None


def test_layer_matrix_finds_a_pair_from_either_side_and_requests_missing_ones(settings, tmp_path):
    from prunescope.server.db import session_scope
    from prunescope.server.errors import InvalidInput
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services import analyses
    from prunescope.server.services import projects as project_service
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import AnalysisResult, Checkpoint

    pid = project_service.create_project(
        ProjectCreate(name="p", architecture="cnn_small"), settings).id
    store = artifact_store(settings)
    with session_scope(settings) as s:
        for i, role in enumerate(["dense", "pruned", "pruned"]):
            s.add(Checkpoint(project_id=pid, name=f"c{i}", role=role, source="upload",
                             artifact_digest="0" * 64, format="safetensors"))
        s.flush()
        ids = [c.id for c in s.query(Checkpoint).filter_by(project_id=pid).order_by(Checkpoint.id)]
    matrix = np.arange(9, dtype=float).reshape(3, 3)

    def add(kind: str, reference: int, members: list[int]) -> int:
        path = tmp_path / f"{kind}-{reference}-{len(list(tmp_path.iterdir()))}.npz"
        layers = np.stack([np.eye(3), matrix])
        np.savez(path, checkpoint_ids=np.array(members), layers=np.array(LAYERS),
                 reference_id=np.array(reference), cka_layers=layers, cka_debiased=layers / 2)
        with session_scope(settings) as s:
            row = AnalysisResult(project_id=pid, kind=kind, artifact_digest=store.put_file(path),
                                 summary={"reference_id": reference})
            s.add(row)
            s.flush()
            return row.id

    assert analyses.layer_matrix(pid, ids[1], ids[2], "cka", settings) is None
    result = add("layer_comparison", ids[1], [ids[1], ids[2]])
    found = analyses.layer_matrix(pid, ids[1], ids[2], "cka", settings)
    assert found["result_id"] == result and found["layers"] == LAYERS
    np.testing.assert_array_equal(found["values"], matrix)
    # Asked from the other side: CKA(A_i, B_j) = CKA(B_j, A_i), the transpose.
    np.testing.assert_array_equal(
        analyses.layer_matrix(pid, ids[2], ids[1], "cka_debiased", settings)["values"],
        matrix.T / 2)
    assert analyses.layer_matrix(pid, ids[0], ids[2], "cka", settings) is None
    with pytest.raises(InvalidInput, match="matrix"):
        analyses.layer_matrix(pid, ids[1], ids[2], "rbf", settings)
    job = analyses.request_layer_comparison(pid, ids[2], ids[0], settings)
    assert job.kind == "analyze" and job.params == {
        "checkpoint_ids": [ids[2], ids[0]], "reference_checkpoint_id": ids[2], "neurons": False}
    with pytest.raises(InvalidInput, match="do not belong"):
        analyses.request_layer_comparison(pid, ids[2], 9999, settings)
