"""The builtin evaluation datasets, made from data that ships with Python and scikit-learn, so
nothing is downloaded:

- `digits`: scikit-learn's handwritten digits (1,797 real 8×8 grey images, bundled with
  scikit-learn), split 75/25 stratified by label;
- `digits_augmented`: the same images at scale, in shifted and noisy copies (13,470 train,
  27,000 test; the noise level is each example's group), for views that need many examples;
- `english_sentences`: English prose sentences split from the Python standard library's own
  documentation (`pydoc_data.topics`, the text `help()` shows), for text models. Each
  sentence's label is the index of the help topic it comes from (`class_names` are the topic
  names, `groups` the same names); see `english_sentences` for the exact cleaning rules.

numpy and scikit-learn only, no torch, so the web server can describe them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from prunescope.workers.dataset_arrays import (
    SPLIT_SEED,
    TEST_FRACTION,
    ClassificationData,
    from_arrays,
)
from prunescope.workers.jobspec import JobInputError


def _digits() -> ClassificationData:
    # Deferred: scikit-learn takes a second to import and only loading a builtin needs it.
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


def builtin_dataset_names() -> list[str]:
    return sorted(BUILTIN_DATASETS)
