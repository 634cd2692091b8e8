"""Datasets: multipart upload, builtins, listing with previews, the project's active dataset."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from prunescope.server.api.deps import ACCEPTED, IdPath, SettingsDep, WaitDep, ingest_answer
from prunescope.server.schemas import (
    MAX_NAME_CHARS,
    ActiveDatasetChoice,
    BuiltinDatasetCreate,
    DatasetDetail,
    DatasetPublic,
    DatasetsPublic,
)
from prunescope.server.services import datasets
from prunescope.server.storage import CHUNK_BYTES

router = APIRouter(tags=["datasets"])


@router.get("/projects/{project_id}/datasets", response_model=DatasetsPublic)
def list_datasets(project_id: IdPath, settings: SettingsDep) -> DatasetsPublic:
    data = datasets.list_datasets(project_id, settings)
    return DatasetsPublic(data=data, count=len(data))


@router.post(
    "/projects/{project_id}/datasets",
    response_model=DatasetDetail,
    status_code=status.HTTP_201_CREATED,
    responses=ACCEPTED,
)
async def upload_dataset(
    project_id: IdPath,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(description=".npz (x, y[, ids, group, split, class_names]), a .zip of one folder "
             "of PNG/JPEG images per class, or .csv / .jsonl / .parquet"),
    ],
    name: Annotated[str | None, Form(max_length=MAX_NAME_CHARS,
                                     description="default: the file name")] = None,
    active: Annotated[bool, Form(description="make it the dataset jobs use")] = False,
    label_column: Annotated[str, Form(max_length=MAX_NAME_CHARS)] = "label",
    text_column: Annotated[str, Form(max_length=MAX_NAME_CHARS)] = "text",
    id_column: Annotated[str, Form(max_length=MAX_NAME_CHARS)] = "id",
    group_column: Annotated[str, Form(max_length=MAX_NAME_CHARS)] = "group",
    split_column: Annotated[str, Form(max_length=MAX_NAME_CHARS,
                                      description="values 'train' or 'test'")] = "split",
    wait: WaitDep = False,
) -> DatasetDetail:
    """Upload an evaluation dataset; a worker reads it and checks it against the project's
    model before it is kept."""

    def chunks():  # noqa: ANN202
        file.file.seek(0)
        while chunk := file.file.read(CHUNK_BYTES):
            yield chunk

    job = await run_in_threadpool(
        datasets.add_dataset,
        project_id,
        chunks(),
        filename=file.filename or "dataset",
        name=name,
        active=active,
        columns={"label": label_column, "text": text_column, "id": id_column,
                 "group": group_column, "split": split_column},
        settings=settings,
    )
    return await ingest_answer(job, wait, lambda j: datasets.ingested(j, settings))


@router.post(
    "/projects/{project_id}/datasets/builtin",
    response_model=DatasetDetail,
    status_code=status.HTTP_201_CREATED,
)
def add_builtin_dataset(
    project_id: IdPath, body: BuiltinDatasetCreate, settings: SettingsDep
) -> DatasetDetail:
    """Add a builtin dataset (digits, english_sentences) to the project."""
    return datasets.add_builtin_dataset(
        project_id, body.builtin, name=body.name, active=body.active, settings=settings
    )


@router.put("/projects/{project_id}/datasets/active", response_model=DatasetPublic)
def set_active_dataset(
    project_id: IdPath, body: ActiveDatasetChoice, settings: SettingsDep
) -> DatasetPublic:
    """Choose the dataset the project's jobs use from now on."""
    return datasets.set_active_dataset(project_id, body.dataset_id, settings)


@router.get("/datasets/{dataset_id}", response_model=DatasetDetail)
def get_dataset(dataset_id: IdPath, settings: SettingsDep) -> DatasetDetail:
    return datasets.get_dataset(dataset_id, settings)


@router.get("/datasets/{dataset_id}/download", response_class=FileResponse)
def download_dataset(dataset_id: IdPath, settings: SettingsDep) -> FileResponse:
    """The canonical npz of an uploaded dataset: `numpy.load(f, allow_pickle=False)`."""
    path, filename = datasets.dataset_file(dataset_id, settings)
    return FileResponse(path, filename=filename, media_type="application/octet-stream")
