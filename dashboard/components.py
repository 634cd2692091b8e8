"""The page kit: the controls and layout pieces pages are built from, job status, and the
callbacks pages share (result polling, URL writing, table downloads), registered per page."""

from __future__ import annotations

import csv
import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import dash
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from prunescope.dashboard.figures.overview import GRAPH_CONFIG, loading_figure
from prunescope.dashboard.state import parse_query
from prunescope.server.errors import Conflict, InvalidInput, NotFound, ServiceError
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service

ACTIVE = ("queued", "running")

# ------------------------------------------------------------------------------ controls


def dropdown(id_: str, options: list, value: Any, width: str = "14rem") -> Any:
    """A dropdown that always holds a value."""
    return dcc.Dropdown(id=id_, options=options, value=value, clearable=False,
                        style={"width": width})


def control(label: str, component: Any) -> html.Div:
    """A control with its label before it, on one line."""
    # A Div, not a Label: a label forwards clicks inside a dropdown's open list to the
    # dropdown's button, which would close the list before the choice registers.
    return html.Div([html.Span(label, className="muted"), component],
                    style={"display": "flex", "gap": "0.5rem", "alignItems": "center"})


def graph(id_: str, height: str | None = None) -> Any:
    """A figure placeholder that says it is loading, with the export-enabled toolbar."""
    style = {"style": {"height": height}} if height else {}
    return dcc.Graph(id=id_, figure=loading_figure(), config=GRAPH_CONFIG, **style)


def card(title: str, note: str | None, body: list, **attributes: Any) -> html.Div:
    """A titled card; `note` (muted, under the title) is left out when None."""
    head = [html.H3(title), *([html.P(note, className="muted")] if note is not None else [])]
    return html.Div([*head, *body], className="card", **attributes)


def row_of(*children: Any, gap: str = "1rem", style: dict[str, str] | None = None,
           **attributes: Any) -> html.Div:
    """Controls on one line, wrapping where the page is narrow; `style` adds to the row's."""
    return html.Div(list(children), style={"display": "flex", "gap": gap, "alignItems": "center",
                                           "flexWrap": "wrap", **(style or {})}, **attributes)


def grid2(*children: Any) -> html.Div:
    """Cards side by side (one column on narrow screens, `assets/style.css`)."""
    return html.Div(list(children), className="grid2")


def export_buttons(prefix: str) -> list:
    """The "CSV" and "Parquet" buttons (`<prefix>-csv`, `<prefix>-parquet`) of a table whose
    download `table_download_callback(prefix, ...)` registers."""
    return [html.Button("CSV", id=f"{prefix}-csv", n_clicks=0, title="download as CSV"),
            html.Button("Parquet", id=f"{prefix}-parquet", n_clicks=0,
                        title="download as Parquet (typed columns, for pandas or polars)")]


def export_inputs(prefix: str) -> list:
    """The callback inputs of `export_buttons(prefix)`."""
    return [Input(f"{prefix}-csv", "n_clicks"), Input(f"{prefix}-parquet", "n_clicks")]


def table_exports(prefix: str) -> list:
    """`export_buttons(prefix)` and the `<prefix>-download` they send their file through."""
    return [*export_buttons(prefix), dcc.Download(id=f"{prefix}-download")]


# --------------------------------------------------------------------------- project pages


def open_project(project_id: str | None) -> tuple[int, Any] | None:
    """(id, project) of a page's `<project_id>` path segment, or None when it names no
    project the visitor can see."""
    try:
        pid = int(project_id or "")
        return pid, project_service.get_project(pid)
    except (ValueError, NotFound):
        return None


def project_missing() -> html.Div:
    return html.Div([html.H2("Project not found"), dcc.Link("Back to all projects", href="/")],
                    id="project-missing")


