"""Attention page: does each head of a pruned Transformer still attend as the dense one?

Reads the attention-consistency arrays the analyze job stores for Hugging Face checkpoints
(`analyses.layer_analysis`'s evaluation), the probe job's accuracies and, for the sentence
viewer, one sentence's maps (an `attention_maps` job, queued from the page on request).
Every choice is in the URL (`prunescope.dashboard.views.attention`), so a copied link reopens
the same view.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

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
    project_missing,
    queued_message,
    row_of,
    table_download_callback,
    table_exports,
    view_url_writer,
)
from prunescope.dashboard.figures.attention import (
    ATTENTION_MEASURES,
    DRIFT_MEASURES,
    as_int,
    attention_rows,
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
    viewer_rows,
)
from prunescope.dashboard.figures.overview import GRAPH_CONFIG, empty_figure
from prunescope.dashboard.views.attention import (
    VIEW_KEYS,
    attention_shape,
    parse_view,
    sparsity_marks,
    view_query,
)
from prunescope.server.errors import Conflict, InvalidInput
from prunescope.server.services import analyses
from prunescope.server.services import datasets as dataset_service
from prunescope.server.services import jobs as job_service

# `analysis_link`: the project page links here, in this order (components.analysis_links).
dash.register_page(
    __name__, path_template="/projects/<project_id>/attention", title="PruneScope — attention",
    analysis_link=30,
)

MEASURE_OPTIONS = [{"label": m.label, "value": k} for k, m in ATTENTION_MEASURES.items()]
DRIFT_OPTIONS = [{"label": label, "value": k} for k, (_, label) in DRIFT_MEASURES.items()]
SENTENCE_LABEL = 90  # characters of a sentence shown in the picker
POLL_MS = 2000


def _evaluation(project_id: int) -> Any:
    return analyses.layer_analysis(project_id)["evaluation"]


def _sentence_options(sentences: list[str]) -> list[dict[str, Any]]:
    return [{"label": f"{i}: {s[:SENTENCE_LABEL]}{'…' if len(s) > SENTENCE_LABEL else ''}",
             "value": i} for i, s in enumerate(sentences)]


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    evaluation = _evaluation(pid)
    sentences = dataset_service.evaluation_sentences(pid)
    tasks = probe_tasks(analyses.probing_results(pid)["probing"])
    view = parse_view(query, evaluation, len(sentences), tasks)
    methods = methods_of(pruned_checkpoints(evaluation))
    marks, low, high = sparsity_marks(evaluation, view["method"])
    layers, heads = attention_shape(evaluation)
    return html.Div([
        dcc.Location(id="attention-url", refresh=False),
        dcc.Store(id="attention-project-id", data=pid),
        dcc.Store(id="attention-maps-job"),
        dcc.Interval(id="attention-poll", interval=POLL_MS),
        *page_heading("attention", project, "attention"),
        row_of(
            control("measure", dropdown("attention-measure", MEASURE_OPTIONS, view["measure"],
                                        "24rem")),
            control("method", dropdown("attention-method", methods, view["method"])),
            control("sparsity", html.Div(dcc.Slider(
                id="attention-sparsity", min=low, max=high, step=None, marks=marks,
                value=view["sparsity"] if view["sparsity"] is not None else low),
                style={"width": "18rem"})),
            html.Span(id="attention-checkpoint", className="muted"),
            *table_exports("attention"),
            className="card",
        ),
        grid2(
            card("Per layer", "The mean over heads, one line per checkpoint (sparser darker). "
                 "Movva & Zhao (2020) find attention stays consistent as sparsity grows.",
                 [graph("attention-lines")]),
            card("Per head", "Each layer's heads for the chosen checkpoint; every real, "
                 "non-special query token counts once. Click a cell to view that head below.",
                 [graph("attention-heads")]),
        ),
        card("Across methods", "Each method at its checkpoint nearest the chosen sparsity, on "
             "one colour scale.", [graph("attention-methods")]),
        card("One sentence",
             "The chosen head's attention in the dense and the chosen pruned checkpoint "
             "(rows: queries, columns: keys) and their difference.",
             [row_of(
                 dcc.Dropdown(id="attention-sentence", options=_sentence_options(sentences),
                              value=view["sentence"] if sentences else None, clearable=False,
                              style={"width": "40rem"},
                              placeholder="no sentences (they appear once the analysis ran)"),
                 control("layer", dropdown("attention-layer", list(range(layers)),
                                           view["layer"], "5rem")),
                 control("head", dropdown("attention-head", list(range(heads)), view["head"],
                                          "5rem")),
                 html.Button("Show attention", id="attention-show", n_clicks=0),
                 *table_exports("attention-viewer"),
             ),
              html.Div(id="attention-maps-message", className="muted"),
              graph("attention-viewer")]),
        card("Linear probes per layer",
             "What each layer still encodes: a logistic regression per layer and checkpoint "
             "on tasks generated from the project's sentences (length, word content, bigram "
             "shift, odd-man-out, coordination inversion; Conneau et al. 2018), scored on "
             "held-out sentences against the majority class.",
             [row_of(
                 dropdown("attention-task", [{"label": t, "value": t} for t in tasks],
                          view["task"], "16rem"),
                 html.Button("Run probes", id="attention-run-probes", n_clicks=0),
                 html.Span(id="attention-probe-message", className="muted"),
             ),
              graph("attention-probes")]),
        grid2(
            card("Layer drift", "Hidden states per layer against the dense model (the Layers "
                 "page has the full set of measures).",
                 [dropdown("attention-drift", DRIFT_OPTIONS, view["drift"], "22rem"),
                  graph("attention-drift-lines")]),
            card("Language-model quality", "Perplexity for decoders, masked-token accuracy for "
                 "encoders with their MLM head, on the evaluation sentences.",
                 [dcc.Graph(id="attention-lm", figure=lm_quality_lines(evaluation),
                            config=GRAPH_CONFIG)]),
        ),
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
        # The sentences come from the stored analysis, not from loading the dataset here.
        why = ("This project's dataset has no sentences." if _evaluation(project_id) is not None
               else "The sentences appear once the project's analysis has run.")
        return empty_figure(why), "", {"display": "none"}
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
        found = active_job(project_id, "attention_maps",
                           lambda j: j.params.get("sentence") == int(sentence))
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


@view_url_writer("attention-url", *[Input(f"attention-{key}", "value") for key in VIEW_KEYS])
def attention_query(*chosen: Any) -> str:
    return view_query(dict(zip(VIEW_KEYS, chosen, strict=True)))


# --------------------------------------------------------------------------- downloads


@table_download_callback("attention", State("attention-measure", "value"),
                         State("attention-project-id", "data"))
def attention_export(measure: str, project_id: int) -> TableExport:
    return TableExport(attention_rows(_evaluation(project_id), measure),
                       f"project{project_id}-attention-{measure}")


@table_download_callback("attention-viewer", State("attention-sentence", "value"),
                         State("attention-method", "value"), State("attention-sparsity", "value"),
                         State("attention-layer", "value"), State("attention-head", "value"),
                         State("attention-project-id", "data"))
def viewer_export(sentence: int | None, method: str | None, sparsity: int | None,
                  layer: int | None, head: int | None, project_id: int) -> TableExport | None:
    if sentence is None:
        return None
    maps = analyses.attention_maps(project_id, int(sentence))["maps"]
    checkpoint = checkpoint_at(_evaluation(project_id), method, sparsity)
    return TableExport(viewer_rows(maps, checkpoint, int(layer or 0), int(head or 0)),
                       f"project{project_id}-sentence{sentence}-layer{layer}-head{head}")
