"""Projects and the architectures they can use."""

from typing import Any

from fastapi import APIRouter, status

from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.schemas import ProjectCreate, ProjectPublic, ProjectsPublic
from prunescope.server.services import projects

router = APIRouter(prefix="/projects", tags=["projects"])
architectures_router = APIRouter(prefix="/architectures", tags=["projects"])


@architectures_router.get("")
def list_architectures() -> dict[str, dict[str, Any]]:
    """Registry architectures with their default configuration."""
    return projects.list_architectures()


@router.get("", response_model=ProjectsPublic)
def list_projects(settings: SettingsDep) -> ProjectsPublic:
    data = projects.list_projects(settings)
    return ProjectsPublic(data=data, count=len(data))


@router.post("", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, settings: SettingsDep) -> ProjectPublic:
    return projects.create_project(body, settings)


@router.get("/{project_id}", response_model=ProjectPublic)
def get_project(project_id: IdPath, settings: SettingsDep) -> ProjectPublic:
    return projects.get_project(project_id, settings)
