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
import torch
from torch import nn

from prunescope.models.checkpoints import CheckpointError, load_model, save_safetensors
from prunescope.models.pruning import PRUNING_METHODS, method_flag, sparsity_error
from prunescope.models.pruning.attention_heads import attention_head_prune
from prunescope.models.pruning.synflow import synflow_prune
from prunescope.models.registry import build_config
from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names, sparsity_report
from prunescope.workers.analyses.evaluation import evaluate_checkpoints, evaluation_batches, tokenizer_of
from prunescope.workers.analyses.layers import CONV_POOLINGS, is_token_model
from prunescope.workers.analyses.masks_and_neurons import mask_analysis, wasserstein_analysis
from prunescope.workers.datasets import ClassificationData, as_model_input, load_dataset
from prunescope.workers.imp import imp_rewind
from prunescope.workers.jobspec import (
    JOB_KINDS,
    CheckpointRef,
    JobInputError,
    JobOutput,
    JobSpec,
    NewCheckpoint,
    NewResult,
    ProgressFn,
    default_pruned_name,
    run_name,
)
from prunescope.workers.training import init_model, train_classifier

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
    # Data-dependent methods (snip, grasp, wanda, sparsegpt, …): training-split batches.
    "calibration_batches": _positive_int(8),
    "calibration_batch_size": _positive_int(64),
    # synflow
    "iterations": _positive_int(100),
    # imp_rewind
    "rounds": _positive_int(3),
    "epochs_per_round": _positive_int(2),
    "rewind_epoch": Param(int, 1, "a non-negative integer", lambda v: v >= 0),
    "lr": Param(float, 1e-3, "a positive number", lambda v: math.isfinite(v) and v > 0),
    "batch_size": _positive_int(64),
}
# Which methods read each method-specific parameter; giving one to another method is an error.
_PRUNE_PARAM_USERS: dict[str, Callable[[str], bool]] = {
    **dict.fromkeys(
        ("calibration_batches", "calibration_batch_size"),
        lambda m: method_flag(m, "needs_calibration") or method_flag(m, "uses_calibration"),
    ),
    "iterations": lambda m: m == "synflow",
    **dict.fromkeys(("rounds", "epochs_per_round", "rewind_epoch", "lr", "batch_size"),
                    lambda m: method_flag(m, "needs_training")),
}
ANALYZE_PARAMS: dict[str, Param] = {
    "batch_size": _positive_int(256),
    "conv_pooling": Param(str, "mean", f"one of {', '.join(CONV_POOLINGS)}",
                          lambda v: v in CONV_POOLINGS),
    # Wasserstein neurons cost one extra pass per checkpoint; registry models only.
    "neurons": Param(bool, True, "true or false"),
    # The server resolves these into spec.checkpoints; accepted, not used.
    "checkpoint_ids": Param(list, None, "a list of checkpoint ids"),
    # Rows of the layer × layer matrices: a checkpoint other than the dense one gives a
    # "layer_comparison" result (the project's dense-referenced "evaluation" stays as it is).
    "reference_checkpoint_id": Param(int, None, "a checkpoint id of this project"),
}


