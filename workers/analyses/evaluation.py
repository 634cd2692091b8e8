"""Evaluate checkpoints: test accuracy, predictions and per-layer CKA to the dense model.

One pass over the test split per checkpoint feeds everything: the logits give predictions
and accuracy, forward hooks give the analysis layers' activations, and those fold into exact
streaming linear CKA (Kornblith et al. 2019) against the dense model's activations of the same
batch.

Memory over speed: the dense model's activations are recomputed batch by batch next to each
pruned model instead of cached for the whole test split. Only two models and one batch of
activations are alive at a time, whatever the size of the test set, at the cost of one extra
dense forward pass per pruned checkpoint (cheap next to the CKA sums themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from models.capture import capture_layer_outputs
from models.checkpoints import CheckpointError, load_model
from models.sparsity import checkpoint_stats, prunable_parameter_names
from workers.datasets import ClassificationData, as_model_input, check_model_fits
from workers.jobspec import CheckpointRef, JobInputError
from workers.metrics.cka import LinearCKAAccumulator

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


def _load(architecture: str, config: Mapping[str, Any], ref: CheckpointRef) -> nn.Module:
    try:
        return load_model(architecture, config, ref.path)
    except CheckpointError as exc:
        raise JobInputError(f"checkpoint {ref.name!r} (id {ref.id}) cannot be used: {exc}") from exc


def _dense_checkpoint(checkpoints: Sequence[CheckpointRef]) -> CheckpointRef:
    dense = [c for c in checkpoints if c.role == "dense"]
    if len(dense) != 1:
        found = ", ".join(repr(c.name) for c in dense) or "none"
        raise JobInputError(
            "evaluation compares every checkpoint with exactly one dense checkpoint; found "
            f"{len(dense)} ({found}). Upload or train one dense checkpoint for the project"
        )
    ids = [c.id for c in checkpoints]
    if len(set(ids)) != len(ids):
        raise JobInputError(f"checkpoint ids repeat in the evaluation request: {ids}")
    return dense[0]


def evaluate_checkpoints(
    architecture: str,
    config: Mapping[str, Any],
    checkpoints: Sequence[CheckpointRef],
    data: ClassificationData,
    *,
    batch_size: int = 256,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Accuracy, predictions and per-layer linear CKA to the dense model, for every checkpoint.

    Exactly one checkpoint must have role "dense" (else JobInputError). Its CKA row is 1.0 by
    definition and not computed. Returns arrays ready for `np.savez` (no object arrays),
    rows in the order of `checkpoints`:

    - checkpoint_ids int64 [C], checkpoint_names str [C], checkpoint_roles str [C]
    - sparsity float64 [C]: measured sparsity over the prunable weights
    - accuracy float64 [C]: top-1 test accuracy
    - layers str [L]: the architecture's analysis layers
    - cka float64 [C, L]: exact full-test-set linear CKA with the dense model, per layer
    - predictions int64 [C, N]: top-1 class per test example; labels int64 [N]
    """
    progress = progress or _no_progress
    dense_ref = _dense_checkpoint(checkpoints)
    dense_model = _load(architecture, config, dense_ref)
    check_model_fits(dense_model, data)
    layers = list(dense_model.analysis_layers)
    batches = torch.from_numpy(as_model_input(data.x_test, dense_model.input_shape)).split(
        batch_size
    )
    num_steps = len(checkpoints) * len(batches)

    predictions = np.empty((len(checkpoints), len(data.y_test)), dtype=np.int64)
    cka = np.ones((len(checkpoints), len(layers)), dtype=np.float64)
    sparsity = np.empty(len(checkpoints), dtype=np.float64)
    for i, ref in enumerate(checkpoints):
        is_dense = ref is dense_ref
        model = dense_model if is_dense else _load(architecture, config, ref)
        state = model.state_dict()
        sparsity[i] = checkpoint_stats(state, prunable_parameter_names(model))["sparsity"]
        accumulators = {layer: LinearCKAAccumulator() for layer in layers}
        batch_predictions = []
        with (
            capture_layer_outputs(dense_model, [] if is_dense else layers) as dense_outputs,
            capture_layer_outputs(model, [] if is_dense else layers) as outputs,
            torch.inference_mode(),
        ):
            for b, x in enumerate(batches):
                batch_predictions.append(model(x).argmax(1))
                if not is_dense:
                    dense_model(x)
                    for layer in layers:
                        accumulators[layer].update(
                            dense_outputs[layer].numpy(), outputs[layer].numpy()
                        )
                step = i * len(batches) + b + 1
                progress(step / num_steps, f"evaluating {ref.name!r} ({i + 1}/{len(checkpoints)})")
        predictions[i] = torch.cat(batch_predictions).numpy()
        if not is_dense:
            cka[i] = [accumulators[layer].value() for layer in layers]
        del model, state  # let the previous model go before the next one loads

    return {
        "checkpoint_ids": np.array([c.id for c in checkpoints], dtype=np.int64),
        "checkpoint_names": np.array([c.name for c in checkpoints], dtype=np.str_),
        "checkpoint_roles": np.array([c.role for c in checkpoints], dtype=np.str_),
        "sparsity": sparsity,
        "accuracy": (predictions == data.y_test[None, :]).mean(axis=1).astype(np.float64),
        "layers": np.array(layers, dtype=np.str_),
        "cka": cka,
        "predictions": predictions,
        "labels": data.y_test.astype(np.int64),
    }
