"""Who is asking: accounts, password and token hashing, sessions, share-link visitors and the
request's principal (what each may do is `prunescope.server.access`'s; failed sign-ins are
`prunescope.server.login_throttle`'s)."""

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

from sqlalchemy import delete, select

from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.tables import (
    ApiToken,
    ShareLink,
    User,
    UserSession,
    utcnow,
)

SESSION_COOKIE = "prunescope_session"
SHARE_COOKIE = "prunescope_share"
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


def open_share_link(token: str, settings: Settings | None = None) -> Principal | None:
    with session_scope(settings) as s:
        return share_principal(s, token)
