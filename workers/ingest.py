"""The validate step of an upload (`prunescope.server.services.ingest`: stage → validate → adopt
→ row): everything that builds a model, measures sparsity, fits a dataset to a model or reads
a recorded training run, where torch lives.

Pure functions of plain data — staged file paths, the declared fields, the project's
architecture and configuration, the size limit, a scratch folder for the files they write —
returning plain data: the measured statistics, the resolved format and the paths of the files
to keep (the upload itself, or files written into the scratch folder: a canonical safetensors
file and an assets zip, a canonical dataset npz, a run's Parquet and npz). They touch neither
the database nor the store, so a worker job can run them as well as the web process.

A refused file raises JobInputError (InputTooLarge past a size limit) whose message is what
the user reads; the upload's name leads it where the refusal is about that file.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunescope.models.architectures import (
    HFModelError,
    check_hf_config,
    check_model_size,
    parameter_count,
)
from prunescope.models.checkpoints import (
    CheckpointError,
    model_from_state_dict,
    read_checkpoint_upload,
    save_safetensors,
)
from prunescope.models.hf import HF_ARCHITECTURE, architecture_summary, write_assets_zip
from prunescope.models.registry import create_model
from prunescope.models.sparsity import relative_to_dense, sparsity_report
from prunescope.workers.analyses.dynamics_training import DynamicsWriter, read_dynamics
from prunescope.workers.dataset_checks import (
    CheckedDataset,
    builtin_dataset_metadata,
    builtin_dataset_names,
    check_builtin_dataset,
    dataset_metadata,
    fitted,
)
from prunescope.workers.dataset_formats import (
    ColumnNames,
    DatasetFormatError,
    DatasetLimits,
    preview,
    read_dataset_file,
)
from prunescope.workers.datasets import load_dataset, save_canonical
from prunescope.workers.jobspec import DatasetRef, JobInputError
from prunescope.workers.recorded_runs import InputTooLarge, read_recorded_run

# The builtin checks are re-exported from the torch-free `dataset_checks`, which the web server
# calls directly.
__all__ = ["CheckedDataset", "InputTooLarge", "JobInputError", "builtin_dataset_metadata",
           "builtin_dataset_names", "check_builtin_dataset", "validate"]


def _output_dir(scratch_dir: str | Path) -> Path:
    # A folder of its own: an unpacked archive in the scratch folder may hold any file name.
    return Path(tempfile.mkdtemp(dir=scratch_dir, prefix="checked-"))


# ---------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckedCheckpoint:
    format: str  # e.g. "safetensors", "hf_folder(zip)+safetensors", "+structural" when resized
    stats: dict[str, Any]  # `sparsity_report`, relative to the dense model when resized
    weights_path: str  # the file to store: the upload, or its weights as canonical safetensors
    assets_path: str | None  # a Hugging Face folder's config and tokenizer files, zipped
    project_config: dict[str, Any] | None  # the configuration the project takes on, if any


def _weight_bytes(architecture: str, config: Mapping[str, Any]) -> int | None:
    """The most bytes a checkpoint of the project's registry model can hold (None for a
    Hugging Face model, whose config.json may come with the upload): float64 weights with a
    float64 mask beside each (torch.nn.utils.prune), buffers, and room for the pickle."""
    if architecture == HF_ARCHITECTURE:
        return None
    return 32 * parameter_count(architecture, config) + 16 * 1024 * 1024


def check_checkpoint(
    path: str, *, filename: str, role: str, architecture: str, config: Mapping[str, Any],
    max_bytes: int, scratch_dir: str, max_parameters: int | None = None,
) -> CheckedCheckpoint:
    """Load an uploaded checkpoint safely and build the project's model from it.

    A Hugging Face folder archive is kept as two files: its weights as one canonical
    safetensors file and its config + tokenizer files as a small zip. The first folder
    uploaded to a `huggingface` project without a configuration gives the project its
    config.json. A folder's config.json is held to `max_parameters`
    (PRUNESCOPE_MAX_MODEL_PARAMETERS) and the size bounds before any model is built, and a
    torch archive's weights to what the project's model can hold before they are inflated.
    """
    try:
        loaded = read_checkpoint_upload(Path(path), Path(scratch_dir),
                                        max_expanded_bytes=max_bytes,
                                        max_weight_bytes=_weight_bytes(architecture, config))
        model_config, project_config = dict(config), None
        if architecture == HF_ARCHITECTURE:
            model_config, project_config = _hf_config(config, loaded.hf_folder, role)
            if loaded.hf_folder is not None:
                _check_folder_config(loaded.hf_folder.config, max_parameters)
        model = model_from_state_dict(architecture, model_config, loaded.state_dict,
                                      allow_shape_changes=role == "pruned")
    except CheckpointError as exc:
        raise JobInputError(f"{filename}: {exc}") from exc
    stats = sparsity_report(model)
    fmt = loaded.format
    if model.structural_changes:
        dense = create_model(architecture, **model_config)
        stats = relative_to_dense(stats, sparsity_report(dense))
        fmt += "+structural"
    weights, assets = Path(path), None
    if loaded.hf_folder is not None:
        out = _output_dir(scratch_dir)
        weights, assets = out / "model.safetensors", out / "assets.zip"
        save_safetensors(loaded.state_dict, weights)
        write_assets_zip(loaded.hf_folder, assets)
    return CheckedCheckpoint(fmt, stats, str(weights), None if assets is None else str(assets),
                             project_config)


def _check_folder_config(config: Mapping[str, Any], max_parameters: int | None) -> None:
    """A folder's config.json checked before any model is built from it: nothing named to
    download, sizes within bounds, parameters within PRUNESCOPE_MAX_MODEL_PARAMETERS."""
    try:
        check_hf_config(config)
        if max_parameters is not None:
            check_model_size(HF_ARCHITECTURE, config, max_parameters)
    except HFModelError as exc:
        raise CheckpointError(str(exc)) from None
    except ValueError as exc:
        raise CheckpointError(f"config.json: {exc}") from None


def _hf_config(
    config: Mapping[str, Any], folder: Any, role: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(config to validate the upload with, config the project should adopt or None).

    A folder's own config.json describes its weights; it must agree with the project's on
    everything but `pruned_heads` (head pruning with `model.prune_heads` records it there and
    shrinks the attention tensors to match).
    """
    if not config:
        if folder is None:
            raise CheckpointError(
                "this Hugging Face project has no configuration yet: upload the dense model as "
                "a folder archive (.zip or .tar.gz with config.json and model.safetensors) first"
            )
        if role != "dense":
            raise CheckpointError("upload the dense model first; it sets the project's config")
        return folder.config, folder.config
    if folder is None:
        return dict(config), None
    ours = architecture_summary(config)
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


