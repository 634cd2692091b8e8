"""The job runner: turns a train, prune or analyze `JobSpec` into output files and a `JobOutput`.

Parameters are read and checked up front, against one table per job kind, so a typo or an
out-of-range value fails at once with a message naming the parameter, before any work starts.
The computation itself lives in models/ and workers/analyses; this module only wires it up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from models.checkpoints import CheckpointError, load_model, save_safetensors
from models.pruning import PRUNING_METHODS
from models.registry import build_config
from models.sparsity import sparsity_report
from workers.analyses.evaluation import evaluate_checkpoints
from workers.datasets import ClassificationData, load_dataset
from workers.jobspec import (
    JOB_KINDS,
    CheckpointRef,
    JobInputError,
    JobOutput,
    JobSpec,
    NewCheckpoint,
    NewResult,
    ProgressFn,
    default_pruned_name,
)
from workers.training import init_model, train_classifier

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One job parameter: its type, default (or required) and the rule its value must meet."""

    type: type
    default: Any = _REQUIRED
    rule: str = ""
    valid: Callable[[Any], bool] = lambda value: True


def _positive_int(default: int) -> Param:
    return Param(int, default, "a positive integer", lambda v: v >= 1)


_SEED = Param(int, 0, "an integer")
_NAME_RULE = "a non-empty name of at most 200 characters"


def _valid_name(value: str) -> bool:
    return bool(value.strip()) and len(value) <= 200


TRAIN_PARAMS: dict[str, Param] = {
    "epochs": _positive_int(30),
    "lr": Param(float, 1e-3, "a positive number", lambda v: math.isfinite(v) and v > 0),
    "batch_size": _positive_int(64),
    "seed": _SEED,
    "name": Param(str, "dense", _NAME_RULE, _valid_name),
}
PRUNE_PARAMS: dict[str, Param] = {
    "method": Param(str, rule=f"one of {', '.join(sorted(PRUNING_METHODS))}",
                    valid=lambda v: v in PRUNING_METHODS),
    "sparsity": Param(float, rule="a number in (0, 1)", valid=lambda v: 0.0 < v < 1.0),
    "seed": _SEED,
    "name": Param(str, None, _NAME_RULE, _valid_name),
    # The server resolves which checkpoint to prune into spec.checkpoints; accepted, not used.
    "dense_checkpoint_id": Param(int, None, "a checkpoint id"),
}
ANALYZE_PARAMS: dict[str, Param] = {
    "batch_size": _positive_int(256),
    # The server resolves these into spec.checkpoints; accepted, not used.
    "checkpoint_ids": Param(list, None, "a list of checkpoint ids"),
}


