"""Layers page: which layers of the pruned networks drift from the dense model, and how.

Every control's value is in the query string (`prunescope.dashboard.views.layers`), so a
copied link reopens the same view. The page only reads the analyze job's stored results
through `analyses.layer_analysis`; it computes nothing the job already stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from prunescope.dashboard.components import (
    TableExport,
    active_job,
    card,
    control,
    dropdown,
    graph,
    grid2,
    open_project,
    page_heading,
    polled_result_stores,
    project_missing,
    queued_message,
    result_polling,
    row_of,
    table_download_callback,
    table_exports,
    view_url_writer,
)
from prunescope.dashboard.figures.layers import (
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
from prunescope.dashboard.figures.overview import empty_figure
from prunescope.dashboard.views.layers import VIEW_KEYS, control_options, parse_view, view_query
from prunescope.server.services import analyses
from prunescope.server.services import checkpoints as checkpoint_service

# `analysis_link`: the project page links here, in this order (components.analysis_links).
dash.register_page(
    __name__, path_template="/projects/<project_id>/layers", title="PruneScope — layers",
    analysis_link=10,
)

# View key → the id of the control holding it.
CONTROL_IDS = {
    "metric": "layers-metric",
    "rows": "layers-rows",
    "checkpoint": "layers-checkpoint",
    "matrix": "layers-matrix",
    "complexity": "layers-complexity",
    "iou_layer": "layers-iou-layer",
    "neuron_layer": "layers-neuron-layer",
    "neuron_checkpoint": "layers-neuron-checkpoint",
}
# Controls whose choices come from the stored results and change when a new analysis lands.
DATA_CONTROLS = ("rows", "checkpoint", "iou_layer", "neuron_layer", "neuron_checkpoint")
POLL_MS = 5000


def _version(data: dict[str, Any]) -> str:
    return json.dumps(data["result_ids"], sort_keys=True)


def _choice(key: str, options: dict[str, list[dict]], view: dict[str, Any],
            width: str = "16rem") -> Any:
    """The dropdown of one view key, with its choices and the view's value."""
    return dropdown(CONTROL_IDS[key], options[key], view[key], width)


def _figure_card(title: str, note: str, controls: list, graph_id: str,
                 export_prefix: str) -> html.Div:
    """A card with controls and the table downloads over one figure."""
    return card(title, note, [row_of(*controls, *table_exports(export_prefix)),
                              graph(graph_id)])


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    data = analyses.layer_analysis(pid)
    options = control_options(data)
    view = parse_view(query, options, data)
    return html.Div(
        [
            dcc.Location(id="layers-url", refresh=False),
            *polled_result_stores("layers", pid, _version(data), POLL_MS),
            *page_heading("layers", project, "layers", back_link_id="layers-back-link"),
            html.Div(id="layers-status", children=_status(pid, data)),
            _figure_card(
                "Similarity to the dense model versus sparsity",
                "Each panel is one layer; each line one pruning method, from the dense model "
                "(sparsity 0) to its sparsest checkpoint. Layers whose line falls first drift "
                "first.",
                [control("metric", _choice("metric", options, view, width="22rem"))],
                "metric-vs-sparsity", "metric",
            ),
            grid2(
                _figure_card(
                    "Layer versus layer, any two checkpoints",
                    "CKA between every layer of one checkpoint (rows, the dense model by "
                    "default) and every layer of another (columns): off-diagonal weight "
                    "means a layer now resembles another one. A pair without the dense "
                    "model is computed on request.",
                    [
                        control("rows", _choice("rows", options, view, width="12rem")),
                        control("×", _choice("checkpoint", options, view, width="12rem")),
                        dcc.RadioItems(id=CONTROL_IDS["matrix"], options=options["matrix"],
                                       value=view["matrix"], inline=True),
                        html.Button("Compute this pair", id="layers-compute-pair",
                                    n_clicks=0, style={"display": "none"}),
                        html.Span(id="layers-pair-message", className="muted"),
                    ],
                    "layer-heatmap", "heatmap",
                ),
                _figure_card(
                    "Complexity per layer",
                    "Does pruning make a layer's representation simpler? One line per "
                    "checkpoint; the dense model in black.",
                    [control("measure", _choice("complexity", options, view, width="22rem"))],
                    "complexity-graph", "complexity",
                ),
            ),
            grid2(
                _figure_card(
                    "Which weights the methods keep",
                    "IoU of the kept weights of every pair of pruned checkpoints; the "
                    "hover gives the IoU that independent random masks would reach.",
                    [control("layer", _choice("iou_layer", options, view))],
                    "mask-iou", "iou",
                ),
                _figure_card(
                    "Wasserstein neurons",
                    "Per neuron: how far the dense model's outputs are from a Gaussian "
                    "(W1/σ) against the share of its incoming weights a method pruned.",
                    [
                        control("layer", _choice("neuron_layer", options, view,
                                                 width="10rem")),
                        control("checkpoint", _choice("neuron_checkpoint", options, view)),
                    ],
                    "neuron-scatter", "neuron",
                ),
            ),
        ]
    )