def page_heading(prefix: str, project: Any, what: str, *, architecture: bool = True,
                 back_link_id: str | None = None) -> list:
    """A project page's title (`<prefix>-title`) and the muted line under it: the way back
    to the project and, unless told not to, its architecture."""
    link = dcc.Link("← back to the project", href=f"/projects/{project.id}",
                    **({"id": back_link_id} if back_link_id else {}))
    line = [link, f" · architecture {project.architecture}"] if architecture else [link]
    return [html.H2(f"{project.name}: {what}", id=f"{prefix}-title"),
            html.Div(line, className="muted")]


def analysis_links(project_id: int) -> list:
    """Links to the project's analysis pages: every registered page that declares an
    `analysis_link` position (its `dash.register_page` call), in that order, so a new page
    needs no edit here or on the project page."""
    pages = sorted((page["analysis_link"], page["path_template"].rsplit("/", 1)[-1])
                   for page in dash.page_registry.values() if "analysis_link" in page)
    return [dcc.Link(name, href=f"/projects/{project_id}/{name}", id=f"{name}-link")
            for _, name in pages]


def polled_result_stores(prefix: str, project_id: int, version: Any,
                         interval_ms: int) -> list:
    """The stores and timer of a page that `result_polling(prefix, ...)` keeps current."""
    return [dcc.Store(id=f"{prefix}-project-id", data=project_id),
            dcc.Store(id=f"{prefix}-version", data=version),
            dcc.Interval(id=f"{prefix}-poll", interval=interval_ms, n_intervals=0)]


# ---------------------------------------------------------------------------------- jobs


def _job_label(job) -> str:  # noqa: ANN001
    p = job.params
    if job.kind == "prune":
        return f"#{job.id} prune {p.get('method')} {round(100 * float(p.get('sparsity', 0)))}%"
    return f"#{job.id} {job.kind}"


def jobs_panel(jobs) -> list:  # noqa: ANN001
    if not jobs:
        return [html.Div("No jobs yet.", className="muted")]
    rows = []
    for job in sorted(jobs, key=lambda j: j.id, reverse=True)[:40]:
        detail = job.error if job.state == "failed" and job.error else job.message
        rows.append(
            html.Div(
                [
                    html.Span(_job_label(job)),
                    html.Progress(
                        value=f"{job.progress:.3f}", max="1", id=f"job-progress-{job.id}"
                    ),
                    html.Span(
                        [html.Span(job.state, className=f"state state-{job.state}"), " ", detail],
                        className="msg",
                        title=detail,
                    ),
                    html.Button("cancel", id={"type": "cancel-job", "index": job.id}, n_clicks=0)
                    if job.state in ACTIVE
                    else html.Span(),
                ],
                className=f"job {job.state}",
                id=f"job-{job.id}",
            )
        )
    return rows


def queued_message(submit: Callable[[], Any], what: str, then: str = "") -> str:
    """Submit a job through `submit()` (a service call) and say what happened: the job's
    number, or why the server refused it."""
    try:
        job = submit()
    except (InvalidInput, Conflict) as exc:
        return f"Not queued: {exc}"
    return f"{what} job #{job.id} queued{then}."


def active_job(project_id: int, kind: str,
               where: Callable[[Any], bool] = lambda _job: True) -> Any | None:
    """The newest queued or running job of `kind` (that `where` accepts), or None."""
    active = [j for j in job_service.list_jobs(project_id)
              if j.kind == kind and j.state in ACTIVE and where(j)]
    return active[-1] if active else None


def running_job(project_id: int, kind: str, prefix: str) -> html.Div | None:
    """A progress bar for the newest queued or running job of `kind`, or None."""
    job = active_job(project_id, kind)
    if job is None:
        return None
    return html.Div(
        [html.Progress(value=str(job.progress), max="1", style={"width": "12rem"}),
         f" {kind} job #{job.id} {job.state}: {job.message or 'waiting for a worker'}"],
        className="card muted", id=f"{prefix}-running",
    )