def read_params(kind: str, params: Mapping[str, Any], table: Mapping[str, Param]) -> dict[str, Any]:
    """Validated parameters with defaults filled in; JobInputError names the first bad one."""
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise JobInputError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for a {kind} job; "
            f"accepted: {', '.join(table)}"
        )
    values = {}
    for key, param in table.items():
        value = params.get(key)
        if value is None:
            if param.default is _REQUIRED:
                raise JobInputError(f"params.{key} is required for a {kind} job: {param.rule}")
            values[key] = param.default
            continue
        # bool is an int subclass, but `epochs: true` is a mistake, not 1 epoch.
        ok_type = not isinstance(value, bool) and (
            isinstance(value, param.type) or (param.type is float and isinstance(value, int))
        )
        if not ok_type or not param.valid(value):
            raise JobInputError(f"params.{key} must be {param.rule}, got {value!r}")
        values[key] = float(value) if param.type is float else value
    return values


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """Map a step's own 0..1 progress onto [start, end] of the job's."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * fraction, message)

    return report


def _dataset(spec: JobSpec) -> ClassificationData:
    if spec.dataset is None:
        raise JobInputError(f"a {spec.kind} job needs a dataset; this project has none")
    return load_dataset(spec.dataset)


def _load(spec: JobSpec, ref: CheckpointRef) -> nn.Module:
    try:
        return load_model(spec.architecture, spec.architecture_config, ref.path)
    except CheckpointError as exc:
        raise JobInputError(f"checkpoint {ref.name!r} (id {ref.id}) cannot be used: {exc}") from exc


def _write_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    state = model.state_dict()
    save_safetensors(state, path)
    return sparsity_report(model)


def _run_train(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    params = read_params("train", spec.params, TRAIN_PARAMS)
    data = _dataset(spec)
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
        progress=_scaled(progress, 0.0, 0.95),
    )
    seconds = time.perf_counter() - started
    path = Path(spec.scratch_dir) / "checkpoint.safetensors"
    stats = _write_checkpoint(model, path)
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


def _run_prune(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    params = read_params("prune", spec.params, PRUNE_PARAMS)
    if len(spec.checkpoints) != 1 or spec.checkpoints[0].role != "dense":
        found = ", ".join(f"{c.name!r} ({c.role})" for c in spec.checkpoints) or "none"
        raise JobInputError(
            f"a prune job starts from exactly one dense checkpoint; got {found}. "
            "Upload or train the project's dense checkpoint first"
        )
    dense = spec.checkpoints[0]
    method, sparsity = params["method"], params["sparsity"]
    progress(0.0, f"loading {dense.name!r}")
    model = _load(spec, dense)
    progress(0.3, f"pruning with {method} to {sparsity:.0%} sparsity")
    PRUNING_METHODS[method](model, sparsity, seed=params["seed"])
    path = Path(spec.scratch_dir) / "checkpoint.safetensors"
    stats = _write_checkpoint(model, path)
    progress(1.0, f"pruned: {stats['sparsity']:.2%} of prunable weights are zero")
    return JobOutput(
        checkpoints=[
            NewCheckpoint(
                name=params["name"] or default_pruned_name(method, sparsity),
                role="pruned",
                path=str(path),
                method=method,
                target_sparsity=sparsity,
                parent_id=dense.id,
                stats=stats,
            )
        ],
        summary={
            "measured_sparsity": stats["sparsity"],
            "num_params": stats["num_params"],
            "num_nonzero": stats["num_nonzero"],
        },
    )


def _run_analyze(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    params = read_params("analyze", spec.params, ANALYZE_PARAMS)
    data = _dataset(spec)
    progress(0.0, f"evaluating {len(spec.checkpoints)} checkpoints on {data.name}")
    arrays = evaluate_checkpoints(
        spec.architecture,
        spec.architecture_config,
        spec.checkpoints,
        data,
        batch_size=params["batch_size"],
        progress=_scaled(progress, 0.0, 0.98),
    )
    path = Path(spec.scratch_dir) / "evaluation.npz"
    np.savez(path, **arrays)
    ids = [str(i) for i in arrays["checkpoint_ids"].tolist()]
    summary = {
        "accuracy": dict(zip(ids, arrays["accuracy"].tolist(), strict=True)),
        "mean_cka": dict(zip(ids, arrays["cka"].mean(axis=1).tolist(), strict=True)),
        "layers": arrays["layers"].tolist(),
        "num_examples": int(arrays["labels"].shape[0]),
    }
    progress(1.0, "evaluation written")
    return JobOutput(results=[NewResult(kind="evaluation", path=str(path), summary=summary)],
                     summary=summary)


_HANDLERS: dict[str, Callable[[JobSpec, ProgressFn], JobOutput]] = {
    "train": _run_train,
    "prune": _run_prune,
    "analyze": _run_analyze,
}


def run_job(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    """Run one job; output files are written into spec.scratch_dir.

    Raises JobInputError for unusable inputs or parameters (the message says what to change)
    and lets JobCancelled from `progress` propagate.
    """
    handler = _HANDLERS.get(spec.kind)
    if handler is None:
        raise JobInputError(f"unknown job kind {spec.kind!r}; choose one of {', '.join(JOB_KINDS)}")
    try:
        build_config(spec.architecture, **spec.architecture_config)
    except (TypeError, ValueError) as exc:
        raise JobInputError(f"the project's architecture cannot be built: {exc}") from exc
    return handler(spec, progress)
