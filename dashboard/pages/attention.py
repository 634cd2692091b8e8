"""Attention page: does each head of a pruned Transformer still attend as the dense one?

Reads the attention-consistency arrays the analyze job stores for Hugging Face checkpoints
(`analyses.layer_analysis`'s evaluation), the probe job's accuracies and, for the sentence
viewer, one sentence's maps (an `attention_maps` job, queued from the page on request).
Every choice is in the URL (`VIEW_KEYS`): measure, method, sparsity (percent), layer, head,
sentence, probing task and drift measure; an older link's `checkpoint` still opens its
method and sparsity.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from prunescope.dashboard.components import (
    export_buttons,
    export_inputs,
    open_project,
    project_missing,
    queued_message,
    table_download,
)
from prunescope.dashboard.figures.attention import (
    ATTENTION_MEASURES,
    DRIFT_MEASURES,
    as_int,
    attention_rows,
    attention_shape,
    attention_viewer,
    checkpoint_at,
    head_heatmap,
    layer_drift_lines,
    lm_quality_lines,
    method_small_multiples,
    methods_of,
    nearest,
    per_layer_lines,
    probe_lines,
    probe_tasks,
    pruned_checkpoints,
    resolve_attention_view,
    sparsity_marks,
    viewer_rows,
)
from prunescope.dashboard.figures.overview import GRAPH_CONFIG, empty_figure, loading_figure
from prunescope.dashboard.state import parse_query
from prunescope.server.errors import Conflict, InvalidInput
from prunescope.server.services import analyses
from prunescope.server.services import datasets as dataset_service
from prunescope.server.services import jobs as job_service

dash.register_page(
    __name__, path_template="/projects/<project_id>/attention", title="PruneScope — attention"
)

VIEW_KEYS = ("measure", "method", "sparsity", "layer", "head", "sentence", "task", "drift")
MEASURE_OPTIONS = [{"label": m.label, "value": k} for k, m in ATTENTION_MEASURES.items()]
DRIFT_OPTIONS = [{"label": label, "value": k} for k, (_, label) in DRIFT_MEASURES.items()]
SENTENCE_LABEL = 90  # characters of a sentence shown in the picker
POLL_MS = 2000


def _evaluation(project_id: int) -> Any:
    return analyses.layer_analysis(project_id)["evaluation"]


def _sentence_options(sentences: list[str]) -> list[dict[str, Any]]:
    return [{"label": f"{i}: {s[:SENTENCE_LABEL]}{'…' if len(s) > SENTENCE_LABEL else ''}",
             "value": i} for i, s in enumerate(sentences)]


def _row(label: str, component: Any) -> html.Div:
    return html.Div([html.Span(label, className="muted"), component],
                    style={"display": "flex", "gap": "0.5rem", "alignItems": "center"})


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    evaluation = _evaluation(pid)
    sentences = dataset_service.evaluation_sentences(pid)
    view = resolve_attention_view(query, evaluation, len(sentences))
    checkpoints = pruned_checkpoints(evaluation)
    methods = methods_of(checkpoints)
    marks, low, high = sparsity_marks(evaluation, view["method"])
    layers, heads = attention_shape(evaluation)
    probing = analyses.probing_results(pid)["probing"]
    tasks = probe_tasks(probing)
    task = view["task"] if view["task"] in tasks else (tasks[0] if tasks else None)
    return html.Div([
        dcc.Location(id="attention-url", refresh=False),
        dcc.Store(id="attention-project-id", data=pid),
        dcc.Store(id="attention-maps-job"),
        dcc.Interval(id="attention-poll", interval=POLL_MS),
        html.H2(f"{project.name}: attention", id="attention-title"),
        html.Div([dcc.Link("← back to the project", href=f"/projects/{pid}"),
                  f" · architecture {project.architecture}"], className="muted"),
        html.Div([
            _row("measure", dcc.Dropdown(id="attention-measure", options=MEASURE_OPTIONS,
                                         value=view["measure"], clearable=False,
                                         style={"width": "24rem"})),
            _row("method", dcc.Dropdown(id="attention-method", options=methods,
                                        value=view["method"], clearable=False,
                                        style={"width": "14rem"})),
            _row("sparsity", html.Div(dcc.Slider(
                id="attention-sparsity", min=low, max=high, step=None, marks=marks,
                value=view["sparsity"] if view["sparsity"] is not None else low),
                style={"width": "18rem"})),
            html.Span(id="attention-checkpoint", className="muted"),
            *export_buttons("attention"),
            dcc.Download(id="attention-download"),
        ], className="card", style={"display": "flex", "gap": "1rem", "flexWrap": "wrap",
                                    "alignItems": "center"}),
        html.Div([
            html.Div([html.H3("Per layer"),
                      html.P("The mean over heads, one line per checkpoint (sparser darker). "
                             "Movva & Zhao (2020) find attention stays consistent as sparsity "
                             "grows.", className="muted"),
                      dcc.Graph(id="attention-lines", figure=loading_figure(),
                                config=GRAPH_CONFIG)], className="card"),
            html.Div([html.H3("Per head"),
                      html.P("Each layer's heads for the chosen checkpoint; every real, "
                             "non-special query token counts once. Click a cell to view that "
                             "head below.", className="muted"),
                      dcc.Graph(id="attention-heads", figure=loading_figure(),
                                config=GRAPH_CONFIG)], className="card"),
        ], className="grid2"),
        html.Div([html.H3("Across methods"),
                  html.P("Each method at its checkpoint nearest the chosen sparsity, on one "
                         "colour scale.", className="muted"),
                  dcc.Graph(id="attention-methods", figure=loading_figure(),
                            config=GRAPH_CONFIG)], className="card"),
        html.Div([
            html.H3("One sentence"),
            html.P("The chosen head's attention in the dense and the chosen pruned checkpoint "
                   "(rows: queries, columns: keys) and their difference.", className="muted"),
            html.Div([
                dcc.Dropdown(id="attention-sentence", options=_sentence_options(sentences),
                             value=view["sentence"] if sentences else None, clearable=False,
                             style={"width": "40rem"}, placeholder="no sentences"),
                _row("layer", dcc.Dropdown(id="attention-layer",
                                           options=list(range(layers)), value=view["layer"],
                                           clearable=False, style={"width": "5rem"})),
                _row("head", dcc.Dropdown(id="attention-head", options=list(range(heads)),
                                          value=view["head"], clearable=False,
                                          style={"width": "5rem"})),
                html.Button("Show attention", id="attention-show", n_clicks=0),
                *export_buttons("attention-viewer"),
                dcc.Download(id="attention-viewer-download"),
            ], style={"display": "flex", "gap": "1rem", "alignItems": "center",
                      "flexWrap": "wrap"}),
            html.Div(id="attention-maps-message", className="muted"),
            dcc.Graph(id="attention-viewer", figure=loading_figure(),
                      config=GRAPH_CONFIG),
        ], className="card"),
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
            dcc.Graph(id="attention-probes", figure=loading_figure(),
                      config=GRAPH_CONFIG),
        ], className="card"),
        html.Div([
            html.Div([html.H3("Layer drift"),
                      html.P("Hidden states per layer against the dense model (the Layers page "
                             "has the full set of measures).", className="muted"),
                      dcc.Dropdown(id="attention-drift", options=DRIFT_OPTIONS,
                                   value=view["drift"], clearable=False,
                                   style={"width": "22rem"}),
                      dcc.Graph(id="attention-drift-lines", figure=loading_figure(),
                                config=GRAPH_CONFIG)], className="card"),
            html.Div([html.H3("Language-model quality"),
                      html.P("Perplexity for decoders, masked-token accuracy for encoders with "
                             "their MLM head, on the evaluation sentences.", className="muted"),
                      dcc.Graph(id="attention-lm", figure=lm_quality_lines(evaluation),
                                config=GRAPH_CONFIG)], className="card"),
        ], className="grid2"),
    ])


@callback(
    Output("attention-sparsity", "marks"),
    Output("attention-sparsity", "min"),
    Output("attention-sparsity", "max"),
    Output("attention-sparsity", "value"),
    Input("attention-method", "value"),
    State("attention-sparsity", "value"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def method_changed(method: str | None, sparsity: int | None, project_id: int):  # noqa: ANN201
    """Another method's sparsities on the slider, keeping the nearest to the current one."""
    evaluation = _evaluation(project_id)
    marks, low, high = sparsity_marks(evaluation, method)
    found = nearest(pruned_checkpoints(evaluation), method, sparsity) if method else None
    return marks, low, high, found.sparsity if found else low


