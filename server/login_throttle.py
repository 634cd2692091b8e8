"""Failed sign-ins: how many a client and a user name may have, checked and counted in one
step in the database, so parallel requests and every server process see the same count.

The rule, over the last `window_seconds` (a minute by default):

- a client gets `limit` sign-ins that fail, under whatever names it tries; past that it waits,
  even with the right password;
- a user name with `limit` failures, from anywhere, is closed to every client that has itself
  failed recently, and stays open to a client that has not: a stranger's guesses cannot lock
  the account's owner out, and each address of a spread-out guesser gets one guess at the name
  before it closes to that address too.

A client is the address the server sees (with `serve`, the proxy's `X-Forwarded-For` when the
proxy is one uvicorn trusts: `FORWARDED_ALLOW_IPS`, loopback by default); an IPv6 client is its
/64, the block one subscriber usually holds, so rotating addresses within it buys nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.tables import LoginFailure, utcnow

# Rows older than this are of no use to any window worth having; each attempt removes a batch.
_KEEP = timedelta(hours=1)
_PURGE_BATCH = 500


def client_identity(host: str) -> str:
    """The part of a client's address that names it: an IPv6 address's /64, else the host."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True)
class LoginAttempt:
    """An attempt let through and already counted as a failure (rows `row_ids`), until
    `LoginThrottle.succeeded` withdraws it."""

    row_ids: tuple[int, ...]


class LoginThrottle:
    """Failed sign-ins per user name and per client, in `login_failures` (a restart forgets
    nothing). Keys are stored as SHA-256 digests: the table keeps no names or addresses.

    `attempt` is the check and the count at once: it records the attempt as a failure, counts
    under a lock on its keys and lets it through only within the limits; a right password
    then withdraws it (`succeeded`). So `limit` parallel guesses are all that get through,
    however many arrive together."""

    def __init__(self, limit: int, window_seconds: float = 60.0,
                 settings: Settings | None = None) -> None:
        self.limit = limit
        self.window = window_seconds
        self.settings = settings

    @staticmethod
    def _keys(name: str, client: str) -> tuple[str, str]:
        return tuple(hashlib.sha256(k.encode()).hexdigest()  # type: ignore[return-value]
                     for k in (f"u:{name}", f"c:{client_identity(client)}"))

    def attempt(self, name: str, client: str) -> LoginAttempt | None:
        """Count a sign-in by `client` as `name`; None when the limits refuse it."""
        name_key, client_key = self._keys(name, client)
        now = utcnow()
        with session_scope(self.settings) as s:
            _lock(s, (name_key, client_key))
            # Written before counting: on SQLite the insert takes the database's write lock,
            # so the count below sees every attempt let through before this one.
            rows = [LoginFailure(key_hash=k, at=now) for k in (name_key, client_key)]
            s.add_all(rows)
            s.flush()
            counts = dict(s.execute(
                select(LoginFailure.key_hash, func.count())
                .where(LoginFailure.key_hash.in_((name_key, client_key)),
                       LoginFailure.at > now - timedelta(seconds=self.window))
                .group_by(LoginFailure.key_hash)).all())
            by_name, by_client = counts[name_key] - 1, counts[client_key] - 1  # before this one
            if by_client >= self.limit or (by_name >= self.limit and by_client > 0):
                s.rollback()  # a refused attempt is no guess: it is not counted
                return None
            _purge(s, now - max(_KEEP, timedelta(seconds=self.window)))
            return LoginAttempt(tuple(row.id for row in rows))

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: the attempt is no failure."""
        with session_scope(self.settings) as s:
            s.execute(delete(LoginFailure).where(LoginFailure.id.in_(attempt.row_ids)))


def _lock(session: Session, keys: tuple[str, ...]) -> None:
    """Serialise attempts on the same keys until the transaction ends. PostgreSQL's READ
    COMMITTED would otherwise let two transactions each count without the other's row;
    SQLite needs nothing: its first write locks the whole database."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(keys):  # one order everywhere: no deadlock between two attempts
        lock_id = int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def _purge(session: Session, before: datetime) -> None:
    # SKIP LOCKED (PostgreSQL; SQLite has one writer anyway): a purge never waits on another's.
    old = (select(LoginFailure.id).where(LoginFailure.at < before).limit(_PURGE_BATCH)
           .with_for_update(skip_locked=True))
    session.execute(delete(LoginFailure).where(LoginFailure.id.in_(old)))
