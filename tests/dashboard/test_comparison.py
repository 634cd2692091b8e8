"""The method comparison, its exports and the offline report, from hand-built analysis arrays."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import statistics
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from prunescope.dashboard.figures.attention import checkpoint_at
from prunescope.dashboard.figures.comparison import (
    comparison_columns,
    comparison_table_rows,
    default_column,
    headline_vs_sparsity,
)
from prunescope.dashboard.report import (
    ReportInputs,
    pinnable_options,
    project_report_html,
    report_html,
)
from prunescope.dashboard.state import parse_query
from prunescope.dashboard.views import attention as attention_view
from prunescope.dashboard.views import dynamics as dynamics_view
from prunescope.dashboard.views import geometry as geometry_view
from prunescope.dashboard.views import layers as layers_view
from prunescope.server.services.comparison import (
    COMPARISON_COLUMNS,
    comparison_csv,
    comparison_parquet,
    comparison_rows,
    export_records,
    view_url,
)

PID = 7
ANALYSIS_COLUMNS = [k for k in COMPARISON_COLUMNS
                    if k not in ("sparsity", "compression_ratio", "theoretical_speedup")]
rng = np.random.default_rng(0)
CKA = np.array([[1.0, 1.0, 1.0], [0.95, 0.9, 0.8], [0.7, 0.5, 0.3], [0.9, np.nan, 0.6]])
ATTENTION_JS = rng.uniform(0.0, 0.4, size=(4, 2, 3))
DENSE_MAPD_TOP = np.array([0, 2, 2, 1, 3, 2, 0, 0, 2, 1], dtype=np.int8)


def _evaluation() -> dict[str, np.ndarray]:
    return {
        "checkpoint_ids": np.array([1, 2, 3, 4]),
        "checkpoint_names": np.array(["dense", "mag-50", "mag-90", "rnd-50"]),
        "checkpoint_roles": np.array(["dense", "pruned", "pruned", "pruned"]),
        "checkpoint_methods": np.array(["dense", "magnitude_global", "magnitude_global",
                                        "random"]),
        "sparsity": np.array([0.0, 0.5, 0.9, 0.5]),
        "accuracy": np.array([0.9, 0.88, 0.6, 0.7]),
        "layers": np.array(["l1", "l2", "l3"]),
        "cka": CKA.copy(),
        "attention_js": ATTENTION_JS.copy(),
    }


def _checkpoint(cid: int, name: str, role: str, method: str, sparsity: float,
                target: float | None) -> dict:
    return {"id": cid, "project_id": PID, "name": name, "role": role, "method": method,
            "target_sparsity": target, "measured_sparsity": sparsity, "num_params": 1000,
            "num_nonzero": round(1000 * (1 - sparsity)), "format": "dense",
            "compression_ratio": 1.0 / (1.0 - sparsity + 0.01), "theoretical_speedup": 1.0 + cid}


def _checkpoints() -> list[dict]:
    return [
        _checkpoint(1, "dense", "dense", "dense", 0.0, None),
        _checkpoint(2, "mag-50", "pruned", "magnitude_global", 0.5, 0.5),
        _checkpoint(3, "mag-90", "pruned", "magnitude_global", 0.9, 0.9),
        _checkpoint(4, "rnd-50", "pruned", "random", 0.5, 0.5),
        # not in the evaluation; trained with gradual magnitude pruning and uploaded
        _checkpoint(5, "gmp-upload", "pruned", "gmp", 0.8012, None),
    ]


def _dynamics() -> dict[str, np.ndarray]:
    n = DENSE_MAPD_TOP.size
    return {
        "run_names": np.array(["dense-s0", "dense-s1", "gmp80-s0", "gmp80-s1", "gmp95-s0"]),
        "run_modes": np.array(["dense", "dense", "gmp", "gmp", "gmp"]),
        "run_sparsity": np.array([0.0, 0.0, 0.8, 0.8, 0.95]),
        "run_seeds": np.array([0, 1, 0, 1, 0]),
        "run_test_accuracy": np.array([0.9, 0.92, 0.85, 0.83, 0.7]),
        "population_names": np.array(["gmp 80%", "gmp 95%"]),
        "population_modes": np.array(["gmp", "gmp"]),
        "population_sparsity": np.array([0.8, 0.95]),
        "population_size": np.array([2, 1]),
        "dense_population_size": np.array(2),
        "pie_fraction": np.array([0.05, 0.2]),
        "categories": np.array(["typical", "atypical", "mislabeled", "corrupted"]),
        "suite": np.full(n, -1, dtype=np.int8),
        "dense_mapd_top": DENSE_MAPD_TOP.copy(),
    }


def _geometry() -> dict[str, np.ndarray]:
    return {"checkpoint_names": np.array(["dense", "mag-90"]), "checkpoint_ids": np.array([1, 3]),
            "reference": np.array(0), "sparsity": np.array([0.0, 0.9]),
            "class_names": np.array(["a", "b"]), "group_names": np.array([], dtype=np.str_)}


def _rows() -> list[dict]:
    return comparison_rows(PID, _checkpoints(), _evaluation(), _dynamics(), _geometry())


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def _split(url: str) -> tuple[str, dict[str, str]]:
    path, _, query = url.partition("?")
    return path, parse_query(query)


# ---------------------------------------------------------------------------- rows


def test_headline_numbers_equal_their_definitions_computed_independently() -> None:
    rows = _by_name(_rows())
    ev = _evaluation()
    for i, name in enumerate(ev["checkpoint_names"].tolist()):
        finite = [v for v in CKA[i] if not math.isnan(v)]
        row = rows[name]
        assert row["accuracy"] == pytest.approx(ev["accuracy"][i])
        assert row["mean_cka"] == pytest.approx(sum(finite) / len(finite))
        assert row["cka_drift"] == pytest.approx(1 - sum(finite) / len(finite))
        assert row["top_layer_cka"] == pytest.approx(CKA[i][-1])
        assert row["attention_js"] == pytest.approx(statistics.fmean(ATTENTION_JS[i].ravel()))
    for ckpt in _checkpoints():
        row = rows[ckpt["name"]]
        assert row["sparsity"] == ckpt["measured_sparsity"]
        assert row["compression_ratio"] == ckpt["compression_ratio"]
        assert row["theoretical_speedup"] == ckpt["theoretical_speedup"]
    mislabeled = sum(1 for v in DENSE_MAPD_TOP if v == 2)  # "mislabeled" is category 2
    assert rows["dense"]["mislabeled_count"] == mislabeled == 4
    assert all(rows[n]["mislabeled_count"] is None for n in ("mag-50", "mag-90", "gmp-upload"))
    # the uploaded gmp checkpoint joins the gmp population at its whole-percent sparsity
    assert rows["gmp-upload"]["pie_fraction"] == 0.05
    assert rows["mag-90"]["pie_fraction"] is None  # no magnitude_global population
    assert rows["gmp-upload"]["accuracy"] is None  # not in the evaluation
    assert rows["gmp-upload"]["mean_cka"] is None


def test_populations_without_a_checkpoint_get_rows_of_their_own() -> None:
    rows = _rows()
    assert [r["name"] for r in rows] == ["dense", "mag-50", "mag-90", "rnd-50", "gmp-upload",
                                         "dense population", "gmp 95%"]
    assert len({r["id"] for r in rows}) == len(rows)
    by_name = _by_name(rows)
    dense, gmp95 = by_name["dense population"], by_name["gmp 95%"]
    assert dense["source"] == gmp95["source"] == "training runs"
    assert dense["role"] == "dense" and dense["accuracy"] == pytest.approx((0.9 + 0.92) / 2)
    assert dense["mislabeled_count"] == 4
    assert gmp95["method"] == "gmp" and gmp95["sparsity"] == 0.95
    assert gmp95["accuracy"] == pytest.approx(0.7) and gmp95["pie_fraction"] == 0.2

    # a dynamics-only project: the dense population and every pruned one
    alone = comparison_rows(PID, [], None, _dynamics(), None)
    assert [r["name"] for r in alone] == ["dense population", "gmp 80%", "gmp 95%"]
    assert _by_name(alone)["gmp 80%"]["accuracy"] == pytest.approx((0.85 + 0.83) / 2)


def test_links_open_the_view_each_number_summarises() -> None:
    ev, dyn, geom = _evaluation(), _dynamics(), _geometry()
    layer_data = {"evaluation": ev}
    rows = _by_name(_rows())
    for name in ("dense", "mag-50", "mag-90", "rnd-50"):
        links = rows[name]["links"]
        for key in ("mean_cka", "cka_drift", "top_layer_cka"):
            path, query = _split(links[key])
            assert path == f"/projects/{PID}/layers"
            options = layers_view.control_options(layer_data)
            view = layers_view.parse_view(query, options, layer_data)
            assert view["metric"] == "cka" and view["checkpoint"] == name
    for name in ("mag-50", "mag-90", "rnd-50"):
        path, query = _split(rows[name]["links"]["attention_js"])
        assert path == f"/projects/{PID}/attention"
        i = ev["checkpoint_names"].tolist().index(name)
        assert query == {"method": ev["checkpoint_methods"][i],
                         "sparsity": str(round(100 * ev["sparsity"][i]))}
        view = attention_view.parse_view(query, ev, 0)
        assert checkpoint_at(ev, view["method"], view["sparsity"]) == name
    for name in ("dense", "mag-90"):  # the checkpoints the geometry result holds
        path, query = _split(rows[name]["links"]["accuracy"])
        assert path == f"/projects/{PID}/geometry"
        assert geometry_view.parse_view(query, geom)["checkpoint"] == name
    assert "accuracy" not in rows["mag-50"]["links"]
    for name, population in (("gmp-upload", "gmp 80%"), ("gmp 95%", "gmp 95%")):
        path, query = _split(rows[name]["links"]["pie_fraction"])
        assert path == f"/projects/{PID}/dynamics"
        assert dynamics_view.parse_view(query, dyn)["population"] == population
    view = dynamics_view.parse_view(_split(rows["dense"]["links"]["mislabeled_count"])[1], dyn)
    assert view["run"] == "mean:dense" and view["cat"] == "mislabeled"
    # every link is relative to this server and names a known page
    for row in rows.values():
        for url in row["links"].values():
            assert url.startswith(f"/projects/{PID}/")
    with pytest.raises(ValueError, match="unknown view"):
        view_url(PID, "nowhere")


def test_missing_analyses_give_empty_cells_never_errors() -> None:
    bare = comparison_rows(PID, _checkpoints())
    for row in bare:
        assert all(row[k] is None for k in ANALYSIS_COLUMNS)
        assert row["compression_ratio"] is not None and row["links"] == {}
    assert [c.key for c in comparison_columns(bare)] == ["sparsity", "compression_ratio",
                                                         "theoretical_speedup"]
    assert default_column(bare) == "compression_ratio"
    assert comparison_rows(PID, []) == []
    # partial arrays: no CKA, no accuracy, an attention array of the wrong shape, dynamics
    # without MAP-D categories
    ev = {k: v for k, v in _evaluation().items() if k not in ("cka", "accuracy")}
    ev["attention_js"] = np.zeros((2, 2, 3))
    dyn = {k: v for k, v in _dynamics().items() if k not in ("categories", "dense_mapd_top")}
    rows = _by_name(comparison_rows(PID, _checkpoints(), ev, dyn, {"other": np.zeros(1)}))
    checkpoint_rows = [r for r in rows.values() if r["source"] == "checkpoint"]
    assert len(checkpoint_rows) == 5
    for key in ("accuracy", "mean_cka", "cka_drift", "top_layer_cka", "attention_js",
                "mislabeled_count"):
        assert all(r[key] is None for r in checkpoint_rows), key
    assert rows["gmp-upload"]["pie_fraction"] == 0.05
    assert rows["dense population"]["mislabeled_count"] is None
    assert rows["dense population"]["accuracy"] == pytest.approx(0.91)
    # a checkpoint whose CKA is NaN in every layer has no mean rather than NaN
    ev = _evaluation()
    ev["cka"][3] = np.nan
    assert _by_name(comparison_rows(PID, _checkpoints(), ev))["rnd-50"]["mean_cka"] is None


def test_language_models_show_their_own_quality_measure() -> None:
    ev = _evaluation()
    ev["accuracy"] = np.full(4, np.nan)
    ev["lm_measure"] = np.array("perplexity")
    ev["lm_quality"] = np.array([20.0, 24.0, 80.0, 60.0])
    rows = _by_name(comparison_rows(PID, _checkpoints(), ev))
    assert [rows[n]["perplexity"] for n in ("dense", "mag-50", "mag-90", "rnd-50")] == \
        [20.0, 24.0, 80.0, 60.0]
    assert all(r["accuracy"] is None and r["masked_token_accuracy"] is None
               for r in rows.values())
    assert _split(rows["mag-90"]["links"]["perplexity"])[0] == f"/projects/{PID}/attention"
    assert default_column(list(rows.values())) == "perplexity"
    ev["lm_measure"] = np.array("masked_token_accuracy")
    rows = _by_name(comparison_rows(PID, _checkpoints(), ev))
    assert rows["mag-50"]["masked_token_accuracy"] == 24.0 and rows["mag-50"]["perplexity"] is None


def test_table_rows_carry_markdown_links_and_no_nested_values() -> None:
    rows = _rows()
    table = comparison_table_rows(rows)
    for row, shown in zip(rows, table, strict=True):
        assert "links" not in shown
        assert all(not isinstance(v, dict | list) for v in shown.values())
        for url in set(row["links"].values()):
            assert f"]({url})" in shown["views"]
    assert table[0]["views"].startswith("[layers](/projects/7/layers?")


# --------------------------------------------------------------------------- figure


def test_metric_versus_sparsity_draws_one_line_per_method_from_its_dense_row() -> None:
    rows = _rows()
    fig = headline_vs_sparsity(rows, "accuracy")
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert set(lines) == {"magnitude_global", "random", "gmp (training runs)"}
    by_name = _by_name(rows)
    for name, members, dense in (("magnitude_global", ["mag-50", "mag-90"], "dense"),
                                 ("random", ["rnd-50"], "dense"),
                                 ("gmp (training runs)", ["gmp 95%"], "dense population")):
        points = [by_name[dense], *(by_name[m] for m in members)]
        assert list(lines[name].x) == pytest.approx([100 * p["sparsity"] for p in points])
        assert list(lines[name].y) == pytest.approx([100 * p["accuracy"] for p in points])
    stars = [t for t in fig.data if t.mode == "markers"]
    assert sorted(t.name for t in stars) == ["dense (dense population)", "dense (dense)"]
    # not a percentage: plotted as stored
    cka = {t.name: t for t in headline_vs_sparsity(rows, "mean_cka").data}
    assert list(cka["random"].y) == pytest.approx([1.0, (0.9 + 0.6) / 2])
    assert "Choose a column" in headline_vs_sparsity(rows, "nope").layout.annotations[0].text
    assert "Choose a column" in headline_vs_sparsity(rows, "mislabeled_count") \
        .layout.annotations[0].text
    empty = headline_vs_sparsity(comparison_rows(PID, _checkpoints()), "accuracy")
    assert len(empty.data) == 0 and "No checkpoint has" in empty.layout.annotations[0].text


# -------------------------------------------------------------------------- exports


def test_parquet_export_round_trips_with_pyarrow() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rows in (_rows(), comparison_rows(PID, _checkpoints()), []):
        table = pq.read_table(io.BytesIO(comparison_parquet(rows)))
        assert table.to_pylist() == export_records(rows)
        assert table.schema.field("mislabeled_count").type == pa.int64()
        assert table.schema.field("pie_fraction").type == pa.float64()
        assert table.schema.field("name").type == pa.string()
        assert table.column_names == ["name", "source", "role", "method", *COMPARISON_COLUMNS]


def test_csv_export_holds_every_value_and_empty_cells() -> None:
    rows = _rows()
    parsed = list(csv.DictReader(io.StringIO(comparison_csv(rows))))
    assert len(parsed) == len(rows)
    for record, line in zip(export_records(rows), parsed, strict=True):
        for key, value in record.items():
            if value is None:
                assert line[key] == ""
            elif isinstance(value, str):
                assert line[key] == value
            else:
                assert float(line[key]) == pytest.approx(value)


# --------------------------------------------------------------------------- report


class _Document(HTMLParser):
    """Every tag's attributes, and each script's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _parse(text: str) -> _Document:
    document = _Document()
    document.feed(text)
    document.close()
    return document


