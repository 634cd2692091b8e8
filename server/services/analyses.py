"""What each analysis page reads: the newest stored result of its kind as read-only arrays
(layers, geometry, probing, attention maps, dynamics), and the job that computes it when
there is none yet."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from prunescope.server.config import Settings, get_settings
from prunescope.server.errors import InvalidInput
from prunescope.server.schemas import JobCreate, JobPublic, ResultPublic
from prunescope.server.services import checkpoints, jobs, projects, results
from prunescope.server.storage import ArtifactNotFound, artifact_store
from prunescope.workers.metrics.geometry import pruning_only_failures, systemic_failures

log = logging.getLogger(__name__)


def project_overview(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Everything the project page draws: checkpoints, jobs, and the newest evaluation."""
    settings = settings or get_settings()
    project = projects.get_project(project_id, settings)
    stored = checkpoints.list_checkpoints(project_id, settings)
    evaluations = [r for r in results.list_results(project_id, settings)
                   if r.kind == "evaluation"]
    evaluation = None
    if evaluations:
        newest = evaluations[-1]
        path = artifact_store(settings).open_path(newest.artifact_digest)
        arrays = results.load_npz(str(path))
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
        "checkpoints": stored,
        "jobs": jobs.list_jobs(project_id, settings),
        "evaluation": evaluation,
    }


# ---------------------------------------------------------------- layer analysis (Layers page)

# layer_comparison: matrices between two checkpoints (read by `layer_matrix`); listed so the
# page's version changes when one lands.
LAYER_RESULT_KINDS = ("evaluation", "masks", "neurons", "layer_comparison")



def layer_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "evaluation", "masks" and "neurons" results of a project, as arrays.

    Returns {kind: {array name: read-only ndarray} or None, ..., "result_ids": {kind: id or
    None}} for the three kinds; the arrays are those the analyze job wrote
    (`prunescope.workers.analyses.evaluation.evaluate_checkpoints`,
    `prunescope.workers.analyses.masks_and_neurons`).
    Loads are cached per artifact (artifacts are content-addressed and immutable). A result
    whose artifact has gone from the store counts as missing and is logged.
    """
    settings = settings or get_settings()
    newest: dict[str, ResultPublic] = {}
    for result in results.list_results(project_id, settings):  # ordered by id: the last one wins
        if result.kind in LAYER_RESULT_KINDS:
            newest[result.kind] = result
    out: dict[str, Any] = {"result_ids": {}}
    for kind in LAYER_RESULT_KINDS:
        result = newest.get(kind)
        arrays = None
        if result is not None:
            try:
                path = artifact_store(settings).open_path(result.artifact_digest)
            except ArtifactNotFound:
                log.warning("result %d (%s): artifact %s is missing from the store",
                            result.id, kind, result.artifact_digest)
            else:
                arrays = results.read_only(results.load_npz(str(path)))
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
    settings = settings or get_settings()
    key = "cka_layers" if matrix == "cka" else "cka_debiased"
    for result in reversed(results.list_results(project_id, settings)):
        if result.kind not in ("evaluation", "layer_comparison"):
            continue
        reference = (result.summary or {}).get("reference_id")
        if reference is not None and reference not in (rows, columns):
            continue
        try:
            path = artifact_store(settings).open_path(result.artifact_digest)
            arrays = results.load_npz(str(path))
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
    return jobs.submit_job(project_id, body, settings)


def geometry_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "geometry" result of a project: {"geometry": read-only arrays or None,
    "result_id": id or None, "summary": its summary or None}. The arrays are those the
    geometry job wrote (`prunescope.workers.analyses.geometry.geometry_of_checkpoints`)."""
    result, arrays = results.newest_arrays(project_id, "geometry", settings or get_settings())
    return {"geometry": arrays, "result_id": result.id if result else None,
            "summary": result.summary if result else None}


def geometry_failures(geometry: dict[str, np.ndarray], kind: str) -> list[int]:
    """Examples every checkpoint gets wrong ("systemic", Toups et al. 2023) or that the dense
    model gets right and some pruned checkpoint wrong ("pruned_only"), by position."""
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
    body = JobCreate(kind="geometry", params={"projection": projection})
    return jobs.submit_job(project_id, body, settings)


# ---------------------------------------------------------------- probing (Attention page)


def probing_results(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "probing" result: {"probing": read-only arrays or None, "result_id"}."""
    result, arrays = results.newest_arrays(project_id, "probing", settings or get_settings())
    return {"probing": arrays, "result_id": result.id if result else None}


def request_probing(project_id: int, settings: Settings | None = None) -> JobPublic:
    """Queue the probe job (every checkpoint, every probing task)."""
    return jobs.submit_job(project_id, JobCreate(kind="probe"), settings)


# ---------------------------------------------------------------- attention maps (viewer)


def attention_maps(project_id: int, sentence: int,
                   settings: Settings | None = None) -> dict[str, Any]:
    """The newest "attention_maps" result for one sentence (position in the evaluation split):
    {"maps": read-only arrays or None, "result_id"}; the arrays are those
    `prunescope.workers.analyses.attention_maps.attention_maps` returns, plus checkpoint_ids and
    sentence. A result computed before a checkpoint was added still serves the checkpoints it
    holds."""
    result, arrays = results.newest_arrays(
        project_id, "attention_maps", settings or get_settings(),
        where=lambda summary: summary.get("sentence") == sentence)
    return {"maps": arrays, "result_id": result.id if result else None}


def request_attention_maps(project_id: int, sentence: int,
                           settings: Settings | None = None) -> JobPublic:
    """Queue the job that computes one sentence's attention maps in every checkpoint."""
    if not isinstance(sentence, int) or isinstance(sentence, bool) or sentence < 0:
        raise InvalidInput(f"sentence must be a non-negative integer, got {sentence!r}")
    body = JobCreate(kind="attention_maps", params={"sentence": sentence})
    return jobs.submit_job(project_id, body, settings)


# ---------------------------------------------------------------- dynamics (Dynamics page)


def dynamics_analysis(project_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The newest "dynamics" result: {"dynamics": read-only arrays or None, "result_id"}; the
    arrays are those `prunescope.workers.analyses.dynamics.analyse_dynamics` returns (with
    thumbnails for image datasets)."""
    result, arrays = results.newest_arrays(project_id, "dynamics", settings or get_settings())
    return {"dynamics": arrays, "result_id": result.id if result else None}


def request_dynamics(project_id: int, settings: Settings | None = None) -> JobPublic:
    """Queue the dynamics analysis over every recorded training run of the project."""
    return jobs.submit_job(project_id, JobCreate(kind="dynamics"), settings)
