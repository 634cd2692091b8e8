"""Who may use a resumable upload, and which stored content an upload may reuse without
receiving its bytes (the tus protocol is `prunescope.server.services.uploads`).

An upload belongs to the principal that created it: its key is kept in the upload's sidecar,
and any other principal is told the upload does not exist (the same 404 as for an unknown id,
so ids cannot be probed). The local user of an install without accounts owns every upload, as
it owns every project. A share link's visitor only reads: it may not upload at all.

Deduplication (an upload that declares the sha256 of stored content completes at once) hands
over bytes the caller never sent, so it is limited to content the caller may already
download: a checkpoint's or dataset's file in a project they are a member of, any role (a
viewer downloads both). Whether the store holds the content elsewhere is never
asked, so the answer for a hash of someone else's weights is the answer for a hash nobody
stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, exists, or_, select

from prunescope.server.auth import Principal, current_principal
from prunescope.server.config import Settings
from prunescope.server.db import get_engine
from prunescope.server.errors import Forbidden, NotFound
from prunescope.server.tables import Checkpoint, Dataset, ProjectMember

LOCAL_OWNER = "local"
# The columns through which a project row names content a member may download and might
# upload again: checkpoints (weights, Hugging Face assets) and datasets. Analysis results
# are left out: nobody uploads them, and their table is the one that grows.
_ARTIFACT_COLUMNS = (
    (Checkpoint, Checkpoint.artifact_digest),
    (Checkpoint, Checkpoint.assets_digest),
    (Dataset, Dataset.artifact_digest),
)
# Built once (creating uploads is a hot path): is `digest` named by a row of a project that
# `user_id` is a member of, any role? Membership is what `access.visible_projects` allows a
# user; share links and nobody never get here (they may not upload).
_MEMBER_OF = select(ProjectMember.project_id).where(
    ProjectMember.user_id == bindparam("user_id"))
_HELD = select(or_(*(
    exists().where(table.project_id.in_(_MEMBER_OF), column == bindparam("digest"))
    for table, column in _ARTIFACT_COLUMNS
)))


def uploader_key(principal: Principal | None = None) -> str:
    """The key an upload created by the principal is stored under; Forbidden for a share
    link's visitor or nobody, who may not upload."""
    principal = principal or current_principal()
    if principal.kind == "local":
        return LOCAL_OWNER
    if principal.kind == "user" and principal.user_id is not None:
        return f"user:{principal.user_id}"
    if principal.kind == "share":
        raise Forbidden("a share link is read-only and cannot upload; sign in to add files")
    raise Forbidden("sign in to upload files")


def check_owner(record: dict[str, Any], missing: NotFound) -> None:
    """Raise `missing` (the unknown id's 404) unless the principal created the upload."""
    key = uploader_key()
    if key != LOCAL_OWNER and record.get("owner") != key:
        raise missing


def may_reuse(settings: Settings, digest: str) -> bool:
    """Whether the principal may have stored content `digest` without sending its bytes:
    it is a checkpoint's or dataset's file in a project they are a member of (the local
    user: any content). One query, the same work whether or not anyone stored the digest."""
    principal = current_principal()
    if principal.kind == "local":
        return True
    if principal.kind != "user":
        return False
    # A bare connection, not an ORM session: a read of one row, on the hot path of creation.
    with get_engine(settings).connect() as connection:
        return bool(connection.scalar(_HELD, {"user_id": principal.user_id, "digest": digest}))
