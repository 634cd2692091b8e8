"""Project page: checkpoints, job progress, accuracy versus sparsity and per-layer CKA."""

from __future__ import annotations

import json
import re
from typing import Any

import dash
from dash import ALL, Input, Output, State, callback, ctx, dash_table, dcc, html, no_update

from prunescope.dashboard.components import (
    ACTIVE,
    TableExport,
    analysis_links,
    card,
    dropdown,
    graph,
    grid2,
    ingest_outcome,
    ingest_watch,
    jobs_panel,
    open_project,
    project_missing,
    row_of,
    table_download_callback,
    table_exports,
    validating_message,
)
from prunescope.dashboard.figures.comparison import (
    comparison_columns,
    comparison_table_rows,
    default_column,
    headline_vs_sparsity,
    plottable_columns,
)
from prunescope.dashboard.figures.overview import (
    accuracy_vs_sparsity,
    checkpoint_rows,
    empty_figure,
    layer_cka_heatmap,
    layer_sparsity_heatmap,
)
from prunescope.dashboard.report import (
    comparison_of,
    pinnable_options,
    project_report_html,
    report_inputs,
)
from prunescope.dashboard.state import parse_sparsities
from prunescope.dashboard.views.project import parse_view, view_query
from prunescope.server.errors import ServiceError
from prunescope.server.schemas import JobCreate
from prunescope.server.services import analyses
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.services import results as result_service
from prunescope.server.services.comparison import comparison_csv, comparison_parquet

dash.register_page(__name__, path_template="/projects/<project_id>", title="PruneScope — project")


def _version(project_id: int) -> str:
    checkpoints = checkpoint_service.list_checkpoints(project_id)
    results = result_service.list_results(project_id)
    return json.dumps([[c.id for c in checkpoints], [r.id for r in results]])


# d3-format specifier per comparison column kind (dashboard.figures.comparison.Column.kind).
COMPARISON_FORMATS = {"percent": ".2%", "score": ".3f", "ratio": ".2f", "count": "d",
                      "general": ".4g"}


def comparison_table_columns(rows: list[dict]) -> list[dict]:
    """DataTable columns of the comparison: names, the numeric columns some row has a value
    for, and the markdown links to the views the numbers come from."""
    text = ["name", "role", "method"]
    if len({r.get("source") for r in rows}) > 1:
        text.insert(1, "source")
    return (
        [{"name": key, "id": key} for key in text]
        + [
            {"name": c.label, "id": c.key, "type": "numeric",
             "format": {"specifier": COMPARISON_FORMATS[c.kind]}}
            for c in comparison_columns(rows)
        ]
        + [{"name": "views", "id": "views", "presentation": "markdown"}]
    )


# ---------------------------------------------------------------------------------- layout


def _page_stores(pid: int, view: dict[str, Any]) -> list:
    return [
        dcc.Location(id="project-url", refresh=False),
        dcc.Store(id="project-id", data=pid),
        dcc.Store(id="project-version"),
        dcc.Store(id="checkpoint-rows"),
        dcc.Store(id="comparison-rows"),
        dcc.Store(id="method-selection", data=view["methods"]),
        dcc.Interval(id="project-poll", interval=1000, n_intervals=0),
    ]


def _heading(project: Any) -> list:
    """The project's name, and a line with its architecture, dataset and other pages."""
    pid = project.id
    dataset = next((d.name for d in project.datasets if d.active), "none")
    links = [part for link in analysis_links(pid) for part in (" · ", link)]
    return [
        html.H2(project.name, id="project-title"),
        html.Div(
            [
                f"architecture {project.architecture} · dataset {dataset} (",
                dcc.Link("datasets", href=f"/projects/{pid}/datasets", id="datasets-link"),
                ")", *links,
                f" · {project.description}" if project.description else "",
            ],
            className="muted",
        ),
    ]


def _jobs_card() -> html.Div:
    return card("Jobs", None, [
        html.Div(id="jobs-panel"),
        html.Div(
            [html.Button("Run analysis", id="run-analysis", n_clicks=0, className="primary"),
             html.Span(id="action-message", style={"marginLeft": "1rem"})],
            style={"marginTop": "0.6rem"},
        ),
    ])


