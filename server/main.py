"""The ASGI app: REST API under /api/v1 and the Dash dashboard at / on one FastAPI server.

The one composition root: the only server module that imports the dashboard (its pages and
the project report's API route, which the dashboard owns)."""

from __future__ import annotations

import errno

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from prunescope.dashboard.report import router as report_router
from prunescope.server.api import api_router, share_links
from prunescope.server.api import auth as auth_routes
from prunescope.server.api.refusals import install_refusals
from prunescope.server.auth_middleware import AuthMiddleware
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import upgrade_database
from prunescope.server.errors import ServiceError
from prunescope.server.login_throttle import LoginThrottle
from prunescope.server.metrics import RequestMetrics, create_metrics
from prunescope.server.request_guards import BodyLimit, HostAndFraming
from prunescope.server.resilience import DatabaseUnavailableMiddleware
from prunescope.server.storage import ArtifactNotFound, StorageError

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, dashboard: bool = True) -> FastAPI:
    settings = settings or get_settings()
    upgrade_database(settings)
    app = FastAPI(
        title="PruneScope",
        summary="What pruning changes inside a neural network.",
        version="0.1.0",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})

    install_refusals(app)

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError) -> JSONResponse:
        # A full store is the operator's to fix (507); an unreachable one may come back (503).
        full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        return JSONResponse(
            status_code=507 if full else 503,
            content={"detail": f"the artifact store refused the request: {exc}"},
            headers=None if full else {"Retry-After": "30"},
        )

    @app.exception_handler(ArtifactNotFound)
    async def _artifact_missing(_request: Request, exc: ArtifactNotFound) -> JSONResponse:
        return JSONResponse(
            status_code=404, content={"detail": f"stored file {exc.args[0]} is missing"}
        )

    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(report_router, prefix=API_PREFIX)
    app.include_router(auth_routes.pages_router)
    app.include_router(share_links.pages_router)
    app.state.login_throttle = LoginThrottle(settings.login_failures_per_minute,
                                             settings=settings)
    app.state.metrics = create_metrics(settings)

    # Registered before the dashboard's catch-all, so unknown API paths answer JSON, not HTML.
    @app.api_route(
        API_PREFIX + "/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def _unknown_api_path(path: str) -> JSONResponse:
        return JSONResponse(
            status_code=404, content={"detail": f"no API route {API_PREFIX}/{path}; see /docs"}
        )

    if dashboard:
        from prunescope.dashboard.app import create_dash  # deferred: Dash, for API-only apps

        app.state.dash = create_dash(app)
    # Outside Dash's own middleware, which reads the body of every callback: each body is
    # bounded by its route, by the principal the sign-in check has set.
    app.add_middleware(BodyLimit, settings=settings)
    # Added late, so it runs early: every request knows its principal before anything else.
    app.add_middleware(AuthMiddleware, settings=settings)
    # Around the sign-in check: a database outage in any request answers 503.
    app.add_middleware(DatabaseUnavailableMiddleware)
    # Before anything reads the request: a host name this server does not answer to is
    # refused, and no answer may be framed by another site.
    app.add_middleware(HostAndFraming, settings=settings)
    # Around even that one, so every request is timed, those it answers with 503 too.
    app.add_middleware(RequestMetrics, histogram=app.state.metrics.http_request_duration)
    return app


def app_from_environment() -> FastAPI:
    """The app as the environment configures it: what each of several server processes
    runs (`prunescope serve --processes N`, uvicorn's factory)."""
    return create_app(get_settings())