# ---------------------------------------------------------------------------- datasets


def check_dataset(
    path: str, *, filename: str, name: str, columns: ColumnNames | Mapping[str, str] | None,
    architecture: str, config: Mapping[str, Any], max_bytes: int, scratch_dir: str,
) -> CheckedDataset:
    """Read an uploaded dataset file of any supported format, fit it to the project's model
    and write it as the canonical npz. `columns` names a table's label, text, id, group and
    split columns; unpacked archives and in-memory arrays get `max_bytes`, like the upload."""
    if columns is not None and not isinstance(columns, ColumnNames):
        columns = ColumnNames(**columns)
    try:
        loaded = read_dataset_file(path, name=name, filename=filename, columns=columns,
                                   limits=DatasetLimits(max_bytes=max_bytes),
                                   scratch_dir=scratch_dir)
    except (DatasetFormatError, JobInputError) as exc:
        raise JobInputError(f"{filename}: {exc}") from exc
    data = fitted(loaded.data, architecture, config, filename)
    summary = preview(data, loaded.split_rule)
    canonical = _output_dir(scratch_dir) / "canonical.npz"
    save_canonical(data, canonical)
    return CheckedDataset(loaded.format, dataset_metadata(data, summary), str(canonical))


# ---------------------------------------------------------------------------- dynamics runs


@dataclass(frozen=True)
class CheckedDynamicsRun:
    parquet_path: str  # the trajectories as canonical Parquet (`DynamicsWriter`'s schema)
    meta_path: str  # npz: probe suites, labels as trained, test predictions, final figures
    epochs: int
    test_accuracy: float


def check_dynamics_run(
    trajectories: str, probes: str, test_predictions: str, *, sparsity: float,
    dataset: DatasetRef, max_bytes: int, scratch_dir: str,
) -> CheckedDynamicsRun:
    """Read a run recorded elsewhere (`prunescope.workers.recorded_runs`) against the dataset
    it trained on and write the two files a `train_dynamics` job would have written.

    Only what a run records is kept: the meta's per-epoch `test_accuracy` and `sparsity` hold
    the final values (test accuracy from the test predictions, the declared sparsity) in their
    last entry and NaN before it, and `train_loss` is all NaN (not recorded).
    """
    try:
        data = load_dataset(dataset)
    except JobInputError as exc:
        raise JobInputError(f"the active dataset cannot be read: {exc}") from exc
    run = read_recorded_run(Path(trajectories), Path(probes), Path(test_predictions), data,
                            max_bytes)
    y_test = np.asarray(data.y_test, dtype=np.int64)
    test_accuracy = float(np.mean(run.test_predictions == y_test)) if y_test.size else math.nan

    def final_only(value: float) -> np.ndarray:
        per_epoch = np.full(run.epochs.size, np.nan)
        per_epoch[-1] = value
        return per_epoch

    out = _output_dir(scratch_dir)
    parquet, meta = out / "dynamics.parquet", out / "meta.npz"
    with DynamicsWriter(parquet, data.num_train) as writer:
        for i, epoch in enumerate(run.epochs):
            writer(int(epoch), {name: values[i] for name, values in run.records.items()})
    try:
        read_dynamics(parquet)
    except ValueError as exc:
        raise JobInputError(f"the trajectories cannot be stored: {exc}") from exc
    np.savez(meta, **run.suites.to_arrays(), train_labels=run.train_labels,
             test_predictions=run.test_predictions, test_labels=y_test,
             test_accuracy=final_only(test_accuracy), sparsity=final_only(sparsity),
             train_loss=np.full(run.epochs.size, np.nan))
    return CheckedDynamicsRun(str(parquet), str(meta), int(run.epochs.size), test_accuracy)


# ---------------------------------------------------------------------------- the one entry


CHECKS: dict[str, Callable[..., Any]] = {
    "checkpoint": check_checkpoint,
    "dataset": check_dataset,
    "builtin_dataset": check_builtin_dataset,
    "dynamics_run": check_dynamics_run,
}


def validate(kind: str, inputs: Mapping[str, Any]) -> Any:
    """Run the check of `kind` (a key of CHECKS) on `inputs`, its keyword arguments."""
    return CHECKS[kind](**inputs)
