"""Who may read or change a project: the request's principal (`prunescope.server.auth`) checked
against a project's members, for the API and every dashboard callback alike.

Every lookup of a project or of a row inside one passes `get_or_404`: a stranger gets the same
404 as for a missing row (no existence leak), a viewer 403 on changes. Without accounts the
principal is the local user, who owns everything.
"""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import ColumnElement, Select, false, select
from sqlalchemy.orm import Session

from prunescope.server.auth import Principal, current_principal
from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Forbidden, NotFound
from prunescope.server.schemas import MAX_ID
from prunescope.server.tables import Project, ProjectMember

ROLE_RANK = {"viewer": 1, "editor": 2, "owner": 3}
_NEEDED_ROLE = {"view": "viewer", "edit": "editor", "own": "owner"}


def project_role(session: Session, project_id: int,
                 principal: Principal | None = None) -> str | None:
    """The principal's role in a project: "owner", "editor", "viewer", or None (a stranger,
    who must not learn that the project exists)."""
    principal = principal or current_principal()
    if principal.kind == "local":
        return "owner"
    if principal.kind == "share":
        return "viewer" if project_id == principal.project_id else None
    if principal.kind == "user":
        return session.scalar(select(ProjectMember.role).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == principal.user_id
        ))
    return None


def visible_projects(principal: Principal | None = None) -> ColumnElement[bool] | None:
    """A filter on Project.id for the projects the principal may see (None: all of them)."""
    principal = principal or current_principal()
    if principal.kind == "local":
        return None
    if principal.kind == "share":
        return Project.id == principal.project_id
    if principal.kind == "user":
        return Project.id.in_(
            select(ProjectMember.project_id).where(ProjectMember.user_id == principal.user_id)
        )
    return false()


def check_project(session: Session, project_id: int, need: str, missing: str) -> str:
    """The principal's role in the project if it allows `need` ("view" | "edit" | "own");
    NotFound(`missing`) for a stranger, Forbidden for too small a role."""
    role = project_role(session, project_id)
    if role is None:
        raise NotFound(missing)
    if ROLE_RANK[role] < ROLE_RANK[_NEEDED_ROLE[need]]:
        if current_principal().kind == "share":
            raise Forbidden("a share link is read-only; sign in to change this project")
        wanted = "an editor" if need == "edit" else "the owner"
        raise Forbidden(f"you are a {role} of project {project_id}; this needs {wanted} "
                        "(ask the project's owner)")
    return role


def _is_row_id(value: Any) -> bool:
    try:
        return 1 <= operator.index(value) <= MAX_ID
    except TypeError:
        return False


def get_or_404(session: Session, table: Any, ident: int, what: str, need: str = "view") -> Any:
    """Row `ident` of `table` (a project, or a row inside one) if the principal may `need` it.
    An ident that is no row id (a dashboard callback may be sent any value) is not found."""
    if not _is_row_id(ident):
        raise NotFound(f"{what} {str(ident)[:40]} not found")
    row = session.get(table, ident)
    if row is None:
        raise NotFound(f"{what} {ident} not found")
    project_id = row.id if table is Project else getattr(row, "project_id", None)
    if project_id is not None:
        check_project(session, project_id, need, f"{what} {ident} not found")
    return row


def require_project(project_id: int, need: str, settings: Settings | None = None) -> str:
    """The principal's role in the project, if it allows `need` ("view" | "edit" | "own");
    else NotFound (stranger) or Forbidden."""
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need)
        return project_role(s, project_id) or ""


def visible(query: Select, column: Any) -> Select:
    """`query` limited to rows whose project (`column`) the principal may see."""
    where = visible_projects()
    if where is None:
        return query
    return query.where(column.in_(select(Project.id).where(where)))
