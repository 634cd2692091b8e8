"""The service layer: every read and write the API and the dashboard make goes through here."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from prunescope.server import auth, jobs
from prunescope.server.config import Settings, get_settings
from prunescope.server.db import session_scope
from prunescope.server.schemas import (
    CheckpointDetail,
    CheckpointPublic,
    JobCreate,
    JobPublic,
    ProjectCreate,
    ProjectPublic,
    ResultPublic,
)
from prunescope.server.storage import ArtifactStore, UploadTooLarge, artifact_store, sha256_file
from prunescope.server.tables import AnalysisResult, Checkpoint, Dataset, Job, Project, ProjectMember
from prunescope.workers.jobspec import default_pruned_name

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404


class InvalidInput(ServiceError):
    status_code = 422


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Forbidden(ServiceError):
    status_code = 403


def _store(settings: Settings) -> ArtifactStore:
    return artifact_store(settings)


# ---------------------------------------------------------------- access checks
# Every lookup of a project or of a row inside one passes `_get_or_404`, which checks the
# request's principal (server/auth.py) against the project: a stranger gets the same 404 as
# for a missing row (no existence leak), a viewer 403 on changes. Without accounts the
# principal is the local user, who owns everything.

_NEEDED_ROLE = {"view": "viewer", "edit": "editor", "own": "owner"}


def _check_project(session, project_id: int, need: str, missing: str) -> str:  # noqa: ANN001
    role = auth.project_role(session, project_id)
    if role is None:
        raise NotFound(missing)
    if auth.ROLE_RANK[role] < auth.ROLE_RANK[_NEEDED_ROLE[need]]:
        if auth.current_principal().kind == "share":
            raise Forbidden("a share link is read-only; sign in to change this project")
        wanted = "an editor" if need == "edit" else "the owner"
        raise Forbidden(f"you are a {role} of project {project_id}; this needs {wanted} "
                        "(ask the project's owner)")
    return role


def _get_or_404(session, table, ident: int, what: str, need: str = "view"):  # noqa: ANN001, ANN202
    row = session.get(table, ident)
    if row is None:
        raise NotFound(f"{what} {ident} not found")
    project_id = row.id if table is Project else getattr(row, "project_id", None)
    if project_id is not None:
        _check_project(session, project_id, need, f"{what} {ident} not found")
    return row


def require_project(project_id: int, need: str, settings: Settings | None = None) -> str:
    """The principal's role in the project, if it allows `need` ("view" | "edit" | "own");
    else NotFound (stranger) or Forbidden."""
    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project", need)
        return auth.project_role(s, project_id) or ""


def _visible(query, column):  # noqa: ANN001, ANN202
    """`query` limited to rows whose project (`column`) the principal may see."""
    where = auth.visible_projects()
    if where is None:
        return query
    return query.where(column.in_(select(Project.id).where(where)))


# ---------------------------------------------------------------- architectures


def list_architectures() -> dict[str, dict[str, Any]]:
    from prunescope.models.registry import default_config, list_architectures

    return {name: default_config(name) for name in list_architectures()}


def list_pruning_methods() -> dict[str, str]:
    """Method name → the first line of its docstring (scoring rule and paper)."""
    from prunescope.models.pruning import PRUNING_METHODS

    return {
        name: (fn.__doc__ or name).strip().splitlines()[0]
        for name, fn in sorted(PRUNING_METHODS.items())
    }


def submit_pruning_sweep(
    project_id: int,
    methods: list[str],
    sparsities: list[float],
    settings: Settings | None = None,
) -> tuple[list[JobPublic], list[str]]:
    """Queue one prune job per method × sparsity, then an analysis that waits for them.

    Returns the queued jobs and one message per combination that was refused (e.g. a
    checkpoint of that name exists already), so a partly valid request still does its part.
    """
    queued: list[JobPublic] = []
    refused: list[str] = []
    for method in methods:
        for sparsity in sparsities:
            try:
                body = JobCreate(kind="prune", params={"method": method, "sparsity": sparsity})
                queued.append(submit_job(project_id, body, settings))
            except ServiceError as exc:
                refused.append(f"{method} at {sparsity:g}: {exc.detail}")
    if queued:
        analysis = JobCreate(kind="analyze", depends_on=[j.id for j in queued])
        queued.append(submit_job(project_id, analysis, settings))
    return queued, refused


def _resolve_architecture(name: str, config: dict[str, Any]) -> dict[str, Any]:
    from prunescope.models.registry import create_model, default_config, list_architectures

    if name not in list_architectures():
        raise InvalidInput(
            f"unknown architecture {name!r}; choose one of {', '.join(list_architectures())}"
        )
    full = {**default_config(name), **config}
    if name == "huggingface" and not full:
        return full  # the first uploaded model folder provides config.json
    try:
        create_model(name, **full)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid configuration for {name}: {exc}") from exc
    return full


# ---------------------------------------------------------------- projects


def list_projects(settings: Settings | None = None) -> list[ProjectPublic]:
    with session_scope(settings) as s:
        rows = s.scalars(_visible(select(Project).order_by(Project.id), Project.id)).all()
        return [ProjectPublic.model_validate(p) for p in rows]


def get_project(project_id: int, settings: Settings | None = None) -> ProjectPublic:
    with session_scope(settings) as s:
        return ProjectPublic.model_validate(_get_or_404(s, Project, project_id, "project"))


def _owner_key(principal: auth.Principal) -> str:
    """The key names are unique under: the signed-in user's, or "" without accounts."""
    return f"u{principal.user_id}" if principal.user_id is not None else ""