@callback(
    Output("attention-lines", "figure"),
    Output("attention-heads", "figure"),
    Output("attention-methods", "figure"),
    Output("attention-checkpoint", "children"),
    Input("attention-measure", "value"),
    Input("attention-method", "value"),
    Input("attention-sparsity", "value"),
    State("attention-project-id", "data"),
)
def draw(measure: str, method: str | None, sparsity: int | None,  # noqa: ANN201
         project_id: int):
    evaluation = _evaluation(project_id)
    checkpoint = checkpoint_at(evaluation, method, sparsity)
    return (per_layer_lines(evaluation, measure), head_heatmap(evaluation, checkpoint, measure),
            method_small_multiples(evaluation, as_int(sparsity, None), measure),
            f"checkpoint {checkpoint}" if checkpoint else "")


@callback(
    Output("attention-layer", "value"),
    Output("attention-head", "value"),
    Input("attention-heads", "clickData"),
    prevent_initial_call=True,
)
def pick_head(click: dict | None):  # noqa: ANN201
    """A click on the per-head heatmap ("layer L", "head H" axes) chooses that head."""
    try:
        point = click["points"][0]
        return int(str(point["y"]).split()[-1]), int(str(point["x"]).split()[-1])
    except (TypeError, KeyError, IndexError, ValueError):
        return no_update, no_update


