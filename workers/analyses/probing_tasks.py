"""Linguistic probing tasks generated from any English text, so no labelled corpus is needed.

After Conneau et al. (ACL 2018, "What you can cram into a single vector"), the SentEval probing
tasks, rebuilt from raw sentences with fixed rules (documented per task) and a seed:

- `sentence_length`: the number of words, in bins of equal count (surface information);
- `word_content`: which one of a set of mid-frequency words the sentence contains (surface);
- `bigram_shift`: whether two adjacent words were swapped (syntax: word order);
- `odd_man_out`: whether one word was replaced by a random word of the corpus' vocabulary of
  the same capitalisation (semantics; SentEval's SOMO also matches part of speech and bigram
  frequency, which needs a tagger and a large corpus: this is the simpler variant);
- `coordination_inversion`: whether the two clauses around ", and " / ", but " / ", or " were
  swapped (semantics/discourse), where a sentence has exactly one such coordination.

Binary tasks pair every altered sentence with an unaltered one drawn from other sentences
(half and half, shuffled), so the majority-class baseline is 0.5 and a probe cannot win by
comparing a sentence with its own alteration. Words are whitespace-separated tokens;
punctuation stays attached, as a tokenizer sees it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_COORDINATION = re.compile(r", (and|but|or) ")
_WORD = re.compile(r"^[a-z][a-z'\-]*$")


@dataclass(frozen=True)
class ProbingTask:
    """Texts with one label each, the class names, and the majority-class accuracy."""

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray  # int64
    class_names: tuple[str, ...]

    @property
    def majority_baseline(self) -> float:
        if self.labels.size == 0:
            return float("nan")
        return float(np.bincount(self.labels).max() / self.labels.size)


def _words(text: str) -> list[str]:
    return text.split()


def sentence_length(texts: Sequence[str], bins: int = 6) -> ProbingTask:
    """Word counts in `bins` bins of (nearly) equal size; class names give each bin's range."""
    counts = np.array([len(_words(t)) for t in texts])
    if counts.size == 0:
        raise ValueError("no sentences to build the sentence-length task from")
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, bins + 1)[1:-1]))
    labels = np.searchsorted(edges, counts, side="right").astype(np.int64)
    bounds = [int(counts.min()), *[int(e) for e in edges], int(counts.max()) + 1]
    names = tuple(f"{lo}–{hi - 1} words" if hi - 1 > lo else f"{lo} words"
                  for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
    return ProbingTask("sentence_length", tuple(texts), labels, names)


def word_content(texts: Sequence[str], num_words: int = 20) -> ProbingTask:
    """Sentences containing exactly one of `num_words` target words, labelled by that word.

    The targets are the lower-case alphabetic words ranked just after the most frequent
    tenth of the vocabulary (mid-frequency, as SentEval chooses them), each kept only if it
    occurs in at least two sentences.
    """
    per_sentence = [{w.lower() for w in _words(t) if _WORD.match(w.lower())} for t in texts]
    frequency = Counter(w for words in per_sentence for w in words)
    ranked = [w for w, c in frequency.most_common() if c >= 2]
    start = len(ranked) // 10
    targets = ranked[start : start + num_words]
    index = {w: i for i, w in enumerate(targets)}
    kept, labels = [], []
    for text, words in zip(texts, per_sentence, strict=True):
        present = [index[w] for w in words if w in index]
        if len(present) == 1:
            kept.append(text)
            labels.append(present[0])
    return ProbingTask("word_content", tuple(kept), np.array(labels, dtype=np.int64),
                       tuple(targets))


def _binary(name: str, texts: Sequence[str], alter: Callable[[str, np.random.Generator],
            str | None], seed: int) -> ProbingTask:
    """Half the alterable sentences altered (label 1), the other half left as they are."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    altered: list[str] = []
    originals: list[str] = []
    for i in order:
        text = texts[int(i)]
        if len(altered) <= len(originals):
            changed = alter(text, rng)
            if changed is not None and changed != text:
                altered.append(changed)
                continue
        if alter(text, np.random.default_rng(0)) is not None:  # alterable: a fair original
            originals.append(text)
    n = min(len(altered), len(originals))
    rows = [(t, 1) for t in altered[:n]] + [(t, 0) for t in originals[:n]]
    shuffle = rng.permutation(len(rows))
    return ProbingTask(name, tuple(rows[i][0] for i in shuffle),
                       np.array([rows[i][1] for i in shuffle], dtype=np.int64),
                       ("original", "altered"))


def swap_bigram(text: str, rng: np.random.Generator) -> str | None:
    """Two adjacent words swapped, avoiding the first and last word; None below 4 words or
    when the two words are equal."""
    words = _words(text)
    if len(words) < 4:
        return None
    candidates = [i for i in range(1, len(words) - 2) if words[i] != words[i + 1]]
    if not candidates:
        return None
    i = int(rng.choice(candidates))
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def bigram_shift(texts: Sequence[str], seed: int = 0) -> ProbingTask:
    return _binary("bigram_shift", texts, swap_bigram, seed)


def odd_man_out(texts: Sequence[str], seed: int = 0) -> ProbingTask:
    """One lower-case word (not the first or last) replaced by a different lower-case word
    drawn from the whole corpus' vocabulary, weighted by frequency."""
    vocabulary = Counter(w for t in texts for w in _words(t) if _WORD.match(w))
    words_, weights = list(vocabulary), np.array(list(vocabulary.values()), dtype=float)
    if not words_:
        raise ValueError("no lower-case words to draw replacements from")
    weights /= weights.sum()

    def replace(text: str, rng: np.random.Generator) -> str | None:
        words = _words(text)
        slots = [i for i in range(1, len(words) - 1) if _WORD.match(words[i])]
        if len(words) < 4 or not slots:
            return None
        i = int(rng.choice(slots))
        for _ in range(10):
            new = words_[int(rng.choice(len(words_), p=weights))]
            if new != words[i]:
                return " ".join([*words[:i], new, *words[i + 1:]])
        return None

    return _binary("odd_man_out", texts, replace, seed)


def invert_coordination(text: str, rng: np.random.Generator | None = None) -> str | None:
    """'A, and B.' → 'B, and A.' for a sentence with exactly one ", and/but/or " whose two
    clauses have at least two words each; the final punctuation stays at the end and the
    clauses' first letters are re-capitalised. None where no such coordination exists."""
    matches = list(_COORDINATION.finditer(text))
    if len(matches) != 1:
        return None
    m = matches[0]
    first, second = text[: m.start()], text[m.end() :]
    end = ""
    if second and second[-1] in ".!?":
        second, end = second[:-1], second[-1]
    if len(_words(first)) < 2 or len(_words(second)) < 2:
        return None
    first = first[0].lower() + first[1:] if first[:1].isupper() and not first[:2].isupper() \
        else first
    second = second[0].upper() + second[1:]
    return f"{second}, {m.group(1)} {first}{end}"


def coordination_inversion(texts: Sequence[str], seed: int = 0) -> ProbingTask:
    return _binary("coordination_inversion", texts, invert_coordination, seed)


PROBING_TASKS: dict[str, Callable[[Sequence[str]], ProbingTask]] = {
    "sentence_length": sentence_length,
    "word_content": word_content,
    "bigram_shift": bigram_shift,
    "odd_man_out": odd_man_out,
    "coordination_inversion": coordination_inversion,
}
