"""Evaluation datasets as in-memory numpy arrays: the container with its fixed train/test split,
the canonical npz every dataset is stored as, and fitting examples to what a model reads.

Only numpy and scikit-learn, no torch: the web server describes builtin datasets and checks they
fit a project's architecture (`prunescope.workers.dataset_checks`) with these.

Uploaded datasets (`prunescope.workers.dataset_formats`) are stored as one canonical npz that
`save_canonical` writes and `load_canonical` reads, so workers load every dataset one way.
Examples keep their natural shape (C, H, W) or (features,); `as_model_input` is the one place
that reshapes them for a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunescope.models.architectures import ModelInput
from prunescope.workers.jobspec import JobInputError

__all__ = ["CANONICAL_VERSION", "DATASET_KINDS", "SPLIT_SEED", "TEST_FRACTION",
           "ClassificationData", "ModelInput", "as_model_input", "check_data_fits",
           "from_arrays", "load_canonical", "save_canonical", "split_indices",
           "with_num_classes"]

TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed so every job of a project sees the same test examples
DATASET_KINDS = ("image", "tabular", "text")
CANONICAL_VERSION = 1


@dataclass(frozen=True)
class ClassificationData:
    """A labelled dataset split once into train and test examples.

    Image and tabular datasets hold their examples in `x_*`. Text datasets hold them in
    `texts_*` (numpy unicode arrays) and have empty `x_*` arrays of shape (n, 0) with
    `input_shape == (0,)`. `ids_*` (unique across both splits) and `groups_*` are optional
    unicode arrays aligned with the examples.
    """

    name: str
    x_train: np.ndarray  # float32, (n_train, *input_shape)
    y_train: np.ndarray  # int64, (n_train,)
    x_test: np.ndarray  # float32, (n_test, *input_shape)
    y_test: np.ndarray  # int64, (n_test,)
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    kind: str = "image"  # one of DATASET_KINDS
    texts_train: np.ndarray | None = None  # str_, (n_train,); text datasets only
    texts_test: np.ndarray | None = None
    ids_train: np.ndarray | None = None  # str_, (n_train,)
    ids_test: np.ndarray | None = None
    groups_train: np.ndarray | None = None  # str_, (n_train,)
    groups_test: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()  # tabular datasets: one name per feature column

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])


# ------------------------------------------------------------------------------ the split


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Train and test indices of a fixed 75/25 split, and whether it is stratified by label.

    The same call as the digits split (scikit-learn's `train_test_split` with TEST_FRACTION,
    SPLIT_SEED and `stratify=labels`), applied to indices, so an uploaded copy of digits in
    the same order gets exactly the builtin's split. Where stratifying is impossible (a class
    with a single example, or fewer test examples than classes) the split is a plain seeded
    shuffle instead.
    """
    # Deferred: scikit-learn takes a second to import and only splitting needs it.
    from sklearn.model_selection import train_test_split

    n = int(labels.shape[0])
    if n < 2:
        raise JobInputError(
            f"the dataset has {n} example(s); at least 2 are needed, one to train and one to test"
        )
    indices = np.arange(n)
    counts = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    present = int((counts > 0).sum())
    n_test = int(np.ceil(TEST_FRACTION * n))
    if counts[counts > 0].min() >= 2 and n_test >= present and n - n_test >= present:
        train, test = train_test_split(
            indices, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
        )
        return train, test, True
    train, test = train_test_split(indices, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    return train, test, False


# ------------------------------------------------------------------ building and storing


def from_arrays(
    name: str,
    *,
    kind: str,
    x: np.ndarray | None,
    y: np.ndarray,
    class_names: tuple[str, ...],
    texts: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    feature_names: tuple[str, ...] = (),
) -> ClassificationData:
    """Split whole-dataset arrays into a ClassificationData.

    `split` gives (train indices, test indices), in the order the examples take; without it
    the fixed `split_indices` split is used. Arrays are assumed checked by the caller (labels
    in [0, len(class_names)), aligned lengths); text datasets pass `x=None` and `texts`.
    """
    n = int(y.shape[0])
    train, test = split if split is not None else split_indices(y)[:2]
    if x is None:
        x = np.zeros((n, 0), dtype=np.float32)

    def part(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a[idx])

    return ClassificationData(
        name=name,
        x_train=part(x, train),
        y_train=y[train].astype(np.int64),
        x_test=part(x, test),
        y_test=y[test].astype(np.int64),
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        class_names=tuple(class_names),
        kind=kind,
        texts_train=part(texts, train),
        texts_test=part(texts, test),
        ids_train=part(ids, train),
        ids_test=part(ids, test),
        groups_train=part(groups, train),
        groups_test=part(groups, test),
        feature_names=tuple(feature_names),
    )


_OPTIONAL_PAIRS = ("texts", "ids", "groups")


def save_canonical(data: ClassificationData, path: str | Path) -> None:
    """Write `data` as the canonical dataset npz: numeric and unicode arrays only.

    Keys: format_version, kind, input_shape, class_names, feature_names, x_train, y_train,
    x_test, y_test, and where present texts_/ids_/groups_ train and test.
    """
    arrays = {
        "format_version": np.array(CANONICAL_VERSION, dtype=np.int64),
        "kind": np.array(data.kind, dtype=np.str_),
        "input_shape": np.array(data.input_shape, dtype=np.int64),
        "class_names": np.array(data.class_names, dtype=np.str_),
        "feature_names": np.array(data.feature_names, dtype=np.str_),
        "x_train": np.asarray(data.x_train, dtype=np.float32),
        "y_train": np.asarray(data.y_train, dtype=np.int64),
        "x_test": np.asarray(data.x_test, dtype=np.float32),
        "y_test": np.asarray(data.y_test, dtype=np.int64),
    }
    for key in _OPTIONAL_PAIRS:
        for split in ("train", "test"):
            value = getattr(data, f"{key}_{split}")
            if value is not None:
                arrays[f"{key}_{split}"] = np.asarray(value, dtype=np.str_)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_canonical(path: str | Path, name: str) -> ClassificationData:
    """Read a canonical dataset npz (never unpickling); JobInputError if it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise JobInputError(f"the stored file of dataset {name!r} cannot be read ({exc})") from exc
    required = ("format_version", "kind", "input_shape", "class_names", "x_train", "y_train",
                "x_test", "y_test")
    missing = [key for key in required if key not in arrays]
    if missing or int(arrays.get("format_version", -1)) != CANONICAL_VERSION:
        raise JobInputError(
            f"the stored file of dataset {name!r} is not a canonical dataset "
            f"(version {CANONICAL_VERSION}); upload the dataset again"
        )
    data = ClassificationData(
        name=name,
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=int(arrays["class_names"].shape[0]),
        input_shape=tuple(int(d) for d in arrays["input_shape"]),
        class_names=tuple(str(c) for c in arrays["class_names"]),
        kind=str(arrays["kind"]),
        feature_names=tuple(str(c) for c in arrays.get("feature_names", ())),
        **{
            f"{key}_{split}": arrays.get(f"{key}_{split}")
            for key in _OPTIONAL_PAIRS
            for split in ("train", "test")
        },
    )
    _check_consistent(data)
    return data


def _check_consistent(data: ClassificationData) -> None:
    problems = []
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        n = y.shape[0]
        if y.ndim != 1 or y.dtype != np.int64 or x.dtype != np.float32:
            problems.append(f"{split} arrays have the wrong type")
        elif x.shape != (n, *data.input_shape):
            problems.append(f"x_{split} has shape {x.shape}, expected ({n}, *{data.input_shape})")
        elif n and (y.min() < 0 or y.max() >= data.num_classes):
            problems.append(f"y_{split} holds labels outside [0, {data.num_classes})")
        for key in _OPTIONAL_PAIRS:
            value = getattr(data, f"{key}_{split}")
            if value is not None and value.shape != (n,):
                problems.append(f"{key}_{split} does not match y_{split}")
    if data.kind not in DATASET_KINDS or (data.kind == "text") != (data.texts_train is not None):
        problems.append(f"kind {data.kind!r} does not match the arrays")
    if problems:
        raise JobInputError(
            f"the stored file of dataset {data.name!r} is inconsistent: {'; '.join(problems)}"
        )


def with_num_classes(data: ClassificationData, num_classes: int) -> ClassificationData:
    """The same data declaring `num_classes` classes (extra class names are their indices).

    A dataset that uses classes 0..k-1 fits a model with more outputs; its labels then index
    the first k outputs. Raises JobInputError when labels or class names need more classes.
    """
    if len(data.class_names) > num_classes:
        raise JobInputError(
            f"dataset {data.name!r} names {len(data.class_names)} classes but the model has "
            f"{num_classes} outputs; set num_classes={len(data.class_names)} in the "
            "architecture's configuration or drop the unused class names"
        )
    names = data.class_names + tuple(str(k) for k in range(len(data.class_names), num_classes))
    return dataclasses.replace(data, class_names=names, num_classes=num_classes)


# -------------------------------------------------------------- fitting data to a model


def check_data_fits(data: ClassificationData, expected: ModelInput) -> None:
    """Raise JobInputError, saying what to change, unless the model can read `data`.

    Text data needs a text model and tensor data a tensor model whose input shape has as
    many values per example (the `as_model_input` rule); labels must lie in
    [0, num_outputs) and the dataset must declare as many classes as the model has outputs.
    """
    if (data.kind == "text") != (expected.kind == "text"):
        if data.kind == "text":
            raise JobInputError(
                f"dataset {data.name!r} holds text, but the model takes numeric inputs of shape "
                f"{expected.input_shape}; use a text model, or a dataset of numbers or images"
            )
        raise JobInputError(
            f"dataset {data.name!r} holds {data.kind} examples of shape {data.input_shape}, but "
            "the model reads text; use a text dataset (a text column) for this project"
        )
    if expected.input_shape is not None:
        as_model_input(data.x_test[:1], expected.input_shape)
    if expected.num_outputs is None:
        return
    labels = np.concatenate([data.y_train, data.y_test])
    if labels.size and (labels.min() < 0 or labels.max() >= expected.num_outputs):
        raise JobInputError(
            f"dataset {data.name!r} has labels from {int(labels.min())} to {int(labels.max())} "
            f"but the model has {expected.num_outputs} outputs (classes 0 to "
            f"{expected.num_outputs - 1}); set num_classes={int(labels.max()) + 1} in the "
            "architecture's configuration, or relabel the examples into that range"
        )
    if data.num_classes != expected.num_outputs:
        raise JobInputError(
            f"the model has {expected.num_outputs} outputs but dataset {data.name!r} has "
            f"{data.num_classes} classes; set num_classes={data.num_classes} in the "
            "architecture's configuration"
        )


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