def _prune_card() -> html.Div:
    return card("Prune the dense checkpoint", None, [
        dcc.Checklist(
            id="prune-methods",
            options=[{"label": html.Span(name, title=doc), "value": name}
                     for name, doc in project_service.list_pruning_methods().items()],
            value=[],
            inline=True,
        ),
        html.Div(
            [dcc.Input(id="prune-sparsities", value="0.5, 0.8, 0.95",
                       placeholder="sparsities, e.g. 0.5, 0.8, 0.95", style={"width": "16rem"}),
             html.Button("Queue pruning jobs", id="prune-submit", n_clicks=0),
             html.Span(id="prune-message")],
            style={"display": "flex", "gap": "0.6rem", "marginTop": "0.6rem"},
        ),
    ])


def _overview_cards() -> list:
    """Accuracy against sparsity, CKA per layer and sparsity per layer."""
    return [
        grid2(
            card("Accuracy versus sparsity", None, [
                dcc.Checklist(id="method-filter", inline=True, options=[], value=[]),
                graph("accuracy-graph"),
            ]),
            card("Linear CKA to the dense model, per layer", None, [graph("cka-heatmap")]),
        ),
        card("Where each method puts its zeros: sparsity per layer", None,
             [graph("layer-sparsity")]),
    ]


def _numeric(name: str, id_: str, format_: Any = None) -> dict[str, Any]:
    column = {"name": name, "id": id_, "type": "numeric"}
    return {**column, "format": format_} if format_ is not None else column


CHECKPOINT_COLUMNS = [
    {"name": "name", "id": "name"},
    {"name": "role", "id": "role"},
    {"name": "method", "id": "method"},
    _numeric("target sparsity", "target_sparsity", dash_table.FormatTemplate.percentage(1)),
    _numeric("measured sparsity", "measured_sparsity", dash_table.FormatTemplate.percentage(2)),
    _numeric("prunable weights", "num_params"),
    _numeric("non-zero", "num_nonzero"),
    _numeric("accuracy", "accuracy", dash_table.FormatTemplate.percentage(2)),
    _numeric("mean CKA", "mean_cka", {"specifier": ".3f"}),
    _numeric("compression", "compression_ratio", {"specifier": ".2f"}),
    _numeric("theor. speedup", "theoretical_speedup", {"specifier": ".2f"}),
    {"name": "format", "id": "format"},
]


def _checkpoints_card() -> html.Div:
    return card("Checkpoints", None, [
        dash_table.DataTable(
            id="checkpoint-table",
            columns=CHECKPOINT_COLUMNS,
            data=[],
            sort_action="native",
            export_format="csv",
            style_table={"overflowX": "auto"},
            style_cell={"fontFamily": "inherit", "padding": "4px 8px"},
            style_header={"fontWeight": "600"},
        ),
    ])


def _comparison_card() -> html.Div:
    return card(
        "Compare methods",
        "One row per checkpoint (and per population of recorded training runs), the headline "
        "number of each analysis; the views column opens the page each number summarises. "
        "Click a header to sort.",
        [
            dash_table.DataTable(
                id="comparison-table",
                columns=[],
                data=[],
                sort_action="native",
                markdown_options={"link_target": "_self"},
                style_table={"overflowX": "auto"},
                style_cell={"fontFamily": "inherit", "padding": "4px 8px"},
                style_header={"fontWeight": "600", "whiteSpace": "normal"},
            ),
            row_of(html.Span("export the table:", className="muted"),
                   *table_exports("comparison"), gap="0.6rem", style={"marginTop": "0.6rem"}),
            row_of(html.Span("plot against sparsity:", className="muted"),
                   dropdown("comparison-column", [], None, "22rem"), gap="0.6rem",
                   style={"marginTop": "0.8rem"}),
            graph("comparison-graph"),
            html.H4("Report"),
            html.P("One HTML file that opens offline: this table, accuracy versus sparsity and "
                   "the figures pinned here.", className="muted"),
            dcc.Checklist(id="report-pins", options=[], value=[], inline=True),
            row_of(html.Button("Download report", id="report-button", n_clicks=0),
                   html.Span(id="report-message"), dcc.Download(id="report-download"),
                   gap="0.6rem", style={"marginTop": "0.6rem"}),
        ],
        id="comparison-card",
    )


