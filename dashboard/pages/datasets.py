"""Datasets page: upload or add datasets, preview them, and choose the one jobs use."""

from __future__ import annotations

import base64
import binascii

import dash
from dash import ALL, Input, Output, State, callback, ctx, dash_table, dcc, html, no_update

from prunescope.dashboard.components import (
    card,
    dropdown,
    graph,
    grid2,
    ingest_outcome,
    ingest_watch,
    open_project,
    page_heading,
    project_missing,
    validating_message,
)
from prunescope.dashboard.figures.datasets import class_counts_figure, preview_rows
from prunescope.dashboard.figures.overview import empty_figure
from prunescope.dashboard.state import parse_query
from prunescope.dashboard.views.datasets import datasets_href, parse_view
from prunescope.server.errors import ServiceError
from prunescope.server.services import datasets as dataset_service

dash.register_page(
    __name__, path_template="/projects/<project_id>/datasets", title="PruneScope — datasets"
)

# Browser uploads travel base64-encoded inside one callback; larger files go through the API
# (`POST /api/v1/projects/{id}/datasets`) or `prunescope dataset add`.
DASHBOARD_UPLOAD_LIMIT = 200 * 1024 * 1024
BUILTINS = ("digits", "digits_augmented", "english_sentences")
SPLIT_RULES = {
    "given": "split as the file marks it",
    "stratified": "fixed stratified 75/25 split",
    "shuffled": "fixed shuffled 75/25 split (some class is too small to stratify)",
}


def _upload_card(architecture: str) -> html.Div:
    formats = [
        "NumPy ", html.Code(".npz"), " (arrays x, y; optional ids, group, split), a ",
        html.Code(".zip"), " with one folder of PNG/JPEG images per class, or ",
        html.Code(".csv"), ", ", html.Code(".jsonl"), ", ", html.Code(".parquet"),
        " with a label column and numeric feature columns or a text column. It is checked "
        f"against {architecture} before it is kept.",
    ]
    return card("Upload a dataset", None, [
        html.P(formats, className="muted"),
        html.Div(
            [dcc.Input(id="dataset-name", placeholder="name (default: file name)"),
             dcc.Input(id="dataset-label-column", placeholder="label column (default: label)"),
             dcc.Checklist(id="dataset-activate",
                           options=[{"label": " use it for jobs", "value": "yes"}], value=[])],
            style={"display": "flex", "gap": "0.6rem", "marginBottom": "0.6rem",
                   "alignItems": "center", "flexWrap": "wrap"},
        ),
        dcc.Upload(id="dataset-upload",
                   children=html.Div(["Drag and drop or ", html.A("choose a file")]),
                   className="upload", max_size=DASHBOARD_UPLOAD_LIMIT),
        *ingest_watch("dataset-upload"),
        dcc.Loading(html.Div(id="dataset-upload-message", style={"marginTop": "0.6rem"})),
    ])


def _builtin_card() -> html.Div:
    return card(
        "Add a builtin dataset",
        "digits: 1,797 handwritten 8×8 digits (scikit-learn). english_sentences: prose "
        "sentences from Python's own help text, labelled by help topic, for text models.",
        [html.Div([dropdown("builtin-choice", [{"label": b, "value": b} for b in BUILTINS],
                            BUILTINS[0]),
                   dcc.Input(id="builtin-name", placeholder="name (optional)"),
                   html.Button("Add", id="builtin-add", n_clicks=0)],
                  style={"display": "flex", "gap": "0.6rem"}),
         html.Div(id="builtin-message", style={"marginTop": "0.6rem"})],
    )


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    return html.Div([
        dcc.Location(id="datasets-url", refresh=False),
        dcc.Store(id="datasets-project-id", data=pid),
        # {"n": change counter, "select": dataset to preview after the change}
        dcc.Store(id="datasets-version", data={"n": 0, "select": parse_view(query)["dataset"]}),
        *page_heading("datasets", project, "datasets"),
        card("Datasets", "Jobs use the active dataset. Choose another one to evaluate on it; "
             "then run the analysis again.",
             [html.Div(id="datasets-list"),
              html.Div(id="datasets-message", style={"marginTop": "0.6rem"})]),
        grid2(_upload_card(project.architecture), _builtin_card()),
        html.Div(
            [
                html.H3(id="preview-title", children="Preview"),
                html.Div(id="dataset-summary", className="muted"),
                html.Div(
                    [html.Div(id="dataset-examples"), graph("class-counts")],
                    # minmax(0, …): a wide table scrolls inside its column, not the page.
                    style={"display": "grid", "gap": "1rem",
                           "gridTemplateColumns": "minmax(0, 3fr) minmax(0, 2fr)"},
                ),
            ],
            className="card",
        ),
    ])


