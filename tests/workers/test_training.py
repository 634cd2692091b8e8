"""Training: it learns digits, it is reproducible, it reports progress and can be cancelled."""

from __future__ import annotations

import time

import pytest
import torch

from prunescope.workers.datasets import load_dataset
from prunescope.workers.jobspec import DatasetRef, JobCancelled, JobInputError
from prunescope.workers.training import init_model, predict, train_classifier

DIGITS = DatasetRef(name="digits", source="builtin", builtin_name="digits")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS)


def test_cnn_small_learns_digits_with_the_default_schedule(digits):
    model = init_model("cnn_small", {}, seed=0)
    started = time.perf_counter()
    history = train_classifier(model, digits, seed=0)  # 30 epochs, Adam 1e-3, batch 64
    print(f"cnn_small, 30 epochs: {time.perf_counter() - started:.1f} s, "
          f"test accuracy {history['test_accuracy'][-1]:.3f}")
    assert history["epoch"] == list(range(1, 31))
    assert history["test_accuracy"][-1] > 0.95
    assert history["train_loss"][-1] < history["train_loss"][0] / 5
    assert not model.training
    x_test = torch.from_numpy(digits.x_test)
    accuracy = (predict(model, x_test) == torch.from_numpy(digits.y_test)).double().mean()
    assert float(accuracy) == pytest.approx(history["test_accuracy"][-1])


def _train(digits, seed: int) -> tuple[dict, dict]:  # noqa: ANN001
    model = init_model("mlp", {}, seed=seed)
    history = train_classifier(model, digits, epochs=2, seed=seed)
    return model.state_dict(), history


def test_training_is_deterministic_per_seed_and_leaves_the_rng_alone(digits):
    torch.manual_seed(5)
    rng_before = torch.get_rng_state()
    first_state, first_history = _train(digits, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    second_state, second_history = _train(digits, seed=1)
    other_state, _ = _train(digits, seed=2)
    assert first_history == second_history
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert not all(torch.equal(first_state[k], other_state[k]) for k in first_state)


def test_progress_is_reported_per_epoch_and_cancellation_stops_training(digits):
    calls = []
    train_classifier(init_model("mlp", {}, 0), digits, epochs=3,
                     progress=lambda f, m: calls.append((f, m)))
    assert [f for f, _ in calls] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert calls[-1][1].startswith("epoch 3/3")

    def cancel(fraction: float, message: str) -> None:
        raise JobCancelled()

    model = init_model("mlp", {}, 0)
    with pytest.raises(JobCancelled):
        train_classifier(model, digits, epochs=50, progress=cancel)


def test_divergence_is_reported_with_advice(digits):
    with pytest.raises(JobInputError, match="lower params.lr"):
        train_classifier(init_model("mlp", {}, 0), digits, epochs=2, lr=float("inf"))
