"""What several job handlers do alike: load the dataset and checkpoints, write a checkpoint,
map a step's progress onto the job's.

It imports torch, so handlers import it inside their function, in the worker process; the
registry does not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prunescope.models.checkpoints import CheckpointError, load_model, save_safetensors
from prunescope.models.sparsity import sparsity_report
from prunescope.workers.analyses.layers import is_token_model
from prunescope.workers.datasets import ClassificationData, load_dataset
from prunescope.workers.jobspec import CheckpointRef, JobInputError, JobSpec, ProgressFn


def scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """Map a step's own 0..1 progress onto [start, end] of the job's."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * fraction, message)

    return report


def project_dataset(spec: JobSpec) -> ClassificationData:
    """The project's active dataset; JobInputError when it has none."""
    if spec.dataset is None:
        raise JobInputError(f"a {spec.kind} job needs a dataset; this project has none")
    return load_dataset(spec.dataset)


def text_dataset(spec: JobSpec, what: str) -> ClassificationData:
    """The project's dataset, which must hold sentences for `what` (a job's subject)."""
    data = project_dataset(spec)
    if data.texts_test is None:
        raise JobInputError(f"dataset {data.name!r} has no text; {what} need sentences")
    return data


def load_checkpoint_model(spec: JobSpec, ref: CheckpointRef) -> nn.Module:
    """The checkpoint `ref` as a model of the project's architecture."""
    try:
        return load_model(
            spec.architecture, spec.architecture_config, ref.path, assets_path=ref.assets_path
        )
    except CheckpointError as exc:
        raise JobInputError(f"checkpoint {ref.name!r} (id {ref.id}) cannot be used: {exc}") from exc


def token_models(spec: JobSpec, refs: list[CheckpointRef], what: str,
                 progress: ProgressFn | None = None) -> list[nn.Module]:
    """The checkpoints `refs` loaded, refused unless they are Hugging Face Transformers."""
    models = []
    for i, ref in enumerate(refs):
        if progress is not None:
            progress(i / len(refs), f"loading {ref.name!r}")
        models.append(load_checkpoint_model(spec, ref))
    if not is_token_model(models[0]):
        raise JobInputError(f"{what} read a Transformer's outputs; this project's "
                            "architecture is not a Hugging Face model")
    return models


def write_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Save the model's weights as safetensors at `path`; returns its sparsity report."""
    save_safetensors(model.state_dict(), path)
    return sparsity_report(model)


def finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: a value that does not exist (no classifier head) becomes null."""
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]