@callback(
    Output("attention-viewer", "figure"),
    Output("attention-maps-message", "children"),
    Output("attention-show", "style"),
    Input("attention-sentence", "value"),
    Input("attention-method", "value"),
    Input("attention-sparsity", "value"),
    Input("attention-layer", "value"),
    Input("attention-head", "value"),
    Input("attention-maps-job", "data"),
    State("attention-project-id", "data"),
)
def draw_viewer(sentence: int | None, method: str | None, sparsity: int | None,  # noqa: ANN201
                layer: int | None, head: int | None, job: dict | None, project_id: int):
    if sentence is None:
        return empty_figure("This project's dataset has no sentences."), "", {"display": "none"}
    maps = analyses.attention_maps(project_id, int(sentence))["maps"]
    checkpoint = checkpoint_at(_evaluation(project_id), method, sparsity)
    message = ""
    if job and job.get("sentence") == sentence and job.get("message"):
        message = job["message"]
    elif maps is not None:
        truncated = bool(maps["truncated"]) if "truncated" in maps else False
        message = f"“{maps['text']}”" + (" (cut at 64 tokens)" if truncated else "")
    pending = bool(job and job.get("sentence") == sentence and job.get("id"))
    button = {"display": "none"} if pending or (maps is not None and checkpoint in [
        str(n) for n in maps["checkpoint_names"].tolist()]) else {}
    return (attention_viewer(maps, checkpoint, int(layer or 0), int(head or 0)), message,
            button)


