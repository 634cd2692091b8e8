"""Linear probes per layer: which linguistic information each checkpoint's layers still encode.

For every probing task (workers/analyses/probing_tasks.py), every checkpoint and every layer
(the embedding output and each block's, mean-pooled over real tokens as the layer analysis
pools them), a multinomial logistic regression is trained on 75 % of the task's sentences and
scored on the other 25 % (a fixed stratified split, the same for every checkpoint). Features
are standardised on the training part. Reported: test accuracy [checkpoints, tasks, layers]
and each task's majority-class accuracy on the same test part, the floor a probe must beat.

One forward pass per checkpoint over the tasks' distinct sentences feeds every task and layer;
features live for one checkpoint at a time ([sentences, layers, width] float32: 1,408 × 7 ×
384 is 15 MB for the built-in sentences).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.workers.analyses.layers import pool_output, text_batches
from prunescope.workers.analyses.probing_tasks import PROBING_TASKS, ProbingTask

ProgressFn = Callable[[float, str], None]


def _subsample(task: ProbingTask, max_examples: int, seed: int) -> ProbingTask:
    """At most `max_examples` sentences, stratified by label (classes kept in proportion)."""
    n = len(task.texts)
    if n <= max_examples:
        return task
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(n), train_size=max_examples, random_state=seed,
                               stratify=_stratifiable(task.labels))
    keep = np.sort(keep)
    return ProbingTask(task.name, tuple(task.texts[i] for i in keep), task.labels[keep],
                       task.class_names)


def _stratifiable(labels: np.ndarray) -> np.ndarray | None:
    counts = np.bincount(labels)
    return labels if counts[counts > 0].min() >= 2 else None


def pooled_layers(model: nn.Module, batches: Sequence[Any], n: int) -> np.ndarray:
    """[n, layers, width] float32: mean-pooled hidden states of every sentence."""
    out: np.ndarray | None = None
    with torch.inference_mode():
        for batch in batches:
            hidden = model(**batch.inputs, output_hidden_states=True).hidden_states
            mask = batch.inputs.get("attention_mask")
            pooled = torch.stack([pool_output(h, mask, "mean") for h in hidden], 1).float().numpy()
            if out is None:
                out = np.zeros((n, *pooled.shape[1:]), dtype=np.float32)
            out[batch.index.numpy()] = pooled
    if out is None:
        raise ValueError("no sentences to probe")
    return out


def probe_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray,
                   test: np.ndarray) -> float:
    """Test accuracy of a standardised multinomial logistic regression (L2, C = 1).

    L-BFGS stops at a gradient tolerance of 1e-3: on MiniLM's 384-wide features that is ~20
    iterations instead of ~70 at the default 1e-4, 5x faster, and the test accuracies of 400
    sentences move by less than one held-out sentence's worth on average.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if np.unique(labels[train]).size < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, tol=1e-3))
    probe.fit(features[train], labels[train])
    return float((probe.predict(features[test]) == labels[test]).mean())


def probe_checkpoints(
    models: Sequence[nn.Module],
    names: Sequence[str],
    tokenizer: Any,
    texts: Sequence[str],
    *,
    tasks: Sequence[str] = tuple(PROBING_TASKS),
    max_examples: int = 400,
    batch_size: int = 32,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Probe accuracy of every checkpoint's layers on every task, npz-ready.

    Returns checkpoint_names [C], tasks [T], layers [L] ("embeddings", "block 1", …),
    accuracy float64 [C, T, L], majority float64 [T] (on each task's test part),
    examples int64 [T] (sentences used per task).
    """
    from sklearn.model_selection import train_test_split

    progress = progress or (lambda f, m: None)
    unknown = [t for t in tasks if t not in PROBING_TASKS]
    if unknown:
        raise ValueError(f"unknown probing task(s) {unknown}; choose from {list(PROBING_TASKS)}")
    built = [_subsample(PROBING_TASKS[t](list(texts)), max_examples, seed) for t in tasks]
    splits, majority = [], np.zeros(len(built))
    examples = np.array([len(task.texts) for task in built], dtype=np.int64)
    for t, task in enumerate(built):
        n = len(task.texts)
        if n < 8:
            raise ValueError(f"the {task.name} task found only {n} usable sentences")
        train, test = train_test_split(np.arange(n), test_size=0.25, random_state=seed,
                                       stratify=_stratifiable(task.labels))
        splits.append((train, test))
        majority[t] = np.bincount(task.labels[test]).max() / test.size
    # Tasks share sentences (length and word content use them as they are; bigram shift and
    # odd-man-out keep half unchanged): one forward pass over the distinct ones serves all.
    unique = list(dict.fromkeys(text for task in built for text in task.texts))
    position = {text: i for i, text in enumerate(unique)}
    rows = [np.array([position[text] for text in task.texts]) for task in built]
    batches = text_batches(unique, None, tokenizer, batch_size=batch_size)
    accuracy: np.ndarray | None = None
    steps = len(models) * (1 + len(built))
    for c, model in enumerate(models):
        feats = pooled_layers(model.eval(), batches, len(unique))
        progress((c * (1 + len(built)) + 1) / steps, f"{names[c]}: features of "
                 f"{len(unique)} sentences")
        if accuracy is None:
            accuracy = np.zeros((len(models), len(built), feats.shape[1]))
        for t, task in enumerate(built):
            train, test = splits[t]
            for layer in range(feats.shape[1]):
                accuracy[c, t, layer] = probe_accuracy(feats[rows[t], layer], task.labels,
                                                       train, test)
            progress((c * (1 + len(built)) + 2 + t) / steps, f"{task.name}: probed {names[c]}")
    assert accuracy is not None
    layers = ["embeddings", *[f"block {i}" for i in range(1, accuracy.shape[2])]]
    return {
        "checkpoint_names": np.array(list(names), dtype=np.str_),
        "tasks": np.array([task.name for task in built], dtype=np.str_),
        "layers": np.array(layers, dtype=np.str_),
        "accuracy": accuracy,
        "majority": majority,
        "examples": examples,
    }