def _plot_data(text: str, div_id: str) -> list[dict]:
    """The traces passed to Plotly.newPlot for one div."""
    call = f'Plotly.newPlot(                        "{div_id}",'
    assert text.count(call) == 1, div_id
    rest = text[text.index(call) + len(call):].lstrip()
    data, _ = json.JSONDecoder().raw_decode(rest)
    return data


def _values(encoded: object) -> np.ndarray:
    """Plotly's JSON arrays: plain lists, or typed arrays as {"dtype", "bdata", "shape"}."""
    if isinstance(encoded, dict) and "bdata" in encoded:
        array = np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=encoded["dtype"])
        shape = encoded.get("shape")
        return array.reshape([int(s) for s in str(shape).split(",")]) if shape else array
    return np.array(encoded, dtype=float)


def _inputs(**changes: object) -> ReportInputs:
    base = {"project_id": PID, "name": "Pruning <study>", "description": "ResNet & friends",
            "architecture": "resnet20", "checkpoints": _checkpoints(),
            "evaluation": _evaluation(), "dynamics": _dynamics(), "geometry": _geometry(),
            "layer_sparsity": None}
    return ReportInputs(**{**base, **changes})


def _assert_offline(text: str) -> _Document:
    from plotly.offline import get_plotlyjs

    document = _parse(text)
    bundle = get_plotlyjs()
    assert text.count(bundle) == 1  # the whole library, inlined exactly once
    assert sum(bundle in script for script in document.scripts) == 1
    assert sum("plotly.js v" in script for script in document.scripts) == 1
    for tag, attrs in document.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        assert not (tag == "script" and "src" in attrs)
        for key in ("src", "href", "data", "action", "poster", "srcset"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value)
    outside = text.replace(bundle, "")
    assert "http" not in outside and "url(" not in outside
    return document


