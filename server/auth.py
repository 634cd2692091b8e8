"""Accounts and who is asking: password and token hashing, sessions, the request's principal."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from anyio import to_thread
from sqlalchemy import ColumnElement, delete, false, func, select
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.tables import (
    ApiToken,
    LoginFailure,
    Project,
    ProjectMember,
    ShareLink,
    User,
    UserSession,
    utcnow,
)

SESSION_COOKIE = "prunescope_session"
SHARE_COOKIE = "prunescope_share"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# scrypt cost: 2**14 × 8 × 1 uses 16 MiB and about 50 ms, the interactive-login setting of
# Percival's paper (and OWASP's minimum for scrypt).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LENGTH = 8

# ---------------------------------------------------------------- hashing


def hash_password(password: str) -> str:
    """scrypt with a fresh 16-byte salt, stored as `scrypt$n$r$p$salt$hash` (hex)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` hashes to `stored`; compared in constant time."""
    if not stored:
        # Hash anyway, so a missing account takes as long to refuse as a wrong password.
        hash_password(password)
        return False
    _, n, r, p, salt, expected = stored.split("$")
    digest = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(digest.hex(), expected)


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What is stored of a token: its SHA-256 (a random 256-bit token needs no salt)."""
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------- users


class AccountError(ValueError):
    """A user-management request that cannot be done; the message says why."""


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    has_password: bool
    tokens: int


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise AccountError("a user name is 1-100 characters without spaces")
    return name


def add_user(
    name: str, password: str | None, *, token: bool, settings: Settings | None = None
) -> tuple[UserInfo, str | None]:
    """Create a user with a password and/or an API token; returns the token (shown once)."""
    name = _check_name(name)
    if password is None and not token:
        raise AccountError("give the user a password (--password-stdin) or a token (--token)")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    with session_scope(settings) as s:
        if s.scalar(select(User.id).where(User.name == name)) is not None:
            raise AccountError(f"a user named {name!r} exists; remove it first or pick another")
        user = User(name=name, password_hash=hash_password(password) if password else None)
        s.add(user)
        s.flush()
        plain = None
        if token:
            plain = new_token()
            s.add(ApiToken(user_id=user.id, token_hash=token_digest(plain)))
        return UserInfo(user.id, name, password is not None, int(token)), plain


def list_users(settings: Settings | None = None) -> list[UserInfo]:
    with session_scope(settings) as s:
        users = s.scalars(select(User).order_by(User.name)).all()
        tokens: dict[int, int] = defaultdict(int)
        for user_id in s.scalars(select(ApiToken.user_id)):
            tokens[user_id] += 1
        return [UserInfo(u.id, u.name, bool(u.password_hash), tokens[u.id]) for u in users]


def remove_user(name: str, settings: Settings | None = None) -> None:
    """Delete a user with their tokens and sessions (they are signed out at once)."""
    with session_scope(settings) as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise AccountError(f"no user named {name!r}; `prunescope users list` shows them")
        for table in (ApiToken, UserSession):
            s.execute(delete(table).where(table.user_id == user.id))
        s.delete(user)


def any_user(settings: Settings | None = None) -> bool:
    with session_scope(settings) as s:
        return s.scalar(select(User.id).limit(1)) is not None


def find_user_id(name: str, settings: Settings | None = None) -> int | None:
    with session_scope(settings) as s:
        return s.scalar(select(User.id).where(User.name == name))


def check_password(name: str, password: str, settings: Settings | None = None) -> int | None:
    """The user's id when the password is theirs, else None."""
    with session_scope(settings) as s:
        user = s.scalar(select(User).where(User.name == name))
        stored = user.password_hash if user else None
        user_id = user.id if user else None
    return user_id if verify_password(password, stored) else None


# ---------------------------------------------------------------- sessions


def start_session(user_id: int, settings: Settings) -> str:
    """A new session id for the cookie (never one the browser brought: no fixation)."""
    session_id = new_token()
    with session_scope(settings) as s:
        now = utcnow()
        s.add(UserSession(
            id_hash=token_digest(session_id), user_id=user_id, created_at=now,
            expires_at=now + timedelta(hours=settings.session_hours),
        ))
    return session_id


def end_session(session_id: str | None, settings: Settings) -> None:
    if not session_id:
        return
    with session_scope(settings) as s:
        row = s.get(UserSession, token_digest(session_id))
        if row is not None:
            s.delete(row)


# ---------------------------------------------------------------- the principal


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. "local": the single user of an install without accounts, who
    owns everything; "user": a signed-in account; "share": a share link's visitor, who may
    read one project; "anonymous": nobody."""

    kind: Literal["local", "user", "share", "anonymous"]
    user_id: int | None = None
    name: str = ""
    project_id: int | None = None  # share links: the one project they open
    view_path: str | None = None  # share links made for one view
    share_link_id: int | None = None

    @property
    def is_user(self) -> bool:
        return self.kind in ("local", "user")


LOCAL = Principal("local", name="local")
ANONYMOUS = Principal("anonymous")
# Code outside a request (the CLI, workers, tests calling services) acts as the local owner;
# the middleware sets every request's principal itself.
_principal: ContextVar[Principal] = ContextVar("prunescope_principal", default=LOCAL)


def current_principal() -> Principal:
    return _principal.get()


@contextmanager
def acting_as(principal: Principal) -> Iterator[Principal]:
    """Run service calls as `principal` (requests get theirs from `AuthMiddleware`)."""
    reset = _principal.set(principal)
    try:
        yield principal
    finally:
        _principal.reset(reset)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_enabled(settings: Settings) -> bool:
    """Whether requests must sign in: `PRUNESCOPE_AUTH=on|off`, or for "auto" once any
    user exists or the server listens beyond loopback without --insecure."""
    if settings.auth != "auto":
        return settings.auth == "on"
    if not is_loopback(settings.host) and not settings.insecure:
        return True
    return any_user(settings)


def startup_problem(settings: Settings) -> str | None:
    """Why serving with these settings would be unsafe or useless, or None."""
    network = not is_loopback(settings.host)
    if settings.auth == "off":
        if network and not settings.insecure:
            return (f"PRUNESCOPE_AUTH=off on {settings.host} would let anyone on the network "
                    "in; pass --insecure to mean it")
        return None
    needs_user = settings.auth == "on" or (network and not settings.insecure)
    if needs_user and not any_user(settings):
        where = (f"serving on {settings.host} (beyond this machine)" if network
                 else "PRUNESCOPE_AUTH=on")
        escape = ", or pass --insecure to serve without sign-in" if network else ""
        return (f"{where} needs an account: run `prunescope users add NAME --password-stdin` "
                f"first{escape}")
    return None


def _user_principal(session: Any, user_id: int) -> Principal | None:
    user = session.get(User, user_id)
    return Principal("user", user_id=user.id, name=user.name) if user else None


def resolve_principal(
    authorization: str | None, cookies: dict[str, str], settings: Settings
) -> tuple[Principal, str | None]:
    """(principal, how it was shown: "bearer" | "session" | "share" | "bad-token" | None)."""
    with session_scope(settings) as s:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                digest = token_digest(token.strip())
                row = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
                if row is not None and hmac.compare_digest(row.token_hash, digest):
                    principal = _user_principal(s, row.user_id)
                    if principal:
                        return principal, "bearer"
            return ANONYMOUS, "bad-token"
        session_id = cookies.get(SESSION_COOKIE)
        if session_id:
            row = s.get(UserSession, token_digest(session_id))
            if row is not None and row.expires_at > utcnow():
                principal = _user_principal(s, row.user_id)
                if principal:
                    return principal, "session"
        share = cookies.get(SHARE_COOKIE)
        if share:
            principal = share_principal(s, share)
            if principal is not None:
                return principal, "share"
    return ANONYMOUS, None


def share_principal(session: Any, token: str) -> Principal | None:
    """The read-only principal of a live share link (not revoked, not expired), else None.
    Asked on every request, so revoking a link cuts off its visitors at once."""
    digest = token_digest(token)
    link = session.scalar(select(ShareLink).where(ShareLink.token_hash == digest))
    if link is None or not hmac.compare_digest(link.token_hash, digest):
        return None
    if link.revoked_at is not None or (link.expires_at and link.expires_at <= utcnow()):
        return None
    return Principal("share", name="share link", project_id=link.project_id,
                     view_path=link.view_path, share_link_id=link.id)


# ---------------------------------------------------------------- project roles

ROLE_RANK = {"viewer": 1, "editor": 2, "owner": 3}


def project_role(session: Any, project_id: int, principal: Principal | None = None) -> str | None:
    """The principal's role in a project: "owner", "editor", "viewer", or None (a stranger,
    who must not learn that the project exists)."""
    principal = principal or current_principal()
    if principal.kind == "local":
        return "owner"
    if principal.kind == "share":
        return "viewer" if project_id == principal.project_id else None
    if principal.kind == "user":
        return session.scalar(select(ProjectMember.role).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == principal.user_id
        ))
    return None


def visible_projects(principal: Principal | None = None) -> ColumnElement[bool] | None:
    """A filter on Project.id for the projects the principal may see (None: all of them)."""
    principal = principal or current_principal()
    if principal.kind == "local":
        return None
    if principal.kind == "share":
        return Project.id == principal.project_id
    if principal.kind == "user":
        return Project.id.in_(
            select(ProjectMember.project_id).where(ProjectMember.user_id == principal.user_id)
        )
    return false()


@dataclass(frozen=True)
class Member:
    name: str
    role: str


def _user_by_name(session: Any, name: str) -> User:
    from prunescope.server.services import NotFound

    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}; an administrator adds them with "
                       "`prunescope users add`")
    return user


def list_members(project_id: int, settings: Settings | None = None) -> list[Member]:
    """The project's owner, editors and viewers (anyone who may see the project may ask)."""
    from prunescope.server.services import _get_or_404

    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project")
        rows = s.execute(
            select(User.name, ProjectMember.role)
            .join(ProjectMember, ProjectMember.user_id == User.id)
            .where(ProjectMember.project_id == project_id)
            .order_by(ProjectMember.id)
        ).all()
        return [Member(name, role) for name, role in rows]


def set_member(project_id: int, name: str, role: str,
               settings: Settings | None = None) -> Member:
    """Let a user into the project as "viewer" or "editor" (or change their role); owner only."""
    from prunescope.server.services import Conflict, InvalidInput, _get_or_404

    if role not in ("viewer", "editor"):
        raise InvalidInput(f"role must be 'viewer' or 'editor', got {role!r}")
    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        row = s.scalar(select(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id))
        if row is not None and row.role == "owner":
            raise Conflict(f"{name} owns project {project_id}; an owner stays an owner")
        if row is None:
            row = ProjectMember(project_id=project_id, user_id=user.id, role=role)
            s.add(row)
        row.role = role
        return Member(user.name, role)


def remove_member(project_id: int, name: str, settings: Settings | None = None) -> None:
    """Take a user's access to the project away (effective on their next request)."""
    from prunescope.server.services import Conflict, NotFound, _get_or_404

    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        row = s.scalar(select(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id))
        if row is None:
            raise NotFound(f"{name} is not a member of project {project_id}")
        if row.role == "owner":
            raise Conflict("the owner cannot be removed; `prunescope projects owner` hands "
                           "the project to someone else")
        s.delete(row)


def set_owner(project_id: int, name: str, settings: Settings | None = None) -> None:
    """Make `name` the project's owner (the previous owner stays, as an editor). For
    projects made before accounts existed, which have no owner yet."""
    from prunescope.server.services import Conflict, _get_or_404

    with session_scope(settings) as s:
        project = _get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        key = f"u{user.id}"
        clash = s.scalar(select(Project.id).where(Project.owner_key == key,
                                                  Project.name == project.name,
                                                  Project.id != project_id))
        if clash is not None:
            raise Conflict(f"{name} already has a project named {project.name!r} (id {clash}); "
                           "rename one of them first")
        project.owner_key = key
        for row in s.scalars(select(ProjectMember).where(
                ProjectMember.project_id == project_id)):
            if row.user_id == user.id:
                s.delete(row)
            elif row.role == "owner":
                row.role = "editor"
        s.flush()
        s.add(ProjectMember(project_id=project_id, user_id=user.id, role="owner"))


# ---------------------------------------------------------------- share links


@dataclass(frozen=True)
class ShareLinkInfo:
    id: int
    project_id: int
    view_path: str | None
    created_at: Any
    expires_at: Any
    revoked: bool
    token: str | None = None  # only when just created: it is not stored


def _link_info(row: ShareLink, token: str | None = None) -> ShareLinkInfo:
    return ShareLinkInfo(row.id, row.project_id, row.view_path, row.created_at, row.expires_at,
                         row.revoked_at is not None, token)


def create_share_link(
    project_id: int,
    view_path: str | None = None,
    expires_in_hours: float | None = None,
    settings: Settings | None = None,
) -> ShareLinkInfo:
    """A new read-only link to the project, or to the one view `view_path` (a page of the
    project, as for bookmarks); the owner only. The token (128+ random bits) is returned
    once and stored hashed."""
    from prunescope.server.services import InvalidInput, _get_or_404
    from prunescope.server.view_service import project_url

    if expires_in_hours is not None and not expires_in_hours > 0:
        raise InvalidInput("expires_in_hours must be positive (or left out: no expiry)")
    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="own")
        if view_path is not None:
            view_path = project_url(project_id, view_path)
        token = new_token()
        now = utcnow()
        row = ShareLink(
            project_id=project_id, token_hash=token_digest(token), view_path=view_path,
            created_by=current_principal().user_id, created_at=now,
            expires_at=now + timedelta(hours=expires_in_hours) if expires_in_hours else None,
        )
        s.add(row)
        s.flush()
        return _link_info(row, token)


def list_share_links(project_id: int, settings: Settings | None = None) -> list[ShareLinkInfo]:
    from prunescope.server.services import _get_or_404

    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="own")
        rows = s.scalars(
            select(ShareLink).where(ShareLink.project_id == project_id).order_by(ShareLink.id)
        ).all()
        return [_link_info(r) for r in rows]


def revoke_share_link(project_id: int, link_id: int, settings: Settings | None = None) -> None:
    """End a link: its next request, and every one after, is refused."""
    from prunescope.server.services import NotFound, _get_or_404

    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need="own")
        row = s.get(ShareLink, link_id)
        if row is None or row.project_id != project_id:
            raise NotFound(f"share link {link_id} not found in project {project_id}")
        row.revoked_at = row.revoked_at or utcnow()


def open_share_link(token: str, settings: Settings | None = None) -> Principal | None:
    with session_scope(settings) as s:
        return share_principal(s, token)


# ---------------------------------------------------------------- failed sign-ins


class LoginThrottle:
    """Counts failed sign-ins per user name and per client over the last `window_seconds`,
    in the database (`login_failures`), so every server process of a deployment sees the
    same count and a restart forgets nothing. Keys are stored as SHA-256 digests: the table
    keeps no client addresses."""

    def __init__(self, limit: int, window_seconds: float = 60.0,
                 settings: Settings | None = None) -> None:
        self.limit = limit
        self.window = window_seconds
        self.settings = settings

    @staticmethod
    def _keys(name: str, client: str) -> list[str]:
        return [hashlib.sha256(k.encode()).hexdigest() for k in (f"u:{name}", f"c:{client}")]

    def blocked(self, name: str, client: str) -> bool:
        since = utcnow() - timedelta(seconds=self.window)
        with session_scope(self.settings) as s:
            counts = s.execute(
                select(LoginFailure.key_hash, func.count())
                .where(LoginFailure.key_hash.in_(self._keys(name, client)),
                       LoginFailure.at > since)
                .group_by(LoginFailure.key_hash)).all()
        return any(n >= self.limit for _, n in counts)

    def failed(self, name: str, client: str) -> None:
        now = utcnow()
        with session_scope(self.settings) as s:
            s.add_all([LoginFailure(key_hash=k, at=now) for k in self._keys(name, client)])
            # Forget what has aged out (older than any window worth keeping).
            s.execute(delete(LoginFailure).where(
                LoginFailure.at < now - timedelta(seconds=max(self.window, 3600))))


# ---------------------------------------------------------------- the middleware


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
            await self.app(scope, receive, send)


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
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await JSONResponse({"detail": detail}, status_code=status, headers=extra)(
        scope, receive, send
    )
