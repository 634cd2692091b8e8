"""Dynamics page: how each training example is learned, and which examples pruning forgets.

Reads the "dynamics" analysis (`analyses.dynamics_analysis`): per-suite loss trajectories of
the MAP-D probe suites, Dataset Cartography's data map, MAP-D's held-out probe confusion,
and the pruning-identified exemplars (PIEs) of each pruned population. Every control is in
the URL (`prunescope.dashboard.views.dynamics`); a lasso on the data map selects training
examples, fills the gallery and is written to the URL as `sel`, so a copied link reopens the
same view.
"""

from __future__ import annotations

from typing import Any

import dash
import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

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
from prunescope.dashboard.figures.dynamics import (
    category_transition_figure,
    class_recall_figure,
    data_map_figure,
    example_rows,
    group_impact_figure,
    map_traces,
    pie_accuracy_figure,
    pie_enrichment_figure,
    pie_fraction_figure,
    pie_rows,
    probe_confusion_figure,
    selection_from_event,
    suite_loss_figure,
    surfaced_rows,
)
from prunescope.dashboard.figures.overview import GRAPH_CONFIG
from prunescope.dashboard.galleries import (
    GALLERY_SIZE,
    pie_table,
    selection_gallery,
    surfaced_gallery,
)
from prunescope.dashboard.views.dynamics import (
    control_options,
    example_count,
    parse_view,
    view_query,
)
from prunescope.server.services import analyses

# `analysis_link`: the project page links here, in this order (components.analysis_links).
dash.register_page(
    __name__, path_template="/projects/<project_id>/dynamics", title="PruneScope — dynamics",
    analysis_link=40,
)

POLL_MS = 4000


def _dynamics(project_id: int) -> Any:
    return analyses.dynamics_analysis(project_id)["dynamics"]


COMPUTE_NOTE = ("The analysis reads every training run recorded with per-epoch dynamics: "
                "those come from “train_dynamics” jobs (a dense run, gradually pruned “gmp” "
                "runs or pruned-then-fine-tuned runs; several seeds each form a population).")


def _status(project_id: int, data: dict[str, Any]) -> Any:
    if (running := running_job(project_id, "dynamics", "dynamics")) is not None:
        return running
    dyn = data["dynamics"]
    if dyn is None:
        return html.Div(
            [html.Strong("No dynamics analysis yet. "),
             "It compares the loss trajectories, MAP-D categories and final predictions of "
             "the project's recorded training runs.",
             html.Button("Run the dynamics analysis", id="dynamics-compute", n_clicks=0,
                         style={"marginLeft": "1rem"}),
             html.P(COMPUTE_NOTE, className="muted")],
            className="card", id="dynamics-none",
        )
    modes = [str(m) for m in np.asarray(dyn["run_modes"]).tolist()]
    epochs = int(np.asarray(dyn["epochs"]).shape[0])
    return html.Div(
        [f"{len(modes)} runs ({modes.count('dense')} dense, "
         f"{len(modes) - modes.count('dense')} pruned in "
         f"{np.asarray(dyn['population_names']).shape[0]} populations), "
         f"{example_count(dyn)} training and {np.asarray(dyn['test_labels']).shape[0]} test "
         f"examples, {epochs} epochs. ",
         html.Button("Run the dynamics analysis again", id="dynamics-compute", n_clicks=0,
                     title=COMPUTE_NOTE)],
        className="muted", id="dynamics-about",
    )


# --------------------------------------------------------------------------- layout