# -------------------------------------------------------------------------- components


def _shape(shape: list[int] | None) -> str:
    return "×".join(str(d) for d in shape) if shape else "—"


def datasets_table(project_id: int, datasets: list, selected: int | None) -> html.Table:
    """One row per dataset: what it is, its size, and whether jobs use it."""
    header = html.Tr(
        [html.Th(h) for h in ("name", "format", "kind", "train", "test", "classes", "input", "")]
    )
    rows = []
    for d in datasets:
        use = (
            html.Span("active", className="state state-succeeded", id=f"dataset-active-{d.id}")
            if d.active
            else html.Button(
                "use for jobs", id={"type": "activate-dataset", "index": d.id}, n_clicks=0
            )
        )
        name = dcc.Link(d.name, href=datasets_href(project_id, d.id))
        rows.append(
            html.Tr(
                [
                    html.Td(html.B(name) if d.id == selected else name),
                    html.Td(d.format),
                    html.Td(d.kind or "—"),
                    html.Td(f"{d.num_train:,}" if d.num_train is not None else "—"),
                    html.Td(f"{d.num_test:,}" if d.num_test is not None else "—"),
                    html.Td(d.num_classes if d.num_classes is not None else "—"),
                    html.Td(_shape(d.input_shape) if d.kind != "text" else "text"),
                    html.Td(use),
                ],
                id=f"dataset-row-{d.id}",
            )
        )
    return html.Table(
        [html.Thead(header), html.Tbody(rows)],
        style={"width": "100%", "textAlign": "left", "borderCollapse": "collapse"},
    )


def examples_view(preview: dict) -> html.Div:
    """A grid of thumbnails for images; a table of the first rows for tables and texts."""
    examples = preview.get("examples") or []
    if not examples:
        return html.Div("No examples to show.", className="muted")
    if preview.get("kind") == "image":
        tiles = [
            html.Figure(
                [
                    html.Img(
                        src=e["image"],
                        alt=e["class_name"],
                        title=e.get("id") or e["class_name"],
                        style={"width": "56px", "height": "56px", "objectFit": "contain",
                               "imageRendering": "pixelated", "background": "#000"},
                    ),
                    html.Figcaption(e["class_name"], style={"fontSize": "0.75rem"}),
                ],
                style={"margin": "0", "textAlign": "center"},
            )
            for e in examples
        ]
        return html.Div(
            tiles,
            id="dataset-thumbnails",
            style={"display": "grid", "gap": "0.5rem",
                   "gridTemplateColumns": "repeat(auto-fill, minmax(64px, 1fr))"},
        )
    columns, rows = preview_rows(preview)
    return dash_table.DataTable(
        id="dataset-rows",
        columns=columns,
        data=rows,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "inherit", "padding": "4px 8px", "maxWidth": "32rem",
                    "whiteSpace": "normal", "textAlign": "left"},
        style_header={"fontWeight": "600"},
    )


def summary_line(dataset) -> str:  # noqa: ANN001
    preview = dataset.preview or {}
    parts = [
        f"{dataset.num_train or 0:,} train + {dataset.num_test or 0:,} test examples",
        f"{dataset.num_classes} classes",
        "text" if dataset.kind == "text" else f"{dataset.kind} examples of shape "
        f"{_shape(dataset.input_shape)}",
    ]
    if preview.get("split_rule") in SPLIT_RULES:
        parts.append(SPLIT_RULES[preview["split_rule"]])
    if preview.get("num_groups"):
        parts.append(f"{preview['num_groups']} groups")
    if dataset.filename:
        parts.append(f"from {dataset.filename}")
    return " · ".join(parts)


# --------------------------------------------------------------------------- callbacks


def _selected(version: dict | None, search: str | None, datasets: list) -> int | None:
    ids = [d.id for d in datasets]
    chosen = (version or {}).get("select")
    if chosen is None:
        chosen = parse_view(parse_query(search))["dataset"]
    if chosen in ids:
        return chosen
    return next((d.id for d in datasets if d.active), ids[0] if ids else None)


@callback(
    Output("datasets-list", "children"),
    Output("preview-title", "children"),
    Output("dataset-summary", "children"),
    Output("dataset-examples", "children"),
    Output("class-counts", "figure"),
    Input("datasets-version", "data"),
    State("datasets-url", "search"),
    State("datasets-project-id", "data"),
)
def render(version: dict | None, search: str | None, project_id: int):  # noqa: ANN201
    datasets = dataset_service.list_datasets(project_id)
    selected = _selected(version, search, datasets)
    table = datasets_table(project_id, datasets, selected)
    if selected is None:
        return table, "Preview", "", html.Div(), empty_figure("no dataset")
    dataset = dataset_service.get_dataset(selected)
    preview = dataset.preview or {}
    figure = class_counts_figure(preview.get("class_names", []), preview.get("class_counts", {}))
    return (
        table,
        f"Preview: {dataset.name}",
        summary_line(dataset),
        examples_view(preview),
        figure,
    )


