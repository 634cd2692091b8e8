"""The train job: trains the project's dense checkpoint from scratch on its dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import SEED, Param, name_param, positive_float, positive_int
from prunescope.workers.jobspec import JobOutput, JobSpec, NewCheckpoint, ProgressFn

PARAMS: dict[str, Param] = {
    "epochs": positive_int(30, 10_000),
    "lr": positive_float(1e-3),
    "batch_size": positive_int(64),
    "seed": SEED,
    "name": name_param("dense"),
}


def run_train(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.jobs.common import project_dataset, scaled, write_checkpoint
    from prunescope.workers.training import init_model, train_classifier

    data = project_dataset(spec)
    model = init_model(spec.architecture, spec.architecture_config, params["seed"])
    progress(0.0, f"training {spec.architecture} on {data.name}")
    started = time.perf_counter()
    history = train_classifier(
        model,
        data,
        epochs=params["epochs"],
        lr=params["lr"],
        batch_size=params["batch_size"],
        seed=params["seed"],
        progress=scaled(progress, 0.0, 0.95),
    )
    seconds = time.perf_counter() - started
    path = Path(spec.scratch_dir) / "checkpoint.safetensors"
    stats = write_checkpoint(model, path)
    accuracy = history["test_accuracy"][-1]
    progress(1.0, f"trained: test accuracy {accuracy:.1%}")
    return JobOutput(
        checkpoints=[
            NewCheckpoint(name=params["name"], role="dense", path=str(path), method="dense",
                          stats=stats)
        ],
        summary={
            "test_accuracy": accuracy,
            "epochs": params["epochs"],
            "train_seconds": round(seconds, 3),
            "history": history,
        },
    )


KIND = JobDeclaration(
    name="train",
    position=10,
    params=PARAMS,
    handler=run_train,
    makes_checkpoint="dense",
)