def _status(project_id: int, data: dict[str, Any]) -> Any:
    """What the page can show, and which job to run when something is missing."""
    evaluation = data["evaluation"]
    if (job := active_job(project_id, "analyze")) is not None:
        return html.Div(
            f"The analysis job #{job.id} is {job.state}; this page fills in when it finishes.",
            className="card muted", id="layers-running",
        )
    if evaluation is None:
        return html.Div(
            [
                html.Strong("No evaluation yet. "),
                "Run the analysis job: the “Run analysis” button on the ",
                dcc.Link("project page", href=f"/projects/{project_id}"),
                ", or ",
                html.Code(f'POST /api/v1/projects/{project_id}/jobs {{"kind": "analyze"}}'),
                ". It compares every checkpoint with the dense one, layer by layer.",
            ],
            className="card", id="layers-no-evaluation",
        )
    evaluated = {int(i) for i in evaluation["checkpoint_ids"].tolist()}
    newer = [c.name for c in checkpoint_service.list_checkpoints(project_id)
             if c.id not in evaluated]
    if newer:
        return html.Div(
            f"{len(newer)} checkpoint(s) came after this evaluation ({', '.join(newer[:5])}"
            f"{', …' if len(newer) > 5 else ''}); run the analysis job again to include them.",
            className="card muted", id="layers-stale",
        )
    return None


# --------------------------------------------------------------------------- callbacks


# Looked up at call time, so the service can be replaced (tests do).
result_polling("layers", lambda pid: analyses.layer_analysis(pid), _status, version=_version)


@callback(
    *[Output(CONTROL_IDS[k], "options") for k in DATA_CONTROLS],
    *[Output(CONTROL_IDS[k], "value") for k in DATA_CONTROLS],
    Input("layers-version", "data"),
    *[State(CONTROL_IDS[k], "value") for k in DATA_CONTROLS],
    State("layers-project-id", "data"),
    prevent_initial_call=True,
)
def refresh_choices(_version: str, *state: Any):  # noqa: ANN201
    """A new analysis can bring new checkpoints and layers; keep each choice that still exists."""
    *current, project_id = state
    data = analyses.layer_analysis(project_id)
    options = control_options(data)
    view = parse_view(dict(zip(DATA_CONTROLS, current, strict=True)), options, data)
    return (*[options[k] for k in DATA_CONTROLS], *[view[k] for k in DATA_CONTROLS])


@view_url_writer("layers-url", *[Input(CONTROL_IDS[k], "value") for k in VIEW_KEYS])
def layers_query(*chosen: Any) -> str:
    return view_query(dict(zip(VIEW_KEYS, chosen, strict=True)))


def _drawn(builder: Callable[..., go.Figure], *args: Any) -> go.Figure:
    try:
        return builder(*args)
    except ValueError as exc:  # a malformed result: say so instead of a stuck "loading…"
        return empty_figure(f"This result cannot be drawn: {exc}")


@callback(
    Output("metric-vs-sparsity", "figure"),
    Input(CONTROL_IDS["metric"], "value"),
    Input("layers-version", "data"),
    State("layers-project-id", "data"),
)
def draw_metric(metric: str, _version: str, project_id: int):  # noqa: ANN201
    data = analyses.layer_analysis(project_id)
    return _drawn(metric_vs_sparsity, data["evaluation"], metric or "cka")


def _pair(project_id: int, rows: str | None, checkpoint: str | None,
          matrix: str) -> tuple[Any, dict[str, Any] | None, bool]:
    """(evaluation, the rows × checkpoint matrix if rows is not the evaluation's reference,
    whether that pair still has to be computed)."""
    evaluation = analyses.layer_analysis(project_id)["evaluation"]
    if rows is None or rows == dense_name(evaluation) or checkpoint is None:
        return evaluation, None, False
    row_id, column_id = checkpoint_id(evaluation, rows), checkpoint_id(evaluation, checkpoint)
    if row_id is None or column_id is None:
        return evaluation, None, False
    found = analyses.layer_matrix(project_id, row_id, column_id, matrix)
    return evaluation, found, found is None


@callback(
    Output("layer-heatmap", "figure"),
    Output("layers-compute-pair", "style"),
    Input(CONTROL_IDS["rows"], "value"),
    Input(CONTROL_IDS["checkpoint"], "value"),
    Input(CONTROL_IDS["matrix"], "value"),
    Input("layers-version", "data"),
    State("layers-project-id", "data"),
)
def draw_heatmap(rows: str | None, checkpoint: str | None, matrix: str, _version: str,  # noqa: ANN201
                 project_id: int):
    matrix = matrix or "cka"
    evaluation, found, missing = _pair(project_id, rows, checkpoint, matrix)
    hidden, shown = {"display": "none"}, {"display": "inline-block"}
    if found is None and not missing:
        return _drawn(layer_by_layer_heatmap, evaluation, checkpoint, matrix), hidden
    if missing:
        layers = [str(v) for v in evaluation["layers"].tolist()]
        message = (f"{rows} × {checkpoint} has not been computed yet: press “Compute this "
                   "pair” (an analysis job over the two checkpoints).")
        return _drawn(layer_pair_heatmap, None, layers, rows, checkpoint, matrix, message), shown
    return _drawn(layer_pair_heatmap, found["values"], found["layers"], rows, checkpoint,
                  matrix), hidden


