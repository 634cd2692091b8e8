"""Projects: creating one (its architecture checked, its builtin dataset added, the creator its
owner), finding and listing those the caller may see, and the architectures and pruning
methods they can use."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from prunescope.models import architectures
from prunescope.server.access import get_or_404, visible
from prunescope.server.auth import Principal, current_principal
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, Forbidden, InvalidInput
from prunescope.server.schemas import ProjectCreate, ProjectPublic
from prunescope.server.tables import Dataset, Project, ProjectMember
from prunescope.workers import jobs as job_declarations


def list_architectures() -> dict[str, dict[str, Any]]:
    """Architecture name → its default configuration, from the torch-free catalogue."""
    return {name: architectures.default_config(name)
            for name in architectures.list_architectures()}


def list_pruning_methods() -> dict[str, str]:
    """Method name → its one-line description (scoring rule and paper), from the torch-free
    catalogue."""
    return job_declarations.pruning_methods()


def _resolve_architecture(name: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The project's whole configuration (missing keys take their defaults), checked from the
    configuration alone — the model is never built here: InvalidInput (422) for an unknown
    architecture, unknown keys, bad values, a model of more parameters than
    PRUNESCOPE_MAX_MODEL_PARAMETERS, a size past its upper bound, or a Hugging Face config
    that names anything to download."""
    names = architectures.list_architectures()
    if name not in names:
        raise InvalidInput(f"unknown architecture {name!r}; choose one of {', '.join(names)}")
    full = {**architectures.default_config(name), **config}
    if name == architectures.HF_ARCHITECTURE and not full:
        return full  # the first uploaded model folder provides config.json
    try:
        architectures.build_config(name, **full)
        architectures.check_model_size(name, full, settings.max_model_parameters)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid configuration for {name}: {exc}") from exc
    return full


def list_projects(settings: Settings | None = None) -> list[ProjectPublic]:
    with session_scope(settings) as s:
        rows = s.scalars(visible(select(Project).order_by(Project.id), Project.id)).all()
        return [ProjectPublic.model_validate(p) for p in rows]


def get_project(project_id: int, settings: Settings | None = None) -> ProjectPublic:
    with session_scope(settings) as s:
        return ProjectPublic.model_validate(get_or_404(s, Project, project_id, "project"))


def _owner_key(principal: Principal) -> str:
    """The key names are unique under: the signed-in user's, or "" without accounts."""
    return f"u{principal.user_id}" if principal.user_id is not None else ""


def find_project(name: str, settings: Settings | None = None) -> ProjectPublic | None:
    """The project of that name the caller can see: their own first; Conflict when several
    others' projects they can see share the name (use the id then); None when none does."""
    mine = _owner_key(current_principal())
    with session_scope(settings) as s:
        rows = s.scalars(visible(select(Project).where(Project.name == name), Project.id)
                         .order_by(Project.id)).all()
        own = [r for r in rows if r.owner_key == mine]
        if len(own) == 1 or len(rows) == 1:
            return ProjectPublic.model_validate((own or rows)[0])
        if rows:
            raise Conflict(f"several projects you can see are named {name!r} (ids "
                           f"{', '.join(str(r.id) for r in rows)}); name one by its id")
        return None


def create_project(body: ProjectCreate, settings: Settings | None = None) -> ProjectPublic:
    principal = current_principal()
    if not principal.is_user:
        raise Forbidden("a share link is read-only; sign in to create projects")
    config = _resolve_architecture(body.architecture, body.architecture_config,
                                   settings or get_settings())
    owner_key = _owner_key(principal)
    with session_scope(settings) as s:
        # Only the caller's own names can clash: another's private project stays unknown.
        if s.scalar(select(Project.id).where(Project.owner_key == owner_key,
                                             Project.name == body.name)) is not None:
            raise Conflict(f"you already have a project named {body.name!r}; choose another "
                           "name")
        project = Project(
            name=body.name,
            owner_key=owner_key,
            description=body.description,
            architecture=body.architecture,
            architecture_config=config,
        )
        project.datasets.append(
            Dataset(name=body.dataset.builtin, source="builtin", builtin_name=body.dataset.builtin)
        )
        s.add(project)
        try:
            s.flush()
        except IntegrityError:  # the same name created at the same moment
            raise Conflict(f"you already have a project named {body.name!r}; choose another "
                           "name") from None
        if principal.user_id is not None:  # access check: the creator owns it
            s.add(ProjectMember(project_id=project.id, user_id=principal.user_id, role="owner"))
        return ProjectPublic.model_validate(project)
