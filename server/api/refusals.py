"""The 422s the API answers outside its routes: a request that does not match its schema, and
a value the database cannot store (both once answered 500)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError


def _json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity as text: Python's JSON reader accepts them in a
    request, and the refusal that quotes them back must still be JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own answer (one entry per problem), encodable whatever the input was."""
    return JSONResponse(status_code=422,
                        content={"detail": _json_safe(jsonable_encoder(exc.errors()))})


async def unstorable_value(_request: Request, _exc: DataError) -> JSONResponse:
    """PostgreSQL refuses a NUL character in text and JSON, and numbers past its types; the
    request, not the server, is at fault (the session has rolled back)."""
    return JSONResponse(status_code=422, content={
        "detail": "the database cannot store a value of this request (text with a NUL "
                  "character, or a number out of range); remove it and send the request again"})


def install_refusals(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(DataError, unstorable_value)
