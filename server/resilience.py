"""Riding out a database outage: the API answers 503 with a retry time, workers back off and
retry, and no job's state is decided while its database cannot be reached."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a client is told to wait before retrying, in seconds (the Retry-After header).
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached right now" (refused or cut
    connections, a server shutting down, SQLite's lock timeout), not for bad statements."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class DatabaseUnavailableMiddleware:
    """Turns a database outage anywhere in a request (sign-in lookups included) into
    `503 {"detail": ...}` with `Retry-After`, instead of a 500 and a stack trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or not database_unavailable(exc):
                raise
            log.warning("database unavailable during %s %s: %s", scope.get("method"),
                        scope.get("path"), exc.__class__.__name__)
            body = json.dumps({"detail": "the database is unavailable; retry in "
                               f"{RETRY_AFTER_SECONDS} seconds"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            ]})
            await send({"type": "http.response.body", "body": body})


class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in
    [0, min(cap, first · 2ⁿ)], so many workers that lost the database together do not
    return together."""

    def __init__(self, first: float = 0.5, cap: float = 10.0,
                 rng: random.Random | None = None) -> None:
        self.first, self.cap = first, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        bound = min(self.cap, self.first * 2 ** self.failures)
        self.failures += 1
        return self._rng.uniform(0.0, bound)

    def reset(self) -> None:
        self.failures = 0


def retry_on_outage(action: Callable[[], T], *, what: str, give_up_after: float,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> T:
    """Run `action`, retrying with `Backoff` while the database is unavailable, for at most
    `give_up_after` seconds; other errors, and the last outage error, propagate."""
    backoff = Backoff()
    deadline = clock() + give_up_after
    while True:
        try:
            return action()
        except Exception as exc:
            if not database_unavailable(exc) or clock() >= deadline:
                raise
            delay = min(backoff.next_delay(), max(0.0, deadline - clock()))
            log.warning("database unavailable while %s; retrying in %.1f s", what, delay)
            sleep(delay)
