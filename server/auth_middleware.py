"""The sign-in gate in front of every route: sets each request's principal and refuses, before
any route runs, what that principal may not do."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from prunescope.server.access import require_project
from prunescope.server.auth import (
    LOCAL,
    Principal,
    acting_as,
    auth_enabled,
    resolve_principal,
)
from prunescope.server.config import Settings
from prunescope.server.errors import ServiceError
from prunescope.server.request_guards import is_upload
from prunescope.server.schemas import MAX_ID

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PROJECT_ROUTE = re.compile(r"/api/v1/projects/(\d+)(?:/|$)")


def request_origin(scope: Scope, headers: Headers) -> str:
    """This server's origin as the browser sees it: scheme://host[:port]."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme"))
    return f"{scheme}://{headers.get('host', '')}".lower()


def sender_origin(headers: Headers) -> str | None:
    """The Origin header, else the origin of the Referer, else None."""
    origin = headers.get("origin")
    if origin and origin != "null":
        return origin.lower().rstrip("/")
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}".lower()
    return "null" if origin == "null" else None


def _public(path: str) -> bool:
    return (
        path in ("/login", "/logout", "/api/v1/health", "/docs", "/openapi.json", "/favicon.ico")
        or path.startswith(("/s/", "/assets/", "/_dash-component-suites/"))
    )


def _reads_page(path: str) -> bool:
    """A browser navigation that should be sent to the sign-in page rather than get 401."""
    return not path.startswith(("/api/", "/_dash", "/_reload", "/docs"))


class AuthMiddleware:
    """Sets each request's principal and refuses what it may not do before any route runs:
    no credentials (401, or a redirect to /login for pages), a cookie-authenticated change
    from another origin (403), a share link's visitor leaving what it shares (403)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if _climbs(scope["path"]):
            await _refuse(scope, receive, send, 404, "no such path: '..' segments, "
                          "backslashes and NUL are not part of any PruneScope address")
            return
        headers = Headers(scope=scope)
        method = scope.get("method", "GET")
        changes = scope["type"] == "websocket" or method in UNSAFE_METHODS
        sender = sender_origin(headers)
        same_origin = sender == request_origin(scope, headers)
        if not await to_thread.run_sync(auth_enabled, self.settings):
            # Even without accounts, a page on another site must not drive the local server.
            if changes and sender is not None and not same_origin:
                await _refuse(scope, receive, send, 403, "cross-site request refused")
                return
            with acting_as(LOCAL):
                if not await self._refused_before_body(scope, receive, send, method):
                    await self.app(scope, receive, send)
            return
        cookies = _cookies(headers)
        principal, shown = await to_thread.run_sync(
            resolve_principal, headers.get("authorization"), cookies, self.settings
        )
        path = scope["path"]
        if shown == "bad-token":
            await _refuse(scope, receive, send, 401, "invalid or revoked API token")
            return
        if changes and shown in ("session", "share", None) and not same_origin:
            # Cookies ride along on cross-site requests; the origin says who sent them.
            if shown is not None or sender is not None:
                await _refuse(scope, receive, send, 403, "cross-site request refused: send "
                              "an Origin or Referer of this server, or use a bearer token")
                return
        if principal.kind == "anonymous" and not _public(path):
            if scope["type"] == "http" and method in ("GET", "HEAD") and _reads_page(path):
                target = scope.get("raw_path", path.encode()).decode("latin-1")
                if scope.get("query_string"):
                    target += "?" + scope["query_string"].decode("latin-1")
                response = RedirectResponse("/login?next=" + quote(target, safe=""), 303)
                await response(scope, receive, send)
                return
            await _refuse(scope, receive, send, 401, "sign in at /login, or send "
                          "'Authorization: Bearer <token>' (prunescope users add --token)")
            return
        if principal.kind == "share" and not _share_may(principal, method, path):
            if scope["type"] == "http" and method in ("GET", "HEAD") and _reads_page(path):
                # Elsewhere in the dashboard (the home page, another project): back to it.
                target = principal.view_path or f"/projects/{principal.project_id}"
                await RedirectResponse(target, 303)(scope, receive, send)
                return
            await _refuse(scope, receive, send, 403,
                          "a share link opens only what it shares, read-only")
            return
        with acting_as(principal):
            if not await self._refused_before_body(scope, receive, send, method):
                await self.app(scope, receive, send)

    async def _refused_before_body(self, scope: Scope, receive: Receive, send: Send,
                                   method: str) -> bool:
        """Refuse a change to a project the principal may not make before its body is read
        (a route reads, even spools to disk, its whole body before it looks at the project);
        whether it was refused."""
        match = _PROJECT_ROUTE.match(scope["path"])
        if scope["type"] != "http" or method not in UNSAFE_METHODS or match is None:
            return False
        project_id = int(match.group(1))
        need = "edit" if is_upload(method, scope["path"]) else "view"
        if not 1 <= project_id <= MAX_ID:
            # What the route's own id bound answers (server/api/deps.py IdPath), body unread.
            refusal: tuple[int, str] | None = (
                422, f"project id {project_id} is out of range: it must be "
                f"greater than or equal to 1 and less than or equal to {MAX_ID}")
        else:
            refusal = await to_thread.run_sync(_project_refusal, project_id, need,
                                               self.settings)
        if refusal is not None:
            await _refuse(scope, receive, send, *refusal)
        return refusal is not None


def _project_refusal(project_id: int, need: str, settings: Settings) -> tuple[int, str] | None:
    try:
        require_project(project_id, need, settings)
    except ServiceError as exc:
        return exc.status_code, str(exc.detail)
    return None


def _climbs(path: str) -> bool:
    """Whether a (decoded) path tries to leave its folder; refused before any file route,
    ours or the dashboard's, sees it."""
    return "\\" in path or "\x00" in path or any(part == ".." for part in path.split("/"))


def _share_may(principal: Principal, method: str, path: str) -> bool:
    """A share link's visitor reads its project: pages under it (or its one view), the
    dashboard's own requests, and (whole-project links) the API's reads; the service layer
    keeps every one of them to that project, read-only."""
    if _public(path) or path.startswith("/_dash"):
        return True  # Dash callbacks: writes among them meet the service layer's checks
    if method not in ("GET", "HEAD"):
        return False
    if path.startswith("/api/v1/"):
        if path == "/api/v1/auth/me":
            return True
        # A link to one view opens that page only; a whole-project link also its API reads.
        return principal.view_path is None and not path.startswith("/api/v1/uploads")
    prefix = urlsplit(principal.view_path or f"/projects/{principal.project_id}").path
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _cookies(headers: Headers) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            cookies.setdefault(key, value)
    return cookies


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    headers = Headers(scope=scope)
    if "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0"):
        # The body goes unread: closing the connection spares the client sending the rest.
        extra["Connection"] = "close"
    await JSONResponse({"detail": detail}, status_code=status, headers=extra)(
        scope, receive, send
    )