@callback(
    Output("attention-maps-job", "data", allow_duplicate=True),
    Input("attention-show", "n_clicks"),
    State("attention-sentence", "value"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def show_attention(n_clicks: int, sentence: int | None, project_id: int):  # noqa: ANN201
    if not n_clicks or sentence is None:
        return no_update
    try:
        job = analyses.request_attention_maps(project_id, int(sentence))
    except (InvalidInput, Conflict) as exc:
        return {"sentence": sentence, "message": f"Not queued: {exc}"}
    return {"sentence": sentence, "id": job.id,
            "message": f"Attention job #{job.id} queued; the maps appear when it finishes."}


def _maps_job(project_id: int, sentence: int) -> Any:
    """The newest queued or running attention-maps job for a sentence, or None."""
    active = [j for j in job_service.list_jobs(project_id) if j.kind == "attention_maps"
              and j.state in ("queued", "running") and j.params.get("sentence") == sentence]
    return active[-1] if active else None


@callback(
    Output("attention-maps-job", "data", allow_duplicate=True),
    Input("attention-poll", "n_intervals"),
    State("attention-sentence", "value"),
    State("attention-maps-job", "data"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def poll_maps_job(_n: int, sentence: int | None, job: dict | None,  # noqa: ANN201
                  project_id: int):
    """Follow the maps job of the shown sentence (queued here or elsewhere, e.g. by the
    demo); when it ends, the viewer redraws from its result."""
    if sentence is None:
        return no_update
    ident = job.get("id") if job and job.get("sentence") == sentence else None
    if ident is None:
        found = _maps_job(project_id, int(sentence))
        if found is None:
            return no_update
        ident = found.id
    state = job_service.get_job(ident)
    if state.state in ("queued", "running"):
        new = {"sentence": sentence, "id": ident,
               "message": f"Attention job #{ident} {state.state} ({100 * state.progress:.0f}%)"}
        return new if new != job else no_update
    if state.state == "succeeded":
        return {"sentence": sentence, "done": ident}
    return {"sentence": sentence,
            "message": f"Attention job #{ident} {state.state}: {state.error or ''}"}


@callback(
    Output("attention-probes", "figure"),
    Input("attention-task", "value"),
    State("attention-project-id", "data"),
)
def draw_probes(task: str | None, project_id: int):  # noqa: ANN201
    probing = analyses.probing_results(project_id)["probing"]
    evaluation = _evaluation(project_id)
    methods = {}
    if evaluation is not None and "checkpoint_methods" in evaluation:
        methods = dict(zip([str(n) for n in evaluation["checkpoint_names"].tolist()],
                           [str(m) for m in evaluation["checkpoint_methods"].tolist()],
                           strict=True))
    return probe_lines(probing, task, methods)


@callback(
    Output("attention-drift-lines", "figure"),
    Input("attention-drift", "value"),
    State("attention-project-id", "data"),
)
def draw_drift(measure: str, project_id: int):  # noqa: ANN201
    return layer_drift_lines(_evaluation(project_id), measure)


@callback(
    Output("attention-probe-message", "children"),
    Input("attention-run-probes", "n_clicks"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def run_probes(n_clicks: int, project_id: int):  # noqa: ANN201
    if not n_clicks:
        return no_update
    return queued_message(lambda: analyses.request_probing(project_id), "Probe",
                          "; reload the page when it has finished")


@callback(
    Output("attention-url", "search"),
    *[Input(f"attention-{key}", "value") for key in VIEW_KEYS],
    State("attention-url", "search"),
    prevent_initial_call=True,
)
def write_url(*values: Any):  # noqa: ANN201
    *chosen, search = values
    pairs = [(k, v) for k, v in zip(VIEW_KEYS, chosen, strict=True) if v is not None]
    query = "?" + urlencode(pairs)
    return no_update if parse_query(query) == parse_query(search) else query


@callback(
    Output("attention-download", "data"),
    *export_inputs("attention"),
    State("attention-measure", "value"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def download(_n: int, _p: int, measure: str, project_id: int):  # noqa: ANN201
    return table_download(attention_rows(_evaluation(project_id), measure),
                        f"project{project_id}-attention-{measure}")


@callback(
    Output("attention-viewer-download", "data"),
    *export_inputs("attention-viewer"),
    State("attention-sentence", "value"),
    State("attention-method", "value"),
    State("attention-sparsity", "value"),
    State("attention-layer", "value"),
    State("attention-head", "value"),
    State("attention-project-id", "data"),
    prevent_initial_call=True,
)
def download_viewer(_n: int, _p: int, sentence: int | None, method: str | None,  # noqa: ANN201
                    sparsity: int | None, layer: int | None, head: int | None,
                    project_id: int):
    if sentence is None:
        return no_update
    maps = analyses.attention_maps(project_id, int(sentence))["maps"]
    checkpoint = checkpoint_at(_evaluation(project_id), method, sparsity)
    return table_download(viewer_rows(maps, checkpoint, int(layer or 0), int(head or 0)),
                        f"project{project_id}-sentence{sentence}-layer{layer}-head{head}")
