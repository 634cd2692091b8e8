"""Liveness and readiness."""

from importlib.metadata import version

from fastapi import APIRouter
from sqlalchemy import text

from prunescope.server.api.deps import SettingsDep
from prunescope.server.db import get_engine
from prunescope.server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(settings: SettingsDep) -> Health:
    with get_engine(settings).connect() as conn:
        conn.execute(text("SELECT 1"))
    return Health(
        status="ok", version=version("prunescope"), database=get_engine(settings).dialect.name
    )
