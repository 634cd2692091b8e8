"""Fitting a dataset to a project's architecture, and what a dataset's row records.

The model a dataset must fit is read from its configuration (`prunescope.models.architectures`),
never built, so these checks need no torch: the web server adds builtin datasets with them in
its own process, and `prunescope.workers.ingest` fits uploaded datasets with the same rules.
A dataset that does not fit raises JobInputError whose message is what the user reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prunescope.models.architectures import expected_input
from prunescope.workers.builtin_datasets import (
    BUILTIN_DATASETS,
    builtin_dataset_names,
    load_builtin,
)
from prunescope.workers.dataset_arrays import ClassificationData, check_data_fits, with_num_classes
from prunescope.workers.dataset_formats import preview
from prunescope.workers.jobspec import JobInputError

__all__ = ["CheckedDataset", "builtin_dataset_metadata", "builtin_dataset_names",
           "check_builtin_dataset", "dataset_metadata", "fitted"]


@dataclass(frozen=True)
class CheckedDataset:
    format: str  # one of `prunescope.workers.dataset_formats.UPLOAD_FORMATS`, or "builtin"
    metadata: dict[str, Any]  # the dataset row's columns: kind, sizes, classes, preview
    canonical_path: str | None = None  # uploads: the canonical npz that workers read


def check_builtin_dataset(
    builtin_name: str, *, architecture: str, config: Mapping[str, Any]
) -> CheckedDataset:
    """Check a builtin dataset against the project's model."""
    fitted(load_builtin(builtin_name), architecture, config, builtin_name)
    return CheckedDataset("builtin", builtin_dataset_metadata(builtin_name))


@lru_cache(maxsize=8)
def builtin_dataset_metadata(builtin_name: str) -> dict[str, Any]:
    """Column values of a builtin dataset's row ({} for an unknown name); builtins never
    change, so they are computed once per process."""
    if builtin_name not in BUILTIN_DATASETS:
        return {}
    data = load_builtin(builtin_name)
    return dataset_metadata(data, preview(data, "stratified"))


def dataset_metadata(data: ClassificationData, summary: dict[str, Any]) -> dict[str, Any]:
    """The dataset row's columns for `data` and its `preview` summary."""
    return {
        "kind": data.kind,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "preview": summary,
    }


def fitted(data: ClassificationData, architecture: str, config: Mapping[str, Any],
           label: str) -> ClassificationData:
    """`data`, declaring the project model's class count; JobInputError led by `label` if the
    model cannot read it.

    A `huggingface` project without a configuration (its first checkpoint brings config.json)
    will read text and has no class count yet.
    """
    try:
        expected = expected_input(architecture, config)
    except (TypeError, ValueError) as exc:
        raise JobInputError(f"the project's architecture cannot be built: {exc}") from exc
    try:
        if expected.num_outputs is not None and data.num_classes < expected.num_outputs:
            data = with_num_classes(data, expected.num_outputs)
        check_data_fits(data, expected)
    except JobInputError as exc:
        raise JobInputError(f"{label}: {exc}") from exc
    return data