@callback(
    Output("layers-pair-message", "children"),
    Input("layers-compute-pair", "n_clicks"),
    State(CONTROL_IDS["rows"], "value"),
    State(CONTROL_IDS["checkpoint"], "value"),
    State("layers-project-id", "data"),
    prevent_initial_call=True,
)
def compute_pair(_n: int, rows: str | None, checkpoint: str | None, project_id: int):  # noqa: ANN201
    evaluation = analyses.layer_analysis(project_id)["evaluation"]
    row_id, column_id = checkpoint_id(evaluation, rows), checkpoint_id(evaluation, checkpoint)
    if row_id is None or column_id is None:
        return "Choose two checkpoints of the evaluation."
    return queued_message(
        lambda: analyses.request_layer_comparison(project_id, row_id, column_id), "Analysis",
        "; the heatmap appears when it finishes")


@callback(
    Output("complexity-graph", "figure"),
    Input(CONTROL_IDS["complexity"], "value"),
    Input("layers-version", "data"),
    State("layers-project-id", "data"),
)
def draw_complexity(measure: str, _version: str, project_id: int):  # noqa: ANN201
    data = analyses.layer_analysis(project_id)
    return _drawn(complexity_by_layer, data["evaluation"], measure or "effective_rank")


@callback(
    Output("mask-iou", "figure"),
    Input(CONTROL_IDS["iou_layer"], "value"),
    Input("layers-version", "data"),
    State("layers-project-id", "data"),
)
def draw_iou(layer: str | None, _version: str, project_id: int):  # noqa: ANN201
    data = analyses.layer_analysis(project_id)
    return _drawn(mask_iou_heatmap, data["masks"], layer)


@callback(
    Output("neuron-scatter", "figure"),
    Input(CONTROL_IDS["neuron_layer"], "value"),
    Input(CONTROL_IDS["neuron_checkpoint"], "value"),
    Input("layers-version", "data"),
    State("layers-project-id", "data"),
)
def draw_neurons(layer: str | None, checkpoint: str | None, _version: str, project_id: int):  # noqa: ANN201
    data = analyses.layer_analysis(project_id)
    return _drawn(wasserstein_neurons_scatter, data["neurons"], layer, checkpoint)


# --------------------------------------------------------------------------- downloads


@table_download_callback("metric", State(CONTROL_IDS["metric"], "value"),
                         State("layers-project-id", "data"))
def metric_export(metric: str, project_id: int) -> TableExport:
    rows = metric_vs_sparsity_table(analyses.layer_analysis(project_id)["evaluation"], metric)
    return TableExport(rows, f"project{project_id}-{metric}-vs-sparsity")


@table_download_callback("heatmap", State(CONTROL_IDS["rows"], "value"),
                         State(CONTROL_IDS["checkpoint"], "value"),
                         State(CONTROL_IDS["matrix"], "value"), State("layers-project-id", "data"))
def heatmap_export(rows: str | None, checkpoint: str | None, matrix: str,
                   project_id: int) -> TableExport:
    evaluation, found, _missing = _pair(project_id, rows, checkpoint, matrix)
    if found is not None:
        table = layer_pair_table(found["values"], found["layers"], rows, checkpoint, matrix)
        return TableExport(table, f"project{project_id}-{matrix}-layers-{rows}-x-{checkpoint}")
    table = layer_by_layer_table(evaluation, checkpoint, matrix)
    return TableExport(table, f"project{project_id}-{matrix}-layers-{checkpoint}")


@table_download_callback("complexity", State(CONTROL_IDS["complexity"], "value"),
                         State("layers-project-id", "data"))
def complexity_export(measure: str, project_id: int) -> TableExport:
    rows = complexity_table(analyses.layer_analysis(project_id)["evaluation"], measure)
    return TableExport(rows, f"project{project_id}-{measure}-by-layer")


@table_download_callback("iou", State(CONTROL_IDS["iou_layer"], "value"),
                         State("layers-project-id", "data"))
def iou_export(layer: str | None, project_id: int) -> TableExport:
    rows = mask_iou_table(analyses.layer_analysis(project_id)["masks"], layer)
    return TableExport(rows, f"project{project_id}-mask-iou-{layer or 'all'}")


@table_download_callback("neuron", State(CONTROL_IDS["neuron_layer"], "value"),
                         State(CONTROL_IDS["neuron_checkpoint"], "value"),
                         State("layers-project-id", "data"))
def neuron_export(layer: str | None, checkpoint: str | None, project_id: int) -> TableExport:
    rows = wasserstein_neurons_table(analyses.layer_analysis(project_id)["neurons"], layer,
                                     checkpoint)
    return TableExport(rows, f"project{project_id}-neurons-{layer}-{checkpoint}")
