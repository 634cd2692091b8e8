"""Minibatch CKA (Nguyen et al. 2021): the analysis' estimate against a pairwise transcription."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunescope.workers.metrics.minibatch_cka import MinibatchCKAAccumulator
from tests.reference.cka import hsic_unbiased, linear_cka


def _minibatch_cka_loop(xs, ys, batch):  # noqa: ANN001, ANN202
    """Nguyen et al. (2021), transcribed pair by pair with the NumPy HSIC₁."""
    hxy = np.zeros((len(xs), len(ys)))
    hxx, hyy = np.zeros(len(xs)), np.zeros(len(ys))
    for s in range(0, xs[0].shape[0], batch):
        kb = [x[s : s + batch] @ x[s : s + batch].T for x in xs]
        lb = [y[s : s + batch] @ y[s : s + batch].T for y in ys]
        if kb[0].shape[0] < 4:
            continue
        hxx += [hsic_unbiased(k, k) for k in kb]
        hyy += [hsic_unbiased(m, m) for m in lb]
        hxy += [[hsic_unbiased(k, m) for m in lb] for k in kb]
    return hxy / np.sqrt(np.outer(hxx, hyy))


@pytest.mark.parametrize("batch", [16, 50, 203])
def test_minibatch_cka_equals_the_pairwise_transcription(batch: int) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(205, 5))
    xs = [base @ rng.normal(size=(5, 7)), np.tanh(base @ rng.normal(size=(5, 3))) + 2.0]
    ys = [xs[0] @ np.linalg.qr(rng.normal(size=(7, 7)))[0], rng.normal(size=(205, 4)),
          base[:, :2] ** 2]
    acc = MinibatchCKAAccumulator(2, [3, 2])
    for s in range(0, 205, batch):
        acc.update([torch.from_numpy(x[s : s + batch]) for x in xs],
                   [[torch.from_numpy(y[s : s + batch]) for y in ys],
                    [torch.from_numpy(x[s : s + batch]) for x in xs]])
    versus_ys, versus_self = acc.values()
    np.testing.assert_allclose(versus_ys, _minibatch_cka_loop(xs, ys, batch), rtol=1e-9,
                               atol=1e-12)
    # A layer against itself is 1; a rotated copy too (CKA's invariance holds per batch).
    np.testing.assert_allclose(np.diag(versus_self), 1.0, rtol=1e-12)
    assert versus_ys[0, 0] == pytest.approx(1.0, rel=1e-12)
    # A last batch of fewer than 4 examples (205 = 203 + 2) carries no unbiased HSIC: skipped.
    assert acc.skipped_examples == (205 % batch if 205 % batch < 4 else 0)


def test_minibatch_cka_of_one_batch_is_the_debiased_cka_of_centred_inputs() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 6))
    y = np.sin(x @ rng.normal(size=(6, 5)))
    x, y = x - x.mean(0), y - y.mean(0)
    acc = MinibatchCKAAccumulator(1, [1])
    acc.update([torch.from_numpy(x)], [[torch.from_numpy(y)]])
    assert acc.values()[0][0, 0] == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-10)


def test_minibatch_cka_without_a_full_batch_says_so() -> None:
    acc = MinibatchCKAAccumulator(1, [1])
    acc.update([torch.ones(3, 2)], [[torch.ones(3, 2)]])
    with pytest.raises(ValueError, match="at least one batch of 4"):
        acc.values()
