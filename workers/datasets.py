"""Evaluation datasets as in-memory numpy arrays with a fixed train/test split.

The only builtin so far is scikit-learn's handwritten digits (1,797 real 8×8 grey images,
bundled with scikit-learn, so nothing is downloaded). Examples keep their natural shape
(C, H, W); `as_model_input` is the one place that reshapes them for a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workers.jobspec import DatasetRef, JobInputError

TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed so every job of a project sees the same test examples


@dataclass(frozen=True)
class ClassificationData:
    """A labelled dataset split once into train and test examples."""

    name: str
    x_train: np.ndarray  # float32, (n_train, *input_shape)
    y_train: np.ndarray  # int64, (n_train,)
    x_test: np.ndarray  # float32, (n_test, *input_shape)
    y_test: np.ndarray  # int64, (n_test,)
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]


def _digits() -> ClassificationData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are integers 0..16; /16 puts them in [0, 1].
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return ClassificationData(
        name="digits",
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=tuple(str(d) for d in range(10)),
    )


BUILTIN_DATASETS: dict[str, Callable[[], ClassificationData]] = {"digits": _digits}


def load_dataset(ref: DatasetRef) -> ClassificationData:
    """Load the dataset a job names; raises JobInputError for unknown or unsupported ones."""
    if ref.source != "builtin":
        raise JobInputError(
            f"dataset {ref.name!r} has source {ref.source!r}; only builtin datasets "
            f"({', '.join(sorted(BUILTIN_DATASETS))}) are supported so far"
        )
    loader = BUILTIN_DATASETS.get(ref.builtin_name or "")
    if loader is None:
        raise JobInputError(
            f"unknown builtin dataset {ref.builtin_name!r}; choose one of "
            f"{', '.join(sorted(BUILTIN_DATASETS))}"
        )
    return loader()


def as_model_input(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Reshape examples (n, *anything) to (n, *input_shape), the shape a model takes.

    The flat MLP and the CNN read the same digits this way. Raises JobInputError when the
    number of values per example differs, e.g. an MLP configured for 32 inputs on 8×8 images.
    """
    per_example = int(np.prod(x.shape[1:]))
    expected = int(np.prod(input_shape))
    if per_example != expected:
        raise JobInputError(
            f"the dataset's examples have shape {tuple(x.shape[1:])} ({per_example} values) but "
            f"the model takes {tuple(input_shape)} ({expected} values); change the "
            "architecture's configuration to match the dataset"
        )
    return x.reshape(x.shape[0], *input_shape)


def check_model_fits(model: torch.nn.Module, data: ClassificationData) -> None:
    """Raise JobInputError unless `model` takes `data`'s examples and has one output per class."""
    x = torch.from_numpy(as_model_input(data.x_test[:2], model.input_shape))
    was_training = model.training
    try:
        with torch.no_grad():
            num_outputs = model.eval()(x).shape[1]
    finally:
        model.train(was_training)
    if num_outputs != data.num_classes:
        raise JobInputError(
            f"the model has {num_outputs} outputs but dataset {data.name!r} has "
            f"{data.num_classes} classes; set num_classes={data.num_classes} in the "
            "architecture's configuration"
        )
