"""A project's checkpoints: reading them (statistics, per-layer sparsity, the file to download)
and adding one, uploaded or from a finished resumable upload, through the ingest path: the
request stages the file and queues its `ingest_checkpoint` job; the worker that validated it
adopts it with the row (`adopt_checked`)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from prunescope.server.access import get_or_404, require_project
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.errors import Conflict, InvalidInput
from prunescope.server.schemas import CheckpointDetail, CheckpointPublic, JobPublic
from prunescope.server.services import ingest, uploads
from prunescope.server.storage import artifact_store
from prunescope.server.tables import Checkpoint, Project

SUBJECT = "this checkpoint"  # the upload limit's message: "... if this checkpoint is expected"


def list_checkpoints(project_id: int, settings: Settings | None = None) -> list[CheckpointPublic]:
    with session_scope(settings) as s:
        project = get_or_404(s, Project, project_id, "project")
        return [CheckpointPublic.model_validate(c) for c in project.checkpoints]


def get_checkpoint(checkpoint_id: int, settings: Settings | None = None) -> CheckpointDetail:
    with session_scope(settings) as s:
        return CheckpointDetail.model_validate(
            get_or_404(s, Checkpoint, checkpoint_id, "checkpoint")
        )


def checkpoint_file(checkpoint_id: int, settings: Settings | None = None) -> tuple[Path, str]:
    """The file to download: the weights, or for Hugging Face checkpoints a folder zip.

    The zip holds config.json, the tokenizer files and model.safetensors, so
    `from_pretrained` opens it unpacked. It is built once per content and cached.
    """
    settings = settings or get_settings()
    ckpt = get_checkpoint(checkpoint_id, settings)
    store = artifact_store(settings)
    weights = store.open_path(ckpt.artifact_digest)
    with session_scope(settings) as s:
        assets_digest = s.get(Checkpoint, checkpoint_id).assets_digest
    if not assets_digest:
        return weights, f"{ckpt.name}.safetensors"
    cached = store.root / "downloads" / f"{ckpt.artifact_digest[:16]}-{assets_digest[:16]}.zip"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = store.staging_file(".zip")
        os.close(fd)
        try:
            with zipfile.ZipFile(partial, "w") as out:
                with zipfile.ZipFile(store.open_path(assets_digest)) as assets:
                    for name in assets.namelist():
                        out.writestr(name, assets.read(name), zipfile.ZIP_DEFLATED)
                out.write(weights, "model.safetensors")  # stored: weights do not compress
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
    return cached, f"{ckpt.name}.zip"


def layer_sparsity(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Per-layer sparsity of every checkpoint: {"layers": [...], "checkpoints": [...],
    "sparsity": [[layer × checkpoint]], "n_m": [[layer × checkpoint]]} (None where a
    checkpoint lacks a layer); n_m lists the N:M patterns ("2:4", "4:8") a layer follows."""
    with session_scope(settings) as s:
        project = get_or_404(s, Project, project_id, "project")
        ckpts = [(c.name, c.layer_stats or {}) for c in project.checkpoints]
    layers: list[str] = []
    for _, stats in ckpts:
        layers += [name for name in stats if name not in layers]
    return {
        "layers": layers,
        "checkpoints": [name for name, _ in ckpts],
        "sparsity": [
            [stats[layer]["sparsity"] if layer in stats else None for _, stats in ckpts]
            for layer in layers
        ],
        "n_m": [
            [stats[layer].get("n_m", []) if layer in stats else None for _, stats in ckpts]
            for layer in layers
        ],
    }


# ---------------------------------------------------------------------------- adding


def add_checkpoint(
    project_id: int,
    chunks: Iterable[bytes],
    *,
    filename: str = "checkpoint",
    name: str | None = None,
    role: str | None = None,
    method: str | None = None,
    target_sparsity: float | None = None,
    settings: Settings | None = None,
) -> JobPublic:
    """Stage an uploaded checkpoint and queue the job that validates it against the project's
    architecture; `ingested(job)` waits for the stored checkpoint.

    The file enters the store and the database only after it loaded safely and matched the
    architecture, so a bad upload leaves nothing behind.
    """
    settings = settings or get_settings()
    fields = _checkpoint_fields(project_id, filename, name, role, target_sparsity, settings)
    staged = ingest.stage_stream(chunks, settings, subject=SUBJECT)
    return _ingest(project_id, staged, filename=filename, method=method,
                   target_sparsity=target_sparsity, settings=settings, **fields)


def add_checkpoint_file(
    project_id: int,
    path: Path,
    *,
    digest: str | None = None,
    filename: str = "checkpoint",
    name: str | None = None,
    role: str | None = None,
    method: str | None = None,
    target_sparsity: float | None = None,
    settings: Settings | None = None,
) -> JobPublic:
    """Like `add_checkpoint` for a file already on the store's filesystem (a finished upload).

    The file is moved, not copied, into staging; it is consumed whether or not it is accepted.
    `digest` may be passed when the caller already hashed the content.
    """
    settings = settings or get_settings()
    try:
        fields = _checkpoint_fields(project_id, filename, name, role, target_sparsity, settings)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    staged = ingest.stage_file(path, settings, subject=SUBJECT, digest=digest)
    return _ingest(project_id, staged, filename=filename, method=method,
                   target_sparsity=target_sparsity, settings=settings, **fields)


