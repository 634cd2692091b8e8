"""The train_dynamics job: one training run (dense, gradual magnitude pruning, or fine-tuning a
pruned checkpoint) that records every example's loss and prediction per epoch (MAP-D)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import (
    SEED,
    Param,
    name_param,
    one_of,
    positive_float,
    positive_int,
)
from prunescope.workers.jobspec import (
    JobInputError,
    JobOutput,
    JobSpec,
    NewResult,
    ProgressFn,
    run_name,
)

PARAMS: dict[str, Param] = {
    # dense: from scratch; gmp: from scratch with gradual magnitude pruning (Zhu & Gupta) to
    # `sparsity`; finetune: a pruned checkpoint (checkpoint_ids, one id) trained with its
    # zeros kept.
    "mode": one_of("dense", ("dense", "gmp", "finetune")),
    "sparsity": Param(float, 0.0, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "seed": SEED,
    "epochs": positive_int(30, 10_000),
    "lr": positive_float(1e-3),
    "batch_size": positive_int(64),
    # The GMP schedule, as fractions of all optimizer steps, and its step interval.
    "gmp_start": Param(float, 0.1, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "gmp_end": Param(float, 0.7, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "gmp_frequency": positive_int(10),
    # Probe suites: the same for every run with the same three values. Size per suite: by
    # default 1 % of the training set (MAP-D's 500 of CIFAR's 50,000), at least 50, at most 500.
    "probe_size": Param(int, None, "an integer from 2 to 1,000,000",
                        lambda v: 2 <= v <= 1_000_000),
    "noise_sigma": positive_float(0.25),
    "probe_seed": Param(int, 0, "an integer from 0 to 2**32 - 1", lambda v: 0 <= v < 2**32),
    # A fifth suite of uniform-noise inputs with random labels (MAP-D's optional one).
    "random_inputs": Param(bool, False, "true or false"),
    "name": name_param(None),
    "checkpoint_ids": Param(list, None, "a list of one pruned checkpoint id"),
}


def check_train_dynamics(params: dict[str, Any], given: Mapping[str, Any]) -> None:
    if params["mode"] == "gmp" and params["sparsity"] <= 0:
        raise JobInputError("a gmp run needs params.sparsity, the final sparsity, above 0")
    if params["gmp_end"] <= params["gmp_start"]:
        raise JobInputError("params.gmp_end must come after params.gmp_start")


def default_probe_size(num_train: int) -> int:
    """Examples per probe suite when not given: 1 % of the training set within [50, 500]."""
    return int(min(500, max(50, round(0.01 * num_train))))


def run_train_dynamics(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.models.registry import list_architectures
    from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names
    from prunescope.workers.analyses.dynamics_training import (
        DynamicsWriter,
        GmpSchedule,
        build_probe_suites,
        train_with_dynamics,
    )
    from prunescope.workers.jobs.common import (
        load_checkpoint_model,
        project_dataset,
        scaled,
        write_checkpoint,
    )
    from prunescope.workers.training import init_model

    mode = params["mode"]
    if spec.architecture not in list_architectures():
        raise JobInputError("training runs with recorded dynamics need a registry "
                            f"architecture; {spec.architecture!r} is not one")
    data = project_dataset(spec)
    if data.texts_train is not None:
        raise JobInputError(f"dataset {data.name!r} holds text; recorded training runs take "
                            "image or tabular data")
    progress(0.0, f"building probe suites from the {len(data.y_train)} training examples")
    try:
        trained_on, suites = build_probe_suites(
            data, size=params["probe_size"] or default_probe_size(len(data.y_train)),
            seed=params["probe_seed"], noise_sigma=params["noise_sigma"],
            random_inputs=params["random_inputs"])
    except ValueError as exc:
        raise JobInputError(f"probe suites cannot be built from {data.name!r}: {exc}") from exc
    if mode == "finetune":
        pruned = [c for c in spec.checkpoints if c.role != "dense"]
        if not params["checkpoint_ids"] or len(pruned) != 1:
            raise JobInputError("a finetune run trains one pruned checkpoint: pass its id as "
                                "params.checkpoint_ids = [id]")
        model = load_checkpoint_model(spec, pruned[0])
        sparsity = float(checkpoint_stats(model.state_dict(),
                                          prunable_parameter_names(model))["sparsity"])
    else:
        model = init_model(spec.architecture, spec.architecture_config, params["seed"])
        sparsity = params["sparsity"] if mode == "gmp" else 0.0
    steps = params["epochs"] * math.ceil(len(data.y_train) / params["batch_size"])
    gmp = None
    if mode == "gmp":
        start = int(params["gmp_start"] * steps)
        end = max(start + 1, int(params["gmp_end"] * steps))
        gmp = GmpSchedule(final=sparsity, start=start, end=end,
                          frequency=params["gmp_frequency"])
    name = run_name({**params, "sparsity": sparsity})
    scratch = Path(spec.scratch_dir)
    try:
        with DynamicsWriter(scratch / "dynamics.parquet", len(trained_on.y_train)) as writer:
            out = train_with_dynamics(
                model, trained_on, epochs=params["epochs"], lr=params["lr"],
                batch_size=params["batch_size"], seed=params["seed"], gmp=gmp,
                fixed_mask=mode == "finetune", record=writer, keep_records=False,
                progress=scaled(progress, 0.02, 0.97))
    except ValueError as exc:
        raise JobInputError(f"run {name!r}: {exc}") from exc
    stats = write_checkpoint(model, scratch / "weights.safetensors")
    np.savez(scratch / "meta.npz", **suites.to_arrays(),
             train_labels=np.asarray(trained_on.y_train, dtype=np.int64),
             test_predictions=out["test_predictions"],
             test_labels=np.asarray(data.y_test, dtype=np.int64),
             test_accuracy=out["test_accuracy"], sparsity=out["sparsity"],
             train_loss=out["train_loss"])
    summary = {"run": name, "mode": mode, "sparsity": round(sparsity, 6),
               "seed": params["seed"], "epochs": params["epochs"],
               "test_accuracy": float(out["test_accuracy"][-1]),
               "measured_sparsity": float(stats["sparsity"]),
               "probe_seed": params["probe_seed"]}
    progress(1.0, f"run {name}: test accuracy {summary['test_accuracy']:.1%}")
    return JobOutput(results=[
        NewResult(kind="dynamics_run", path=str(scratch / "dynamics.parquet"), summary=summary),
        NewResult(kind="dynamics_meta", path=str(scratch / "meta.npz"), summary=summary),
        NewResult(kind="run_weights", path=str(scratch / "weights.safetensors"),
                  summary=summary),
    ], summary=summary)


KIND = JobDeclaration(
    name="train_dynamics",
    position=70,
    params=PARAMS,
    handler=run_train_dynamics,
    check=check_train_dynamics,
    writes=("dynamics_run", "dynamics_meta", "run_weights"),
    checkpoint_params=("checkpoint_ids",),
)
