"""The contract between the job queue (server/) and the job runner (workers/).

The server resolves everything a job needs from the database into a `JobSpec` (plain data,
local file paths), hands it to `prunescope.workers.runner.run_job`, and commits the returned
`JobOutput` in one transaction. Workers therefore never touch the database, which keeps
them runnable in any executor (local process pool, Ray) and keeps imports pointing down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class JobCancelled(Exception):
    """Raised by a progress callback when the user cancelled the job; the runner lets it fly."""


class JobInputError(Exception):
    """The job's inputs or parameters are unusable; the message says what to change.

    `code` says why in a word the server keeps with the failed job (jobs.error_code) and maps
    to an HTTP status for callers that waited on it: "invalid" (422), "too_large" (413),
    "conflict" (409).
    """

    code = "invalid"


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint already stored for the project."""

    id: int
    name: str
    role: str  # "dense" | "pruned"
    method: str | None
    target_sparsity: float | None
    path: str  # local path of the stored file (safetensors or torch state_dict)
    # Hugging Face checkpoints: zip of their config.json and tokenizer files.
    assets_path: str | None = None


@dataclass(frozen=True)
class DatasetRef:
    """The project's active evaluation dataset."""

    name: str
    source: str  # "builtin" | "upload"
    builtin_name: str | None = None  # e.g. "digits", "english_sentences"
    # Uploads: the stored canonical npz (workers.datasets.save_canonical / load_canonical).
    path: str | None = None


@dataclass(frozen=True)
class ResultRef:
    """An earlier result a job reads (the dynamics analysis reads the training runs')."""

    id: int
    kind: str
    path: str  # local path of the stored artifact
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    job_id: int
    kind: str  # a name in prunescope.workers.jobs.JOB_KINDS
    params: dict[str, Any]
    architecture: str  # registry name, e.g. "cnn_small"
    architecture_config: dict[str, Any]
    dataset: DatasetRef | None
    checkpoints: list[CheckpointRef]
    scratch_dir: str  # the job may write its output files here; the server moves them into storage
    # A folder kept between jobs for content-addressed caches (e.g. 2-D projections); None: none.
    cache_dir: str | None = None
    # Earlier results of the project the job reads, oldest first (the kinds its
    # declaration's `reads` names).
    results: list[ResultRef] = field(default_factory=list)
    # Uploads an ingest job validates: their role ("upload", "trajectories", …) → local path.
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass
class NewCheckpoint:
    """A checkpoint produced by a job (trained or pruned), written as safetensors in scratch_dir."""

    name: str
    role: str  # "dense" | "pruned"
    path: str
    method: str | None = None
    target_sparsity: float | None = None
    parent_id: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # models.sparsity.checkpoint_stats(...)


@dataclass
class NewResult:
    """An analysis artifact (npz, no object arrays) with a small JSON-able summary."""

    kind: str
    path: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobOutput:
    checkpoints: list[NewCheckpoint] = field(default_factory=list)
    results: list[NewResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # An ingest job's verdict on an upload it accepted: the check's plain-data outcome
    # (`prunescope.workers.ingest`), files in scratch_dir, which the server adopts with the row.
    ingested: dict[str, Any] | None = None


def default_pruned_name(method: str, sparsity: float) -> str:
    """The name a prune job gives its checkpoint unless params.name says otherwise."""
    return f"{method}-{round(float(sparsity) * 100)}"


# progress(fraction in [0, 1], message). Raises JobCancelled when the job was cancelled.
ProgressFn = Callable[[float, str], None]


def run_name(params: Mapping[str, Any]) -> str:
    """A training run's name: params.name, else e.g. "dense-s0", "gmp80-s1"."""
    if params.get("name"):
        return str(params["name"])
    mode, seed = params.get("mode", "dense"), params.get("seed", 0)
    level = "" if mode == "dense" else str(round(100 * float(params.get("sparsity", 0))))
    return f"{mode}{level}-s{seed}"
