"""Calibration batches for data-dependent pruning: how a batch is fed to a model and scored.

A calibration set is a list of `(inputs, labels)` batches. `inputs` is a Tensor, passed as
`model(inputs)`, or a Mapping[str, Tensor] passed as `model(**inputs)` (Hugging Face models);
`labels` is a Tensor of class indices, or None for methods that only read the inputs (Wanda,
SparseGPT) or for models that compute their own loss from `inputs` (a Hugging Face model given
`labels` inside the mapping returns `output.loss`).

Every method scores the model in eval mode: dropout would make the scores random, and a
BatchNorm layer in train mode would both normalise with batch statistics the pruned model never
sees at inference and overwrite its running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

Inputs: TypeAlias = torch.Tensor | Mapping[str, torch.Tensor]
CalibrationBatch: TypeAlias = tuple[Inputs, torch.Tensor | None]
Calibration: TypeAlias = Sequence[CalibrationBatch]
# progress(fraction in [0, 1], message); may raise to cancel the job.
ProgressFn: TypeAlias = Callable[[float, str], None]


class MissingLossError(ValueError):
    """A batch has no labels and the model's output carries no loss, so no loss can be formed."""


def no_progress(fraction: float, message: str) -> None:
    """The progress callback used when the caller passes none."""


def require_calibration(method: str, calibration: Calibration | None) -> list[CalibrationBatch]:
    """The calibration batches as a list, or ValueError saying what `method` needs."""
    if calibration is None or len(calibration) == 0:
        raise ValueError(
            f"{method} scores weights with calibration data, and none was given; pass "
            "calibration=[(inputs, labels), ...] (a prune job builds it from the project's "
            "dataset)"
        )
    batches = list(calibration)
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"calibration batch {i} must be a pair (inputs, labels)")
        inputs, labels = batch
        tensors = inputs.values() if isinstance(inputs, Mapping) else [inputs]
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError(
                f"calibration batch {i}: inputs must be a Tensor or a mapping of names to "
                f"Tensors, got {type(inputs).__name__}"
            )
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise ValueError(f"calibration batch {i}: labels must be a Tensor or None")
    return batches


def _to_model(t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    if like is None:
        return t
    if t.is_floating_point():
        return t.to(device=like.device, dtype=like.dtype)
    return t.to(device=like.device)


def run_model(model: nn.Module, inputs: Inputs) -> Any:
    """The model's output for one batch of inputs, moved to the model's device (and its float
    dtype, for floating inputs)."""
    like = next(model.parameters(), None)
    if isinstance(inputs, Mapping):
        return model(**{k: _to_model(v, like) for k, v in inputs.items()})
    return model(_to_model(inputs, like))


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model output: the Tensor itself, `.logits`, or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"cannot find logits in a model output of type {type(output).__name__}")
    return logits


def batch_loss(model: nn.Module, inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
    """The loss of one batch: the model's own `output.loss` if it returns one, else the
    cross-entropy of its logits against `labels` (mean over examples).

    Raises MissingLossError when neither exists.
    """
    output = run_model(model, inputs)
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is not None:
        return loss
    if labels is None:
        raise MissingLossError(
            "this method needs a loss: give calibration batches with labels, or inputs from "
            "which the model computes its own loss (e.g. `labels` inside a Hugging Face batch)"
        )
    logits = output_logits(output)
    labels = labels.to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


@contextmanager
def scoring_mode(model: nn.Module, parameters: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    """Eval mode, gradients enabled and `requires_grad` on `parameters` inside the block; every
    module's train/eval flag and every parameter's `requires_grad` restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in parameters]
    model.eval()
    try:
        for p in parameters:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grad_flags:
            p.requires_grad_(flag)


def weight_gradients(
    model: nn.Module, weights: Sequence[torch.Tensor], batches: list[CalibrationBatch]
) -> list[torch.Tensor]:
    """g = ∂L/∂w for each of `weights`, with L = (1/B) Σ_b L_b the mean of the batch losses.

    Uses `torch.autograd.grad`, so the parameters' `.grad` fields are left as they were.
    Weights the loss does not reach get a zero gradient.
    """
    total = [torch.zeros_like(w) for w in weights]
    for inputs, labels in batches:
        loss = batch_loss(model, inputs, labels)
        grads = torch.autograd.grad(loss, list(weights), allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g.detach())
    return [g / len(batches) for g in total]
