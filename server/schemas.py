"""API schemas, one family per resource, apart from the table classes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str


class DatasetChoice(BaseModel):
    builtin: Literal["digits"] = Field(
        description="Name of a built-in dataset (uploads arrive with a later release)."
    )


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    architecture: str = Field(description="A registry name, see GET /api/v1/architectures.")
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetChoice = Field(default_factory=lambda: DatasetChoice(builtin="digits"))


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    source: str
    builtin_name: str | None


class ProjectPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    description: str
    architecture: str
    architecture_config: dict[str, Any]
    created_at: datetime
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
    created_at: datetime


class CheckpointDetail(CheckpointPublic):
    layer_stats: dict[str, Any]


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


JobKind = Literal["train", "prune", "analyze"]


class JobCreate(BaseModel):
    kind: JobKind
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[int] = Field(default_factory=list)


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
    result_summary: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


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
    created_at: datetime


class ResultsPublic(BaseModel):
    data: list[ResultPublic]
    count: int
