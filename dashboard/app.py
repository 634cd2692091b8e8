"""The Dash dashboard, mounted on the FastAPI server so API and pages share one port."""

from __future__ import annotations

from pathlib import Path

import dash
from dash import Dash, dcc, html
from fastapi import FastAPI

HERE = Path(__file__).parent


def create_dash(server: FastAPI) -> Dash:
    app = Dash(
        __name__,
        server=server,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(HERE / "assets"),
        title="PruneScope",
        update_title=None,
        suppress_callback_exceptions=True,
    )
    app.layout = html.Div(
        [
            html.Header(
                [
                    dcc.Link("PruneScope", href="/", className="brand"),
                    html.Span("what pruning changes inside a network", className="tagline"),
                    html.A("API", href="/docs", className="nav-link", target="_blank"),
                ],
                className="topbar",
            ),
            html.Main(dash.page_container, className="content"),
        ]
    )
    # Dash collects assets/ (stylesheet, upload script) in a hook that its FastAPI backend
    # runs only on requests to "/" or its own routes, so a first visit straight to a project
    # page would arrive without them. Run that one-time setup now; it is idempotent.
    app._setup_server()
    return app
