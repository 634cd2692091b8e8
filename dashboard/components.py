"""Page components built from service-layer data, and the callbacks pages share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dash import Input, Output, State, callback, ctx, dcc, html, no_update

ACTIVE = ("queued", "running")


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


def queued_message(submit, what: str, then: str = "") -> str:  # noqa: ANN001
    """Submit a job through `submit()` (a service call) and say what happened: the job's
    number, or why the server refused it."""
    from prunescope.server.errors import Conflict, InvalidInput

    try:
        job = submit()
    except (InvalidInput, Conflict) as exc:
        return f"Not queued: {exc}"
    return f"{what} job #{job.id} queued{then}."


def csv_download(rows: list[dict[str, Any]], filename: str) -> Any:
    """A dcc.Download payload of `rows` as CSV; nothing to send when there are no rows."""
    from prunescope.dashboard.figures.layers import rows_to_csv

    if not rows:
        return no_update
    return {"content": rows_to_csv(rows), "filename": filename, "type": "text/csv"}


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """`rows` as one Parquet table (column types inferred by Arrow)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def table_download(rows: list[dict[str, Any]], stem: str) -> Any:
    """A dcc.Download payload of `rows` as `<stem>.parquet` when the button that fired the
    callback is an `export_buttons` "Parquet" one, else as `<stem>.csv`."""
    if not rows:
        return no_update
    trigger = ctx.triggered_id
    if isinstance(trigger, str) and trigger.endswith("-parquet"):
        return dcc.send_bytes(parquet_bytes(rows), f"{stem}.parquet")
    return csv_download(rows, f"{stem}.csv")


def export_buttons(prefix: str) -> list:
    """The "CSV" and "Parquet" buttons (`<prefix>-csv`, `<prefix>-parquet`) of a table whose
    callback answers both with `table_download`."""
    return [html.Button("CSV", id=f"{prefix}-csv", n_clicks=0, title="download as CSV"),
            html.Button("Parquet", id=f"{prefix}-parquet", n_clicks=0,
                        title="download as Parquet (typed columns, for pandas or polars)")]


def export_inputs(prefix: str) -> list:
    """The callback inputs of `export_buttons(prefix)`."""
    return [Input(f"{prefix}-csv", "n_clicks"), Input(f"{prefix}-parquet", "n_clicks")]


def open_project(project_id: str | None) -> tuple[int, Any] | None:
    """(id, project) of a page's `<project_id>` path segment, or None when it names no
    project the visitor can see."""
    from prunescope.server.errors import NotFound
    from prunescope.server.services import projects

    try:
        pid = int(project_id or "")
        return pid, projects.get_project(pid)
    except (ValueError, NotFound):
        return None


def project_missing() -> html.Div:
    return html.Div([html.H2("Project not found"), dcc.Link("Back to all projects", href="/")],
                    id="project-missing")


def running_job(project_id: int, kind: str, prefix: str) -> html.Div | None:
    """A progress bar for the newest queued or running job of `kind`, or None."""
    from prunescope.server.services import jobs

    running = [j for j in jobs.list_jobs(project_id) if j.kind == kind and j.state in ACTIVE]
    if not running:
        return None
    job = running[-1]
    return html.Div(
        [html.Progress(value=str(job.progress), max="1", style={"width": "12rem"}),
         f" {kind} job #{job.id} {job.state}: {job.message or 'waiting for a worker'}"],
        className="card muted", id=f"{prefix}-running",
    )


def result_polling(prefix: str, fetch: Callable[[int], dict[str, Any]],
                   status: Callable[[int, dict[str, Any]], Any],
                   request: Callable[[int], Any], what: str, then: str = "") -> None:
    """The two callbacks of a page that shows one job's newest result: `<prefix>-poll`
    refreshes `<prefix>-version` (the result id, when a new one lands) and
    `<prefix>-status`; `<prefix>-compute` queues the job and says so in
    `<prefix>-compute-message`. `fetch(project_id)` returns {"result_id", ...}."""

    @callback(
        Output(f"{prefix}-version", "data"),
        Output(f"{prefix}-status", "children"),
        Input(f"{prefix}-poll", "n_intervals"),
        State(f"{prefix}-project-id", "data"),
        State(f"{prefix}-version", "data"),
        prevent_initial_call=True,
    )
    def poll(_n: int, project_id: int, version: int | None):  # noqa: ANN202
        data = fetch(project_id)
        changed = data["result_id"] != version
        return (data["result_id"] if changed else no_update), status(project_id, data)

    @callback(
        Output(f"{prefix}-compute-message", "children"),
        Input(f"{prefix}-compute", "n_clicks"),
        State(f"{prefix}-project-id", "data"),
        prevent_initial_call=True,
    )
    def compute(n_clicks: int, project_id: int):  # noqa: ANN202
        if not n_clicks:
            return no_update
        return queued_message(lambda: request(project_id), what, then)


# ----------------------------------------------------------------- layout pieces of the pages


def dropdown(id_: str, options: list[dict], value: Any, width: str = "14rem") -> Any:
    return dcc.Dropdown(id=id_, options=options, value=value, clearable=False,
                        style={"width": width})


def control(label: str, component: Any) -> html.Div:
    """A control with its label before it, on one line."""
    return html.Div([html.Span(label, className="muted"), component],
                    style={"display": "flex", "gap": "0.5rem", "alignItems": "center"})


def graph(id_: str, height: str | None = None) -> Any:
    """A figure placeholder that says it is loading, with the export-enabled toolbar."""
    from prunescope.dashboard.figures.overview import GRAPH_CONFIG, loading_figure

    style = {"height": height} if height else None
    return dcc.Graph(id=id_, figure=loading_figure(), config=GRAPH_CONFIG, style=style)


def card(title: str, note: str, body: list) -> html.Div:
    return html.Div([html.H3(title), html.P(note, className="muted"), *body], className="card")


def row_of(*children: Any) -> html.Div:
    return html.Div(list(children), style={"display": "flex", "gap": "1rem",
                                           "alignItems": "center", "flexWrap": "wrap"})
