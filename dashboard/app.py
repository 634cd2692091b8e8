"""The Dash dashboard, mounted on the FastAPI server so API and pages share one port."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import dash
from dash import Dash, Input, Output, State, dcc, html, no_update
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from prunescope.dashboard.callback_errors import refuse_unusable_input, refusing_unusable_requests
from prunescope.dashboard.state import storing_long_selections
from prunescope.server.auth import current_principal
from prunescope.server.errors import ServiceError
from prunescope.server.services import members
from prunescope.server.services import views as view_service

HERE = Path(__file__).parent
_PROJECT_PATH = re.compile(r"/projects/(\d+)(?:/|$)")
# On the dark top bar.
_HEADER_TEXT = {"color": "#cde", "fontSize": "0.9rem"}
_HEADER_ERROR = {"color": "#ffb4b4", "fontSize": "0.9rem"}

# Copies the address as the browser shows it. The Clipboard API exists only in secure contexts
# (https or localhost); a server reached over plain http on the network gets the older
# execCommand route. The feedback clears itself after a moment.
COPY_LINK_JS = """
async function(n_clicks) {
    if (!n_clicks) { return window.dash_clientside.no_update; }
    const url = window.location.href;
    let copied = false;
    try {
        await navigator.clipboard.writeText(url);
        copied = true;
    } catch (err) {
        const area = document.createElement("textarea");
        area.value = url;
        area.setAttribute("readonly", "");
        area.style.position = "fixed";
        area.style.opacity = "0";
        document.body.appendChild(area);
        area.select();
        try { copied = document.execCommand("copy"); } catch (err2) { copied = false; }
        document.body.removeChild(area);
    }
    setTimeout(function() {
        window.dash_clientside.set_props("copy-link-feedback", {children: ""});
    }, 1500);
    return copied ? "copied" : "copy failed: copy the address bar";
}
"""

# The page's path and query at the moment of the click or Enter (pages rewrite their query as
# the view changes, without reloading).
BOOKMARK_REQUEST_JS = """
function(n_clicks, n_submit, name) {
    if (!n_clicks && !n_submit) { return window.dash_clientside.no_update; }
    return {name: name || "", url: window.location.pathname + window.location.search,
            at: Date.now()};
}
"""


def project_id_from_path(path: str | None) -> int | None:
    """The project a dashboard path belongs to (`/projects/3/geometry` → 3), else None."""
    match = _PROJECT_PATH.match(path or "")
    return int(match.group(1)) if match else None


def bookmark_controls(pathname: str | None) -> tuple[bool, bool, str, dict[str, str]]:
    """(name input disabled, button disabled, bookmarks page href, its style) for a path:
    bookmarks belong to a project, so outside one there is nothing to save them to."""
    project_id = project_id_from_path(pathname)
    if project_id is None:
        return True, True, "/", {"display": "none"}
    return False, False, f"/projects/{project_id}/bookmarks", _HEADER_TEXT


def save_bookmark(request: dict[str, Any] | None) -> tuple[Any, Any]:
    """Save the page the browser showed (`BOOKMARK_REQUEST_JS`) as a bookmark of its project;
    (message, new value of the name input)."""
    if not request:
        return no_update, no_update
    url = str(request.get("url") or "")
    project_id = project_id_from_path(url)
    if project_id is None:
        return html.Span("open a project page to bookmark it", style=_HEADER_ERROR), no_update
    try:
        bookmark = view_service.add_bookmark(project_id, str(request.get("name") or ""), url)
    except ServiceError as exc:
        return html.Span(exc.detail, id="bookmark-error", style=_HEADER_ERROR), no_update
    return html.Span(f"saved “{bookmark.name}”", id="bookmark-saved", style=_HEADER_TEXT), ""


def signed_in_as(_pathname: str | None = None) -> Any:
    """Who the page is shown to, for the top bar: a user with a sign-out button, a share
    link's visitor, or nothing in the single-user mode of a local install."""
    principal = current_principal()
    if principal.kind == "user":
        return [
            html.Span(f"signed in as {principal.name}", style=_HEADER_TEXT),
            html.Form(html.Button("Sign out", type="submit"), action="/logout", method="POST",
                      style={"display": "inline"}),
        ]
    if principal.kind == "share":
        return html.Span("shared view, read-only", style=_HEADER_TEXT)
    if principal.kind == "anonymous":
        return html.A("Sign in", href="/login", className="nav-link")
    return []