def test_the_report_is_one_self_contained_html_file_with_the_pinned_figures() -> None:
    pins = ["cka_heatmap", "comparison:mean_cka", "pie_fraction", "attention_lines",
            "accuracy", "cka_heatmap"]
    text = report_html(_inputs(), pins)
    document = _assert_offline(text)
    figures = [attrs["id"] for tag, attrs in document.tags
               if tag == "div" and "plotly-graph-div" in (attrs.get("class") or "")]
    assert figures == ["figure-accuracy", "figure-cka_heatmap", "figure-comparison-mean_cka",
                       "figure-pie_fraction", "figure-attention_lines"]
    assert "<h1>Pruning &lt;study&gt;</h1>" in text and "ResNet &amp; friends" in text

    accuracy = {t["name"]: t for t in _plot_data(text, "figure-accuracy")}
    np.testing.assert_allclose(_values(accuracy["magnitude_global"]["y"]), [90.0, 88.0, 60.0])
    heatmap = _plot_data(text, "figure-cka_heatmap")[0]
    np.testing.assert_allclose(_values(heatmap["z"]), CKA.T)  # NaN where CKA is NaN
    cka = {t["name"]: t for t in _plot_data(text, "figure-comparison-mean_cka")}
    np.testing.assert_allclose(_values(cka["magnitude_global"]["y"]),
                               [1.0, np.mean(CKA[1]), np.mean(CKA[2])])
    pies = {t["name"]: t for t in _plot_data(text, "figure-pie_fraction")}
    np.testing.assert_allclose(_values(pies["gmp"]["y"]), [5.0, 20.0])
    lines = {t["name"]: t for t in _plot_data(text, "figure-attention_lines")}
    np.testing.assert_allclose(_values(lines["mag-90 (90%)"]["y"]), ATTENTION_JS[2].mean(axis=1))

    table = text[text.index("<table id='comparison'>"):text.index("</table>")]
    for name in ("mag-50", "gmp-upload", "dense population", "gmp 95%"):
        assert f">{name}</td>" in table
    assert "88.00%" in table and ">4</td>" in table  # accuracy, MAP-D mislabeled count
    assert "/projects/" not in text  # dashboard links do not resolve from a file


