"""API schemas, one family per resource, apart from the table classes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from prunescope.workers.jobs import SUBMITTABLE_KINDS

# Row ids are positive and fit the databases' 64-bit integers; a larger number in a request
# is refused (422) rather than overflowing the driver.
MAX_ID = 2**63 - 1
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
# A name (project, checkpoint, dataset, run, column) or a short choice (role, method, mode).
MAX_NAME_CHARS = 200
# More jobs than one request could reasonably wait for (a sweep queues one per method and
# sparsity).
MAX_DEPENDENCIES = 1000


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# The database keeps naive UTC times; in JSON they carry their offset, as an OpenAPI
# date-time (RFC 3339) must. Python callers (the dashboard) keep the naive value.
UtcDatetime = Annotated[
    datetime, PlainSerializer(_as_utc, return_type=datetime, when_used="json")
]


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Refusal(BaseModel):
    """Every 4xx of the API: what was wrong and what to do."""

    detail: str | list[ValidationIssue] = Field(
        description="what was wrong and what to do; for a request that does not match the "
        "operation's schema, one entry per problem (where, what)"
    )


# The refusals every API operation documents (a route's own entries take precedence).
REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": Refusal, "description": description}
    for status, description in (
        (400, "Bad request"), (403, "Not allowed to this principal"),
        (404, "Not found, or not visible to this principal"), (409, "Conflict"),
        (413, "Too large"), (422, "Invalid input"),
    )
}


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str


BuiltinDatasetName = Literal["digits", "digits_augmented", "english_sentences"]


class DatasetChoice(BaseModel):
    builtin: BuiltinDatasetName = Field(
        description="Name of a built-in dataset; upload others with POST "
        "/api/v1/projects/{id}/datasets."
    )


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str = Field("", max_length=10_000)
    architecture: str = Field(max_length=MAX_NAME_CHARS,
                              description="A registry name, see GET /api/v1/architectures.")
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetChoice = Field(default_factory=lambda: DatasetChoice(builtin="digits"))


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    source: str
    builtin_name: str | None
    active: bool = Field(True, description="Jobs of the project use its active dataset.")
    format: str = "builtin"
    filename: str | None = None
    size_bytes: int | None = None
    kind: str | None = Field(None, description="'image', 'tabular' or 'text'.")
    num_train: int | None = None
    num_test: int | None = None
    num_classes: int | None = None
    input_shape: list[int] | None = None
    artifact_digest: str | None = None
    created_at: UtcDatetime | None = None


class DatasetDetail(DatasetPublic):
    preview: dict[str, Any] = Field(
        default_factory=dict,
        description="Class counts per split and a few examples (thumbnails or rows).",
    )

    @field_validator("preview", mode="before")
    @classmethod
    def _no_preview_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class BuiltinDatasetCreate(BaseModel):
    builtin: BuiltinDatasetName
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    active: bool = Field(False, description="Make it the dataset the project's jobs use.")


class ActiveDatasetChoice(BaseModel):
    dataset_id: DbId


class ProjectPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str
    architecture: str
    architecture_config: dict[str, Any]
    created_at: UtcDatetime
    datasets: list[DatasetPublic] = []


class ProjectsPublic(BaseModel):
    data: list[ProjectPublic]
    count: int


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    name: str
    role: str
    source: str
    method: str | None
    target_sparsity: float | None
    measured_sparsity: float
    num_params: int
    num_nonzero: int
    flops: int | None = None
    flops_nonzero: int | None = None
    compression_ratio: float | None = None
    theoretical_speedup: float | None = None
    format: str
    artifact_digest: str
    size_bytes: int
    parent_id: int | None
    created_at: UtcDatetime


class CheckpointDetail(CheckpointPublic):
    layer_stats: dict[str, Any]


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


# The declared job kinds (prunescope.workers.jobs), so the OpenAPI enum is what workers run.
JobKind = Literal[SUBMITTABLE_KINDS]  # type: ignore[valid-type]


class JobCreate(BaseModel):
    kind: JobKind
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[DbId] = Field(
        default_factory=list, max_length=MAX_DEPENDENCIES,
        description="ids of jobs of the same project that must succeed first",
    )


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    kind: str
    params: dict[str, Any]
    depends_on: list[int]
    state: str
    progress: float
    message: str
    attempts: int
    max_attempts: int
    worker_id: str | None
    error: str | None
    error_code: str | None = None
    result_summary: dict[str, Any]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class ResultPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    job_id: int | None
    kind: str
    artifact_digest: str
    summary: dict[str, Any]
    created_at: UtcDatetime


class ResultsPublic(BaseModel):
    data: list[ResultPublic]
    count: int
