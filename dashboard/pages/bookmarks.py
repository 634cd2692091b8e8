"""Bookmarks page: the named views of a project, each a link that reopens it."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from prunescope.dashboard.components import open_project, page_heading, project_missing
from prunescope.server.errors import ServiceError
from prunescope.server.services import views as view_service

dash.register_page(
    __name__, path_template="/projects/<project_id>/bookmarks", title="PruneScope — bookmarks"
)


def bookmarks_list(bookmarks: list[view_service.BookmarkPublic]) -> html.Div:
    """One row per bookmark: its name as a link to the view, the address, and a delete button."""
    if not bookmarks:
        return html.Div(
            "No bookmarks yet. Open a view of this project, type a name next to “Bookmark” "
            "at the top, and press it.",
            className="muted",
            id="bookmarks-empty",
        )
    rows = [
        html.Tr(
            [
                html.Td(dcc.Link(b.name, href=b.url, id=f"bookmark-link-{b.id}")),
                html.Td(html.Code(b.url), style={"wordBreak": "break-all"}),
                html.Td(b.created_at.strftime("%Y-%m-%d %H:%M"), className="muted"),
                html.Td(
                    html.Button(
                        "delete", id={"type": "delete-bookmark", "index": b.id}, n_clicks=0
                    )
                ),
            ]
        )
        for b in bookmarks
    ]
    header = html.Tr([html.Th(h) for h in ("name", "address", "saved (UTC)", "")])
    return html.Table([html.Thead(header), html.Tbody(rows)], id="bookmarks-table")


def layout(project_id: str | None = None, **_query: str) -> html.Div:
    opened = open_project(project_id)
    if opened is None:
        return project_missing()
    pid, project = opened
    return html.Div(
        [
            dcc.Store(id="bookmarks-project-id", data=pid),
            *page_heading("bookmarks", project, "bookmarks", architecture=False),
            html.Div(
                [
                    html.Div(bookmarks_list(view_service.list_bookmarks(pid)), id="bookmarks-list"),
                    html.Div(id="bookmarks-message", style={"marginTop": "0.6rem"}),
                ],
                className="card",
            ),
        ]
    )


@callback(
    Output("bookmarks-list", "children"),
    Output("bookmarks-message", "children"),
    Input({"type": "delete-bookmark", "index": ALL}, "n_clicks"),
    State("bookmarks-project-id", "data"),
    prevent_initial_call=True,
)
def delete(_clicks: list[int], project_id: int):  # noqa: ANN201
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        return no_update, no_update  # the buttons were (re)drawn, not clicked
    try:
        view_service.delete_bookmark(int(ctx.triggered_id["index"]))
        message = html.Span("bookmark deleted", className="ok")
    except ServiceError as exc:
        message = html.Span(exc.detail, className="error")
    return bookmarks_list(view_service.list_bookmarks(project_id)), message
