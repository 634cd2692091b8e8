"""How a dashboard callback answers values it cannot use: a 422 that says so, never a 500.

Every callback's inputs and states come from the browser, so anyone can send a callback a
value of the wrong type or out of range (a number where a metric name belongs, a list where
a store held a dict, an id past the database's integers). Dash answers an exception in a
callback with 500; `refuse_unusable_input` (the app's `on_error`) turns the exceptions such
a value raises into the service layer's refusal, which the server answers 422.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DataError

from prunescope.server.errors import InvalidInput, ServiceError

log = logging.getLogger(__name__)

# What a value of the wrong type or range raises in Python, numpy, pandas and the database
# (an integer too large for SQLite raises OverflowError, for PostgreSQL DataError). Any other
# exception is a fault of the server and stays a 500.
UNUSABLE_INPUT = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                  DataError)


def refuse_unusable_input(error: Exception) -> None:
    """Re-raise a service refusal as it is (404, 403, 409, ...); an exception of
    `UNUSABLE_INPUT` as InvalidInput (422); anything else unchanged."""
    if isinstance(error, ServiceError):
        raise error
    if isinstance(error, UNUSABLE_INPUT):
        log.info("a callback refused a value it cannot use: %r", error, exc_info=error)
        raise InvalidInput("this view was sent a value it cannot use "
                           f"({type(error).__name__}); reload the page") from error
    raise error
