"""REST API routers, collected under /api/v1."""

from fastapi import APIRouter

from prunescope.server.api import (
    auth,
    checkpoints,
    datasets,
    dynamics,
    health,
    jobs,
    members,
    metrics,
    projects,
    results,
    share_links,
    uploads,
    views,
)
from prunescope.server.schemas import REFUSALS

# Every operation documents its refusals' shape (a 422 of the service layer is one sentence,
# one of FastAPI's request validation a list).
api_router = APIRouter(responses=REFUSALS)
api_router.include_router(health.router)
api_router.include_router(metrics.router)
api_router.include_router(auth.router)
api_router.include_router(projects.architectures_router)
api_router.include_router(projects.router)
api_router.include_router(checkpoints.router)
api_router.include_router(datasets.router)
api_router.include_router(dynamics.router)
api_router.include_router(jobs.router)
api_router.include_router(results.router)
api_router.include_router(uploads.router)
api_router.include_router(views.router)
api_router.include_router(members.router)
api_router.include_router(share_links.router)
