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