GEOMETRY_PARAMS: dict[str, Param] = {
    "batch_size": _positive_int(1024),
    "projection": Param(str, "umap", "one of umap, pca", lambda v: v in ("umap", "pca")),
    "alignment": Param(str, "reference", "one of reference, aligned",
                       lambda v: v in ("reference", "aligned")),
    "seed": _SEED,
    "n_neighbors": Param(int, 15, "an integer of at least 2", lambda v: v >= 2),
    "min_dist": Param(float, 0.1, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    # The server resolves these into spec.checkpoints; accepted, not used.
    "checkpoint_ids": Param(list, None, "a list of checkpoint ids"),
}


PROBE_PARAMS: dict[str, Param] = {
    "max_examples": Param(int, 400, "an integer of at least 20", lambda v: v >= 20),
    "tasks": Param(list, None, "a list of probing task names"),
    "seed": _SEED,
    # The server resolves these into spec.checkpoints; accepted, not used.
    "checkpoint_ids": Param(list, None, "a list of checkpoint ids"),
}


ATTENTION_MAPS_PARAMS: dict[str, Param] = {
    # Position in the evaluation (test) split's sentences.
    "sentence": Param(int, 0, "a non-negative integer", lambda v: v >= 0),
    "max_tokens": Param(int, 64, "an integer from 4 to 512", lambda v: 4 <= v <= 512),
    # The server resolves these into spec.checkpoints; accepted, not used.
    "checkpoint_ids": Param(list, None, "a list of checkpoint ids"),
}


TRAIN_DYNAMICS_PARAMS: dict[str, Param] = {
    # dense: from scratch; gmp: from scratch with gradual magnitude pruning (Zhu & Gupta) to
    # `sparsity`; finetune: a pruned checkpoint (checkpoint_ids, one id) trained with its
    # zeros kept.
    "mode": Param(str, "dense", "one of dense, gmp, finetune",
                  lambda v: v in ("dense", "gmp", "finetune")),
    "sparsity": Param(float, 0.0, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "seed": _SEED,
    "epochs": _positive_int(30),
    "lr": Param(float, 1e-3, "a positive number", lambda v: math.isfinite(v) and v > 0),
    "batch_size": _positive_int(64),
    # The GMP schedule, as fractions of all optimizer steps, and its step interval.
    "gmp_start": Param(float, 0.1, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "gmp_end": Param(float, 0.7, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "gmp_frequency": _positive_int(10),
    # Probe suites: the same for every run with the same three values. Size per suite: by
    # default 1 % of the training set (MAP-D's 500 of CIFAR's 50,000), at least 50, at most 500.
    "probe_size": Param(int, None, "an integer of at least 2", lambda v: v >= 2),
    "noise_sigma": Param(float, 0.25, "a positive number", lambda v: math.isfinite(v) and v > 0),
    "probe_seed": Param(int, 0, "a non-negative integer", lambda v: v >= 0),
    # A fifth suite of uniform-noise inputs with random labels (MAP-D's optional one).
    "random_inputs": Param(bool, False, "true or false"),
    "name": Param(str, None, _NAME_RULE, _valid_name),
    "checkpoint_ids": Param(list, None, "a list of one pruned checkpoint id"),
}
DYNAMICS_PARAMS: dict[str, Param] = {
    "k": Param(int, 20, "an integer of at least 1", lambda v: v >= 1),
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
        if param.type is bool:
            ok_type = isinstance(value, bool)
        else:
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
        return load_model(
            spec.architecture, spec.architecture_config, ref.path, assets_path=ref.assets_path
        )
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
    if spec.dataset is None and not required:
        return None
    data = _dataset(spec)
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


def _prune_with(spec: JobSpec, model: nn.Module, params: Mapping[str, Any],
                progress: ProgressFn) -> dict[str, Any]:
    """Prune `model` in place with params.method; returns extra summary entries."""
    method, sparsity = params["method"], params["sparsity"]
    if method_flag(method, "needs_training"):
        data = _dataset(spec)
        history = imp_rewind(
            model, data, sparsity, rounds=params["rounds"],
            epochs_per_round=params["epochs_per_round"], rewind_epoch=params["rewind_epoch"],
            lr=params["lr"], batch_size=params["batch_size"], seed=params["seed"],
            progress=progress,
        )
        return {"imp_history": history}
    calibration = None
    if method_flag(method, "needs_calibration") or method_flag(method, "uses_calibration"):
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


def _run_prune(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    params = read_params("prune", spec.params, PRUNE_PARAMS)
    method, sparsity = params["method"], params["sparsity"]
    misplaced = [k for k, uses in _PRUNE_PARAM_USERS.items()
                 if spec.params.get(k) is not None and not uses(method)]
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
    if len(spec.checkpoints) != 1 or spec.checkpoints[0].role != "dense":
        found = ", ".join(f"{c.name!r} ({c.role})" for c in spec.checkpoints) or "none"
        raise JobInputError(
            f"a prune job starts from exactly one dense checkpoint; got {found}. "
            "Upload or train the project's dense checkpoint first"
        )
    dense = spec.checkpoints[0]
    progress(0.0, f"loading {dense.name!r}")
    model = _load(spec, dense)
    progress(0.1, f"pruning with {method} to {sparsity:.0%} sparsity")
    try:
        extra = _prune_with(spec, model, params, _scaled(progress, 0.1, 0.95))
    except ValueError as exc:  # the method's own checks: what in the model or data does not fit
        raise JobInputError(f"{method} cannot prune this model: {exc}") from exc
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
            **extra,
        },
    )


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: a value that does not exist (no classifier head) becomes null."""
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]


def _run_analyze(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    params = read_params("analyze", spec.params, ANALYZE_PARAMS)
    data = _dataset(spec)
    reference_id = params["reference_checkpoint_id"]
    reference = next((c for c in spec.checkpoints if c.id == reference_id), None)
    comparison = reference is not None and reference.role != "dense"
    progress(0.0, f"evaluating {len(spec.checkpoints)} checkpoints on {data.name}")
    arrays = evaluate_checkpoints(
        spec.architecture,
        spec.architecture_config,
        spec.checkpoints,
        data,
        batch_size=params["batch_size"],
        conv_pooling=params["conv_pooling"],
        reference_id=reference_id,
        progress=_scaled(progress, 0.0, 1.0 if comparison else 0.8),
    )
    scratch = Path(spec.scratch_dir)
    kind = "layer_comparison" if comparison else "evaluation"
    np.savez(scratch / f"{kind}.npz", **arrays)
    ids = [str(i) for i in arrays["checkpoint_ids"].tolist()]
    summary = {
        "accuracy": dict(zip(ids, _finite_or_none(arrays["accuracy"]), strict=True)),
        "mean_cka": dict(zip(ids, arrays["cka"].mean(axis=1).tolist(), strict=True)),
        "layers": arrays["layers"].tolist(),
        "num_examples": int(arrays["labels"].shape[0]),
        "dataset": data.name,  # results stay attributable when the active dataset changes
        "reference_id": int(arrays["reference_id"]),
    }
    results = [NewResult(kind=kind, path=str(scratch / f"{kind}.npz"), summary=summary)]
    if not comparison:
        results += _masks_and_neurons(spec, data, params, _scaled(progress, 0.8, 0.99))
    progress(1.0, "analysis written")
    return JobOutput(results=results, summary=summary)


def _masks_and_neurons(
    spec: JobSpec, data: ClassificationData, params: dict[str, Any], progress: ProgressFn
) -> list[NewResult]:
    """Mask overlap between the pruned checkpoints and, for registry models, Wasserstein
    neurons; each a result of its own (skipped where there is nothing to compare)."""
    dense_ref = next(c for c in spec.checkpoints if c.role == "dense")
    pruned_refs = [c for c in spec.checkpoints if c.role != "dense"]
    if not pruned_refs:
        return []
    dense = _load(spec, dense_ref)
    pruned = {c.name: _load(spec, c) for c in pruned_refs}
    results = []
    scratch = Path(spec.scratch_dir)
    progress(0.0, "comparing pruning masks")
    try:
        masks = mask_analysis(
            dense.state_dict(), {n: m.state_dict() for n, m in pruned.items()},
            prunable_parameter_names(dense), skip_shape_mismatch=True,
        )
    except ValueError:
        masks = None  # every layer changed shape: structurally pruned, no masks exist
    if masks is not None:
        np.savez(scratch / "masks.npz", **masks)
        results.append(NewResult(kind="masks", path=str(scratch / "masks.npz"), summary={
            "top_magnitude_overlap": dict(zip(
                [str(c.id) for c in pruned_refs],
                masks["top_magnitude_overlap_overall"].tolist(), strict=True)),
        }))
    if params["neurons"] and not is_token_model(dense):
        batches = evaluation_batches(dense, data, dense_ref, batch_size=params["batch_size"])
        comparable = [c for c in pruned_refs if not getattr(pruned[c.name],
                                                            "structural_changes", [])]
        if comparable:
            neurons = wasserstein_analysis(
                dense, {c.name: pruned[c.name] for c in comparable},
                [b.inputs for b in batches], progress=_scaled(progress, 0.1, 1.0),
            )
            np.savez(scratch / "neurons.npz", **neurons)
            results.append(NewResult(kind="neurons", path=str(scratch / "neurons.npz"),
                                     summary={"layers": neurons["layers"].tolist()}))
    return results


def _run_geometry(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    from prunescope.workers.analyses.geometry import geometry_of_checkpoints

    params = read_params("geometry", spec.params, GEOMETRY_PARAMS)
    data = _dataset(spec)
    progress(0.0, f"geometry of {len(spec.checkpoints)} checkpoints on {data.name}")
    arrays = geometry_of_checkpoints(
        spec.architecture, spec.architecture_config, spec.checkpoints, data,
        batch_size=params["batch_size"], method=params["projection"],
        alignment=params["alignment"], seed=params["seed"], n_neighbors=params["n_neighbors"],
        min_dist=params["min_dist"], cache_dir=spec.cache_dir,
        progress=_scaled(progress, 0.0, 0.99),
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


def _text_data(spec: JobSpec, what: str) -> ClassificationData:
    """The project's dataset, which must hold sentences for `what` (a job's subject)."""
    data = _dataset(spec)
    if data.texts_test is None:
        raise JobInputError(f"dataset {data.name!r} has no text; {what} need sentences")
    return data


def _token_models(spec: JobSpec, refs: list[CheckpointRef], what: str,
                  progress: ProgressFn | None = None) -> list[nn.Module]:
    """The checkpoints `refs` loaded, refused unless they are Hugging Face Transformers."""
    models = []
    for i, ref in enumerate(refs):
        if progress is not None:
            progress(i / len(refs), f"loading {ref.name!r}")
        models.append(_load(spec, ref))
    if not is_token_model(models[0]):
        raise JobInputError(f"{what} read a Transformer's outputs; this project's "
                            "architecture is not a Hugging Face model")
    return models


def _run_probe(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    from prunescope.workers.analyses.evaluation import dense_checkpoint, tokenizer_of
    from prunescope.workers.analyses.probing import probe_checkpoints
    from prunescope.workers.analyses.probing_tasks import PROBING_TASKS

    params = read_params("probe", spec.params, PROBE_PARAMS)
    data = _text_data(spec, "linear probes")
    dense = dense_checkpoint(spec.checkpoints)
    models = _token_models(spec, list(spec.checkpoints), "linear probes")
    texts = [*data.texts_train.tolist(), *data.texts_test.tolist()]
    try:
        arrays = probe_checkpoints(
            models, [c.name for c in spec.checkpoints], tokenizer_of(dense), texts,
            tasks=params["tasks"] or tuple(PROBING_TASKS), max_examples=params["max_examples"],
            seed=params["seed"], progress=_scaled(progress, 0.0, 0.99),
        )
    except ValueError as exc:
        raise JobInputError(f"the probing tasks cannot be built from {data.name!r}: {exc}") \
            from exc
    arrays["checkpoint_ids"] = np.array([c.id for c in spec.checkpoints], dtype=np.int64)
    path = Path(spec.scratch_dir) / "probing.npz"
    np.savez(path, **arrays)
    summary = {"dataset": data.name, "tasks": arrays["tasks"].tolist(),
               "examples": arrays["examples"].tolist(),
               "checkpoint_ids": arrays["checkpoint_ids"].tolist()}
    progress(1.0, "probes written")
    return JobOutput(results=[NewResult(kind="probing", path=str(path), summary=summary)],
                     summary=summary)


def _run_attention_maps(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    from prunescope.workers.analyses.attention_maps import attention_maps
    from prunescope.workers.analyses.evaluation import dense_checkpoint, tokenizer_of

    params = read_params("attention_maps", spec.params, ATTENTION_MAPS_PARAMS)
    data = _text_data(spec, "attention maps")
    sentence, count = params["sentence"], len(data.texts_test)
    if sentence >= count:
        raise JobInputError(f"params.sentence {sentence} is out of range: the evaluation split "
                            f"of {data.name!r} has {count} sentences; choose 0–{count - 1}")
    dense = dense_checkpoint(spec.checkpoints)
    refs = [dense, *[c for c in spec.checkpoints if c.id != dense.id]]
    models = _token_models(spec, refs, "attention maps", _scaled(progress, 0.0, 0.6))
    try:
        arrays = attention_maps(models, [c.name for c in refs], tokenizer_of(dense),
                                str(data.texts_test[sentence]), max_tokens=params["max_tokens"],
                                progress=_scaled(progress, 0.6, 0.99))
    except ValueError as exc:
        raise JobInputError(f"attention maps of sentence {sentence}: {exc}") from exc
    arrays["checkpoint_ids"] = np.array([c.id for c in refs], dtype=np.int64)
    arrays["sentence"] = np.array(sentence, dtype=np.int64)
    path = Path(spec.scratch_dir) / "attention_maps.npz"
    np.savez_compressed(path, **arrays)
    summary = {"dataset": data.name, "sentence": sentence,
               "tokens": int(arrays["tokens"].shape[0]),
               "checkpoint_ids": arrays["checkpoint_ids"].tolist()}
    progress(1.0, "attention maps written")
    return JobOutput(results=[NewResult(kind="attention_maps", path=str(path), summary=summary)],
                     summary=summary)


def default_probe_size(num_train: int) -> int:
    """Examples per probe suite when not given: 1 % of the training set within [50, 500]."""
    return int(min(500, max(50, round(0.01 * num_train))))


def _run_train_dynamics(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    from prunescope.models.registry import list_architectures
    from prunescope.workers.analyses.dynamics_training import (
        DynamicsWriter,
        GmpSchedule,
        build_probe_suites,
        train_with_dynamics,
    )

    params = read_params("train_dynamics", spec.params, TRAIN_DYNAMICS_PARAMS)
    mode = params["mode"]
    if mode == "gmp" and params["sparsity"] <= 0:
        raise JobInputError("a gmp run needs params.sparsity, the final sparsity, above 0")
    if params["gmp_end"] <= params["gmp_start"]:
        raise JobInputError("params.gmp_end must come after params.gmp_start")
    if spec.architecture not in list_architectures():
        raise JobInputError("training runs with recorded dynamics need a registry "
                            f"architecture; {spec.architecture!r} is not one")
    data = _dataset(spec)
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
        model = _load(spec, pruned[0])
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
                progress=_scaled(progress, 0.02, 0.97))
    except ValueError as exc:
        raise JobInputError(f"run {name!r}: {exc}") from exc
    stats = _write_checkpoint(model, scratch / "weights.safetensors")
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


def _run_dynamics(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    from prunescope.workers.analyses.dynamics import RunRecord, SuiteArrays, analyse_dynamics
    from prunescope.workers.analyses.dynamics_training import ProbeSuites, read_dynamics
    from prunescope.workers.analyses.geometry import thumbnails

    params = read_params("dynamics", spec.params, DYNAMICS_PARAMS)
    # The newest recording of each run (a rerun under the same name replaces the older one).
    runs: dict[str, dict[str, Any]] = {}
    for ref in spec.results:
        name = str(ref.summary.get("run"))
        runs.setdefault(name, {})[ref.kind] = ref
    complete = {n: r for n, r in runs.items() if {"dynamics_run", "dynamics_meta"} <= set(r)}
    if not complete:
        raise JobInputError("this project has no recorded training runs; queue train_dynamics "
                            "jobs (a dense population and pruned ones) first")
    data = _dataset(spec)
    records, suites, keys = [], None, {}
    for i, (name, refs) in enumerate(sorted(complete.items())):
        progress(0.4 * i / len(complete), f"reading run {name}")
        summary = refs["dynamics_run"].summary
        try:
            trajectories = read_dynamics(refs["dynamics_run"].path)
        except ValueError as exc:
            raise JobInputError(f"run {name!r}: its recorded dynamics are unusable: {exc}") \
                from exc
        with np.load(refs["dynamics_meta"].path, allow_pickle=False) as meta:
            run_suites = ProbeSuites.from_arrays(meta)
            train_labels = meta["train_labels"]
            test_predictions = meta["test_predictions"]
            test_accuracy = float(meta["test_accuracy"][-1])
        key = (tuple(run_suites.categories), run_suites.suite.tobytes(),
               run_suites.reference.tobytes())
        keys.setdefault(key, []).append(name)
        suites = suites or run_suites
        records.append(RunRecord(
            name=name, mode=str(summary.get("mode")), sparsity=float(summary.get("sparsity", 0)),
            seed=int(summary.get("seed", 0)), loss=trajectories["loss"],
            prediction=trajectories["prediction"], p_gold=trajectories["p_gold"],
            test_predictions=test_predictions, test_accuracy=test_accuracy))
    if len(keys) > 1:
        raise JobInputError("the runs were trained with different probe suites (" + "; ".join(
            ", ".join(names) for names in keys.values()) + "); train every run with the same "
            "probe_seed, probe_size and noise_sigma")
    assert suites is not None
    try:
        arrays = analyse_dynamics(
            records,
            SuiteArrays(categories=tuple(suites.categories), suite=suites.suite,
                        reference=suites.reference, train_labels=train_labels,
                        original_labels=suites.original_labels),
            np.asarray(data.y_test, dtype=np.int64), list(data.class_names), k=params["k"],
            test_groups=data.groups_test, progress=_scaled(progress, 0.4, 0.95))
    except ValueError as exc:
        raise JobInputError(f"the dynamics cannot be analysed: {exc}") from exc
    if (images := thumbnails(data)) is not None:
        arrays["test_thumbnails"] = images
        arrays["train_thumbnails"] = thumbnails(data, "train")
    path = Path(spec.scratch_dir) / "dynamics.npz"
    np.savez(path, **arrays)
    summary = {"runs": sorted(complete), "dataset": data.name,
               "pie_fraction": dict(zip(arrays["population_names"].tolist(),
                                        _finite_or_none(arrays["pie_fraction"]), strict=True))}
    progress(1.0, "dynamics analysed")
    return JobOutput(results=[NewResult(kind="dynamics", path=str(path), summary=summary)],
                     summary=summary)


_HANDLERS: dict[str, Callable[[JobSpec, ProgressFn], JobOutput]] = {
    "train": _run_train,
    "prune": _run_prune,
    "analyze": _run_analyze,
    "geometry": _run_geometry,
    "probe": _run_probe,
    "attention_maps": _run_attention_maps,
    "train_dynamics": _run_train_dynamics,
    "dynamics": _run_dynamics,
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