def find_project(name: str, settings: Settings | None = None) -> ProjectPublic | None:
    """The project of that name the caller can see: their own first; Conflict when several
    others' projects they can see share the name (use the id then); None when none does."""
    mine = _owner_key(auth.current_principal())
    with session_scope(settings) as s:
        rows = s.scalars(_visible(select(Project).where(Project.name == name), Project.id)
                         .order_by(Project.id)).all()
        own = [r for r in rows if r.owner_key == mine]
        if len(own) == 1 or len(rows) == 1:
            return ProjectPublic.model_validate((own or rows)[0])
        if rows:
            raise Conflict(f"several projects you can see are named {name!r} (ids "
                           f"{', '.join(str(r.id) for r in rows)}); name one by its id")
        return None


def create_project(body: ProjectCreate, settings: Settings | None = None) -> ProjectPublic:
    principal = auth.current_principal()
    if not principal.is_user:
        raise Forbidden("a share link is read-only; sign in to create projects")
    config = _resolve_architecture(body.architecture, body.architecture_config)
    owner_key = _owner_key(principal)
    with session_scope(settings) as s:
        # Only the caller's own names can clash: another's private project stays unknown.
        if s.scalar(select(Project.id).where(Project.owner_key == owner_key,
                                             Project.name == body.name)) is not None:
            raise Conflict(f"you already have a project named {body.name!r}; choose another "
                           "name")
        project = Project(
            name=body.name,
            owner_key=owner_key,
            description=body.description,
            architecture=body.architecture,
            architecture_config=config,
        )
        project.datasets.append(
            Dataset(name=body.dataset.builtin, source="builtin", builtin_name=body.dataset.builtin)
        )
        s.add(project)
        try:
            s.flush()
        except IntegrityError:  # the same name created at the same moment
            raise Conflict(f"you already have a project named {body.name!r}; choose another "
                           "name") from None
        if principal.user_id is not None:  # access check: the creator owns it
            s.add(ProjectMember(project_id=project.id, user_id=principal.user_id, role="owner"))
        return ProjectPublic.model_validate(project)


# ---------------------------------------------------------------- checkpoints


