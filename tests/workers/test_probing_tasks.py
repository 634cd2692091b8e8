"""Probing tasks built from raw text: each alteration does exactly what its task claims."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from prunescope.workers.analyses.probing_tasks import (
    bigram_shift,
    coordination_inversion,
    invert_coordination,
    odd_man_out,
    sentence_length,
    swap_bigram,
    word_content,
)
from prunescope.workers.datasets import load_builtin


@pytest.fixture(scope="module")
def texts() -> list[str]:
    data = load_builtin("english_sentences")
    return [*data.texts_train.tolist(), *data.texts_test.tolist()]


def test_sentence_length_bins_follow_word_counts(texts) -> None:  # noqa: ANN001
    task = sentence_length(texts, bins=6)
    counts = np.array([len(t.split()) for t in task.texts])
    assert len(task.class_names) == 6 and task.labels.max() == 5
    # Bins are ordered: every sentence in bin k is longer than every one in bin k - 1.
    for k in range(1, 6):
        assert counts[task.labels == k].min() > counts[task.labels == k - 1].max()
    assert task.majority_baseline < 0.3  # nearly equal bins


def test_word_content_labels_the_one_target_word_present(texts) -> None:  # noqa: ANN001
    task = word_content(texts, num_words=20)
    assert len(task.class_names) == 20 and len(task.texts) > 100
    for text, label in zip(task.texts, task.labels, strict=True):
        words = {w.lower() for w in text.split()}
        present = [w for w in task.class_names if w in words]
        assert present == [task.class_names[label]]


def test_bigram_shift_swaps_exactly_two_adjacent_words(texts) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    for text in texts[:300]:
        changed = swap_bigram(text, rng)
        if changed is None:
            continue
        a, b = text.split(), changed.split()
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        assert (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
        assert 0 < diff[0] and diff[1] < len(a) - 1
    assert swap_bigram("too short here", rng) is None


def test_binary_tasks_are_balanced_and_their_originals_are_untouched(texts) -> None:  # noqa: ANN001
    corpus = set(texts)
    for task in (bigram_shift(texts), odd_man_out(texts), coordination_inversion(texts)):
        assert task.majority_baseline == 0.5 and len(task.texts) >= 100
        originals = [t for t, y in zip(task.texts, task.labels, strict=True) if y == 0]
        altered = [t for t, y in zip(task.texts, task.labels, strict=True) if y == 1]
        assert all(t in corpus for t in originals)
        assert sum(t in corpus for t in altered) <= 0.02 * len(altered)  # rare collisions
    # The same seed gives the same task; another seed another.
    assert bigram_shift(texts, seed=3).texts == bigram_shift(texts, seed=3).texts
    assert bigram_shift(texts, seed=3).texts != bigram_shift(texts, seed=4).texts


def test_odd_man_out_replaces_one_word_with_a_corpus_word(texts) -> None:  # noqa: ANN001
    vocabulary = Counter(w for t in texts for w in t.split())
    task = odd_man_out(texts)
    corpus = set(texts)
    by_length: dict[int, list[str]] = {}
    for t in corpus:
        by_length.setdefault(len(t.split()), []).append(t)
    checked = 0
    for text, label in zip(task.texts, task.labels, strict=True):
        if label != 1 or checked >= 100:
            continue
        words = text.split()
        # Find the source sentence: same length, exactly one word different.
        sources = [s for s in by_length[len(words)]
                   if sum(a != b for a, b in zip(s.split(), words, strict=True)) == 1]
        assert sources, text
        new = next(b for a, b in zip(sources[0].split(), words, strict=True) if a != b)
        assert new in vocabulary
        checked += 1
    assert checked == 100


def test_coordination_inversion_swaps_the_clauses() -> None:
    assert invert_coordination("The cat sat down, and the dog barked loudly.") == \
        "The dog barked loudly, and the cat sat down."
    assert invert_coordination("It works, but only on Tuesdays!") == \
        "Only on Tuesdays, but it works!"
    assert invert_coordination("One clause only.") is None
    assert invert_coordination("A b, and c d, and e f.") is None  # two coordinations
    assert invert_coordination("Yes, and then.") is None  # a one-word clause