# The page's path and query when "Share view" is pressed (as for bookmarks).
SHARE_REQUEST_JS = """
function(n_clicks) {
    if (!n_clicks) { return window.dash_clientside.no_update; }
    return {url: window.location.pathname + window.location.search,
            origin: window.location.origin, at: Date.now()};
}
"""


def share_view(request: dict[str, Any] | None) -> Any:
    """A read-only share link to the view the browser showed (owners only; the link opens
    that one view without an account until it is revoked through the API)."""
    if not request:
        return no_update
    url = str(request.get("url") or "")
    project_id = project_id_from_path(url)
    if project_id is None:
        return html.Span("open a project page to share it", style=_HEADER_ERROR)
    try:
        link = members.create_share_link(project_id, view_path=url)
    except ServiceError as exc:
        return html.Span(exc.detail, id="share-error", style=_HEADER_ERROR)
    origin = str(request.get("origin") or "")
    return html.Span(
        [dcc.Input(id="share-url", value=f"{origin}/s/{link.token}", readOnly=True,
                   style={"width": "14rem"})],
        title=f"share link #{link.id}: read-only, this view only; revoke with DELETE "
              f"/api/v1/projects/{project_id}/share-links/{link.id}")


def _view_controls() -> html.Div:
    return html.Div(
        [
            dcc.Location(id="header-url", refresh=False),
            dcc.Store(id="bookmark-request"),
            html.Button(
                "Copy link",
                id="copy-link",
                n_clicks=0,
                title="Copy the address of this view; it reopens the same view for anyone",
            ),
            html.Span(id="copy-link-feedback", style=_HEADER_TEXT),
            dcc.Input(
                id="bookmark-name",
                placeholder="bookmark name",
                disabled=True,
                style={"width": "9rem"},
            ),
            html.Button(
                "Bookmark",
                id="bookmark-save",
                n_clicks=0,
                disabled=True,
                title="Save this view of the project under the name",
            ),
            html.Span(id="bookmark-feedback"),
            dcc.Link("Bookmarks", id="bookmarks-link", href="/", style={"display": "none"}),
            dcc.Store(id="share-request"),
            html.Button("Share view", id="share-view", n_clicks=0, disabled=True,
                        title="A read-only link to this view for someone without an account "
                        "(project owners)"),
            html.Span(id="share-feedback"),
        ],
        style={"display": "flex", "gap": "0.4rem", "alignItems": "center"},
    )


