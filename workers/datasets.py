"""Evaluation datasets for jobs: every dataset a job names loaded one way, and fitted to a model.

The arrays, the fixed split and the canonical npz are in `prunescope.workers.dataset_arrays`, the
builtins in `prunescope.workers.builtin_datasets` (both numpy/scikit-learn only, so the web
server can use them); this module gathers them for workers and adds what needs a built model.
"""

from __future__ import annotations

import torch

from prunescope.workers.builtin_datasets import (
    AUGMENTED_NOISE,
    AUGMENTED_TEST_COPIES,
    AUGMENTED_TRAIN_COPIES,
    BUILTIN_DATASETS,
    builtin_dataset_names,
    english_sentences_table,
    load_builtin,
)
from prunescope.workers.dataset_arrays import (
    CANONICAL_VERSION,
    DATASET_KINDS,
    SPLIT_SEED,
    TEST_FRACTION,
    ClassificationData,
    ModelInput,
    as_model_input,
    check_data_fits,
    from_arrays,
    load_canonical,
    save_canonical,
    split_indices,
    with_num_classes,
)
from prunescope.workers.jobspec import DatasetRef, JobInputError

__all__ = [
    "AUGMENTED_NOISE", "AUGMENTED_TEST_COPIES", "AUGMENTED_TRAIN_COPIES", "BUILTIN_DATASETS",
    "CANONICAL_VERSION", "DATASET_KINDS", "SPLIT_SEED", "TEST_FRACTION", "ClassificationData",
    "ModelInput", "as_model_input", "builtin_dataset_names", "check_data_fits",
    "check_model_fits", "english_sentences_table", "from_arrays", "load_builtin",
    "load_canonical", "load_dataset", "model_input", "save_canonical", "split_indices",
    "with_num_classes",
]


def load_dataset(ref: DatasetRef) -> ClassificationData:
    """Load the dataset a job names; raises JobInputError for unknown or unusable ones."""
    if ref.source == "builtin":
        return load_builtin(ref.builtin_name or "")
    if ref.source == "upload":
        if not ref.path:
            raise JobInputError(f"uploaded dataset {ref.name!r} has no stored file")
        return load_canonical(ref.path, ref.name)
    raise JobInputError(
        f"dataset {ref.name!r} has source {ref.source!r}; expected 'builtin' "
        f"({', '.join(sorted(BUILTIN_DATASETS))}) or 'upload'"
    )


def model_input(model: torch.nn.Module) -> ModelInput:
    """How `model` reads examples and how many classes it predicts.

    Text models (Hugging Face models, whose `input_shape` is None as they read token ids, or
    any model declaring `input_kind = "text"`) give their class count as `num_classes`, or as
    `config.num_labels` when they are a `…ForSequenceClassification`. Every other model takes
    tensors of `model.input_shape`; its output count is measured with a forward pass on zeros.
    """
    shape = getattr(model, "input_shape", None)
    if getattr(model, "input_kind", None) == "text" or shape is None:
        count = getattr(model, "num_classes", None)
        if count is None and type(model).__name__.endswith("ForSequenceClassification"):
            count = getattr(getattr(model, "config", None), "num_labels", None)
        return ModelInput("text", None, None if count is None else int(count))
    shape = tuple(int(d) for d in shape)
    was_training = model.training
    try:
        with torch.no_grad():
            num_outputs = int(model.eval()(torch.zeros((1, *shape))).shape[1])
    finally:
        model.train(was_training)
    return ModelInput("tensor", shape, num_outputs)


def check_model_fits(model: torch.nn.Module, data: ClassificationData) -> None:
    """Raise JobInputError unless `model` takes `data`'s examples and has one output per class."""
    check_data_fits(data, model_input(model))