def checkpoint_from_upload(
    project_id: int,
    upload_id: str,
    *,
    name: str | None = None,
    role: str | None = None,
    method: str | None = None,
    target_sparsity: float | None = None,
    settings: Settings | None = None,
) -> JobPublic:
    """Queue the validation of a finished resumable upload as a checkpoint of the project.

    The upload is consumed whether or not the file is accepted (a rejected file leaves
    nothing behind); only an incomplete or busy upload is left in place, and so is one that
    a refused request names: project access is checked first, then that the upload is the
    principal's (another's answers like an unknown id), and only then is it consumed.
    """
    settings = settings or get_settings()
    require_project(project_id, "edit", settings)
    with uploads.claim_completed_upload(settings, upload_id) as upload:
        return add_checkpoint_file(
            project_id, upload.path, digest=upload.sha256, filename=upload.filename, name=name,
            role=role, method=method, target_sparsity=target_sparsity, settings=settings,
        )


def _name_taken(name: str) -> str:
    return f"a checkpoint named {name!r} already exists in this project; rename it"


def _checkpoint_fields(
    project_id: int,
    filename: str,
    name: str | None,
    role: str | None,
    target_sparsity: float | None,
    settings: Settings,
) -> dict[str, str]:
    """The checks an upload passes before its bytes are read: the name and role it will get."""
    require_project(project_id, "edit", settings)
    name = (name or Path(filename).stem or "checkpoint").strip()[:200]
    if role not in (None, "dense", "pruned"):
        raise InvalidInput("role must be 'dense' or 'pruned'")
    if target_sparsity is not None and not 0.0 <= target_sparsity < 1.0:
        raise InvalidInput("target_sparsity must be in [0, 1)")
    existing = list_checkpoints(project_id, settings)
    if any(c.name == name for c in existing):
        raise Conflict(_name_taken(name))
    has_dense = any(c.role == "dense" for c in existing)
    role = role or ("pruned" if has_dense else "dense")
    if role == "dense" and has_dense:
        raise Conflict("this project already has a dense checkpoint; upload this one as 'pruned'")
    return {"name": name, "role": role}


def _ingest(
    project_id: int,
    staged: ingest.Staged,
    *,
    name: str,
    role: str,
    filename: str,
    method: str | None,
    target_sparsity: float | None,
    settings: Settings,
) -> JobPublic:
    """Queue the `ingest_checkpoint` job for a staged file."""
    return ingest.queue_check(
        settings, project_id, "ingest_checkpoint", {"upload": staged},
        {"filename": filename, "name": name, "role": role, "method": method,
         "target_sparsity": target_sparsity,
         # A model folder's config.json is held to the limit project configurations are.
         "max_parameters": settings.max_model_parameters},
    )


def adopt_checked(settings: Settings, job: ingest.IngestJob, checked: dict[str, Any],
                  finish: Callable[[Session, dict[str, Any]], None]) -> None:
    """Adopt what `prunescope.workers.ingest.check_checkpoint` kept and add the checkpoint's
    row; `finish` records the job's success in the same transaction."""
    p = job.params
    weights = Path(checked["weights_path"])
    size = weights.stat().st_size
    upload = weights == Path(job.inputs["upload"])  # kept as uploaded: its digest is known
    files = {"weights": (weights, job.digest("upload") if upload else None)}
    if checked.get("assets_path"):
        files["assets"] = (Path(checked["assets_path"]), None)
    adopted = ingest.adopt(settings, files)

    def write(s: Session) -> None:
        if checked.get("project_config") is not None:
            s.get(Project, job.project_id).architecture_config = checked["project_config"]
        row = Checkpoint(
            project_id=job.project_id,
            name=p["name"],
            role=p["role"],
            source="upload",
            method=p.get("method") or ("dense" if p["role"] == "dense" else "uploaded"),
            target_sparsity=p.get("target_sparsity"),
            **Checkpoint.stat_columns(checked["stats"]),
            format=checked["format"],
            artifact_digest=adopted.digests["weights"],
            assets_digest=adopted.digests.get("assets"),
            size_bytes=size,
        )
        s.add(row)
        s.flush()
        finish(s, {"checkpoint_id": row.id, "name": row.name, "format": row.format})

    ingest.add_rows(settings, adopted, write, conflict=_name_taken(p["name"]))


def ingested(job: JobPublic, settings: Settings | None = None,
             timeout: float | None = None) -> CheckpointPublic | None:
    """The checkpoint an `ingest_checkpoint` job stored, once it has (None while it still runs
    after `timeout`); its refusal as the error the upload answers."""
    settings = settings or get_settings()
    return ingest.outcome(settings, job.id,
                          lambda summary: get_checkpoint(summary["checkpoint_id"], settings),
                          timeout)
