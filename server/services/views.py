"""Views that survive a link: short ids for long view state, and named bookmarks of a
project's pages."""

from __future__ import annotations

import hashlib
import re
import secrets
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from prunescope.server.access import get_or_404
from prunescope.server.config import Settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, InvalidInput, NotFound
from prunescope.server.schemas import UtcDatetime
from prunescope.server.tables import Bookmark, Project, ViewState

# 12 random bytes: 96 bits, 16 URL-safe characters; ids can be neither guessed nor enumerated.
SHORT_ID_BYTES = 12
_SHORT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# The bitset of a million examples, base64-encoded, stays well under this.
MAX_VIEW_STATE_CHARS = 1_000_000
MAX_BOOKMARK_URL_CHARS = 4096
MAX_BOOKMARK_NAME_CHARS = 200


class BookmarkCreate(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_BOOKMARK_NAME_CHARS)
    url: str = Field(
        min_length=1,
        max_length=MAX_BOOKMARK_URL_CHARS,
        description="Path and query of a dashboard page of the project, e.g. "
        "/projects/3/geometry?checkpoint=dense&sel=3-7",
    )


class BookmarkPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    name: str
    url: str
    created_at: UtcDatetime


class BookmarksPublic(BaseModel):
    data: list[BookmarkPublic]
    count: int


class ViewStatePublic(BaseModel):
    id: str
    text: str


# ---------------------------------------------------------------- long view state


def store_view_state(text: str, settings: Settings | None = None) -> str:
    """A short URL-safe id for `text` (e.g. a long encoded selection); the same text always
    gets the same id, so storing a view twice adds nothing."""
    if not text:
        raise InvalidInput("nothing to store: the view state is empty")
    if len(text) > MAX_VIEW_STATE_CHARS:
        raise InvalidInput(
            f"view state of {len(text)} characters exceeds {MAX_VIEW_STATE_CHARS}; "
            "select fewer examples"
        )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    for _ in range(3):
        with session_scope(settings) as s:
            found = s.scalar(select(ViewState.id).where(ViewState.digest == digest))
        if found is not None:
            return found
        short_id = secrets.token_urlsafe(SHORT_ID_BYTES)
        try:
            with session_scope(settings) as s:
                s.add(ViewState(id=short_id, digest=digest, text=text))
        except IntegrityError:
            continue  # another request stored the same text meanwhile: the lookup finds it
        return short_id
    raise Conflict("could not store the view state; try again")


def load_view_state(short_id: str, settings: Settings | None = None) -> str:
    """The text `store_view_state` kept under `short_id`."""
    missing = NotFound(
        f"view {short_id!r} not found; the link was made on another PruneScope server, "
        "or this server's database was reset"
    )
    if not _SHORT_ID.fullmatch(short_id or ""):
        raise missing
    with session_scope(settings) as s:
        row = s.get(ViewState, short_id)
        if row is None:
            raise missing
        return row.text


# ---------------------------------------------------------------- bookmarks


def project_url(project_id: int, url: str) -> str:
    """`url` stripped, if it is the path (and query) of a page of project `project_id`;
    otherwise InvalidInput saying why. Keeps bookmarks from leading anywhere else: no other
    site, no other project, no scripts, no climbing out with '..'."""
    home = f"/projects/{project_id}"
    hint = f"give the path of a page of this project, starting with {home}/"
    text = (url or "").strip()
    if not text:
        raise InvalidInput(f"the bookmark has no link; {hint}")
    if len(text) > MAX_BOOKMARK_URL_CHARS:
        raise InvalidInput(f"a link of {len(text)} characters is too long for a bookmark")
    if any(ch.isspace() or not ch.isprintable() or ch == "\\" for ch in text):
        raise InvalidInput(
            "the link contains spaces, control characters or backslashes; "
            "copy it from the browser's address bar"
        )
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        raise InvalidInput(f"bookmarks stay inside PruneScope: {hint} (got {text[:80]!r})")
    if parts.path != home and not parts.path.startswith(home + "/"):
        raise InvalidInput(f"{parts.path[:80]!r} is not a page of project {project_id}; {hint}")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise InvalidInput(f"the link may not contain '.' or '..' path segments; {hint}")
    return text


def add_bookmark(
    project_id: int, name: str, url: str, settings: Settings | None = None
) -> BookmarkPublic:
    """Save `url` (a page of the project, see `project_url`) under `name`, unique per project."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("give the bookmark a name")
    if len(name) > MAX_BOOKMARK_NAME_CHARS:
        raise InvalidInput(f"bookmark names have at most {MAX_BOOKMARK_NAME_CHARS} characters")
    duplicate = Conflict(
        f"project {project_id} already has a bookmark named {name!r}; "
        "choose another name or delete that bookmark"
    )
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project", need="edit")  # access check
        url = project_url(project_id, url)
        taken = select(Bookmark.id).where(
            Bookmark.project_id == project_id, Bookmark.name == name
        )
        if s.scalar(taken) is not None:
            raise duplicate
        row = Bookmark(project_id=project_id, name=name, url=url)
        s.add(row)
        try:
            s.flush()
        except IntegrityError:
            raise duplicate from None
        return BookmarkPublic.model_validate(row)


def list_bookmarks(project_id: int, settings: Settings | None = None) -> list[BookmarkPublic]:
    with session_scope(settings) as s:
        get_or_404(s, Project, project_id, "project")
        rows = s.scalars(
            select(Bookmark).where(Bookmark.project_id == project_id).order_by(Bookmark.id)
        ).all()
        return [BookmarkPublic.model_validate(r) for r in rows]


def delete_bookmark(bookmark_id: int, settings: Settings | None = None) -> None:
    with session_scope(settings) as s:
        s.delete(get_or_404(s, Bookmark, bookmark_id, "bookmark", need="edit"))  # access check