def list_checkpoints(project_id: int, settings: Settings | None = None) -> list[CheckpointPublic]:
    with session_scope(settings) as s:
        project = _get_or_404(s, Project, project_id, "project")
        return [CheckpointPublic.model_validate(c) for c in project.checkpoints]


def get_checkpoint(checkpoint_id: int, settings: Settings | None = None) -> CheckpointDetail:
    with session_scope(settings) as s:
        return CheckpointDetail.model_validate(
            _get_or_404(s, Checkpoint, checkpoint_id, "checkpoint")
        )


def checkpoint_file(checkpoint_id: int, settings: Settings | None = None) -> tuple[Path, str]:
    """The file to download: the weights, or for Hugging Face checkpoints a folder zip.

    The zip holds config.json, the tokenizer files and model.safetensors, so
    `from_pretrained` opens it unpacked. It is built once per content and cached.
    """
    settings = settings or get_settings()
    ckpt = get_checkpoint(checkpoint_id, settings)
    store = _store(settings)
    weights = store.open_path(ckpt.artifact_digest)
    with session_scope(settings) as s:
        assets_digest = s.get(Checkpoint, checkpoint_id).assets_digest
    if not assets_digest:
        return weights, f"{ckpt.name}.safetensors"
    cached = store.root / "downloads" / f"{ckpt.artifact_digest[:16]}-{assets_digest[:16]}.zip"
    if not cached.is_file():
        import zipfile

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
) -> CheckpointPublic:
    """Validate an uploaded checkpoint against the project's architecture and store it.

    The file is streamed to a staging file first; it enters the store and the database only
    after it loaded safely and matched the architecture, so a bad upload leaves nothing behind.
    """
    settings = settings or get_settings()
    fields = _checkpoint_fields(project_id, filename, name, role, target_sparsity, settings)
    try:
        staged, digest, size = _store(settings).write_stream(
            chunks, max_bytes=settings.max_upload_bytes
        )
    except UploadTooLarge as exc:
        raise TooLarge(
            f"{exc}; raise PRUNESCOPE_MAX_UPLOAD_BYTES if this checkpoint is expected"
        ) from exc
    return _adopt_checkpoint(
        project_id, staged, digest, size, filename=filename, method=method,
        target_sparsity=target_sparsity, settings=settings, **fields,
    )


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
) -> CheckpointPublic:
    """Like `add_checkpoint` for a file already on the store's filesystem (a finished upload).

    The file is moved, not copied, into staging; it is consumed whether or not it is accepted.
    `digest` may be passed when the caller already hashed the content.
    """
    settings = settings or get_settings()
    store = _store(settings)
    try:
        fields = _checkpoint_fields(project_id, filename, name, role, target_sparsity, settings)
        size = path.stat().st_size
        if size > settings.max_upload_bytes:
            raise TooLarge(
                f"file exceeds the upload limit of {settings.max_upload_bytes} bytes; raise "
                "PRUNESCOPE_MAX_UPLOAD_BYTES if this checkpoint is expected"
            )
        fd, staged = store.staging_file()
        os.close(fd)
        shutil.move(path, staged)  # a rename, or a copy when the store is another disk
    finally:
        path.unlink(missing_ok=True)
    digest = digest or sha256_file(staged)
    return _adopt_checkpoint(
        project_id, staged, digest, size, filename=filename, method=method,
        target_sparsity=target_sparsity, settings=settings, **fields,
    )


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
        raise Conflict(f"a checkpoint named {name!r} already exists in this project; rename it")
    has_dense = any(c.role == "dense" for c in existing)
    role = role or ("pruned" if has_dense else "dense")
    if role == "dense" and has_dense:
        raise Conflict("this project already has a dense checkpoint; upload this one as 'pruned'")
    return {"name": name, "role": role}


