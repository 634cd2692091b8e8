"""The page kit's callback factories: a table download answers both buttons with the same rows,
and a URL writer rewrites the address only when the view changed."""

from __future__ import annotations

import base64
import csv
import inspect
import io

import pyarrow.parquet as pq
import pytest
from dash import Dash, Input, State, dcc, html
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prunescope.dashboard.components import (
    TableExport,
    table_download_callback,
    table_exports,
    view_url_writer,
)

ROWS = [
    {"checkpoint": "dense", "sparsity": 0.0, "layers": 3, "note": None},
    {"checkpoint": "mag-90", "sparsity": 0.9000000000000001, "layers": 3, "note": "pruned"},
]


def _serve(layout: html.Div) -> FastAPI:
    """A Dash app holding `layout` and the callbacks registered since the last app started."""
    server = FastAPI()
    app = Dash(__name__, server=server)
    app.layout = layout
    app._setup_server()  # takes over the callbacks registered with `dash.callback`
    server.state.dash = app
    return server


def _run(client: TestClient, output: str, inputs: list[dict], state: list[dict],
         changed: str) -> dict | None:
    """Run a callback as the browser would; its new value, None when it sent nothing."""
    component, _, prop = output.rpartition(".")
    body = {"output": output, "outputs": {"id": component, "property": prop},
            "inputs": inputs, "state": state, "changedPropIds": [changed]}
    r = client.post("/_dash-update-component", json=body)
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    return r.json().get("response", {}).get(component, {}).get(prop)


def test_a_registered_download_sends_the_same_rows_as_csv_and_as_parquet() -> None:
    asked: list[str | None] = []

    @table_download_callback("probe", State("probe-choice", "data"))
    def probe_export(choice: str | None) -> TableExport | None:
        asked.append(choice)
        if choice is None:
            return None
        return TableExport(ROWS if choice == "all" else [], f"probe-{choice}")

    server = _serve(html.Div([dcc.Store(id="probe-choice"), *table_exports("probe")]))
    spec = server.state.dash.callback_map["probe-download.data"]
    registered = inspect.unwrap(spec["callback"])
    # It reads as the page's function: share links of one view check the module.
    assert registered.__module__ == __name__ and registered.__name__ == "probe_export"
    assert list(inspect.signature(registered).parameters) == ["csv_clicks", "parquet_clicks",
                                                              "choice"]

    def press(button: str, clicks: int = 1, choice: str | None = "all") -> dict | None:
        inputs = [{"id": "probe-csv", "property": "n_clicks", "value": clicks},
                  {"id": "probe-parquet", "property": "n_clicks", "value": clicks}]
        state = [{"id": "probe-choice", "property": "data", "value": choice}]
        return _run(client, "probe-download.data", inputs, state, f"{button}.n_clicks")

    with TestClient(server) as client:
        as_csv, as_parquet = press("probe-csv"), press("probe-parquet")
        assert press("probe-csv", choice="none") is None  # no rows, no file
        assert press("probe-parquet", choice=None) is None  # nothing to export
        assert press("probe-csv", clicks=0) is None  # drawn, not pressed
    assert asked == ["all", "all", "none", None]
    assert as_csv["filename"] == "probe-all.csv" and as_csv["type"] == "text/csv"
    assert as_parquet["filename"] == "probe-all.parquet" and as_parquet["base64"] is True
    text_rows = list(csv.DictReader(io.StringIO(as_csv["content"])))
    typed_rows = pq.read_table(io.BytesIO(base64.b64decode(as_parquet["content"]))).to_pylist()
    assert typed_rows == ROWS  # every type kept
    assert text_rows == [{k: "" if v is None else str(v) for k, v in row.items()}
                         for row in ROWS]
    assert [float(r["sparsity"]) for r in text_rows] == [r["sparsity"] for r in ROWS]


def test_a_download_with_its_own_writers_uses_them() -> None:
    @table_download_callback("custom", State("custom-rows", "data"),
                             to_csv=lambda rows: f"{len(rows)} rows",
                             to_parquet=lambda rows: bytes([len(rows)]))
    def custom_export(rows: list[dict]) -> TableExport:
        return TableExport(rows, "custom")

    server = _serve(html.Div([dcc.Store(id="custom-rows"), *table_exports("custom")]))
    inputs = [{"id": "custom-csv", "property": "n_clicks", "value": 1},
              {"id": "custom-parquet", "property": "n_clicks", "value": 1}]
    state = [{"id": "custom-rows", "property": "data", "value": ROWS}]
    with TestClient(server) as client:
        as_csv = _run(client, "custom-download.data", inputs, state, "custom-csv.n_clicks")
        raw = _run(client, "custom-download.data", inputs, state, "custom-parquet.n_clicks")
    assert as_csv["content"] == "2 rows"
    assert base64.b64decode(raw["content"]) == b"\x02"


def test_a_download_whose_function_does_not_take_its_states_fails_at_import() -> None:
    with pytest.raises(TypeError, match="must take the 2 states"):
        @table_download_callback("wrong", State("wrong-a", "data"), State("wrong-b", "data"))
        def wrong_export(only_one: str) -> TableExport:
            return TableExport([], only_one)


def test_the_url_is_written_only_when_the_view_changed() -> None:
    @view_url_writer("probe-url", Input("probe-metric", "value"), State("probe-n", "data"))
    def probe_query(metric: str | None, n: int) -> str:
        return f"?metric={metric}&n={n}" if metric else ""

    server = _serve(html.Div([dcc.Location(id="probe-url", refresh=False),
                              dcc.Store(id="probe-metric"), dcc.Store(id="probe-n")]))
    registered = inspect.unwrap(server.state.dash.callback_map["probe-url.search"]["callback"])
    assert list(inspect.signature(registered).parameters) == ["metric", "n", "search"]

    def write(metric: str | None, search: str) -> str | None:
        inputs = [{"id": "probe-metric", "property": "value", "value": metric}]
        state = [{"id": "probe-n", "property": "data", "value": 3},
                 {"id": "probe-url", "property": "search", "value": search}]
        return _run(client, "probe-url.search", inputs, state, "probe-metric.value")

    with TestClient(server) as client:
        assert write("cka", "?metric=svcca&n=3") == "?metric=cka&n=3"
        assert write("cka", "?n=3&metric=cka") is None  # the same view, another order
        assert write(None, "") is None


def test_the_project_page_links_every_page_that_declares_an_analysis_link(settings):
    import dash

    from prunescope.dashboard.components import analysis_links
    from prunescope.server.main import create_app

    create_app(settings)  # registers the pages
    names = [link.children for link in analysis_links(4)]
    assert names == ["layers", "geometry", "attention", "dynamics"]
    assert [link.href for link in analysis_links(4)][0] == "/projects/4/layers"
    # A page added later takes its place by declaring one, with no edit to the project page.
    dash.page_registry["tests.new_page"] = {"path_template": "/projects/<project_id>/novel",
                                            "analysis_link": 25}
    try:
        assert [link.children for link in analysis_links(4)] == [
            "layers", "geometry", "novel", "attention", "dynamics"]
    finally:
        del dash.page_registry["tests.new_page"]