def _bumped(version: dict | None, select: int | None) -> dict:
    return {"n": (version or {}).get("n", 0) + 1, "select": select}


@callback(
    Output("dataset-upload-message", "children"),
    Output("dataset-upload-job", "data"),
    Output("dataset-upload-poll", "disabled"),
    Input("dataset-upload", "contents"),
    State("dataset-upload", "filename"),
    State("dataset-name", "value"),
    State("dataset-label-column", "value"),
    State("dataset-activate", "value"),
    State("datasets-project-id", "data"),
    prevent_initial_call=True,
)
def upload_dataset(  # noqa: ANN201
    contents: str | None,
    filename: str | None,
    name: str | None,
    label_column: str | None,
    activate: list[str] | None,
    project_id: int,
):
    """Hand a file dropped on the page to a worker to read and check as a dataset of the
    project, or say why not; `poll_dataset_upload` then shows whether it was stored."""
    if not contents:
        return no_update, no_update, no_update
    filename = filename or "dataset"

    def error(message: str) -> tuple:
        return html.Div(message, className="error", id="dataset-upload-error"), None, True

    try:
        content = base64.b64decode(contents.split(",", 1)[1], validate=True)
    except (IndexError, ValueError, binascii.Error):
        return error(f"{filename}: the browser sent an unreadable file; try again")
    try:
        job = dataset_service.add_labelled_dataset(
            project_id,
            [content],
            label_column=(label_column or "").strip() or "label",
            filename=filename,
            name=(name or "").strip() or None,
            active=bool(activate),
        )
    except ServiceError as exc:
        return error(exc.detail)
    return validating_message("dataset-upload", filename, job), job.id, False


@callback(
    Output("dataset-upload-message", "children", allow_duplicate=True),
    Output("datasets-version", "data", allow_duplicate=True),
    Output("dataset-upload-poll", "disabled", allow_duplicate=True),
    Input("dataset-upload-poll", "n_intervals"),
    State("dataset-upload-job", "data"),
    State("datasets-version", "data"),
    prevent_initial_call=True,
)
def poll_dataset_upload(_n: int, job_id: int | None, version: dict | None):  # noqa: ANN201
    """The stored dataset, or why it was refused, once its validation job has ended."""
    state, dataset = ingest_outcome(dataset_service.ingested, job_id)
    if state == "running":
        return no_update, no_update, no_update
    if state == "refused":
        return (html.Div(dataset, className="error", id="dataset-upload-error"), no_update,
                True)
    message = html.Div(
        f"stored {dataset.name}: {dataset.num_train + dataset.num_test:,} examples, "
        f"{dataset.num_classes} classes ({dataset.format})"
        + (" — jobs use it now" if dataset.active else ""),
        className="ok",
        id="dataset-upload-ok",
    )
    return message, _bumped(version, dataset.id), True


@callback(
    Output("builtin-message", "children"),
    Output("datasets-version", "data", allow_duplicate=True),
    Input("builtin-add", "n_clicks"),
    State("builtin-choice", "value"),
    State("builtin-name", "value"),
    State("datasets-project-id", "data"),
    State("datasets-version", "data"),
    prevent_initial_call=True,
)
def add_builtin(  # noqa: ANN201
    _n: int, builtin: str, name: str | None, project_id: int, version: dict | None
):
    try:
        dataset = dataset_service.add_builtin_dataset(
            project_id, builtin, name=(name or "").strip() or None
        )
    except ServiceError as exc:
        return html.Div(exc.detail, className="error", id="builtin-error"), no_update
    return html.Div(f"added {dataset.name}", className="ok"), _bumped(version, dataset.id)


@callback(
    Output("datasets-message", "children"),
    Output("datasets-version", "data", allow_duplicate=True),
    Input({"type": "activate-dataset", "index": ALL}, "n_clicks"),
    State("datasets-project-id", "data"),
    State("datasets-version", "data"),
    prevent_initial_call=True,
)
def activate(_clicks: list[int], project_id: int, version: dict | None):  # noqa: ANN201
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        return no_update, no_update  # the buttons were (re)drawn, not clicked
    dataset_id = int(ctx.triggered_id["index"])
    try:
        dataset = dataset_service.set_active_dataset(project_id, dataset_id)
    except ServiceError as exc:
        return html.Span(exc.detail, className="error"), no_update
    message = html.Span(
        f"jobs now use {dataset.name}; run the analysis again to evaluate on it",
        className="ok",
        id="datasets-activated",
    )
    return message, _bumped(version, dataset_id)
