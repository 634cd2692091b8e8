"""How a dashboard callback answers values it cannot use: a 422 that says so, never a 500.

Every callback's inputs and states come from the browser, so anyone can send a callback a
value of the wrong type or out of range (a number where a metric name belongs, a list where
a store held a dict, an id past the database's integers), or a request that names no server
callback at all. Dash answers an exception with 500; `refuse_unusable_input` (the app's
`on_error`) and `refusing_unusable_requests` (around Dash's callback route) turn the
exceptions such a request raises into the service layer's refusal, which the server answers
422.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dash.exceptions import CallbackException, UnsupportedRelativePath
from sqlalchemy.exc import DataError

from prunescope.server.errors import InvalidInput, ServiceError

log = logging.getLogger(__name__)

# What a value of the wrong type or range raises in Python, numpy, pandas, Dash's page router
# and the database (an integer too large for SQLite raises OverflowError, for PostgreSQL
# DataError). Any other exception is a fault of the server and stays a 500.
UNUSABLE_INPUT = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                  DataError, UnsupportedRelativePath)


def is_unusable(error: BaseException) -> bool:
    """Whether `error` says the request was unusable, not that the server failed. Dash raises
    a bare CallbackException for a request whose inputs or outputs do not match the callback
    it names (its subclasses, e.g. a callback's invalid return value, are faults)."""
    return isinstance(error, UNUSABLE_INPUT) or type(error) is CallbackException


def unusable_request(error: BaseException) -> InvalidInput:
    """The refusal for a callback request that raised `error` (`is_unusable`)."""
    log.info("a callback request could not be used: %r", error, exc_info=error)
    return InvalidInput("this view was sent a value it cannot use "
                        f"({type(error).__name__}); reload the page")


def refuse_unusable_input(error: Exception) -> None:
    """Re-raise a service refusal as it is (404, 403, 409, ...); an exception of
    `UNUSABLE_INPUT` as InvalidInput (422); anything else unchanged."""
    if isinstance(error, ServiceError):
        raise error
    if is_unusable(error):
        raise unusable_request(error) from error
    raise error


@contextmanager
def refusing_unusable_requests() -> Iterator[None]:
    """Around Dash's callback route: a request that is no JSON object, names no server
    callback or does not match its callback's inputs and outputs is refused (422)."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as exc:
        if not is_unusable(exc):
            raise
        raise unusable_request(exc) from exc