class LongSelectionsStored:
    """Lets what the dashboard serves write long selections as short ids
    (`prunescope.dashboard.state.storing_long_selections`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with storing_long_selections():
            await self.app(scope, receive, send)


def _page_module(path: str) -> str | None:
    """The module of the registered page that serves `path`."""
    for page in dash.page_registry.values():
        template = page.get("path_template") or page["path"]
        pattern = re.sub(r"<[^>]+>", "[^/]+", re.escape(template.rstrip("/") or "/"))
        if re.fullmatch(pattern, path.rstrip("/") or "/"):
            return page["module"]
    return None


def share_refusal(dash_app: Dash, principal: Any, body: dict[str, Any]) -> str | None:
    """Why a one-view share link's visitor may not run this callback, or None.

    A link to one view runs the callbacks of that view's page (the ones the page kit,
    `prunescope.dashboard.components`, registers for it included) and the header's; Dash's
    page router only for the view's own path (it would otherwise draw any page of the
    project). The service layer keeps every callback to the link's project, read-only, in
    any case."""
    if getattr(principal, "kind", None) != "share" or not principal.view_path:
        return None
    view = urlsplit(principal.view_path).path.rstrip("/") or "/"
    spec = dash_app.callback_map.get(str(body.get("output", "")))
    if spec is None or "callback" not in spec:
        return None  # unknown to Dash, which answers it
    module = inspect.unwrap(spec["callback"]).__module__
    if module == "dash" or module.startswith("dash."):  # the page router
        pathname = next((i.get("value") for i in body.get("inputs", [])
                         if isinstance(i, dict) and i.get("id") == "_pages_location"
                         and i.get("property") == "pathname"), None)
        if (str(pathname or "").rstrip("/") or "/") == view:
            return None
        return "a share link for one view opens only that view"
    if module in (__name__, _page_module(view)):
        return None
    return "a share link for one view runs only that view's callbacks"


def run_callbacks_in_threads(server: FastAPI, dash_app: Dash) -> None:
    """Serve Dash's callbacks from worker threads, not the event loop.

    Dash's FastAPI backend runs a (synchronous) callback inline in its async route, so one
    page that takes 30 ms to build stalls every other request the server holds, API calls
    included. The route is shadowed by one that runs the same handler in a worker thread
    with a copy of the request's context (the request itself, the signed-in principal),
    where the handler's event loop is a private one.
    """
    path = "/_dash-update-component"
    original = next((r for r in server.router.routes
                     if isinstance(r, APIRoute) and r.path == path), None)
    if original is None:
        raise RuntimeError(f"Dash registered no {path} route; is its FastAPI backend in use?")
    handler = original.endpoint

    async def dispatch_in_thread(request: Request) -> Any:
        body = getattr(request.state, "json_body", None)
        if body is None:
            body = await request.json()
        refusal = share_refusal(dash_app, current_principal(), body if isinstance(
            body, dict) else {})
        if refusal:
            return JSONResponse(status_code=403, content={"detail": refusal})
        with refusing_unusable_requests():
            return await anyio.to_thread.run_sync(lambda: asyncio.run(handler(request)))

    server.router.routes.insert(0, APIRoute(path, dispatch_in_thread, methods=list(
        original.methods), include_in_schema=False, name="dash-update-component"))


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
        on_error=refuse_unusable_input,  # a value of the wrong type: 422, not 500
    )
    app.layout = html.Div(
        [
            html.Header(
                [
                    dcc.Link("PruneScope", href="/", className="brand"),
                    html.Span("what pruning changes inside a network", className="tagline"),
                    _view_controls(),
                    dcc.Link("Jobs", href="/jobs", className="nav-link"),
                    html.A("API", href="/docs", className="nav-link", target="_blank"),
                    html.Span(id="signed-in", style={"display": "flex", "gap": "0.4rem"}),
                ],
                className="topbar",
            ),
            html.Main(dash.page_container, className="content"),
        ]
    )
    app.clientside_callback(
        COPY_LINK_JS,
        Output("copy-link-feedback", "children"),
        Input("copy-link", "n_clicks"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        BOOKMARK_REQUEST_JS,
        Output("bookmark-request", "data"),
        Input("bookmark-save", "n_clicks"),
        Input("bookmark-name", "n_submit"),
        State("bookmark-name", "value"),
        prevent_initial_call=True,
    )
    app.callback(
        Output("bookmark-name", "disabled"),
        Output("bookmark-save", "disabled"),
        Output("bookmarks-link", "href"),
        Output("bookmarks-link", "style"),
        Input("header-url", "pathname"),
    )(bookmark_controls)
    app.callback(Output("share-view", "disabled"), Input("header-url", "pathname"))(
        lambda pathname: project_id_from_path(pathname) is None)
    app.clientside_callback(
        SHARE_REQUEST_JS,
        Output("share-request", "data"),
        Input("share-view", "n_clicks"),
        prevent_initial_call=True,
    )
    app.callback(Output("share-feedback", "children"), Input("share-request", "data"),
                 prevent_initial_call=True)(share_view)
    app.callback(Output("signed-in", "children"), Input("header-url", "pathname"))(signed_in_as)
    app.callback(
        Output("bookmark-feedback", "children"),
        Output("bookmark-name", "value"),
        Input("bookmark-request", "data"),
        prevent_initial_call=True,
    )(save_bookmark)
    server.add_middleware(LongSelectionsStored)
    # Dash collects assets/ (stylesheet, upload script) in a hook that its FastAPI backend
    # runs only on requests to "/" or its own routes, so a first visit straight to a project
    # page would arrive without them. Run that one-time setup now; it is idempotent.
    app._setup_server()
    run_callbacks_in_threads(server, app)
    return app
