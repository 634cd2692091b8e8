"""Representation geometry: where each evaluation example sits, and moves, when a network is pruned.

One pass over the evaluation set through every checkpoint captures, per example, the input of
the final linear layer (the last-layer features f) and the logits W f + b. From them:

- the geometric concepts of Li et al. (IEEE TVCG 2024) per example and checkpoint, each
  against that checkpoint's own W and b: feature length ‖f‖, angle between f and the true
  class's weight vector W_y, signed distance to the nearest decision boundary
  (`prunescope.workers.metrics.geometry`);
- class level: accuracy per class, confusion matrices, reliability bins and ECE (max softmax
  probability as confidence), the pairwise disagreement of the checkpoints, accuracy per
  group where the dataset has groups;
- a 2-D map of every checkpoint's features on shared axes (workers/analyses/embeddings.py),
  cached by content hash, so a second request for the same map costs a file read.

The features of all checkpoints are held together ([C, N, d] float32: 27,000 digits × 64
units × 5 checkpoints is 35 MB) because the projection needs them all; everything else is
reduced as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.workers.analyses.embeddings import ProjectionCache, project_features
from prunescope.workers.analyses.evaluation import dense_checkpoint, load_checkpoint
from prunescope.workers.analyses.layers import is_token_model, tensor_batches
from prunescope.workers.datasets import ClassificationData, as_model_input, check_model_fits
from prunescope.workers.jobspec import CheckpointRef, JobInputError
from prunescope.workers.metrics.geometry import (
    class_angle,
    confusion_matrices,
    decision_margin,
    disagreement_matrix,
    expected_calibration_error,
    feature_norm,
    per_class_accuracy,
    per_group_accuracy,
    reliability_bins,
    softmax_confidence,
)

ProgressFn = Callable[[float, str], None]
RELIABILITY_BINS = 15


def _no_progress(fraction: float, message: str) -> None:
    pass


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer: the registry's `classifier`, else the last nn.Linear (checked
    against the logits on the first batch by `capture_head`)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise JobInputError(
            f"{type(model).__name__} has no linear classifier layer; the geometry view needs "
            "a classifier whose last layer is linear"
        )
    return linears[-1]


def capture_head(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features entering the final linear layer, logits) for one batch."""
    head = classifier_head(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["features"], captured["head"] = args[0], output

    handle = head.register_forward_hook(hook)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    if "features" not in captured or captured["head"].shape != logits.shape or not \
            torch.equal(captured["head"], logits):
        raise JobInputError(
            f"the last linear layer of {type(model).__name__} does not produce its output; "
            "the geometry view needs a classifier whose output is that layer's logits"
        )
    return captured["features"].reshape(logits.shape[0], -1), logits


def _group_codes(data: ClassificationData) -> tuple[np.ndarray, list[str]]:
    if data.groups_test is None:
        return np.full(data.num_test, -1, dtype=np.int64), []
    names, codes = np.unique(np.asarray(data.groups_test, dtype=np.str_), return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


THUMBNAIL_MAX_SIDE = 64


def thumbnails(data: ClassificationData, split: str = "test") -> np.ndarray | None:
    """uint8 images [N, H, W] (grey) or [N, H, W, 3] of the test (or "train") split for the
    example gallery, scaled from the split's own value range; None for non-images or sides
    above 64."""
    x = np.asarray(data.x_train if split == "train" else data.x_test)
    if data.kind != "image" or x.ndim != 4 or x.shape[1] not in (1, 3) or \
            max(x.shape[2:]) > THUMBNAIL_MAX_SIDE or x.size == 0:
        return None
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
    images = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    return images[:, 0] if x.shape[1] == 1 else np.moveaxis(images, 1, -1)


def geometry_of_checkpoints(
    architecture: str,
    config: Mapping[str, Any],
    checkpoints: Sequence[CheckpointRef],
    data: ClassificationData,
    *,
    batch_size: int = 1024,
    method: str = "umap",
    alignment: str = "reference",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Per-example geometry of every checkpoint on the test split, npz-ready (no object arrays).

    Rows follow `checkpoints`; exactly one has role "dense" (the reference). Returns
    checkpoint_ids/names/roles/methods [C], sparsity [C], reference (0-d), labels [N],
    class_names [K], predictions int64 [C, N], confidence, norm, angle (degrees), margin
    float32 [C, N], embedding float32 [C, N, 2], embedding_method (0-d str),
    per_class_accuracy [C, K], confusion int64 [C, K, K], ece [C], reliability_confidence /
    reliability_accuracy [C, B], reliability_count int64 [C, B], disagreement [C, C], groups
    int64 [N] (−1 = none), group_names [G], per_group_accuracy [C, G]; example_ids str [N]
    (the dataset's ids, else the positions) and, for small images, thumbnails uint8
    [N, H, W(, 3)] for the example gallery.
    """
    from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names

    progress = progress or _no_progress
    dense_ref = dense_checkpoint(checkpoints)
    reference = list(checkpoints).index(dense_ref)
    models = []
    for i, ref in enumerate(checkpoints):
        progress(0.05 * i / len(checkpoints), f"loading {ref.name!r}")
        models.append(load_checkpoint(architecture, config, ref).eval())
    if is_token_model(models[0]) or data.texts_test is not None:
        raise JobInputError(
            "the geometry view needs a classifier over image or tabular examples; "
            f"{type(models[0]).__name__} on {data.name!r} is not one (Transformer checkpoints "
            "have their own views)"
        )
    check_model_fits(models[0], data)
    batches = tensor_batches(as_model_input(data.x_test, models[0].input_shape), data.y_test,
                             batch_size)
    n, c = data.num_test, len(models)
    features: list[np.ndarray] = []
    logits_all = [np.zeros((n, data.num_classes), dtype=np.float32) for _ in models]
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            rows = batch.index.numpy()
            for m, model in enumerate(models):
                f, logits = capture_head(model, batch.inputs)
                if b == 0 and m == len(features):
                    features.append(np.zeros((n, f.shape[1]), dtype=np.float32))
                features[m][rows] = f.float().numpy()
                logits_all[m][rows] = logits.float().numpy()
            progress(0.05 + 0.25 * (b + 1) / len(batches),
                     f"batch {b + 1}/{len(batches)} through {c} checkpoints")
    labels = data.y_test.astype(np.int64)
    predictions = np.zeros((c, n), dtype=np.int64)
    out: dict[str, Any] = {key: np.zeros((c, n), dtype=np.float32)
                           for key in ("confidence", "norm", "angle", "margin")}
    bins = {key: np.zeros((c, RELIABILITY_BINS)) for key in ("conf", "acc")}
    counts = np.zeros((c, RELIABILITY_BINS), dtype=np.int64)
    ece = np.zeros(c)
    for m, model in enumerate(models):
        head = classifier_head(model)
        weight = head.weight.detach().double().numpy()
        bias = None if head.bias is None else head.bias.detach().double().numpy()
        confidence, predictions[m] = softmax_confidence(logits_all[m])
        out["confidence"][m] = confidence
        out["norm"][m] = feature_norm(features[m])
        out["angle"][m] = class_angle(features[m], weight, labels)
        out["margin"][m] = decision_margin(features[m], weight, bias, labels)
        correct = predictions[m] == labels
        bins["conf"][m], bins["acc"][m], counts[m] = reliability_bins(
            confidence, correct, RELIABILITY_BINS)
        ece[m] = expected_calibration_error(confidence, correct, RELIABILITY_BINS)
    progress(0.32, f"projecting {c} × {n} examples ({method})")
    cache = ProjectionCache(Path(cache_dir)) if cache_dir is not None else None
    embedding = project_features(
        features, method=method, alignment=alignment, reference=reference, seed=seed,
        n_neighbors=n_neighbors, min_dist=min_dist, cache=cache,
        progress=lambda f, msg: progress(0.32 + 0.66 * f, msg),
    )
    groups, group_names = _group_codes(data)
    extra: dict[str, np.ndarray] = {}
    if (images := thumbnails(data)) is not None:
        extra["thumbnails"] = images
    ids = data.ids_test if data.ids_test is not None else np.arange(n).astype(np.str_)
    label_method = method if method == "pca" else f"{method} ({alignment})"
    return {
        "checkpoint_ids": np.array([r.id for r in checkpoints], dtype=np.int64),
        "checkpoint_names": np.array([r.name for r in checkpoints], dtype=np.str_),
        "checkpoint_roles": np.array([r.role for r in checkpoints], dtype=np.str_),
        "checkpoint_methods": np.array([r.method or "" for r in checkpoints], dtype=np.str_),
        "sparsity": np.array([
            checkpoint_stats(m.state_dict(), prunable_parameter_names(m))["sparsity"]
            for m in models
        ], dtype=np.float64),
        "reference": np.array(reference, dtype=np.int64),
        "labels": labels,
        "class_names": np.array(data.class_names, dtype=np.str_),
        "predictions": predictions,
        **out,
        "embedding": np.asarray(embedding, dtype=np.float32),
        "embedding_method": np.array(label_method, dtype=np.str_),
        "per_class_accuracy": per_class_accuracy(predictions, labels, data.num_classes),
        "confusion": confusion_matrices(predictions, labels, data.num_classes),
        "ece": ece,
        "reliability_confidence": bins["conf"],
        "reliability_accuracy": bins["acc"],
        "reliability_count": counts,
        "disagreement": disagreement_matrix(predictions),
        "groups": groups,
        "group_names": np.array(group_names, dtype=np.str_),
        "per_group_accuracy": (per_group_accuracy(predictions, labels, groups, len(group_names))
                               if group_names else np.zeros((c, 0))),
        "example_ids": np.asarray(ids, dtype=np.str_),
        **extra,
    }