def layout(project_id: str | None = None, **query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    data = analyses.dynamics_analysis(pid)
    dyn = data["dynamics"]
    view = parse_view(query, dyn)
    options = control_options(dyn)
    selection = view["sel"]
    return html.Div([
        dcc.Location(id="dynamics-url", refresh=False),
        *polled_result_stores("dynamics", pid, data["result_id"], POLL_MS),
        dcc.Store(id="dynamics-selection", data=selection),
        *page_heading("dynamics", project, "dynamics"),
        html.Div(id="dynamics-status", children=_status(pid, data)),
        html.Div(id="dynamics-compute-message", className="muted"),
        html.Div(row_of(
            control("run", dropdown("dynamics-run", options["runs"], view["run"], "16rem")),
            control("pruned population", dropdown("dynamics-population",
                                                  options["populations"],
                                                  view["population"])),
            control("colour", dropdown("dynamics-color", options["color_by"], view["color"],
                                       "16rem")),
            html.Span(f"{len(selection)} selected" if selection else "no selection",
                      id="dynamics-selection-count", className="muted"),
            html.Button("Clear selection", id="dynamics-clear", n_clicks=0),
        ), className="card"),
        grid2(
            card("Loss per probe suite",
                  "Per-epoch loss of each planted probe suite (MAP-D, Siddiqui et al. 2023): "
                  "mean over member runs of each run's suite mean, the band their mean "
                  "quartiles; dense against the chosen pruned population.",
                  [dcc.RadioItems(id="dynamics-suite_view", options=options["suite_views"],
                                  value=view["suite_view"], inline=True),
                   graph("dynamics-suites")]),
            card("Data map",
                  "Each training example's confidence and variability over epochs (Dataset "
                  "Cartography, Swayamdipta et al. 2020); lasso to select.",
                  [graph("dynamics-map", "520px")]),
        ),
        card("Selected examples",
              f"The selection's examples in the chosen run (the first {GALLERY_SIZE}; the CSV "
              "holds all).",
              [row_of(*table_exports("dynamics-gallery")), html.Div(id="dynamics-gallery")]),
        grid2(
            card("MAP-D probe confusion",
                  "The kNN on loss trajectories, scored on the held-out half of each suite.",
                  [graph("dynamics-confusion")]),
            card("Where the train PIEs are",
                  "Enrichment of each MAP-D category among the chosen population's training-"
                  "set PIEs: above 1, pruning changes that category's predictions more often "
                  "than its share of the data.",
                  [graph("dynamics-enrichment")]),
        ),
        grid2(
            card("MAP-D category, dense against pruned",
                  "Each training example's MAP-D category under the dense population (rows) "
                  "and under the chosen pruned population (columns; the runs' modal category).",
                  [graph("dynamics-transitions")]),
            card("PIEs per group",
                  "Where the dataset has a group column: the PIE share and the accuracy change "
                  "of each group (Hooker, Moorosi et al. 2020).",
                  [graph("dynamics-groups")]),
        ),
        card("Surfaced examples",
              "The examples MAP-D assigns to a category, most probable first.",
              [row_of(control("category", dropdown("dynamics-cat", options["categories"],
                                                    view["cat"])),
                     *table_exports("dynamics-surfaced")),
               html.Div(id="dynamics-surfaced")]),
        grid2(
            card("PIEs against sparsity",
                  "Test examples whose modal label over a pruned population differs from the "
                  "dense population's (Hooker et al. 2019).",
                  [dcc.Graph(id="dynamics-pie-fraction", figure=pie_fraction_figure(dyn),
                             config=GRAPH_CONFIG)]),
            card("Accuracy on PIEs",
                  "Mean member accuracy of the dense and the pruned population on the PIEs, the "
                  "rest and all test examples.",
                  [graph("dynamics-pie-accuracy")]),
        ),
        card("Per-class recall change",
              "Each class's recall change, normalised by the overall accuracy change; "
              "coloured and starred where the Welch t-test over member runs is significant.",
              [graph("dynamics-class-recall")]),
        card("Test PIEs",
              "The chosen population's PIEs with every population's modal prediction (the "
              f"first {GALLERY_SIZE}; the CSV holds all).",
              [row_of(*table_exports("dynamics-pie")), html.Div(id="dynamics-pies")]),
    ])


# --------------------------------------------------------------------------- callbacks


# Looked up at call time, so the service can be replaced (tests do).
result_polling("dynamics", lambda pid: analyses.dynamics_analysis(pid), _status,
               request=lambda pid: analyses.request_dynamics(pid), what="Dynamics analysis",
               then="; the page fills in when it has finished")


@callback(
    Output("dynamics-run", "options"),
    Output("dynamics-run", "value"),
    Output("dynamics-population", "options"),
    Output("dynamics-population", "value"),
    Output("dynamics-color", "options"),
    Output("dynamics-cat", "options"),
    Output("dynamics-cat", "value"),
    Output("dynamics-pie-fraction", "figure"),
    Input("dynamics-version", "data"),
    State("dynamics-run", "value"),
    State("dynamics-population", "value"),
    State("dynamics-color", "value"),
    State("dynamics-cat", "value"),
    State("dynamics-project-id", "data"),
    prevent_initial_call=True,
)
def refresh_choices(_version: int, run: str | None, population: str | None,  # noqa: ANN201
                    color: str | None, cat: str | None, project_id: int):
    """A new result may bring other runs and populations: keep each choice it still offers."""
    dyn = _dynamics(project_id)
    options = control_options(dyn)
    view = parse_view({"run": run, "population": population, "color": color, "cat": cat}, dyn)
    return (options["runs"], view["run"], options["populations"], view["population"],
            options["color_by"], options["categories"], view["cat"], pie_fraction_figure(dyn))


@callback(
    Output("dynamics-suites", "figure"),
    Input("dynamics-population", "value"),
    Input("dynamics-suite_view", "value"),
    Input("dynamics-version", "data"),
    State("dynamics-project-id", "data"),
)
def draw_suites(population: str | None, suite_view: str, _version: int,  # noqa: ANN201
                project_id: int):
    return suite_loss_figure(_dynamics(project_id), population, suite_view or "panels")


def _data_map(dyn: Any, run: str | None, color: str | None, population: str | None,
              selection: list[int]) -> Any:
    fig = data_map_figure(dyn, run, color or "mapd", population, selection or None)
    fig.update_layout(selectionrevision=selection_revision(selection))
    return fig


@callback(
    Output("dynamics-map", "figure"),
    Input("dynamics-run", "value"),
    Input("dynamics-color", "value"),
    Input("dynamics-population", "value"),
    Input("dynamics-version", "data"),
    State("dynamics-selection", "data"),
    State("dynamics-project-id", "data"),
)
def draw_map(run: str | None, color: str | None, population: str | None,  # noqa: ANN201
             _version: int, selection: list[int], project_id: int):
    return _data_map(_dynamics(project_id), run, color, population, selection or [])


@callback(
    Output("dynamics-selection", "data"),
    Output("dynamics-map", "figure", allow_duplicate=True),
    Input("dynamics-map", "selectedData"),
    Input("dynamics-clear", "n_clicks"),
    State("dynamics-run", "value"),
    State("dynamics-color", "value"),
    State("dynamics-population", "value"),
    State("dynamics-project-id", "data"),
    prevent_initial_call=True,
)
def select(selected: dict | None, _clear: int, run: str | None, color: str | None,  # noqa: ANN201
           population: str | None, project_id: int):
    """A lasso's examples (the map shows them already); the clear button empties the
    selection and redraws the map without it."""
    if ctx.triggered_id == "dynamics-clear":
        return [], _data_map(_dynamics(project_id), run, color, population, [])
    traces = map_traces(_dynamics(project_id), run, color or "mapd", population)
    return selection_from_event(selected, traces), no_update


@callback(
    Output("dynamics-selection-count", "children"),
    Input("dynamics-selection", "data"),
)
def count(selection: list[int]):  # noqa: ANN201
    return f"{len(selection)} selected" if selection else "no selection"


@view_url_writer("dynamics-url", Input("dynamics-run", "value"),
                 Input("dynamics-population", "value"), Input("dynamics-color", "value"),
                 Input("dynamics-suite_view", "value"), Input("dynamics-cat", "value"),
                 Input("dynamics-selection", "data"), State("dynamics-project-id", "data"))
def dynamics_query(run: str | None, population: str | None, color: str | None,
                   suite_view: str | None, cat: str | None, selection: list[int] | None,
                   project_id: int) -> str:
    view = {"run": run, "population": population, "color": color, "suite_view": suite_view,
            "cat": cat, "sel": selection or []}
    return view_query(view, example_count(_dynamics(project_id)))


@callback(
    Output("dynamics-gallery", "children"),
    Input("dynamics-selection", "data"),
    Input("dynamics-run", "value"),
    Input("dynamics-population", "value"),
    Input("dynamics-version", "data"),
    State("dynamics-project-id", "data"),
)
def draw_gallery(selection: list[int], run: str | None, population: str | None,  # noqa: ANN201
                 _version: int, project_id: int):
    return selection_gallery(_dynamics(project_id), selection or [], run, population)


@callback(
    Output("dynamics-confusion", "figure"),
    Output("dynamics-surfaced", "children"),
    Input("dynamics-run", "value"),
    Input("dynamics-cat", "value"),
    Input("dynamics-version", "data"),
    State("dynamics-project-id", "data"),
)
def draw_mapd(run: str | None, cat: str | None, _version: int, project_id: int):  # noqa: ANN201
    dyn = _dynamics(project_id)
    return probe_confusion_figure(dyn, run), surfaced_gallery(dyn, run, cat)


@callback(
    Output("dynamics-enrichment", "figure"),
    Output("dynamics-pie-accuracy", "figure"),
    Output("dynamics-class-recall", "figure"),
    Output("dynamics-pies", "children"),
    Output("dynamics-transitions", "figure"),
    Output("dynamics-groups", "figure"),
    Input("dynamics-population", "value"),
    Input("dynamics-version", "data"),
    State("dynamics-project-id", "data"),
)
def draw_population(population: str | None, _version: int, project_id: int):  # noqa: ANN201
    dyn = _dynamics(project_id)
    return (pie_enrichment_figure(dyn, population), pie_accuracy_figure(dyn, population),
            class_recall_figure(dyn, population), pie_table(dyn, population),
            category_transition_figure(dyn, population), group_impact_figure(dyn, population))


# --------------------------------------------------------------------------- downloads


@table_download_callback("dynamics-gallery", State("dynamics-selection", "data"),
                         State("dynamics-run", "value"), State("dynamics-population", "value"),
                         State("dynamics-project-id", "data"))
def selection_export(selection: list[int], run: str | None, population: str | None,
                     project_id: int) -> TableExport:
    dyn = _dynamics(project_id)
    chosen = selection or list(range(example_count(dyn)))
    return TableExport(example_rows(dyn, chosen, run, population),
                       f"project{project_id}-dynamics-examples")


@table_download_callback("dynamics-surfaced", State("dynamics-run", "value"),
                         State("dynamics-cat", "value"), State("dynamics-project-id", "data"))
def surfaced_export(run: str | None, cat: str | None, project_id: int) -> TableExport:
    return TableExport(surfaced_rows(_dynamics(project_id), run, cat, limit=None),
                       f"project{project_id}-dynamics-surfaced-{cat}")


@table_download_callback("dynamics-pie", State("dynamics-population", "value"),
                         State("dynamics-project-id", "data"))
def pie_export(population: str | None, project_id: int) -> TableExport:
    name = (population or "").replace(" ", "").replace("%", "pct")
    return TableExport(pie_rows(_dynamics(project_id), population, "test"),
                       f"project{project_id}-dynamics-pies-{name}")
