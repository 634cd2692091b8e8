"""Evaluation datasets as in-memory numpy arrays with a fixed train/test split.

Three builtins ship with PruneScope, so nothing is downloaded:

- `digits`: scikit-learn's handwritten digits (1,797 real 8×8 grey images, bundled with
  scikit-learn), split 75/25 stratified by label;
- `digits_augmented`: the same images at scale, in shifted and noisy copies (13,470 train,
  27,000 test; the noise level is each example's group), for views that need many examples;
- `english_sentences`: English prose sentences split from the Python standard library's own
  documentation (`pydoc_data.topics`, the text `help()` shows), for text models. Each
  sentence's label is the index of the help topic it comes from (`class_names` are the topic
  names, `groups` the same names); see `english_sentences` for the exact cleaning rules.

Uploaded datasets (`prunescope.workers.dataset_formats`) are stored as one canonical npz that
`save_canonical` writes and `load_canonical` reads, so workers load every dataset one way.
Examples keep their natural shape (C, H, W) or (features,); `as_model_input` is the one place
that reshapes them for a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunescope.workers.jobspec import DatasetRef, JobInputError

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


# ------------------------------------------------------------------------------ builtins


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


AUGMENTED_TRAIN_COPIES = 10
AUGMENTED_TEST_COPIES = 60
AUGMENTED_NOISE = (0.0, 0.1, 0.25)


def _augmented(images: np.ndarray, copies: int, rng: np.random.Generator,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` versions of every image, each shifted by up to one pixel in each direction
    (zeros shifted in) and given Gaussian pixel noise of one of AUGMENTED_NOISE's levels;
    returns (images, index of the source image, noise level index)."""
    n = images.shape[0]
    source = np.repeat(np.arange(n), copies)
    shifts = rng.integers(-1, 2, size=(source.size, 2))
    noise = rng.integers(0, len(AUGMENTED_NOISE), size=source.size)
    padded = np.pad(images[source], ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.empty_like(images[source])
    for dy in (-1, 0, 1):  # 9 vectorised crops, one per shift
        for dx in (-1, 0, 1):
            rows = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            out[rows] = padded[rows, :, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
    sigma = np.asarray(AUGMENTED_NOISE, dtype=np.float32)[noise][:, None, None, None]
    out = np.clip(out + sigma * rng.standard_normal(out.shape).astype(np.float32), 0.0, 1.0)
    return out.astype(np.float32), source, noise


def _digits_augmented() -> ClassificationData:
    """Real digits at scale: every image of the digits split in shifted, noisy copies.

    10 copies of each training image (13,470) and 60 of each test image (27,000), each moved
    by up to one pixel and given pixel noise σ ∈ {0, 0.1, 0.25}; the noise level is the
    example's group, so slices compare clean and noisy inputs. Copies of one image stay in
    one split, so no test image was seen in training.
    """
    base = _digits()
    rng = np.random.default_rng(SPLIT_SEED)
    x_train, src_train, _ = _augmented(base.x_train, AUGMENTED_TRAIN_COPIES, rng)
    x_test, src_test, noise = _augmented(base.x_test, AUGMENTED_TEST_COPIES, rng)
    copy = np.tile(np.arange(AUGMENTED_TEST_COPIES), base.num_test)
    return dataclasses.replace(
        base,
        name="digits_augmented",
        x_train=x_train,
        y_train=base.y_train[src_train],
        x_test=x_test,
        y_test=base.y_test[src_test],
        ids_test=np.array([f"test{s}-copy{c}" for s, c in zip(src_test, copy, strict=True)],
                          dtype=np.str_),
        groups_test=np.array([f"noise {AUGMENTED_NOISE[k]}" for k in noise], dtype=np.str_),
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")
_UNDERLINE = re.compile(r"^[*=\-~^]{3,}$")
_PLAIN_WORD = re.compile(r"^[A-Za-z][A-Za-z'\-]*$")
SENTENCE_WORDS = (5, 40)
MIN_SENTENCES_PER_TOPIC = 4


def _prose_sentences(text: str) -> list[str]:
    """Sentences of the prose paragraphs of one help topic, whitespace collapsed."""
    sentences = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if any(_UNDERLINE.match(line) for line in lines):
            continue  # a heading and its underline
        paragraph = re.sub(r"\s+", " ", " ".join(lines))
        # List bullets and admonition labels are markup, not part of the sentence.
        paragraph = re.sub(r"^(\* |\d+\. |Note: |Notes: |See also: )", "", paragraph)
        sentences += _SENTENCE_END.split(paragraph)
    return sentences


def _is_clean_sentence(sentence: str) -> bool:
    words = sentence.split()
    if not SENTENCE_WORDS[0] <= len(words) <= SENTENCE_WORDS[1]:
        return False
    if not (sentence[0].isupper() and sentence[-1] in ".!?" and sentence.isascii()):
        return False
    if any(mark in sentence for mark in (">>>", "::=", "...", "|")):
        return False  # interpreter sessions, grammar rules and tables are not prose
    # Prose is mostly plain words; code fragments are mostly punctuation and identifiers.
    plain = sum(bool(_PLAIN_WORD.match(w.strip("\"*(),.;:!?"))) for w in words)
    return plain >= 0.7 * len(words)


def english_sentences_table() -> tuple[list[str], list[int], list[str]]:
    """(sentences, topic index per sentence, topic names) from `pydoc_data.topics`.

    Rules, in order: topics in sorted name order; paragraphs separated by blank lines, headings
    (a line underlined with *, =, -, ~ or ^) dropped, lines joined and whitespace collapsed;
    sentences split after ., ! or ? followed by a capital letter or a quote; a sentence is
    kept when it has 5–40 words, starts with a capital, ends with ., ! or ?, is ASCII, holds
    no interpreter prompt, grammar rule, table bar or ellipsis, and at least 70 % of its
    words are plain words; repeated sentences are kept once (first occurrence); topics with
    fewer than 4 kept sentences are dropped, so the split can be stratified by topic.

    Deterministic for a given Python version; the help text, and so the count (1,700-odd
    sentences over about 55 topics with Python 3.11), changes a little between releases.
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()
    per_topic: list[tuple[str, list[str]]] = []
    for name in sorted(topics):
        kept = []
        for sentence in _prose_sentences(topics[name]):
            if _is_clean_sentence(sentence) and sentence not in seen:
                seen.add(sentence)
                kept.append(sentence)
        if len(kept) >= MIN_SENTENCES_PER_TOPIC:
            per_topic.append((name, kept))
    sentences: list[str] = []
    labels: list[int] = []
    for index, (_, kept) in enumerate(per_topic):
        sentences += kept
        labels += [index] * len(kept)
    return sentences, labels, [name for name, _ in per_topic]


def _english_sentences() -> ClassificationData:
    sentences, labels, topic_names = english_sentences_table()
    texts = np.array(sentences, dtype=np.str_)
    y = np.array(labels, dtype=np.int64)
    counters: dict[int, int] = {}
    ids = []
    for label in labels:
        counters[label] = counters.get(label, 0) + 1
        ids.append(f"{topic_names[label]}:{counters[label]}")
    return from_arrays(
        "english_sentences",
        kind="text",
        x=None,
        texts=texts,
        y=y,
        class_names=tuple(topic_names),
        ids=np.array(ids, dtype=np.str_),
        groups=np.array([topic_names[label] for label in labels], dtype=np.str_),
    )


BUILTIN_DATASETS: dict[str, Callable[[], ClassificationData]] = {
    "digits": _digits,
    "digits_augmented": _digits_augmented,
    "english_sentences": _english_sentences,
}


def load_builtin(name: str) -> ClassificationData:
    """A builtin dataset by name, built afresh; JobInputError if the name is unknown."""
    loader = BUILTIN_DATASETS.get(name)
    if loader is None:
        raise JobInputError(
            f"unknown builtin dataset {name!r}; choose one of {', '.join(sorted(BUILTIN_DATASETS))}"
        )
    return loader()


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


@dataclass(frozen=True)
class ModelInput:
    """What a model reads ("tensor" of `input_shape`, or "text") and how many classes it has.

    `num_outputs` is None for a text model without a classification head (an encoder whose
    representations are compared, not its predictions).
    """

    kind: str
    input_shape: tuple[int, ...] | None
    num_outputs: int | None


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


def check_model_fits(model: torch.nn.Module, data: ClassificationData) -> None:
    """Raise JobInputError unless `model` takes `data`'s examples and has one output per class."""
    check_data_fits(data, model_input(model))