def _upload_card(architecture: str) -> html.Div:
    return card(
        "Add a checkpoint",
        f"A safetensors file or a PyTorch state_dict for {architecture}. It is sent in "
        "resumable chunks (an interrupted upload continues when the same file is chosen "
        "again) and checked against the architecture before it is kept.",
        [
            html.Div(
                [dcc.Input(id="upload-name", placeholder="name (default: file name)"),
                 dcc.Dropdown(id="upload-role",
                              options=[{"label": "pruned", "value": "pruned"},
                                       {"label": "dense", "value": "dense"}],
                              value="pruned", clearable=False,
                              style={"width": "10rem", "display": "inline-block"})],
                style={"display": "flex", "gap": "0.6rem", "marginBottom": "0.6rem"},
            ),
            # assets/checkpoint_upload.js puts a file input into the empty slot and streams
            # the chosen file to /api/v1/uploads; `upload-event` gets the result.
            html.Label(
                [html.Span(id="checkpoint-upload-input"), "Drag and drop or ",
                 html.Span("choose a file", style={"textDecoration": "underline"})],
                id="checkpoint-upload", className="upload", style={"display": "block"},
            ),
            html.Div(
                [html.Progress(id="upload-progress", value=0, max=100, style={"flex": "1"}),
                 html.Span(id="upload-progress-text"),
                 html.Button("Cancel", id="upload-cancel", style={"display": "none"})],
                id="upload-progress-box",
                style={"display": "none"},  # the script shows it while uploading
            ),
            dcc.Store(id="upload-event"),
            *ingest_watch("upload"),
            html.Div(id="upload-message", style={"marginTop": "0.6rem"}),
        ],
    )


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    return html.Div([
        *_page_stores(pid, parse_view(query)),
        *_heading(project),
        _jobs_card(),
        _prune_card(),
        *_overview_cards(),
        _checkpoints_card(),
        _comparison_card(),
        _upload_card(project.architecture),
    ])


# ------------------------------------------------------------------------------- callbacks


@callback(
    Output("jobs-panel", "children"),
    Output("project-version", "data"),
    Output("project-poll", "interval"),
    Input("project-poll", "n_intervals"),
    State("project-id", "data"),
    State("project-version", "data"),
)
def poll_project(_n: int, project_id: int, version: str | None):  # noqa: ANN201
    jobs = job_service.list_jobs(project_id)
    new_version = _version(project_id)
    active = any(j.state in ACTIVE for j in jobs)
    return (
        jobs_panel(jobs),
        new_version if new_version != version else no_update,
        1000 if active else 5000,
    )


@callback(
    Output("checkpoint-table", "data"),
    Output("cka-heatmap", "figure"),
    Output("layer-sparsity", "figure"),
    Output("checkpoint-rows", "data"),
    Output("method-filter", "options"),
    Output("method-filter", "value"),
    Input("project-version", "data"),
    State("project-id", "data"),
    State("method-selection", "data"),
)
def refresh_views(version: str | None, project_id: int, selection: list[str] | None):  # noqa: ANN201
    if version is None:
        return (no_update,) * 6
    overview = analyses.project_overview(project_id)
    evaluation = overview["evaluation"]
    rows = checkpoint_rows([c.model_dump() for c in overview["checkpoints"]], evaluation)
    if evaluation:
        heatmap = layer_cka_heatmap(
            evaluation["layers"], evaluation["checkpoint_names"], evaluation["cka"]
        )
    else:
        heatmap = empty_figure("No layer comparison yet — the analysis job fills this in.")
    methods = sorted({r["method"] for r in rows if r["role"] != "dense" and r["method"]})
    chosen = methods if selection is None else [m for m in methods if m in selection]
    per_layer = checkpoint_service.layer_sparsity(project_id)
    sparsity = layer_sparsity_heatmap(
        per_layer["layers"], per_layer["checkpoints"], per_layer["sparsity"], per_layer["n_m"]
    )
    options = [{"label": m, "value": m} for m in methods]
    return rows, heatmap, sparsity, rows, options, chosen


