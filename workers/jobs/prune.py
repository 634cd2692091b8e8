"""The prune job: prunes the project's dense checkpoint with one method to one sparsity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunescope.models.pruning.catalogue import PRUNING_CATALOGUE, method_flag, sparsity_error
from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import SEED, Param, name_param, positive_float, positive_int
from prunescope.workers.jobspec import (
    JobInputError,
    JobOutput,
    JobSpec,
    NewCheckpoint,
    ProgressFn,
    default_pruned_name,
)

if TYPE_CHECKING:
    from torch import nn

PARAMS: dict[str, Param] = {
    "method": Param(str, rule=f"one of {', '.join(sorted(PRUNING_CATALOGUE))}",
                    valid=lambda v: v in PRUNING_CATALOGUE),
    "sparsity": Param(float, rule="a number in (0, 1)", valid=lambda v: 0.0 < v < 1.0),
    "seed": SEED,
    "name": name_param(None),
    # Which checkpoint to prune (default: the project's dense one); the server resolves it.
    "dense_checkpoint_id": Param(int, None, "a checkpoint id"),
    # Data-dependent methods (snip, grasp, wanda, sparsegpt, …): training-split batches.
    "calibration_batches": positive_int(8),
    "calibration_batch_size": positive_int(64),
    # synflow
    "iterations": positive_int(100, 100_000),
    # imp_rewind
    "rounds": positive_int(3, 1_000),
    "epochs_per_round": positive_int(2, 10_000),
    "rewind_epoch": Param(int, 1, "an integer from 0 to 10,000", lambda v: 0 <= v <= 10_000),
    "lr": positive_float(1e-3),
    "batch_size": positive_int(64),
}


def _reads_calibration(method: str) -> bool:
    return method_flag(method, "needs_calibration") or method_flag(method, "uses_calibration")


# Which methods read each method-specific parameter; giving one to another method is an error.
_PARAM_USERS: dict[str, Callable[[str], bool]] = {
    **dict.fromkeys(("calibration_batches", "calibration_batch_size"), _reads_calibration),
    "iterations": lambda m: m == "synflow",
    **dict.fromkeys(("rounds", "epochs_per_round", "rewind_epoch", "lr", "batch_size"),
                    lambda m: method_flag(m, "needs_training")),
}


def check_prune(params: dict[str, Any], given: Mapping[str, Any]) -> None:
    method, sparsity = params["method"], params["sparsity"]
    misplaced = [k for k, uses in _PARAM_USERS.items()
                 if given.get(k) is not None and not uses(method)]
    if misplaced:
        raise JobInputError(
            f"params {', '.join(misplaced)} do not apply to method {method!r}; remove them"
        )
    if params["rewind_epoch"] >= params["epochs_per_round"]:
        raise JobInputError(
            f"params.rewind_epoch ({params['rewind_epoch']}) must be below "
            f"params.epochs_per_round ({params['epochs_per_round']})"
        )
    if error := sparsity_error(method, sparsity):
        raise JobInputError(f"params.sparsity: {error}")


def run_prune(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.jobs.common import load_checkpoint_model, scaled, write_checkpoint

    method, sparsity = params["method"], params["sparsity"]
    if len(spec.checkpoints) != 1 or spec.checkpoints[0].role != "dense":
        found = ", ".join(f"{c.name!r} ({c.role})" for c in spec.checkpoints) or "none"
        raise JobInputError(
            f"a prune job starts from exactly one dense checkpoint; got {found}. "
            "Upload or train the project's dense checkpoint first"
        )
    dense = spec.checkpoints[0]
    progress(0.0, f"loading {dense.name!r}")
    model = load_checkpoint_model(spec, dense)
    progress(0.1, f"pruning with {method} to {sparsity:.0%} sparsity")
    try:
        extra = _prune_with(spec, model, params, scaled(progress, 0.1, 0.95))
    except ValueError as exc:  # the method's own checks: what in the model or data does not fit
        raise JobInputError(f"{method} cannot prune this model: {exc}") from exc
    path = Path(spec.scratch_dir) / "checkpoint.safetensors"
    stats = write_checkpoint(model, path)
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
            **extra,
        },
    )


def _prune_with(spec: JobSpec, model: nn.Module, params: Mapping[str, Any],
                progress: ProgressFn) -> dict[str, Any]:
    """Prune `model` in place with params.method; returns extra summary entries."""
    # torch only in worker processes.
    from prunescope.models.pruning.attention_heads import attention_head_prune
    from prunescope.models.pruning.methods import PRUNING_METHODS
    from prunescope.models.pruning.synflow import synflow_prune
    from prunescope.workers.imp import imp_rewind
    from prunescope.workers.jobs.common import project_dataset

    method, sparsity = params["method"], params["sparsity"]
    if method_flag(method, "needs_training"):
        data = project_dataset(spec)
        history = imp_rewind(
            model, data, sparsity, rounds=params["rounds"],
            epochs_per_round=params["epochs_per_round"], rewind_epoch=params["rewind_epoch"],
            lr=params["lr"], batch_size=params["batch_size"], seed=params["seed"],
            progress=progress,
        )
        return {"imp_history": history}
    calibration = None
    if _reads_calibration(method):
        calibration = _calibration_batches(
            spec, model, params, required=method_flag(method, "needs_calibration")
        )
    extra: dict[str, Any] = {}
    if method == "synflow":
        synflow_prune(model, sparsity, iterations=params["iterations"], progress=progress)
    elif method == "attention_heads":
        removed = attention_head_prune(model, sparsity, calibration)
        extra["removed_heads"] = removed
        extra["head_score"] = "michel_importance" if calibration else "weight_l2_norm"
    else:
        PRUNING_METHODS[method](
            model, sparsity, seed=params["seed"], calibration=calibration, progress=progress
        )
    if calibration:
        extra["calibration_examples"] = sum(_batch_size(inputs) for inputs, _ in calibration)
    return extra


def _calibration_batches(
    spec: JobSpec, model: nn.Module, params: Mapping[str, Any], *, required: bool
) -> list | None:
    """`calibration_batches` batches of (inputs, labels) from the training split, drawn without
    replacement in an order fixed by the job's seed (fewer when the split is smaller).

    Models that read token ids (Hugging Face) get sentences of a text dataset, tokenized by
    the dense checkpoint's own tokenizer and padded per batch, with labels None (Wanda and
    SparseGPT need only the inputs). None when the method can do without and there is no
    usable dataset.
    """
    # torch only in worker processes.
    import torch

    from prunescope.workers.analyses.evaluation import tokenizer_of
    from prunescope.workers.datasets import as_model_input
    from prunescope.workers.jobs.common import project_dataset

    if spec.dataset is None and not required:
        return None
    data = project_dataset(spec)
    size = params["calibration_batch_size"]
    generator = torch.Generator().manual_seed(params["seed"])
    if getattr(model, "input_shape", None) is None:
        if data.texts_train is None:
            if not required:
                return None
            raise JobInputError(
                f"{params['method']} needs calibration sentences, and dataset {data.name!r} "
                "has no text; make a text dataset (english_sentences, or an upload with a "
                "text column) the project's active dataset, or choose a data-free method such "
                "as magnitude_global, magnitude_layerwise or attention_heads"
            )
        tokenizer = tokenizer_of(spec.checkpoints[0])
        order = torch.randperm(len(data.texts_train), generator=generator)
        chosen = order[: params["calibration_batches"] * size].split(size)
        return [
            (dict(tokenizer([str(data.texts_train[i]) for i in idx.tolist()], padding=True,
                            truncation=True, max_length=128, return_tensors="pt")), None)
            for idx in chosen
        ]
    x = torch.from_numpy(as_model_input(data.x_train, model.input_shape))
    y = torch.from_numpy(data.y_train)
    order = torch.randperm(len(x), generator=generator)
    chosen = order[: params["calibration_batches"] * size].split(size)
    return [(x[i], y[i]) for i in chosen]


def _batch_size(inputs: Any) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)


KIND = JobDeclaration(
    name="prune",
    position=20,
    params=PARAMS,
    handler=run_prune,
    check=check_prune,
    makes_checkpoint="pruned",
    checkpoint_params=("dense_checkpoint_id",),
    gpus=0.25,
)
