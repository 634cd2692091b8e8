"""Share links: read-only links to a project or one of its views, for people without an
account; `/s/<token>` opens one."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from prunescope.server import auth
from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.schemas import UtcDatetime
from prunescope.server.services import members
from prunescope.server.services.views import MAX_BOOKMARK_URL_CHARS

# A link meant to last longer needs no expiry; a larger number would overflow the date.
MAX_EXPIRY_HOURS = 100 * 366 * 24

router = APIRouter(prefix="/projects/{project_id}/share-links", tags=["share links"])
pages_router = APIRouter(include_in_schema=False)


class ShareLinkCreate(BaseModel):
    view_path: str | None = Field(
        default=None,
        max_length=MAX_BOOKMARK_URL_CHARS,
        description="one page of the project (path and query, e.g. "
        "`/projects/3/geometry?checkpoint=dense`); left out: every page of the project",
    )
    expires_in_hours: float | None = Field(
        default=None, gt=0, le=MAX_EXPIRY_HOURS, allow_inf_nan=False,
        description="no expiry if left out; at most about a century",
    )


class ShareLinkPublic(BaseModel):
    id: int
    project_id: int
    view_path: str | None
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    revoked: bool


class ShareLinkCreated(ShareLinkPublic):
    url: str = Field(description="the link to hand out; shown only now")


class ShareLinksPublic(BaseModel):
    data: list[ShareLinkPublic]
    count: int


def _public(link: members.ShareLinkInfo) -> dict:
    return {k: getattr(link, k) for k in ShareLinkPublic.model_fields}


@router.post("", response_model=ShareLinkCreated, status_code=201)
def create_share_link(
    project_id: IdPath, body: ShareLinkCreate, request: Request, settings: SettingsDep
) -> ShareLinkCreated:
    """A read-only link for people without an account (the owner only). Keep the URL: only
    a hash of its token is stored."""
    link = members.create_share_link(project_id, body.view_path, body.expires_in_hours, settings)
    url = str(request.base_url).rstrip("/") + f"/s/{link.token}"
    return ShareLinkCreated(**_public(link), url=url)


@router.get("", response_model=ShareLinksPublic)
def list_share_links(project_id: IdPath, settings: SettingsDep) -> ShareLinksPublic:
    data = [ShareLinkPublic(**_public(link))
            for link in members.list_share_links(project_id, settings)]
    return ShareLinksPublic(data=data, count=len(data))


@router.delete("/{link_id}", status_code=204)
def revoke_share_link(project_id: IdPath, link_id: IdPath, settings: SettingsDep) -> Response:
    """Revoke a link; whoever holds it is refused from their next request on."""
    members.revoke_share_link(project_id, link_id, settings)
    return Response(status_code=204)


@pages_router.get("/s/{token}")
async def open_share_link(token: str, request: Request, settings: SettingsDep) -> Response:
    """Remember the link in a cookie and show what it shares."""
    principal = await run_in_threadpool(auth.open_share_link, token, settings)
    if principal is None:
        return JSONResponse(
            {"detail": "this share link is unknown, expired or revoked; ask for a new one"},
            status_code=404,
        )
    response = RedirectResponse(
        principal.view_path or f"/projects/{principal.project_id}", status_code=303
    )
    response.set_cookie(
        auth.SHARE_COOKIE, token, path="/", httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.headers["Referrer-Policy"] = "no-referrer"  # keep the token out of referrers
    return response