def _adopt_checkpoint(
    project_id: int,
    staged: Path,
    digest: str,
    size: int,
    *,
    name: str,
    role: str,
    filename: str,
    method: str | None,
    target_sparsity: float | None,
    settings: Settings,
) -> CheckpointPublic:
    """Load and validate a staged file; only then adopt it into the store and add its row.

    A Hugging Face folder archive is stored as two artifacts: its weights as one canonical
    safetensors file (the checkpoint) and its config + tokenizer files as a small zip (the
    checkpoint's assets). The first folder uploaded to a `huggingface` project without a
    configuration gives the project its config.json.
    """
    from prunescope.models.checkpoints import (
        CheckpointError,
        model_from_state_dict,
        read_checkpoint_upload,
        save_safetensors,
    )
    from prunescope.models.hf import HF_ARCHITECTURE, write_assets_zip
    from prunescope.models.registry import create_model
    from prunescope.models.sparsity import relative_to_dense, sparsity_report

    project = get_project(project_id, settings)
    store = _store(settings)
    work_dir = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="unpack-"))
    staged_files = [staged]
    adopt_config: dict[str, Any] | None = None
    assets_digest = None
    try:
        try:
            loaded = read_checkpoint_upload(
                staged, work_dir, max_expanded_bytes=settings.max_upload_bytes
            )
            config = project.architecture_config
            if project.architecture == HF_ARCHITECTURE:
                config, adopt_config = _hf_config(project, loaded, role)
            model = model_from_state_dict(
                project.architecture, config, loaded.state_dict,
                allow_shape_changes=role == "pruned",
            )
        except CheckpointError as exc:
            raise InvalidInput(f"{filename}: {exc}") from exc
        stats = sparsity_report(model)
        fmt = loaded.format
        if model.structural_changes:
            dense = create_model(project.architecture, **config)
            stats = relative_to_dense(stats, sparsity_report(dense))
            fmt += "+structural"
        if loaded.hf_folder is not None:
            fd, weights = store.staging_file(".safetensors")
            os.close(fd)
            staged_files.append(weights)
            save_safetensors(loaded.state_dict, weights)
            size = weights.stat().st_size
            digest = store.adopt(weights)
            fd, assets = store.staging_file(".zip")
            os.close(fd)
            staged_files.append(assets)
            write_assets_zip(loaded.hf_folder, assets)
            assets_digest = store.adopt(assets)
        else:
            store.adopt(staged, digest)
    finally:
        for path in staged_files:
            path.unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    with session_scope(settings) as s:
        if adopt_config is not None:
            s.get(Project, project_id).architecture_config = adopt_config
        row = Checkpoint(
            project_id=project_id,
            name=name,
            role=role,
            source="upload",
            method=method or ("dense" if role == "dense" else "uploaded"),
            target_sparsity=target_sparsity,
            **Checkpoint.stat_columns(stats),
            format=fmt,
            artifact_digest=digest,
            assets_digest=assets_digest,
            size_bytes=size,
        )
        s.add(row)
        s.flush()
        return CheckpointPublic.model_validate(row)