@callback(
    Output("accuracy-graph", "figure"),
    Output("project-url", "search"),
    Input("checkpoint-rows", "data"),
    Input("method-filter", "value"),
    State("method-filter", "options"),
)
def draw_accuracy(rows: list[dict] | None, methods: list[str], options: list[dict]):  # noqa: ANN201
    if rows is None:
        return no_update, no_update
    all_methods = [o["value"] for o in options]
    search = view_query({"methods": methods}, all_methods)
    return accuracy_vs_sparsity(rows, methods), search


@callback(
    Output("method-selection", "data"),
    Input("method-filter", "value"),
    State("method-filter", "options"),
    prevent_initial_call=True,
)
def remember_selection(methods: list[str], options: list[dict]):  # noqa: ANN201
    all_methods = [o["value"] for o in options]
    return None if sorted(methods) == sorted(all_methods) else methods


@callback(
    Output("action-message", "children"),
    Input("run-analysis", "n_clicks"),
    Input({"type": "cancel-job", "index": ALL}, "n_clicks"),
    State("project-id", "data"),
    prevent_initial_call=True,
)
def job_actions(_run: int, _cancels: list[int], project_id: int):  # noqa: ANN201
    trigger = ctx.triggered_id
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        return no_update
    try:
        if trigger == "run-analysis":
            job = job_service.submit_job(project_id, JobCreate(kind="analyze"))
            return html.Span(f"analysis queued as job #{job.id}", className="ok")
        job = job_service.cancel_job(int(trigger["index"]))
        return html.Span(f"job #{job.id}: {job.message}", className="ok")
    except ServiceError as exc:
        return html.Span(exc.detail, className="error")


@callback(
    Output("upload-message", "children"),
    Output("upload-job", "data"),
    Output("upload-poll", "disabled"),
    Input("upload-event", "data"),
    State("upload-name", "value"),
    State("upload-role", "value"),
    State("project-id", "data"),
    prevent_initial_call=True,
)
def finish_upload(event: dict | None, name: str | None, role: str, project_id: int):  # noqa: ANN201
    """Hand the upload that the page's script finished to a worker to validate, or show its
    error; `poll_upload` then shows whether it was stored.

    The service checks, in this order, that the principal may edit the project, that the
    upload is theirs (another's is "not found", a share link's visitor is refused), and only
    then consumes the upload: a refused request leaves it to its owner."""
    if not isinstance(event, dict) or not isinstance(project_id, int):
        return no_update, no_update, no_update
    filename = str(event.get("filename", "upload"))
    if event.get("error") or not isinstance(event.get("upload_id"), str):
        message = f"{filename}: {event.get('error', 'upload failed')}"
        return html.Div(message, className="error", id="upload-error"), None, True
    try:
        job = checkpoint_service.checkpoint_from_upload(
            project_id, str(event["upload_id"]), name=name or None, role=role
        )
    except ServiceError as exc:
        return html.Div(exc.detail, className="error", id="upload-error"), None, True
    return validating_message("upload", filename, job), job.id, False


@callback(
    Output("upload-message", "children", allow_duplicate=True),
    Output("project-version", "data", allow_duplicate=True),
    Output("upload-poll", "disabled", allow_duplicate=True),
    Input("upload-poll", "n_intervals"),
    State("upload-job", "data"),
    State("project-id", "data"),
    prevent_initial_call=True,
)
def poll_upload(_n: int, job_id: int | None, project_id: int):  # noqa: ANN201
    """The validated upload's checkpoint, or why it was refused, once its job has ended."""
    state, outcome = ingest_outcome(checkpoint_service.ingested, job_id)
    if state == "running":
        return no_update, no_update, no_update
    if state == "refused":
        return html.Div(outcome, className="error", id="upload-error"), no_update, True
    message = html.Div(
        f"stored {outcome.name}: {outcome.num_nonzero:,} of {outcome.num_params:,} weights "
        f"non-zero ({100 * outcome.measured_sparsity:.1f}% sparse). Run the analysis to "
        "compare it.",
        className="ok",
        id="upload-ok",
    )
    # A new version makes the checkpoint table and figures refresh now, not at the next poll.
    return message, _version(project_id), True


