"""Checkpoints: multipart upload, listing, statistics and download."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from prunescope.server.access import require_project
from prunescope.server.api.deps import ACCEPTED, IdPath, SettingsDep, WaitDep, ingest_answer
from prunescope.server.schemas import (
    MAX_NAME_CHARS,
    CheckpointDetail,
    CheckpointPublic,
    CheckpointsPublic,
)
from prunescope.server.services import checkpoints
from prunescope.server.storage import CHUNK_BYTES

router = APIRouter(tags=["checkpoints"])


@router.get("/projects/{project_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(project_id: IdPath, settings: SettingsDep) -> CheckpointsPublic:
    data = checkpoints.list_checkpoints(project_id, settings)
    return CheckpointsPublic(data=data, count=len(data))


@router.post(
    "/projects/{project_id}/checkpoints",
    response_model=CheckpointPublic,
    status_code=status.HTTP_201_CREATED,
    responses=ACCEPTED,
)
async def upload_checkpoint(
    project_id: IdPath,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="safetensors or torch state_dict")],
    name: Annotated[str | None, Form(max_length=MAX_NAME_CHARS)] = None,
    role: Annotated[str | None, Form(max_length=MAX_NAME_CHARS,
                                     description="'dense' or 'pruned'")] = None,
    method: Annotated[str | None, Form(max_length=MAX_NAME_CHARS)] = None,
    target_sparsity: Annotated[float | None, Form()] = None,
    wait: WaitDep = False,
) -> CheckpointPublic:
    """Upload a checkpoint for the project's architecture; a worker validates it (loads it
    safely, matches the architecture, measures sparsity) before it is kept."""

    def chunks():  # noqa: ANN202
        file.file.seek(0)
        while chunk := file.file.read(CHUNK_BYTES):
            yield chunk

    job = await run_in_threadpool(
        checkpoints.add_checkpoint,
        project_id,
        chunks(),
        filename=file.filename or "checkpoint",
        name=name,
        role=role,
        method=method,
        target_sparsity=target_sparsity,
        settings=settings,
    )
    return await ingest_answer(job, wait, lambda j: checkpoints.ingested(j, settings))


class CheckpointFromUpload(BaseModel):
    upload_id: str = Field(max_length=MAX_NAME_CHARS,
                           description="a complete upload from POST /uploads")
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    role: str | None = Field(default=None, max_length=MAX_NAME_CHARS,
                             description="'dense' or 'pruned'")
    method: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    target_sparsity: float | None = None


@router.post(
    "/projects/{project_id}/checkpoints/from-upload",
    response_model=CheckpointPublic,
    status_code=status.HTTP_201_CREATED,
    responses=ACCEPTED,
)
async def add_checkpoint_from_upload(
    project_id: IdPath, body: CheckpointFromUpload, settings: SettingsDep, wait: WaitDep = False
) -> CheckpointPublic:
    """Turn a finished resumable upload into a checkpoint, validated like a direct upload.

    The upload is used up either way; an incomplete upload (409) is left to be continued.
    Access to the project is checked first, so a refused request leaves the upload alone.
    """
    await run_in_threadpool(require_project, project_id, "edit", settings)
    job = await run_in_threadpool(
        lambda: checkpoints.checkpoint_from_upload(
            project_id, body.upload_id, name=body.name, role=body.role, method=body.method,
            target_sparsity=body.target_sparsity, settings=settings,
        )
    )
    return await ingest_answer(job, wait, lambda j: checkpoints.ingested(j, settings))


@router.get("/checkpoints/{checkpoint_id}", response_model=CheckpointDetail)
def get_checkpoint(checkpoint_id: IdPath, settings: SettingsDep) -> CheckpointDetail:
    return checkpoints.get_checkpoint(checkpoint_id, settings)


@router.get("/checkpoints/{checkpoint_id}/download", response_class=FileResponse)
def download_checkpoint(checkpoint_id: IdPath, settings: SettingsDep) -> FileResponse:
    path, filename = checkpoints.checkpoint_file(checkpoint_id, settings)
    return FileResponse(path, filename=filename, media_type="application/octet-stream")
