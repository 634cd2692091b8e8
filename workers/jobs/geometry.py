"""The geometry job: a shared 2-D map of the checkpoints' last-layer features, with per-example
predictions and calibration, to draw where pruning moves each example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import CHECKPOINT_IDS, SEED, Param, one_of, positive_int
from prunescope.workers.jobspec import JobOutput, JobSpec, NewResult, ProgressFn

PARAMS: dict[str, Param] = {
    "batch_size": positive_int(1024),
    "projection": one_of("umap", ("umap", "pca")),
    "alignment": one_of("reference", ("reference", "aligned")),
    "seed": SEED,
    "n_neighbors": Param(int, 15, "an integer from 2 to 10,000", lambda v: 2 <= v <= 10_000),
    "min_dist": Param(float, 0.1, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    "checkpoint_ids": CHECKPOINT_IDS,
}


def run_geometry(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch and umap only in worker processes; the server imports this declaration.
    from prunescope.workers.analyses.geometry import geometry_of_checkpoints
    from prunescope.workers.jobs.common import project_dataset, scaled

    data = project_dataset(spec)
    progress(0.0, f"geometry of {len(spec.checkpoints)} checkpoints on {data.name}")
    arrays = geometry_of_checkpoints(
        spec.architecture, spec.architecture_config, spec.checkpoints, data,
        batch_size=params["batch_size"], method=params["projection"],
        alignment=params["alignment"], seed=params["seed"], n_neighbors=params["n_neighbors"],
        min_dist=params["min_dist"], cache_dir=spec.cache_dir,
        progress=scaled(progress, 0.0, 0.99),
    )
    path = Path(spec.scratch_dir) / "geometry.npz"
    np.savez(path, **arrays)
    ids = [str(i) for i in arrays["checkpoint_ids"].tolist()]
    accuracy = (arrays["predictions"] == arrays["labels"][None, :]).mean(axis=1)
    summary = {
        "dataset": data.name,
        "num_examples": int(arrays["labels"].shape[0]),
        "embedding_method": str(arrays["embedding_method"]),
        "accuracy": dict(zip(ids, accuracy.tolist(), strict=True)),
        "ece": dict(zip(ids, arrays["ece"].tolist(), strict=True)),
    }
    progress(1.0, "geometry written")
    return JobOutput(results=[NewResult(kind="geometry", path=str(path), summary=summary)],
                     summary=summary)


KIND = JobDeclaration(
    name="geometry",
    position=40,
    params=PARAMS,
    handler=run_geometry,
    writes=("geometry",),
    checkpoint_params=("checkpoint_ids",),
)