# ------------------------------------------------------------------ tables and selections


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with a header from the first row's keys; None becomes an empty cell and
    floats keep every digit (repr), so the file reads back to the same numbers."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def parquet_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """`rows` as one Parquet table (column types inferred by Arrow)."""
    # pyarrow takes a while to import and only downloads need it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows)), buffer)
    return buffer.getvalue()


def selection_revision(selection: Sequence[int] | None) -> str:
    """Plotly keeps a user's lasso across redraws unless `selectionrevision` changes; tying it
    to the selection makes a map show exactly the selection stored."""
    chosen = tuple(selection or ())
    return f"{len(chosen)}:{hash(chosen) & 0xFFFFFFFF:x}"


# ----------------------------------------------------------- callbacks the kit registers


def _as_page_callback(kit_callback: Callable, page_function: Callable,
                      leading: Sequence[str] = (), trailing: Sequence[str] = ()) -> None:
    """Make a callback the kit registers around a page's function read as that function:
    its module (a one-view share link runs only its own page's callbacks,
    `app.share_refusal`), its name, and its parameters with the kit's own before
    (`leading`) and after (`trailing`), so checks of arguments against the callback's
    inputs and states see the page's signature."""
    own = list(inspect.signature(page_function).parameters.values())
    added = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in leading]
    after = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in trailing]
    if any(p.kind is p.VAR_POSITIONAL for p in own):
        after = []  # `*values` takes them already
    kit_callback.__signature__ = inspect.Signature([*added, *own, *after])
    kit_callback.__module__ = page_function.__module__
    kit_callback.__name__ = page_function.__name__
    kit_callback.__qualname__ = page_function.__qualname__
    kit_callback.__doc__ = page_function.__doc__


def _check_arity(function: Callable, count: int, what: str) -> None:
    """Fail at import, not on the first click in a browser, when `function` cannot take
    `count` positional arguments."""
    try:
        inspect.signature(function).bind(*range(count))
    except TypeError as exc:
        raise TypeError(f"{function.__module__}.{function.__qualname__} must take the "
                        f"{count} {what}: {exc}") from None


def _result_id(data: Mapping[str, Any]) -> Any:
    return data["result_id"]


def result_polling(prefix: str, fetch: Callable[[int], Mapping[str, Any]],
                   status: Callable[[int, Mapping[str, Any]], Any], *,
                   version: Callable[[Mapping[str, Any]], Any] = _result_id,
                   request: Callable[[int], Any] | None = None, what: str = "",
                   then: str = "") -> None:
    """The callbacks of a page that shows a project's newest results (its stores:
    `polled_result_stores`). `<prefix>-poll` calls `fetch(project_id)` and refreshes
    `<prefix>-version` (`version(data)`, by default the result id, when it changes) and
    `<prefix>-status` (`status(project_id, data)`). With `request`, `<prefix>-compute`
    queues the job (`request(project_id)`) and says so in `<prefix>-compute-message`.
    Both callbacks belong to the page that defines `status`."""

    def poll(_n: int, project_id: int, current: Any):  # noqa: ANN202
        data = fetch(project_id)
        new = version(data)
        return (new if new != current else no_update), status(project_id, data)

    poll.__module__ = status.__module__
    callback(
        Output(f"{prefix}-version", "data"),
        Output(f"{prefix}-status", "children"),
        Input(f"{prefix}-poll", "n_intervals"),
        State(f"{prefix}-project-id", "data"),
        State(f"{prefix}-version", "data"),
        prevent_initial_call=True,
    )(poll)
    if request is None:
        return

    def compute(n_clicks: int, project_id: int):  # noqa: ANN202
        if not n_clicks:
            return no_update
        return queued_message(lambda: request(project_id), what, then)

    compute.__module__ = status.__module__
    callback(
        Output(f"{prefix}-compute-message", "children"),
        Input(f"{prefix}-compute", "n_clicks"),
        State(f"{prefix}-project-id", "data"),
        prevent_initial_call=True,
    )(compute)


