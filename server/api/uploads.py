"""Resumable uploads over the tus 1.0 protocol (any tus client works, e.g. tus-js-client).

POST creates an upload (`Upload-Length`, `Upload-Metadata` with `filename` and optionally
`sha256`), PATCH appends a body at `Upload-Offset`, HEAD (or GET, as JSON) tells the offset
to resume from, DELETE aborts. A finished upload becomes a checkpoint through
`POST /projects/{project_id}/checkpoints/from-upload`. An upload is its creator's: to anyone
else its id is unknown (404), and a share link's visitor may not upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from prunescope.server.api.deps import SettingsDep
from prunescope.server.errors import ServiceError
from prunescope.server.services import uploads

router = APIRouter(prefix="/uploads", tags=["uploads"])


class UploadPublic(BaseModel):
    id: str
    filename: str
    length: int
    offset: int
    complete: bool
    sha256: str | None
    expires_at: datetime


def _public(upload: uploads.UploadStatus) -> UploadPublic:
    return UploadPublic(
        id=upload.id,
        filename=upload.filename,
        length=upload.length,
        offset=upload.offset,
        complete=upload.complete,
        sha256=upload.sha256,
        expires_at=datetime.fromtimestamp(upload.expires_at, timezone.utc),
    )


def _tus_headers(upload: uploads.UploadStatus | None = None) -> dict[str, str]:
    headers = {"Tus-Resumable": uploads.TUS_VERSION, "Cache-Control": "no-store"}
    if upload is not None:
        headers["Upload-Offset"] = str(upload.offset)
        headers["Upload-Length"] = str(upload.length)
        headers["Upload-Expires"] = formatdate(upload.expires_at, usegmt=True)
    return headers


def _error(exc: ServiceError) -> JSONResponse:
    headers = _tus_headers()
    if isinstance(exc, uploads.OffsetMismatch):
        headers["Upload-Offset"] = str(exc.offset)
    body = {"detail": exc.detail}
    return JSONResponse(status_code=exc.status_code, content=body, headers=headers)


def _check_version(tus_resumable: str | None) -> None:
    if tus_resumable is not None and tus_resumable != uploads.TUS_VERSION:
        raise _VersionMismatch(
            f"Tus-Resumable {tus_resumable!r} is not supported; this server speaks "
            f"{uploads.TUS_VERSION}"
        )


class _VersionMismatch(ServiceError):
    status_code = 412


TusVersion = Annotated[str | None, Header(description="tus protocol version, 1.0.0")]


@router.options("", status_code=status.HTTP_204_NO_CONTENT, include_in_schema=False)
def describe_server(settings: SettingsDep) -> Response:
    """tus discovery: the protocol version, extensions and size limit."""
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            **_tus_headers(),
            "Tus-Version": uploads.TUS_VERSION,
            "Tus-Extension": uploads.TUS_EXTENSIONS,
            "Tus-Max-Size": str(settings.max_upload_bytes),
        },
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UploadPublic)
def create_upload(
    request: Request,
    settings: SettingsDep,
    upload_length: Annotated[int | None, Header(description="the file's size in bytes")] = None,
    upload_metadata: Annotated[
        str | None,
        Header(description="tus metadata: `filename <base64>`, optionally `sha256 <base64(hex)>`"),
    ] = None,
    tus_resumable: TusVersion = None,
) -> Response:
    """Create an upload. With a `sha256` of a file stored in one of the caller's projects, it is
    complete at once (the response's `Upload-Offset` equals `Upload-Length`) and no byte needs
    to be sent; any other content is sent, whether or not the server holds it elsewhere."""
    try:
        _check_version(tus_resumable)
        if upload_length is None:
            raise ServiceError(
                "Upload-Length header required: the size of the file in bytes "
                "(deferred lengths are not supported)"
            )
        metadata = uploads.parse_metadata(upload_metadata)
        upload = uploads.create_upload(
            settings,
            length=upload_length,
            filename=metadata.get("filename") or metadata.get("name"),
            sha256=metadata.get("sha256"),
            metadata=metadata,
        )
    except ServiceError as exc:
        return _error(exc)
    location = request.url_for("upload_offset", upload_id=upload.id).path
    return JSONResponse(
        status_code=status.HTTP_201_CREATED,
        content=_public(upload).model_dump(mode="json"),
        headers={**_tus_headers(upload), "Location": location},
    )


@router.head("/{upload_id}", status_code=status.HTTP_200_OK)
def upload_offset(upload_id: str, settings: SettingsDep, tus_resumable: TusVersion = None):  # noqa: ANN201
    """The offset to resume from (`Upload-Offset`) and the declared `Upload-Length`."""
    try:
        _check_version(tus_resumable)
        upload = uploads.upload_status(settings, upload_id)
    except ServiceError as exc:
        return _error(exc)
    headers = _tus_headers(upload)
    headers["Upload-Metadata"] = uploads.encode_metadata({"filename": upload.filename})
    return Response(status_code=status.HTTP_200_OK, headers=headers)


@router.get("/{upload_id}", response_model=UploadPublic)
def get_upload(upload_id: str, settings: SettingsDep) -> UploadPublic:
    """The same as HEAD, as JSON."""
    return _public(uploads.upload_status(settings, upload_id))


async def _body_until_disconnect(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        # What arrived is kept; the client asks HEAD for the offset and sends the rest.
        return


@router.patch("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
async def append_to_upload(  # noqa: ANN201
    upload_id: str,
    request: Request,
    settings: SettingsDep,
    upload_offset: Annotated[int, Header(ge=0, description="where this body starts")],
    content_type: Annotated[str | None, Header()] = None,
    content_length: Annotated[int | None, Header(ge=0)] = None,
    tus_resumable: TusVersion = None,
):
    """Append the body at `Upload-Offset` (Content-Type `application/offset+octet-stream`).

    The body is streamed to disk as it arrives. 409 (with the current `Upload-Offset`) when
    the offset is wrong, 413 beyond the declared length, 423 while another request writes.
    """
    try:
        _check_version(tus_resumable)
        if content_type != "application/offset+octet-stream":
            raise _UnsupportedBody(
                "a chunk is sent with Content-Type: application/offset+octet-stream"
            )
        upload = await uploads.append_chunk(
            settings,
            upload_id,
            upload_offset,
            _body_until_disconnect(request),
            content_length=content_length,
        )
    except ServiceError as exc:
        return _error(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_tus_headers(upload))


class _UnsupportedBody(ServiceError):
    status_code = 415


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
async def abort_upload(upload_id: str, settings: SettingsDep, tus_resumable: TusVersion = None):  # noqa: ANN201
    """Abort an upload and discard the bytes received (tus termination)."""
    try:
        _check_version(tus_resumable)
        await run_in_threadpool(uploads.abort_upload, settings, upload_id)
    except ServiceError as exc:
        return _error(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_tus_headers())
