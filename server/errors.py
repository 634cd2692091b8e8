"""The service layer's errors: each says what was wrong and carries the HTTP status it maps to
(`prunescope.server.main` maps the whole family to JSON `{"detail": ...}` once)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404


class InvalidInput(ServiceError):
    status_code = 422


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Forbidden(ServiceError):
    status_code = 403


# A failed job's error_code (`JobInputError.code`, or the service error that refused its
# result) → the error a caller who waited on the job gets, with the job's message.
_BY_CODE: dict[str, type[ServiceError]] = {
    "invalid": InvalidInput, "too_large": TooLarge, "conflict": Conflict, "not_found": NotFound,
}
ERROR_CODES: dict[type[ServiceError], str] = {cls: code for code, cls in _BY_CODE.items()}


def error_for_code(code: str | None, detail: str) -> ServiceError:
    """The service error a failed job's code stands for; InvalidInput when it has none."""
    return _BY_CODE.get(code or "invalid", InvalidInput)(detail)