def view_url_writer(url_id: str, *dependencies: Input | State) -> Callable:
    """Decorate a page's function of its controls' values (`dependencies`: inputs, then
    states) that returns the view's query string (`prunescope.dashboard.views.<page>`):
    whenever a control changes, the `dcc.Location` `url_id` shows that query, unless it
    already names the same view."""

    def register(view_query: Callable[..., str]) -> Callable[..., str]:
        _check_arity(view_query, len(dependencies), "inputs and states")

        def write(*values: Any) -> Any:
            *chosen, search = values
            query = view_query(*chosen)
            return no_update if parse_query(query) == parse_query(search) else query

        _as_page_callback(write, view_query, trailing=("search",))
        callback(
            Output(url_id, "search"),
            *dependencies,
            State(url_id, "search"),
            # Only a change writes the URL: writing it on first render would push a history
            # entry that the browser's Back button returns to, which writes it again.
            prevent_initial_call=True,
        )(write)
        return view_query

    return register


class TableExport(NamedTuple):
    """A table to download: its rows and the file name without extension."""

    rows: Sequence[Mapping[str, Any]]
    stem: str


def table_download_callback(
    prefix: str, *states: State,
    to_csv: Callable[[Sequence[Mapping[str, Any]]], str] = rows_to_csv,
    to_parquet: Callable[[Sequence[Mapping[str, Any]]], bytes] = parquet_bytes,
) -> Callable:
    """Decorate a page's function of the values of `states` that returns the `TableExport`
    (or None) behind its `table_exports(prefix)`: the "CSV" button sends its rows as
    `<stem>.csv`, the "Parquet" one as `<stem>.parquet` (`to_csv`, `to_parquet`: how the
    rows are written), both through `<prefix>-download`. No rows, no file."""

    def register(export: Callable[..., TableExport | None]) -> Callable[..., TableExport | None]:
        _check_arity(export, len(states), "states")

        def download(_csv_clicks: int, _parquet_clicks: int, *values: Any) -> Any:
            if not ctx.triggered or not ctx.triggered[0]["value"]:
                return no_update  # the buttons were drawn, not pressed
            table = export(*values)
            if table is None or not table.rows:
                return no_update
            if ctx.triggered_id == f"{prefix}-parquet":
                return dcc.send_bytes(to_parquet(table.rows), f"{table.stem}.parquet")
            return dcc.send_string(to_csv(table.rows), f"{table.stem}.csv", type="text/csv")

        _as_page_callback(download, export, leading=("csv_clicks", "parquet_clicks"))
        callback(Output(f"{prefix}-download", "data"), *export_inputs(prefix), *states,
                 prevent_initial_call=True)(download)
        return export

    return register


# ---------------------------------------------------------------- uploads being validated

# How often a page asks whether an upload's validation (its ingest job) has ended.
INGEST_POLL_MS = 500


def ingest_watch(prefix: str) -> list:
    """The store holding the validating upload's job id and the interval that polls it."""
    return [dcc.Store(id=f"{prefix}-job"),
            dcc.Interval(id=f"{prefix}-poll", interval=INGEST_POLL_MS, disabled=True)]


def validating_message(prefix: str, filename: str, job: Any) -> html.Div:
    return html.Div(f"validating {filename} on a worker (job #{job.id})…",
                    className="note", id=f"{prefix}-validating")


def ingest_outcome(ingested: Callable[..., Any], job_id: int | None) -> tuple[str, Any]:
    """("running", None), ("stored", what was stored) or ("refused", the reason) for the
    upload whose ingest job is `job_id`, without waiting."""
    if job_id is None:
        return "running", None
    try:
        stored = ingested(job_service.get_job(int(job_id)), timeout=0)
    except ServiceError as exc:
        return "refused", exc.detail
    return ("running", None) if stored is None else ("stored", stored)
