"""Who may use a resumable upload, and which stored content an upload may reuse without
receiving its bytes (the tus protocol is `prunescope.server.services.uploads`).

An upload belongs to the principal that created it: its key is kept in the upload's sidecar,
and any other principal is told the upload does not exist (the same 404 as for an unknown id,
so ids cannot be probed). The local user of an install without accounts owns every upload, as
it owns every project. A share link's visitor only reads: it may not upload at all.

Deduplication (an upload that declares the sha256 of stored content completes at once) hands
over bytes the caller never sent, so it is limited to content the caller may already
download: an artifact of a project they are a member of, any role (a viewer downloads
checkpoints, datasets and results). Whether the store holds the content elsewhere is never
asked, so the answer for a hash of someone else's weights is the answer for a hash nobody
stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from prunescope.server.access import visible_projects
from prunescope.server.auth import Principal, current_principal
from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Forbidden, NotFound
from prunescope.server.tables import AnalysisResult, Checkpoint, Dataset, Project

LOCAL_OWNER = "local"
# Every column through which a project row names content of the store (what its members
# may download); `ingest._discard` lists the same ones.
_ARTIFACT_COLUMNS = (
    (Checkpoint, Checkpoint.artifact_digest),
    (Checkpoint, Checkpoint.assets_digest),
    (Dataset, Dataset.artifact_digest),
    (AnalysisResult, AnalysisResult.artifact_digest),
)


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
    it is an artifact of a project they are a member of (the local user: any content)."""
    where = visible_projects()
    if where is None:
        return True
    with session_scope(settings) as s:
        for table, column in _ARTIFACT_COLUMNS:
            found = s.scalar(
                select(table.id)
                .join(Project, Project.id == table.project_id)
                .where(column == digest, where)
                .limit(1)
            )
            if found is not None:
                return True
    return False