def _hf_config(
    project: ProjectPublic, loaded: Any, role: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(config to validate the upload with, config the project should adopt or None).

    A folder's own config.json describes its weights; it must agree with the project's on
    everything but `pruned_heads` (head pruning with `model.prune_heads` records it there and
    shrinks the attention tensors to match).
    """
    from prunescope.models.checkpoints import CheckpointError
    from prunescope.models.hf import architecture_summary

    folder = loaded.hf_folder
    if not project.architecture_config:
        if folder is None:
            raise CheckpointError(
                "this Hugging Face project has no configuration yet: upload the dense model as "
                "a folder archive (.zip or .tar.gz with config.json and model.safetensors) first"
            )
        if role != "dense":
            raise CheckpointError("upload the dense model first; it sets the project's config")
        return folder.config, folder.config
    if folder is None:
        return project.architecture_config, None
    ours = architecture_summary(project.architecture_config)
    theirs = architecture_summary(folder.config)
    differing = sorted(
        k for k in set(ours) | set(theirs) if k != "pruned_heads" and ours.get(k) != theirs.get(k)
    )
    if differing:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in differing[:5])
        raise CheckpointError(
            f"config.json differs from the project's model in {len(differing)} setting(s) "
            f"({shown}); upload a checkpoint of the same model"
        )
    return folder.config, None


def layer_sparsity(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Per-layer sparsity of every checkpoint: {"layers": [...], "checkpoints": [...],
    "sparsity": [[layer × checkpoint]], "n_m": [[layer × checkpoint]]} (None where a
    checkpoint lacks a layer); n_m lists the N:M patterns ("2:4", "4:8") a layer follows."""
    with session_scope(settings) as s:
        project = _get_or_404(s, Project, project_id, "project")
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


# ---------------------------------------------------------------- jobs


def list_jobs(project_id: int | None = None, settings: Settings | None = None) -> list[JobPublic]:
    with session_scope(settings) as s:
        q = select(Job).order_by(Job.id)
        if project_id is not None:
            _get_or_404(s, Project, project_id, "project")
            q = q.where(Job.project_id == project_id)
        else:
            q = _visible(q, Job.project_id)
        return [JobPublic.model_validate(j) for j in s.scalars(q).all()]


def get_job(job_id: int, settings: Settings | None = None) -> JobPublic:
    with session_scope(settings) as s:
        return JobPublic.model_validate(_get_or_404(s, Job, job_id, "job"))


def _pruned_name(params: dict[str, Any]) -> str:
    """The checkpoint name a prune job produces (the runner uses the same default)."""
    return params.get("name") or default_pruned_name(params.get("method"), params["sparsity"])


def _validate_job(body: JobCreate, project: Project, active_jobs: list[Job]) -> None:
    p = body.params
    if body.kind == "prune":
        from prunescope.models.pruning import PRUNING_METHODS, sparsity_error

        method = p.get("method")
        if method not in PRUNING_METHODS:
            raise InvalidInput(
                f"params.method must be one of {', '.join(sorted(PRUNING_METHODS))}, got {method!r}"
            )
        sparsity = p.get("sparsity")
        if not isinstance(sparsity, (int, float)) or not 0.0 < float(sparsity) < 1.0:
            raise InvalidInput(f"params.sparsity must be a number in (0, 1), got {sparsity!r}")
        if error := sparsity_error(method, float(sparsity)):
            raise InvalidInput(f"params.sparsity: {error}")
        name = _pruned_name(p)
        if any(c.name == name for c in project.checkpoints):
            raise Conflict(f"a checkpoint named {name!r} already exists; pass params.name")
        if any(j.kind == "prune" and _pruned_name(j.params) == name for j in active_jobs):
            raise Conflict(f"a queued or running job already produces {name!r}; pass params.name")
    if body.kind in ("analyze", "geometry", "probe", "attention_maps", "train_dynamics",
                     "dynamics"):
        ids = {c.id for c in project.checkpoints}
        wanted = [*(p.get("checkpoint_ids") or []), p.get("reference_checkpoint_id")]
        unknown = [i for i in wanted if i is not None and i not in ids]
        if unknown:
            raise InvalidInput(
                f"checkpoint(s) {unknown} do not belong to project {project.id}; "
                f"its checkpoints are {sorted(ids)}"
            )
    if body.kind == "train" and any(c.role == "dense" for c in project.checkpoints):
        raise Conflict("this project already has a dense checkpoint")
    for key in ("epochs", "batch_size"):
        if key in p and (not isinstance(p[key], int) or p[key] < 1):
            raise InvalidInput(f"params.{key} must be a positive integer")


def submit_job(project_id: int, body: JobCreate, settings: Settings | None = None) -> JobPublic:
    settings = settings or get_settings()
    with session_scope(settings) as s:
        project = _get_or_404(s, Project, project_id, "project", need="edit")
        active = s.scalars(
            select(Job).where(Job.project_id == project_id, Job.state.in_(("queued", "running")))
        ).all()
        _validate_job(body, project, list(active))
        for dep in body.depends_on:
            if s.get(Job, dep) is None:
                raise InvalidInput(f"depends_on names job {dep}, which does not exist")
        job = jobs.enqueue_job(
            s,
            project_id=project_id,
            kind=body.kind,
            params=body.params,
            depends_on=body.depends_on,
            max_attempts=settings.max_attempts,
        )
        return JobPublic.model_validate(job)


def cancel_job(job_id: int, settings: Settings | None = None) -> JobPublic:
    with session_scope(settings) as s:
        _get_or_404(s, Job, job_id, "job", need="edit")
        return JobPublic.model_validate(jobs.request_cancel(s, job_id))


# ---------------------------------------------------------------- results


def list_results(project_id: int, settings: Settings | None = None) -> list[ResultPublic]:
    with session_scope(settings) as s:
        _get_or_404(s, Project, project_id, "project")
        rows = s.scalars(
            select(AnalysisResult)
            .where(AnalysisResult.project_id == project_id)
            .order_by(AnalysisResult.id)
        ).all()
        return [ResultPublic.model_validate(r) for r in rows]


def get_result(result_id: int, settings: Settings | None = None) -> ResultPublic:
    with session_scope(settings) as s:
        return ResultPublic.model_validate(_get_or_404(s, AnalysisResult, result_id, "result"))


def result_file(result_id: int, settings: Settings | None = None) -> tuple[Path, str]:
    settings = settings or get_settings()
    result = get_result(result_id, settings)
    path = _store(settings).open_path(result.artifact_digest)
    return path, f"{result.kind}-{result.id}.npz"


@lru_cache(maxsize=64)
def _load_npz(path: str) -> dict[str, np.ndarray]:
    # Artifacts are immutable and content-addressed, so the path is a sound cache key.
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def project_overview(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Everything the project page draws: checkpoints, jobs, and the newest evaluation."""
    settings = settings or get_settings()
    project = get_project(project_id, settings)
    checkpoints = list_checkpoints(project_id, settings)
    evaluations = [r for r in list_results(project_id, settings) if r.kind == "evaluation"]
    evaluation = None
    if evaluations:
        newest = evaluations[-1]
        arrays = _load_npz(str(_store(settings).open_path(newest.artifact_digest)))
        evaluation = {
            "result_id": newest.id,
            "checkpoint_ids": arrays["checkpoint_ids"].tolist(),
            "checkpoint_names": arrays["checkpoint_names"].tolist(),
            "accuracy": arrays["accuracy"].tolist(),
            "layers": arrays["layers"].tolist(),
            "cka": arrays["cka"],
        }
    return {
        "project": project,
        "checkpoints": checkpoints,
        "jobs": list_jobs(project_id, settings),
        "evaluation": evaluation,
    }


# ---------------------------------------------------------------- layer analysis (Layers page)

# layer_comparison: matrices between two checkpoints (read by `layer_matrix`); listed so the
# page's version changes when one lands.
LAYER_RESULT_KINDS = ("evaluation", "masks", "neurons", "layer_comparison")


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # `_load_npz` shares its cached arrays between callers; read-only views keep one caller's
    # in-place edit from changing what every later page sees.
    views = {}
    for key, array in arrays.items():
        view = array.view()
        view.flags.writeable = False
        views[key] = view
    return views


def layer_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "evaluation", "masks" and "neurons" results of a project, as arrays.

    Returns {kind: {array name: read-only ndarray} or None, ..., "result_ids": {kind: id or
    None}} for the three kinds; the arrays are those the analyze job wrote
    (`prunescope.workers.analyses.evaluation.evaluate_checkpoints`, `prunescope.workers.analyses.masks_and_neurons`).
    Loads are cached per artifact (artifacts are content-addressed and immutable). A result
    whose artifact has gone from the store counts as missing and is logged.
    """
    from prunescope.server.storage import ArtifactNotFound

    settings = settings or get_settings()
    newest: dict[str, ResultPublic] = {}
    for result in list_results(project_id, settings):  # ordered by id: the last one wins
        if result.kind in LAYER_RESULT_KINDS:
            newest[result.kind] = result
    out: dict[str, Any] = {"result_ids": {}}
    for kind in LAYER_RESULT_KINDS:
        result = newest.get(kind)
        arrays = None
        if result is not None:
            try:
                path = _store(settings).open_path(result.artifact_digest)
            except ArtifactNotFound:
                log.warning("result %d (%s): artifact %s is missing from the store",
                            result.id, kind, result.artifact_digest)
            else:
                arrays = _read_only(_load_npz(str(path)))
        out[kind] = arrays
        out["result_ids"][kind] = result.id if arrays is not None else None
    return out


def layer_matrix(
    project_id: int, rows: int, columns: int, matrix: str = "cka",
    settings: Settings | None = None,
) -> dict[str, Any] | None:
    """The layer × layer matrix between two checkpoints (ids), wherever it was computed.

    Rows are `rows`' layers. Looks in the newest "evaluation" whose reference is `rows` and in
    "layer_comparison" results (analyze jobs with `reference_checkpoint_id`); CKA is symmetric,
    so a result referenced on `columns` serves too, transposed. `matrix` is "cka" or
    "cka_debiased". Returns {"values" [L, L], "layers", "result_id"} or None when no result
    holds the pair yet (`request_layer_comparison` computes it).
    """
    if matrix not in ("cka", "cka_debiased"):
        raise InvalidInput(f"matrix must be 'cka' or 'cka_debiased', got {matrix!r}")
    from prunescope.server.storage import ArtifactNotFound

    settings = settings or get_settings()
    key = "cka_layers" if matrix == "cka" else "cka_debiased"
    for result in reversed(list_results(project_id, settings)):
        if result.kind not in ("evaluation", "layer_comparison"):
            continue
        reference = (result.summary or {}).get("reference_id")
        if reference is not None and reference not in (rows, columns):
            continue
        try:
            arrays = _load_npz(str(_store(settings).open_path(result.artifact_digest)))
        except ArtifactNotFound:
            continue
        ids = arrays["checkpoint_ids"].tolist()
        if reference is None:  # evaluations written before reference_id was recorded
            roles = arrays["checkpoint_roles"].tolist()
            reference = ids[roles.index("dense")] if "dense" in roles else None
        if reference not in (rows, columns):
            continue
        other = columns if reference == rows else rows
        if other not in ids or key not in arrays:
            continue
        values = np.asarray(arrays[key][ids.index(other)])
        return {
            "values": values if reference == rows else values.T,
            "layers": [str(v) for v in arrays["layers"].tolist()],
            "result_id": result.id,
        }
    return None


def request_layer_comparison(
    project_id: int, rows: int, columns: int, settings: Settings | None = None
) -> JobPublic:
    """Queue the analyze job that computes the layer × layer matrices between two checkpoints."""
    body = JobCreate(kind="analyze", params={
        "checkpoint_ids": [rows, columns], "reference_checkpoint_id": rows, "neurons": False,
    })
    return submit_job(project_id, body, settings)


# ---------------------------------------------------------------- geometry (Geometry page)


def _newest_arrays(
    project_id: int, kind: str, settings: Settings,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[ResultPublic | None, dict[str, np.ndarray] | None]:
    """The newest result of `kind` (whose summary satisfies `where`, if given) with its
    artifact still in the store, and its read-only arrays; (None, None) when there is none."""
    from prunescope.server.storage import ArtifactNotFound

    for result in reversed(list_results(project_id, settings)):
        if result.kind != kind or (where is not None and not where(result.summary or {})):
            continue
        try:
            path = _store(settings).open_path(result.artifact_digest)
        except ArtifactNotFound:
            log.warning("result %d (%s): artifact %s is missing from the store",
                        result.id, kind, result.artifact_digest)
            continue
        return result, _read_only(_load_npz(str(path)))
    return None, None


def geometry_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "geometry" result of a project: {"geometry": read-only arrays or None,
    "result_id": id or None, "summary": its summary or None}. The arrays are those the
    geometry job wrote (`prunescope.workers.analyses.geometry.geometry_of_checkpoints`)."""
    result, arrays = _newest_arrays(project_id, "geometry", settings or get_settings())
    return {"geometry": arrays, "result_id": result.id if result else None,
            "summary": result.summary if result else None}


def geometry_failures(geometry: dict[str, np.ndarray], kind: str) -> list[int]:
    """Examples every checkpoint gets wrong ("systemic", Toups et al. 2023) or that the dense
    model gets right and some pruned checkpoint wrong ("pruned_only"), by position."""
    from prunescope.workers.metrics.geometry import pruning_only_failures, systemic_failures

    predictions, labels = geometry["predictions"], geometry["labels"]
    if kind == "systemic":
        mask = systemic_failures(predictions, labels)
    elif kind == "pruned_only":
        mask = pruning_only_failures(predictions, labels, int(geometry["reference"]))
    else:
        raise InvalidInput(f"kind must be 'systemic' or 'pruned_only', got {kind!r}")
    return np.flatnonzero(mask).tolist()


def request_geometry(
    project_id: int, projection: str = "umap", settings: Settings | None = None
) -> JobPublic:
    """Queue the geometry job over all of a project's checkpoints."""
    return submit_job(project_id, JobCreate(kind="geometry", params={"projection": projection}),
                      settings)


# ---------------------------------------------------------------- probing (Attention page)


def probing_results(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "probing" result: {"probing": read-only arrays or None, "result_id"}."""
    result, arrays = _newest_arrays(project_id, "probing", settings or get_settings())
    return {"probing": arrays, "result_id": result.id if result else None}


def request_probing(project_id: int, settings: Settings | None = None) -> JobPublic:
    """Queue the probe job (every checkpoint, every probing task)."""
    return submit_job(project_id, JobCreate(kind="probe"), settings)


# ---------------------------------------------------------------- attention maps (viewer)


def attention_maps(project_id: int, sentence: int,
                   settings: Settings | None = None) -> dict[str, Any]:
    """The newest "attention_maps" result for one sentence (position in the evaluation split):
    {"maps": read-only arrays or None, "result_id"}; the arrays are those
    `prunescope.workers.analyses.attention_maps.attention_maps` returns, plus checkpoint_ids and
    sentence. A result computed before a checkpoint was added still serves the checkpoints it
    holds."""
    result, arrays = _newest_arrays(project_id, "attention_maps", settings or get_settings(),
                                    where=lambda summary: summary.get("sentence") == sentence)
    return {"maps": arrays, "result_id": result.id if result else None}


def request_attention_maps(project_id: int, sentence: int,
                           settings: Settings | None = None) -> JobPublic:
    """Queue the job that computes one sentence's attention maps in every checkpoint."""
    if not isinstance(sentence, int) or isinstance(sentence, bool) or sentence < 0:
        raise InvalidInput(f"sentence must be a non-negative integer, got {sentence!r}")
    return submit_job(project_id, JobCreate(kind="attention_maps",
                                            params={"sentence": sentence}), settings)


# ---------------------------------------------------------------- dynamics (Dynamics page)


def dynamics_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "dynamics" result: {"dynamics": read-only arrays or None, "result_id"}; the
    arrays are those `prunescope.workers.analyses.dynamics.analyse_dynamics` returns (with thumbnails
    for image datasets)."""
    result, arrays = _newest_arrays(project_id, "dynamics", settings or get_settings())
    return {"dynamics": arrays, "result_id": result.id if result else None}


def request_dynamics(project_id: int, settings: Settings | None = None) -> JobPublic:
    """Queue the dynamics analysis over every recorded training run of the project."""
    return submit_job(project_id, JobCreate(kind="dynamics"), settings)
