"""Geometry page: where each example sits and moves when the network is pruned, in linked views.

The dense model's map and a chosen checkpoint's map share their axes; a lasso or box in
either selects the same examples in both (the selection travels as a list of example
positions and reaches the figures as a `Patch` of `selectedpoints`, so no coordinates are
sent again), fills the example gallery, and is written to the URL with every other control
(`prunescope.dashboard.views.geometry`), so a copied link reopens the same view, selection
included. Everything drawn comes from the geometry job's stored result.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, Patch, State, callback, ctx, dcc, html, no_update

from prunescope.dashboard.components import (
    TableExport,
    card,
    control,
    dropdown,
    graph,
    grid2,
    open_project,
    page_heading,
    polled_result_stores,
    project_missing,
    result_polling,
    row_of,
    running_job,
    selection_revision,
    table_download_callback,
    table_exports,
    view_url_writer,
)
from prunescope.dashboard.figures.geometry import (
    angle_norm_figure,
    class_accuracy_figure,
    confusion_difference_figure,
    disagreement_figure,
    embedding_scatter,
    example_rows,
    group_accuracy_figure,
    movement_figure,
    reliability_figure,
)
from prunescope.dashboard.figures.overview import empty_figure
from prunescope.dashboard.galleries import GALLERY_SIZE, geometry_gallery
from prunescope.dashboard.views.geometry import (
    control_options,
    default_checkpoint,
    example_count,
    parse_selection,
    parse_view,
    reference_name,
    view_query,
)
from prunescope.server.services import analyses

# `analysis_link`: the project page links here, in this order (components.analysis_links).
dash.register_page(
    __name__, path_template="/projects/<project_id>/geometry", title="PruneScope — geometry",
    analysis_link=20,
)

VIEWS = [{"label": "side by side", "value": "side"},
         {"label": "moves from the dense map", "value": "movement"}]
POLL_MS = 4000


def _status(project_id: int, data: dict[str, Any]) -> Any:
    if (running := running_job(project_id, "geometry", "geometry")) is not None:
        return running
    if data["geometry"] is None:
        return html.Div(
            [html.Strong("No geometry yet. "),
             "It needs one pass of every checkpoint over the evaluation set and a 2-D map "
             "(UMAP: about a minute the first time a worker runs it).",
             html.Button("Compute geometry", id="geometry-compute", n_clicks=0,
                         style={"marginLeft": "1rem"})],
            className="card", id="geometry-none",
        )
    summary = data["summary"] or {}
    return html.Div(
        f"{summary.get('num_examples', '?')} examples of {summary.get('dataset', '?')}, "
        f"map: {summary.get('embedding_method', '?')}.",
        className="muted", id="geometry-about",
    )


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    data = analyses.geometry_analysis(pid)
    geom = data["geometry"]
    view = parse_view(query, geom)
    selection = parse_selection(query, geom)
    options = control_options(geom)
    checkpoints = [o for o in options["checkpoints"] if o["value"] != reference_name(geom)]
    return html.Div([
        dcc.Location(id="geometry-url", refresh=False),
        *polled_result_stores("geometry", pid, data["result_id"], POLL_MS),
        dcc.Store(id="geometry-selection", data=selection),
        # The map whose own lasso made the selection (None: a button or a link made it).
        dcc.Store(id="geometry-origin", data=None),
        *page_heading("geometry", project, "geometry"),
        html.Div(id="geometry-status", children=_status(pid, data)),
        html.Div(id="geometry-compute-message", className="muted"),
        row_of(
            control("checkpoint", dropdown("geometry-checkpoint", checkpoints,
                                           view["checkpoint"])),
            control("colour", dropdown("geometry-color", options["color_by"], view["color"])),
            control("view", dcc.RadioItems(id="geometry-view", options=VIEWS, value=view["view"],
                                           inline=True)),
            html.Span(f"{len(selection)} selected" if selection else "no selection",
                      id="geometry-selection-count", className="muted"),
            html.Button("Clear selection", id="geometry-clear", n_clicks=0),
            html.Button("Select: every checkpoint wrong", id="geometry-select-systemic",
                        n_clicks=0, title="systemic failures: no checkpoint, dense included, "
                        "gets these right"),
            html.Button("Select: only pruned wrong", id="geometry-select-pruned-only",
                        n_clicks=0, title="the dense model is right and at least one pruned "
                        "checkpoint is wrong"),
            className="card",
        ),
        grid2(
            card("Dense model", "Each point is one evaluation example; lasso or box to select.",
                 [graph("geometry-dense", "520px")]),
            card("Pruned checkpoint", "The same examples on the same axes.",
                 [graph("geometry-pruned", "520px")]),
        ),
        card("Selected examples",
             "The selection's inputs and how each checkpoint sees them (the first "
             f"{GALLERY_SIZE}; the exports hold all).",
             [row_of(*table_exports("geometry")), html.Div(id="geometry-gallery")]),
        grid2(
            card("Angle and length per class",
                 "Feature length against the angle to the true class's weight vector, dense "
                 "and pruned (Li et al. 2024); crosses are misclassified.",
                 [row_of(
                     control("class", dropdown("geometry-class", options["classes"],
                                               view["cls"], width="8rem")),
                     control("against", dropdown("geometry-compare", options["checkpoints"],
                                                 view["cmp"], width="12rem")),
                 ), graph("geometry-angle-norm")]),
            card("Accuracy per class",
                 "Classes sorted by how much accuracy pruning takes from them (Hooker et al. "
                 "2019).", [graph("geometry-class-accuracy")]),
        ),
        grid2(
            card("Confusion change", "Row-normalised confusion, checkpoint minus dense.",
                 [graph("geometry-confusion")]),
            card("Calibration", "Reliability diagram of the dense model and the checkpoint.",
                 [graph("geometry-reliability")]),
        ),
        grid2(
            card("Disagreement", "Share of examples on which two checkpoints predict differently.",
                 [graph("geometry-disagreement")]),
            card("Slices", "Accuracy per group of the dataset, and the gap between groups.",
                 [graph("geometry-groups")]),
        ),
    ])


# --------------------------------------------------------------------------- callbacks


def _geometry(project_id: int) -> Any:
    return analyses.geometry_analysis(project_id)["geometry"]


# Looked up at call time, so the service can be replaced (tests do).
result_polling("geometry", lambda pid: analyses.geometry_analysis(pid), _status,
               request=lambda pid: analyses.request_geometry(pid), what="Geometry")


@callback(
    Output("geometry-checkpoint", "options"),
    Output("geometry-checkpoint", "value"),
    Output("geometry-color", "options"),
    Output("geometry-class", "options"),
    Output("geometry-compare", "options"),
    Input("geometry-version", "data"),
    State("geometry-checkpoint", "value"),
    State("geometry-project-id", "data"),
    prevent_initial_call=True,
)
def refresh_choices(_version: int, checkpoint: str | None, project_id: int):  # noqa: ANN201
    geom = _geometry(project_id)
    options = control_options(geom)
    names = [o for o in options["checkpoints"] if o["value"] != reference_name(geom)]
    value = checkpoint if checkpoint in [o["value"] for o in names] else default_checkpoint(geom)
    return names, value, options["color_by"], options["classes"], options["checkpoints"]


def _pruned_figure(geom: Any, checkpoint: str | None, color: str, view: str,
                   selection: list[int]) -> Any:
    if checkpoint is None:
        return empty_figure("No pruned checkpoint in this result.")
    if view == "movement":
        return movement_figure(geom, checkpoint, selection or None)
    return embedding_scatter(geom, checkpoint, color, selection or None)


@callback(
    Output("geometry-dense", "figure"),
    Output("geometry-pruned", "figure"),
    Input("geometry-checkpoint", "value"),
    Input("geometry-color", "value"),
    Input("geometry-view", "value"),
    Input("geometry-version", "data"),
    State("geometry-selection", "data"),
    State("geometry-project-id", "data"),
)
def draw_maps(checkpoint: str | None, color: str, view: str, _version: int,  # noqa: ANN201
              selection: list[int], project_id: int):
    geom = _geometry(project_id)
    if geom is None:
        message = "No geometry result yet: press “Compute geometry”."
        return empty_figure(message), empty_figure(message)
    dense = embedding_scatter(geom, reference_name(geom), color or "class", selection or None)
    pruned = _pruned_figure(geom, checkpoint, color or "class", view, selection)
    for fig in (dense, pruned):
        fig.update_layout(selectionrevision=selection_revision(selection))
    return dense, pruned


@callback(
    Output("geometry-selection", "data"),
    Output("geometry-origin", "data"),
    Input("geometry-dense", "selectedData"),
    Input("geometry-pruned", "selectedData"),
    Input("geometry-clear", "n_clicks"),
    Input("geometry-select-systemic", "n_clicks"),
    Input("geometry-select-pruned-only", "n_clicks"),
    State("geometry-view", "value"),
    State("geometry-origin", "data"),
    State("geometry-project-id", "data"),
    prevent_initial_call=True,
)
def select(dense: dict | None, pruned: dict | None, _clear: int, _systemic: int,  # noqa: ANN201
           _pruned_only: int, view: str, origin: str | None, project_id: int):
    trigger = ctx.triggered_id
    if trigger == "geometry-clear":
        return [], None
    if trigger in ("geometry-select-systemic", "geometry-select-pruned-only"):
        geom = _geometry(project_id)
        if geom is None:
            return no_update, no_update
        kind = "systemic" if trigger.endswith("systemic") else "pruned_only"
        return analyses.geometry_failures(geom, kind), None
    chosen = dense if trigger == "geometry-dense" else pruned
    points = (chosen or {}).get("points", [])
    if not points:
        # A double click clears the lasso of the map that made the selection. An empty
        # event from another map is that map dropping its old outline for this selection.
        return ([], None) if trigger == origin else (no_update, no_update)
    # In the movement view, the checkpoint's own points are the last trace.
    wanted_curve = None if trigger == "geometry-dense" or view != "movement" else 2
    return sorted({int(p["pointIndex"]) for p in points
                   if wanted_curve is None or p.get("curveNumber") == wanted_curve}), trigger


def _selection_patch(selection: list[int]) -> Patch:
    """Highlight `selection` in a map: only `selectedpoints` travels, not the points. An old
    lasso outline goes with it (Plotly would otherwise keep deriving its points from it)."""
    patch = Patch()
    patch["data"][0]["selectedpoints"] = selection or None
    patch["layout"]["selections"] = []
    patch["layout"]["selectionrevision"] = selection_revision(selection)
    return patch


@callback(
    Output("geometry-dense", "figure", allow_duplicate=True),
    Output("geometry-pruned", "figure", allow_duplicate=True),
    Output("geometry-selection-count", "children"),
    Input("geometry-selection", "data"),
    State("geometry-origin", "data"),
    State("geometry-checkpoint", "value"),
    State("geometry-color", "value"),
    State("geometry-view", "value"),
    State("geometry-project-id", "data"),
    prevent_initial_call=True,
)
def show_selection(selection: list[int], origin: str | None, checkpoint: str | None,  # noqa: ANN201
                   color: str, view: str, project_id: int):
    """Highlight the selection in every map but the one whose lasso made it (that one shows
    it already, with the lasso's outline)."""
    selection = selection or []
    dense = no_update if origin == "geometry-dense" else _selection_patch(selection)
    if view == "movement":  # its lines follow the selection, so it is drawn again
        pruned = _pruned_figure(_geometry(project_id), checkpoint, color, view, selection)
        pruned.update_layout(selectionrevision=selection_revision(selection))
    elif origin == "geometry-pruned":
        pruned = no_update
    else:
        pruned = _selection_patch(selection)
    count = f"{len(selection)} selected" if selection else "no selection"
    return dense, pruned, count


@view_url_writer("geometry-url", Input("geometry-checkpoint", "value"),
                 Input("geometry-color", "value"), Input("geometry-view", "value"),
                 Input("geometry-class", "value"), Input("geometry-compare", "value"),
                 Input("geometry-selection", "data"), State("geometry-project-id", "data"))
def geometry_query(checkpoint: str | None, color: str | None, view: str | None,
                   cls: str | None, cmp: str | None, selection: list[int] | None,
                   project_id: int) -> str:
    chosen = {"checkpoint": checkpoint, "color": color, "view": view, "cls": cls, "cmp": cmp}
    return view_query(chosen, selection or [], example_count(_geometry(project_id)))


@callback(
    Output("geometry-gallery", "children"),
    Input("geometry-selection", "data"),
    Input("geometry-checkpoint", "value"),
    Input("geometry-version", "data"),
    State("geometry-project-id", "data"),
)
def draw_gallery(selection: list[int], checkpoint: str | None, _version: int,  # noqa: ANN201
                 project_id: int):
    return geometry_gallery(_geometry(project_id), selection or [], checkpoint)


@table_download_callback("geometry", State("geometry-selection", "data"),
                         State("geometry-checkpoint", "value"),
                         State("geometry-project-id", "data"))
def selection_export(selection: list[int], checkpoint: str | None,
                     project_id: int) -> TableExport | None:
    geom = _geometry(project_id)
    if geom is None or checkpoint is None:
        return None
    chosen = selection or list(range(example_count(geom)))
    rows = example_rows(geom, chosen, checkpoint, limit=len(chosen))
    return TableExport(rows, f"project{project_id}-geometry-{checkpoint}")


@callback(
    Output("geometry-angle-norm", "figure"),
    Output("geometry-class-accuracy", "figure"),
    Output("geometry-confusion", "figure"),
    Output("geometry-reliability", "figure"),
    Output("geometry-disagreement", "figure"),
    Output("geometry-groups", "figure"),
    Input("geometry-checkpoint", "value"),
    Input("geometry-class", "value"),
    Input("geometry-compare", "value"),
    Input("geometry-version", "data"),
    State("geometry-project-id", "data"),
)
def draw_class_views(checkpoint: str | None, cls: str | None, cmp: str | None,  # noqa: ANN201
                     _version: int, project_id: int):
    geom = _geometry(project_id)
    if geom is None or checkpoint is None:
        empty = empty_figure("No geometry result yet.")
        return (empty,) * 6
    reference = reference_name(geom)
    return (
        angle_norm_figure(geom, int(cls or 0), cmp or reference, checkpoint),
        class_accuracy_figure(geom, checkpoint),
        confusion_difference_figure(geom, checkpoint),
        reliability_figure(geom, [reference, checkpoint]),
        disagreement_figure(geom),
        group_accuracy_figure(geom),
    )
