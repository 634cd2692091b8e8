"""Jobs page: every job the visitor may see, across projects, with its waits and run times."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dash
from dash import Input, Output, State, callback, dash_table, dcc, html

from prunescope.dashboard.components import (
    TableExport,
    row_of,
    table_download_callback,
    table_exports,
)
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.tables import utcnow

dash.register_page(__name__, path="/jobs", title="PruneScope — jobs")

REFRESH_MS = 2000
COLUMNS = [
    {"name": "id", "id": "id", "type": "numeric"},
    {"name": "project", "id": "project"},
    {"name": "kind", "id": "kind"},
    {"name": "state", "id": "state"},
    {"name": "progress", "id": "progress", "type": "numeric",
     "format": {"specifier": ".0%"}},
    {"name": "worker", "id": "worker"},
    {"name": "attempts", "id": "attempts"},
    {"name": "queued at (UTC)", "id": "queued_at"},
    {"name": "queue wait (s)", "id": "queue_wait_s", "type": "numeric",
     "format": {"specifier": ".1f"}},
    {"name": "duration (s)", "id": "duration_s", "type": "numeric",
     "format": {"specifier": ".1f"}},
    {"name": "message", "id": "message"},
    {"name": "error", "id": "error"},
]


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    # Stamps from different machines' clocks may disagree by a little.
    return max(0.0, (later - earlier).total_seconds())


def job_rows(now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per job the visitor may see (the service layer decides which), newest first.

    queue_wait_s: started_at − created_at; for a job still queued, the wait so far (`now`
    − created_at); None for one that ended without starting (cancelled while queued, or
    failed because a job it depended on did). A retried job's start is its latest attempt's.
    duration_s: finished_at − started_at; for a running job, the run so far; None when it
    never started. Times are naive UTC, as the job table keeps them.
    """
    now = now or utcnow()
    names = {p.id: p.name for p in project_service.list_projects()}
    rows = []
    for job in sorted(job_service.list_jobs(), key=lambda j: j.id, reverse=True):
        queued = job.state == "queued"
        rows.append({
            "id": job.id,
            "project": names.get(job.project_id, str(job.project_id)),
            "kind": job.kind,
            "state": job.state,
            "progress": job.progress,
            "worker": job.worker_id or "",
            "attempts": f"{job.attempts}/{job.max_attempts}",
            "queued_at": job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "queue_wait_s": _seconds(now if queued else job.started_at, job.created_at),
            "duration_s": _seconds(job.finished_at or (now if job.state == "running" else None),
                                   job.started_at),
            "message": job.message,
            "error": job.error or "",
        })
    return rows


def layout(**_query: str) -> html.Div:
    return html.Div(
        [
            html.H2("Jobs"),
            html.Div(
                [
                    html.P("Every job of the projects you can see, newest first; refreshed "
                           "every two seconds. Click a header to sort, type in the row under "
                           "it to filter (e.g. “failed”, or “> 60” for waits over a minute).",
                           className="muted"),
                    dcc.Interval(id="jobs-refresh", interval=REFRESH_MS),
                    dash_table.DataTable(
                        id="jobs-table",
                        columns=COLUMNS,
                        data=job_rows(),
                        sort_action="native",
                        filter_action="native",
                        page_action="native",
                        page_size=50,
                        style_table={"overflowX": "auto"},
                        style_cell={"fontFamily": "inherit", "padding": "4px 8px",
                                    "textAlign": "left", "maxWidth": "28rem",
                                    "overflow": "hidden", "textOverflow": "ellipsis"},
                        style_header={"fontWeight": "600"},
                    ),
                    row_of(html.Span("export the table:", className="muted"),
                           *table_exports("jobs"), gap="0.6rem", style={"marginTop": "0.6rem"}),
                ],
                className="card",
            ),
        ]
    )


@callback(Output("jobs-table", "data"), Input("jobs-refresh", "n_intervals"),
          prevent_initial_call=True)
def refresh(_n: int) -> list[dict[str, Any]]:
    return job_rows()


@table_download_callback("jobs", State("jobs-table", "derived_virtual_data"))
def jobs_export(shown: list[dict[str, Any]] | None) -> TableExport:
    """The rows as filtered and sorted in the table; their values are read again from the
    service layer, not taken from the browser."""
    rows = job_rows()
    if shown is not None:
        by_id = {row["id"]: row for row in rows}
        rows = [by_id[row["id"]] for row in shown if row.get("id") in by_id]
    return TableExport(rows, "prunescope-jobs")
