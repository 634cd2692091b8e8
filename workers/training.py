"""Train a dense classifier on an in-memory dataset, reproducibly, reporting progress per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunescope.models.registry import create_model
from prunescope.workers.datasets import ClassificationData, as_model_input, check_model_fits
from prunescope.workers.jobspec import JobInputError

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


def init_model(architecture: str, config: Mapping[str, Any], seed: int) -> nn.Module:
    """A freshly initialised model whose weights depend only on `seed`.

    The global torch RNG is seeded inside `fork_rng`, so the caller's random state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(architecture, **config)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Top-1 class per example (int64), in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def train_classifier(
    model: nn.Module,
    data: ClassificationData,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, list[float]]:
    """Train `model` in place with Adam on cross-entropy; returns the per-epoch history.

    Deterministic for a given seed and initial model: the shuffling order comes from its own
    `torch.Generator`, and any randomness in the forward pass (dropout) draws from a global RNG
    seeded inside `fork_rng`, which restores the caller's state afterwards. Calls
    progress(epoch / epochs, message) after each epoch; an exception it raises (JobCancelled)
    stops training. History keys: epoch, train_loss, train_accuracy, test_accuracy.
    Raises JobInputError if the loss diverges (NaN/Inf), which a smaller lr usually fixes.
    """
    progress = progress or _no_progress
    check_model_fits(model, data)
    x_train = torch.from_numpy(as_model_input(data.x_train, model.input_shape))
    y_train = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(as_model_input(data.x_test, model.input_shape))
    y_test = torch.from_numpy(data.y_test)
    n = len(x_train)
    shuffle = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list[float]] = {
        "epoch": [], "train_loss": [], "train_accuracy": [], "test_accuracy": []
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum = 0.0
            correct = 0
            for batch in torch.randperm(n, generator=shuffle).split(batch_size):
                logits = model(x_train[batch])
                loss = F.cross_entropy(logits, y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(batch)
                correct += int((logits.detach().argmax(1) == y_train[batch]).sum())
            train_loss = loss_sum / n
            if not math.isfinite(train_loss):
                raise JobInputError(
                    f"training diverged at epoch {epoch} (loss is {train_loss}); lower params.lr "
                    f"(it is {lr})"
                )
            test_accuracy = float((predict(model, x_test) == y_test).double().mean())
            history["epoch"].append(epoch)
            history["train_loss"].append(train_loss)
            history["train_accuracy"].append(correct / n)
            history["test_accuracy"].append(test_accuracy)
            progress(
                epoch / epochs,
                f"epoch {epoch}/{epochs}: loss {train_loss:.4f}, test accuracy {test_accuracy:.1%}",
            )
    model.eval()
    return history
