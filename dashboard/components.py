"""Page components built from service-layer data (pure: data in, Dash components out)."""

from __future__ import annotations

from dash import html

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
    from server import services

    try:
        job = submit()
    except (services.InvalidInput, services.Conflict) as exc:
        return f"Not queued: {exc}"
    return f"{what} job #{job.id} queued{then}."