def test_a_report_without_analyses_still_opens_and_says_what_is_missing() -> None:
    inputs = _inputs(checkpoints=[], evaluation=None, dynamics=None, geometry=None)
    text = report_html(inputs, ["pie_fraction"])
    _assert_offline(text)
    assert "No checkpoints yet." in text and "No dynamics analysis yet" in text
    with pytest.raises(ValueError, match="unknown report figure 'nope'"):
        report_html(inputs, ["nope"])


def test_pinnable_figures_are_those_the_analyses_can_draw() -> None:
    everything = [o["value"] for o in pinnable_options(_inputs())]
    for key in ("accuracy", "cka_heatmap", "cka_vs_sparsity", "attention_lines",
                "pie_fraction", "comparison:accuracy", "comparison:pie_fraction"):
        assert key in everything
    assert "lm_quality" not in everything and "comparison:mislabeled_count" not in everything
    bare = [o["value"] for o in pinnable_options(
        _inputs(evaluation=None, dynamics=None, geometry=None))]
    assert bare == ["accuracy", "comparison:compression_ratio",
                    "comparison:theoretical_speedup"]


def _patch_services(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunescope.server.services import analyses, projects
    from prunescope.server.services import checkpoints as checkpoint_service

    project = SimpleNamespace(id=PID, name="Pruning <study>", description="ResNet & friends",
                              architecture="resnet20", datasets=[])
    checkpoints = [SimpleNamespace(**c, model_dump=lambda c=c: dict(c)) for c in _checkpoints()]
    monkeypatch.setattr(projects, "get_project", lambda pid, settings=None: project)
    monkeypatch.setattr(checkpoint_service, "list_checkpoints",
                        lambda pid, settings=None: checkpoints)
    monkeypatch.setattr(analyses, "layer_analysis",
                        lambda pid, settings=None: {"evaluation": _evaluation()})
    monkeypatch.setattr(analyses, "dynamics_analysis",
                        lambda pid, settings=None: {"dynamics": _dynamics()})
    monkeypatch.setattr(analyses, "geometry_analysis",
                        lambda pid, settings=None: {"geometry": _geometry()})
    monkeypatch.setattr(checkpoint_service, "layer_sparsity", lambda pid, settings=None: {
        "layers": ["l1.weight"], "checkpoints": ["dense"], "sparsity": [[0.0]], "n_m": [[[]]]})


def test_project_report_reads_the_project_through_the_services(monkeypatch) -> None:
    _patch_services(monkeypatch)
    text = project_report_html(PID, ["layer_sparsity", "comparison:pie_fraction"])
    document = _assert_offline(text)
    ids = [a.get("id") for t, a in document.tags if t == "div"]
    assert "figure-layer_sparsity" in ids and "figure-comparison-pie_fraction" in ids
    assert "Pruning &lt;study&gt;" in text


def test_the_project_page_wires_the_comparison_and_the_report(settings, monkeypatch) -> None:
    import sys

    import dash

    from prunescope.server.main import create_app

    create_app(settings)  # registers the dashboard's pages
    # The page as Dash registered it: importing `prunescope.dashboard.pages.project` again
    # would register a second module with the same path, and Dash then answers every request
    # with an error.
    module = next(p["module"] for p in dash.page_registry.values()
                  if p.get("path_template") == "/projects/<project_id>")
    page = sys.modules[module]

    _patch_services(monkeypatch)
    ids: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("id"), str):
                ids.add(node["id"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(json.loads(json.dumps(page.layout(project_id=str(PID)).to_plotly_json(),
                                  default=lambda o: o.to_plotly_json())))
    assert {"comparison-table", "comparison-column", "comparison-graph", "comparison-csv",
            "comparison-parquet", "comparison-download", "report-pins", "report-button",
            "report-download", "checkpoint-table", "accuracy-graph", "cka-heatmap",
            "method-filter"} <= ids

    rows, columns, data, options, column, pins = page.refresh_comparison("v1", PID, None)
    assert column == "accuracy" and rows == _rows()
    assert [c["id"] for c in columns][:4] == ["name", "source", "role", "method"]
    assert columns[-1] == {"name": "views", "id": "views", "presentation": "markdown"}
    assert data == comparison_table_rows(rows)
    assert "mislabeled_count" not in [o["value"] for o in options]
    assert "pie_fraction" in [p["value"] for p in pins]
    assert page.refresh_comparison("v1", PID, "pie_fraction")[4] == "pie_fraction"
    ordered = page.in_table_order(rows, [rows[2]["id"], rows[0]["id"]])
    assert ordered == [rows[2], rows[0]] and page.in_table_order(rows, None) == rows

    download, message = page.download_report(1, ["pie_fraction"], PID)
    assert download["filename"] == "Pruning-study-report.html"
    assert 'id="figure-pie_fraction"' in download["content"]
    assert "2 figures" in str(message.children)


def test_the_api_serves_the_comparison_as_json_csv_and_parquet_and_the_report(
        settings, monkeypatch) -> None:
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from prunescope.server.main import create_app

    _patch_services(monkeypatch)
    expected = export_records(_rows())
    with TestClient(create_app(settings, dashboard=False)) as client:
        url = f"/api/v1/projects/{PID}/comparison"
        as_json = client.get(url)
        as_csv = client.get(url, params={"format": "csv"})
        as_parquet = client.get(url, params={"format": "parquet"})
        report = client.get(f"/api/v1/projects/{PID}/report",
                            params=[("pin", "layer_sparsity"), ("pin", "comparison:pie_fraction")])
        wrong_pin = client.get(f"/api/v1/projects/{PID}/report", params={"pin": "nonsense"})
        wrong_format = client.get(url, params={"format": "xlsx"})
    assert as_json.status_code == 200 and as_json.json()["count"] == len(expected) > 0
    assert as_json.json()["data"] == json.loads(json.dumps(expected))
    assert as_csv.headers["content-disposition"].endswith(f'project{PID}-comparison.csv"')
    text_rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    table = pq.read_table(io.BytesIO(as_parquet.content)).to_pylist()
    assert len(text_rows) == len(table) == len(expected)
    for want, typed, text in zip(expected, table, text_rows, strict=True):
        assert typed == want  # None where a cell is empty, the same numbers elsewhere
        for key, value in want.items():
            if value is None:
                assert text[key] == "", key
            elif isinstance(value, float):
                assert float(text[key]) == value, key
            else:
                assert text[key] == str(value), key
    assert report.status_code == 200 and "attachment" in report.headers["content-disposition"]
    document = _assert_offline(report.text)
    ids = [a.get("id") for t, a in document.tags if t == "div"]
    assert "figure-layer_sparsity" in ids and "figure-comparison-pie_fraction" in ids
    assert wrong_pin.status_code == 422 and "layer_sparsity" in wrong_pin.json()["detail"]
    assert wrong_format.status_code == 422


def test_a_malformed_result_leaves_a_placeholder_and_the_rest_of_the_report() -> None:
    broken = ReportInputs(project_id=PID, name="p", checkpoints=_checkpoints(),
                          evaluation={"values": np.arange(3.0)}, dynamics=_dynamics())
    text = report_html(broken, ["pie_fraction"])
    assert "cannot be drawn" in text and "KeyError" in text
    ids = [a.get("id") for t, a in _assert_offline(text).tags if t == "div"]
    assert "figure-accuracy" in ids and "figure-pie_fraction" in ids
    with pytest.raises(ValueError, match="unknown report figure"):
        report_html(broken, ["nonsense"])