@callback(
    Output("prune-message", "children"),
    Input("prune-submit", "n_clicks"),
    State("prune-methods", "value"),
    State("prune-sparsities", "value"),
    State("project-id", "data"),
    prevent_initial_call=True,
)
def queue_pruning(_n: int, methods: list[str], sparsities: str, project_id: int):  # noqa: ANN201
    if not methods:
        return html.Span("choose at least one method", className="error")
    try:
        values = parse_sparsities(sparsities)
    except ValueError as exc:
        return html.Span(str(exc), className="error")
    queued, refused = job_service.submit_pruning_sweep(project_id, methods, values)
    parts = []
    if queued:
        ids = ", ".join(f"#{j.id}" for j in queued)
        parts.append(
            html.Span(f"queued jobs {ids} (the last re-runs the analysis)", className="ok")
        )
    if refused:
        parts.append(html.Div("; ".join(refused), className="error"))
    return html.Div(parts, id="prune-result")


@callback(
    Output("comparison-rows", "data"),
    Output("comparison-table", "columns"),
    Output("comparison-table", "data"),
    Output("comparison-column", "options"),
    Output("comparison-column", "value"),
    Output("report-pins", "options"),
    Input("project-version", "data"),
    State("project-id", "data"),
    State("comparison-column", "value"),
)
def refresh_comparison(version: str | None, project_id: int, column: str | None):  # noqa: ANN201
    if version is None:
        return (no_update,) * 6
    inputs = report_inputs(project_id)
    rows = comparison_of(inputs)
    options = [{"label": c.label, "value": c.key} for c in plottable_columns(rows)]
    chosen = column if column in [o["value"] for o in options] else default_column(rows)
    return (
        rows,
        comparison_table_columns(rows),
        comparison_table_rows(rows),
        options,
        chosen,
        pinnable_options(inputs, rows),
    )


@callback(
    Output("comparison-graph", "figure"),
    Input("comparison-rows", "data"),
    Input("comparison-column", "value"),
)
def draw_comparison(rows: list[dict] | None, column: str | None):  # noqa: ANN201
    if rows is None:
        return no_update
    return headline_vs_sparsity(rows, column)


def in_table_order(rows: list[dict], row_ids: list[str] | None) -> list[dict]:
    """The rows in the order the (sorted) table shows them; all rows when it says nothing."""
    if not row_ids:
        return rows
    by_id = {r["id"]: r for r in rows}
    return [by_id[i] for i in row_ids if i in by_id]


@table_download_callback("comparison", State("comparison-rows", "data"),
                         State("comparison-table", "derived_virtual_row_ids"),
                         State("project-id", "data"),
                         to_csv=comparison_csv, to_parquet=comparison_parquet)
def comparison_export(rows: list[dict] | None, row_ids: list[str] | None,
                      project_id: int) -> TableExport | None:
    """The comparison in the order the table shows it, with every column."""
    if not rows:
        return None
    return TableExport(in_table_order(rows, row_ids), f"project-{project_id}-comparison")


@callback(
    Output("report-download", "data"),
    Output("report-message", "children"),
    Input("report-button", "n_clicks"),
    State("report-pins", "value"),
    State("project-id", "data"),
    prevent_initial_call=True,
)
def download_report(n_clicks: int, pins: list[str] | None, project_id: int):  # noqa: ANN201
    if not n_clicks:
        return no_update, no_update
    try:
        name = project_service.get_project(project_id).name
        text = project_report_html(project_id, list(pins or []))
    except ServiceError as exc:
        return no_update, html.Span(exc.detail, className="error")
    except ValueError as exc:  # a pin the registry does not know
        return no_update, html.Span(str(exc), className="error")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or f"project-{project_id}"
    message = html.Span(f"report with {1 + len(set(pins or []) - {'accuracy'})} figures",
                        className="ok", id="report-ok")
    return dcc.send_string(text, f"{stem}-report.html", type="text/html"), message
