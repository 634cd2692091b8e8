"""Attention page: does each head of a pruned Transformer still attend as the dense one?

Reads the attention-consistency arrays the analyze job stores for Hugging Face checkpoints
(`services.layer_analysis`'s evaluation); the measure and checkpoint are in the URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from dashboard.components import queued_message
from dashboard.figures.attention import (
    ATTENTION_MEASURES,
    attention_checkpoints,
    attention_rows,
    head_heatmap,
    per_layer_lines,
    probe_lines,
    probe_tasks,
)
from dashboard.figures.layers import rows_to_csv
from dashboard.figures.overview import GRAPH_CONFIG, empty_figure
from dashboard.state import parse_query
from server import services

dash.register_page(
    __name__, path_template="/projects/<project_id>/attention", title="PruneScope — attention"
)

MEASURE_OPTIONS = [{"label": m.label, "value": k} for k, m in ATTENTION_MEASURES.items()]


def _evaluation(project_id: int) -> Any:
    return services.layer_analysis(project_id)["evaluation"]


def layout(project_id: str | None = None, **query: str) -> html.Div:
    try:
        pid = int(project_id or "")
        project = services.get_project(pid)
    except (ValueError, services.NotFound):
        return html.Div([html.H2("Project not found"), dcc.Link("Back to all projects", href="/")],
                        id="project-missing")
    evaluation = _evaluation(pid)
    checkpoints = attention_checkpoints(evaluation)
    checkpoint = query.get("checkpoint") if query.get("checkpoint") in checkpoints else (
        checkpoints[-1] if checkpoints else None)
    measure = query.get("measure") if query.get("measure") in ATTENTION_MEASURES else "js"
    probing = services.probing_results(pid)["probing"]
    tasks = probe_tasks(probing)
    task = query.get("task") if query.get("task") in tasks else (tasks[0] if tasks else None)
    return html.Div([
        dcc.Location(id="attention-url", refresh=False),
        dcc.Store(id="attention-project-id", data=pid),
        html.H2(f"{project.name}: attention", id="attention-title"),
        html.Div([dcc.Link("← back to the project", href=f"/projects/{pid}"),
                  f" · architecture {project.architecture}"], className="muted"),
        html.Div([
            html.Div([html.Span("measure", className="muted"),
                      dcc.Dropdown(id="attention-measure", options=MEASURE_OPTIONS,
                                   value=measure, clearable=False, style={"width": "26rem"})],
                     style={"display": "flex", "gap": "0.5rem", "alignItems": "center"}),
            html.Div([html.Span("checkpoint", className="muted"),
                      dcc.Dropdown(id="attention-checkpoint",
                                   options=[{"label": c, "value": c} for c in checkpoints],
                                   value=checkpoint, clearable=False, style={"width": "16rem"})],
                     style={"display": "flex", "gap": "0.5rem", "alignItems": "center"}),
            html.Button("CSV", id="attention-csv", n_clicks=0),
            dcc.Download(id="attention-download"),
        ], className="card", style={"display": "flex", "gap": "1rem", "flexWrap": "wrap"}),
        html.Div([
            html.Div([html.H3("Per layer"),
                      html.P("The mean over heads, one line per checkpoint (sparser darker). "
                             "Movva & Zhao (2020) find attention stays consistent as sparsity "
                             "grows.", className="muted"),
                      dcc.Graph(id="attention-lines", figure=empty_figure("loading…"),
                                config=GRAPH_CONFIG)], className="card"),
            html.Div([html.H3("Per head"),
                      html.P("Each layer's heads for the chosen checkpoint; every real, "
                             "non-special query token counts once.", className="muted"),
                      dcc.Graph(id="attention-heads", figure=empty_figure("loading…"),
                                config=GRAPH_CONFIG)], className="card"),
        ], className="grid2"),
        html.Div([
            html.H3("Linear probes per layer"),
            html.P("What each layer still encodes: a logistic regression per layer and "
                   "checkpoint on tasks generated from the project's sentences (length, word "
                   "content, bigram shift, odd-man-out, coordination inversion; Conneau et al. "
                   "2018), scored on held-out sentences against the majority class.",
                   className="muted"),
            html.Div([
                dcc.Dropdown(id="attention-task", options=[{"label": t, "value": t}
                                                           for t in tasks],
                             value=task, clearable=False, style={"width": "16rem"}),
                html.Button("Run probes", id="attention-run-probes", n_clicks=0),
                html.Span(id="attention-probe-message", className="muted"),
            ], style={"display": "flex", "gap": "1rem", "alignItems": "center"}),
            dcc.Graph(id="attention-probes", figure=empty_figure("loading…"),
                      config=GRAPH_CONFIG),
        ], className="card"),
    ])


@callback(
    Output("attention-lines", "figure"),
    Output("attention-heads", "figure"),
    Input("attention-measure", "value"),
    Input("attention-checkpoint", "value"),
    State("attention-project-id", "data"),
)
def draw(measure: str, checkpoint: str | None, project_id: int):  # noqa: ANN201
    evaluation = _evaluation(project_id)
    return per_layer_lines(evaluation, measure), head_heatmap(evaluation, checkpoint, measure)


@callback(
    Output("attention-probes", "figure"),
    Input("attention-task", "value"),
    State("attention-project-id", "data"),
)
def draw_probes(task: str | None, project_id: int):  # noqa: ANN201
    probing = services.probing_results(project_id)["probing"]
    evaluation = _evaluation(project_id)
    methods = {}
    if evaluation is not None and "checkpoint_methods" in evaluation:
        methods = dict(zip([str(n) for n in evaluation["checkpoint_names"].tolist()],
                           [str(m) for m in evaluation["checkpoint_methods"].tolist()],
                           strict=True))
    return probe_lines(probing, task, methods)


@callback(
    Output("attention-probe-message", "children"),
    Input("attention-run-probes", "n_clicks"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def run_probes(n_clicks: int, project_id: int):  # noqa: ANN201
    if not n_clicks:
        return no_update
    return queued_message(lambda: services.request_probing(project_id), "Probe",
                          "; reload the page when it has finished")


@callback(
    Output("attention-url", "search"),
    Input("attention-measure", "value"),
    Input("attention-checkpoint", "value"),
    Input("attention-task", "value"),
    State("attention-url", "search"),
    prevent_initial_call=True,
)
def write_url(measure: str, checkpoint: str | None, task: str | None,  # noqa: ANN201
              search: str | None):
    pairs = [("measure", measure)] + ([("checkpoint", checkpoint)] if checkpoint else []) + \
        ([("task", task)] if task else [])
    query = "?" + urlencode(pairs)
    return no_update if parse_query(query) == parse_query(search) else query


@callback(
    Output("attention-download", "data"),
    Input("attention-csv", "n_clicks"),
    State("attention-measure", "value"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def download(_n: int, measure: str, project_id: int):  # noqa: ANN201
    rows = attention_rows(_evaluation(project_id), measure)
    if not rows:
        return no_update
    return {"content": rows_to_csv(rows), "filename": f"project{project_id}-attention-"
            f"{measure}.csv", "type": "text/csv"}
