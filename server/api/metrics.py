"""Prometheus metrics of the job queue and of this server's requests."""

from fastapi import APIRouter, Request, Response

from prunescope.server.auth import current_principal
from prunescope.server.errors import Forbidden
from prunescope.server.metrics import exposition

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """Jobs by state and kind, job durations and queue waits (from the job table, so every
    server and worker counts), and this server process's request durations by route.

    The numbers are server-wide: jobs of every project, counted by state and kind, with no
    project's name or id. Any signed-in account may read them (a Prometheus scraper:
    `prunescope users add prometheus --token` and `authorization: {credentials: <token>}` in
    its scrape config); a share link may not; without accounts the route is open like every
    other. Send `Accept: application/openmetrics-text`
    for OpenMetrics.
    """
    if not current_principal().is_user:
        # The numbers cover every project on the server; a share link opens only one.
        raise Forbidden("a share link opens one project; sign in to read the server's metrics")
    body, content_type = exposition(request.app.state.metrics.registry,
                                    request.headers.get("accept"))
    return Response(body, media_type=content_type)

