"""Who else may open a project: its members (viewers, editors, the owner) and its read-only
share links (the link's token and its visitors are `prunescope.server.auth`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from prunescope.server.access import get_or_404
from prunescope.server.auth import current_principal, new_token, token_digest
from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, Forbidden, InvalidInput, NotFound
from prunescope.server.services import views
from prunescope.server.tables import Project, ProjectMember, ShareLink, User, utcnow


@dataclass(frozen=True)
class Member:
    name: str
    role: str


def _user_by_name(session: Any, name: str) -> User:

    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}; an administrator adds them with "
                       "`prunescope users add`")
    return user


def list_members(project_id: int, settings: Settings | None = None) -> list[Member]:
    """The project's owner, editors and viewers (any member may ask; a share link's visitor,
    who may be anyone holding the link, may not learn who they are)."""

    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project")
        if current_principal().kind == "share":
            raise Forbidden("a share link does not show who the project's members are; sign "
                            "in as a member to see them")
        rows = s.execute(
            select(User.name, ProjectMember.role)
            .join(ProjectMember, ProjectMember.user_id == User.id)
            .where(ProjectMember.project_id == project_id)
            .order_by(ProjectMember.id)
        ).all()
        return [Member(name, role) for name, role in rows]


def set_member(project_id: int, name: str, role: str,
               settings: Settings | None = None) -> Member:
    """Let a user into the project as "viewer" or "editor" (or change their role); owner only."""

    if role not in ("viewer", "editor"):
        raise InvalidInput(f"role must be 'viewer' or 'editor', got {role!r}")
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        row = s.scalar(select(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id))
        if row is not None and row.role == "owner":
            raise Conflict(f"{name} owns project {project_id}; an owner stays an owner")
        if row is None:
            row = ProjectMember(project_id=project_id, user_id=user.id, role=role)
            s.add(row)
        row.role = role
        return Member(user.name, role)


def remove_member(project_id: int, name: str, settings: Settings | None = None) -> None:
    """Take a user's access to the project away (effective on their next request)."""

    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        row = s.scalar(select(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user.id))
        if row is None:
            raise NotFound(f"{name} is not a member of project {project_id}")
        if row.role == "owner":
            raise Conflict("the owner cannot be removed; `prunescope projects owner` hands "
                           "the project to someone else")
        s.delete(row)


def set_owner(project_id: int, name: str, settings: Settings | None = None) -> None:
    """Make `name` the project's owner (the previous owner stays, as an editor). For
    projects made before accounts existed, which have no owner yet."""

    with session_scope(settings) as s:
        project = get_or_404(s, Project, project_id, "project", need="own")
        user = _user_by_name(s, name)
        key = f"u{user.id}"
        clash = s.scalar(select(Project.id).where(Project.owner_key == key,
                                                  Project.name == project.name,
                                                  Project.id != project_id))
        if clash is not None:
            raise Conflict(f"{name} already has a project named {project.name!r} (id {clash}); "
                           "rename one of them first")
        project.owner_key = key
        for row in s.scalars(select(ProjectMember).where(
                ProjectMember.project_id == project_id)):
            if row.user_id == user.id:
                s.delete(row)
            elif row.role == "owner":
                row.role = "editor"
        s.flush()
        s.add(ProjectMember(project_id=project_id, user_id=user.id, role="owner"))


# ---------------------------------------------------------------- share links


@dataclass(frozen=True)
class ShareLinkInfo:
    id: int
    project_id: int
    view_path: str | None
    created_at: Any
    expires_at: Any
    revoked: bool
    token: str | None = None  # only when just created: it is not stored


def _link_info(row: ShareLink, token: str | None = None) -> ShareLinkInfo:
    return ShareLinkInfo(row.id, row.project_id, row.view_path, row.created_at, row.expires_at,
                         row.revoked_at is not None, token)


def create_share_link(
    project_id: int,
    view_path: str | None = None,
    expires_in_hours: float | None = None,
    settings: Settings | None = None,
) -> ShareLinkInfo:
    """A new read-only link to the project, or to the one view `view_path` (a page of the
    project, as for bookmarks); the owner only. The token (128+ random bits) is returned
    once and stored hashed."""

    if expires_in_hours is not None and not expires_in_hours > 0:
        raise InvalidInput("expires_in_hours must be positive (or left out: no expiry)")
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="own")
        if view_path is not None:
            view_path = views.project_url(project_id, view_path)
        token = new_token()
        now = utcnow()
        row = ShareLink(
            project_id=project_id, token_hash=token_digest(token), view_path=view_path,
            created_by=current_principal().user_id, created_at=now,
            expires_at=now + timedelta(hours=expires_in_hours) if expires_in_hours else None,
        )
        s.add(row)
        s.flush()
        return _link_info(row, token)


def list_share_links(project_id: int, settings: Settings | None = None) -> list[ShareLinkInfo]:

    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="own")
        rows = s.scalars(
            select(ShareLink).where(ShareLink.project_id == project_id).order_by(ShareLink.id)
        ).all()
        return [_link_info(r) for r in rows]


def revoke_share_link(project_id: int, link_id: int, settings: Settings | None = None) -> None:
    """End a link: its next request, and every one after, is refused."""

    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="own")
        row = s.get(ShareLink, link_id)
        if row is None or row.project_id != project_id:
            raise NotFound(f"share link {link_id} not found in project {project_id}")
        row.revoked_at = row.revoked_at or utcnow()
