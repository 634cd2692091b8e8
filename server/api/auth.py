"""Signing in and out: the login page, session cookies, and who the API sees."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from prunescope.server import auth
from prunescope.server.api.deps import SettingsDep
from prunescope.server.auth_middleware import request_origin, sender_origin
from prunescope.server.login_throttle import LoginThrottle

pages_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/auth", tags=["auth"])

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · PruneScope</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f6f8; display: flex;
       justify-content: center; padding-top: 12vh; }}
form {{ background: #fff; padding: 2rem; border-radius: 6px; width: 18rem;
       box-shadow: 0 1px 4px #0002; display: flex; flex-direction: column; gap: 0.6rem; }}
h1 {{ font-size: 1.2rem; margin: 0 0 0.5rem; }} .error {{ color: #b00020; }}
</style></head>
<body><form method="post" action="/login">
<h1>PruneScope</h1>
{message}
<label>User <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form></body></html>
"""


def _safe_next(target: str | None) -> str:
    """Only a path on this server: an absolute or protocol-relative URL would let a link
    send someone who just signed in to another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _page(next_path: str, message: str = "", status: int = 200) -> HTMLResponse:
    shown = f'<p class="error" id="login-error">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        _LOGIN_PAGE.format(message=shown, next=html.escape(_safe_next(next_path))),
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


@pages_router.get("/login", response_class=HTMLResponse)
def login_page(next: str = "/") -> HTMLResponse:  # noqa: A002 - the query parameter's name
    return _page(next)


@pages_router.post("/login")
async def login(
    request: Request,
    settings: SettingsDep,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    """Check the password and start a new session (a fresh id: one the browser already held
    is ended, never reused). Failed attempts are limited per client and per user name
    (`prunescope.server.login_throttle` says how)."""
    sender = sender_origin(request.headers)
    if sender is not None and sender != request_origin(request.scope, request.headers):
        return _page(next, "sign-in refused: the form was sent from another site", 403)
    throttle: LoginThrottle = request.app.state.login_throttle
    # The address uvicorn reports: a trusted proxy's X-Forwarded-For, else the peer's.
    client = request.client.host if request.client else "unknown"
    attempt = await run_in_threadpool(throttle.attempt, name, client)
    if attempt is None:
        return _page(next, "too many failed sign-ins; wait a minute and try again", 429)
    user_id = await run_in_threadpool(auth.check_password, name, password, settings)
    if user_id is None:  # the attempt stays counted as a failure
        return _page(next, "wrong user name or password", 401)
    await run_in_threadpool(throttle.succeeded, attempt)
    await run_in_threadpool(
        auth.end_session, request.cookies.get(auth.SESSION_COOKIE), settings
    )
    session_id = await run_in_threadpool(auth.start_session, user_id, settings)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        auth.SESSION_COOKIE,
        session_id,
        max_age=int(settings.session_hours * 3600),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(auth.SHARE_COOKIE, path="/")
    return response


@pages_router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    """End the session on the server (the cookie alone no longer opens anything)."""
    await run_in_threadpool(
        auth.end_session, request.cookies.get(auth.SESSION_COOKIE), settings
    )
    response = RedirectResponse("/login", status_code=303)
    secure = request.url.scheme == "https"
    for cookie in (auth.SESSION_COOKIE, auth.SHARE_COOKIE):
        response.delete_cookie(cookie, path="/", httponly=True, samesite="lax", secure=secure)
    return response


class PrincipalPublic(BaseModel):
    kind: str
    name: str
    project_id: int | None = None


@router.get("/me", response_model=PrincipalPublic)
def who_am_i() -> PrincipalPublic:
    """Who this request acts for: "local" (no accounts), "user", or "share" (a share link)."""
    p = auth.current_principal()
    return PrincipalPublic(kind=p.kind, name=p.name, project_id=p.project_id)
