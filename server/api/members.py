"""Project members: who may read (viewer) or change (editor) a project besides its owner."""

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.services import members

router = APIRouter(prefix="/projects/{project_id}/members", tags=["members"])


class MemberCreate(BaseModel):
    name: str = Field(description="a user added with `prunescope users add`")
    role: Literal["viewer", "editor"] = "viewer"


class MemberPublic(BaseModel):
    name: str
    role: str


class MembersPublic(BaseModel):
    data: list[MemberPublic]
    count: int


@router.get("", response_model=MembersPublic)
def list_members(project_id: IdPath, settings: SettingsDep) -> MembersPublic:
    data = [MemberPublic(name=m.name, role=m.role)
            for m in members.list_members(project_id, settings)]
    return MembersPublic(data=data, count=len(data))


@router.post("", response_model=MemberPublic, status_code=201)
def add_member(project_id: IdPath, body: MemberCreate, settings: SettingsDep) -> MemberPublic:
    """Let a user in as viewer or editor, or change their role (the owner only)."""
    member = members.set_member(project_id, body.name, body.role, settings)
    return MemberPublic(name=member.name, role=member.role)


@router.delete("/{name}", status_code=204)
def remove_member(project_id: IdPath, name: str, settings: SettingsDep) -> Response:
    """Take a member's access away; it ends with their next request (the owner only)."""
    members.remove_member(project_id, name, settings)
    return Response(status_code=204)
