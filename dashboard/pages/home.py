"""Landing page: every project with its checkpoints and job status."""

from __future__ import annotations

from collections import Counter

import dash
from dash import dcc, html

from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service

dash.register_page(__name__, path="/", title="PruneScope — projects")


def _project_card(project) -> html.Div:  # noqa: ANN001
    checkpoints = checkpoint_service.list_checkpoints(project.id)
    states = Counter(j.state for j in job_service.list_jobs(project.id))
    job_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no jobs"
    return html.Div(
        [
            dcc.Link(project.name, href=f"/projects/{project.id}", id=f"project-link-{project.id}"),
            html.Div(
                f"{project.architecture} · {len(checkpoints)} checkpoints · jobs: {job_text}",
                className="muted",
            ),
            html.Div(project.description, className="muted") if project.description else None,
        ],
        className="card project-list",
    )


def layout(**_query: str) -> html.Div:
    projects = project_service.list_projects()
    if not projects:
        body = [
            html.P(
                "No projects yet. Run `prunescope demo` for the digits demo, or create one with "
                "POST /api/v1/projects (see the API docs)."
            )
        ]
    else:
        body = [_project_card(p) for p in projects]
    return html.Div([html.H2("Projects"), *body])
