"""Minibatch linear CKA of every layer pair, the estimate the layers analysis adds on request.

The exact full-data CKA of that analysis comes from `prunescope.workers.metrics.moments`; this
estimate is what `compare_layers(minibatch_cka=True)` adds. The tests check it against a
pair-by-pair transcription over the reference HSIC₁ in `tests/reference/cka.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class MinibatchCKAAccumulator:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith, ICLR 2021) for every layer pair at once.

        CKA_mb(X, Y) = mean_b HSIC₁(K_b, L_b) / √(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b)),

    with K_b = X_b X_bᵀ the Gram matrix of minibatch b and HSIC₁ the unbiased estimator of Song
    et al. (2012),

        HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),

    K̃, L̃ the Grams with zeroed diagonals. This is an estimate whose value depends on the batch
    size (the exact full-data CKA is `prunescope.workers.metrics.moments`' job); it is offered
    for very large evaluation sets and to compare like with like against tools that compute it
    (torch_cka).

    One update costs a B × B Gram per layer (B²·d multiply-adds, float64 on the batch's device)
    and a single matrix product for all layer pairs: tr(K̃L̃) = vec(K̃)·vec(L̃) and
    1ᵀK̃L̃1 = (K̃1)·(L̃1), so with the zero-diagonal Grams of the reference's layers stacked as
    rows of A (L₁ × B²) and another model's as rows of C, every pair's trace term is A Cᵀ.
    Batches of fewer than 4 examples carry no unbiased HSIC and are skipped.
    """

    def __init__(self, num_reference_layers: int, num_other_layers: Sequence[int]) -> None:
        self.num_reference_layers = num_reference_layers
        self.num_other_layers = list(num_other_layers)
        self.batches = 0
        self.skipped_examples = 0
        self._xx: Any = None
        self._yy: list[Any] = []
        self._xy: list[Any] = []

    @staticmethod
    def _hsic_parts(features: Sequence[Any]) -> tuple[Any, Any, Any]:
        grams = []
        for f in features:
            f = f.reshape(f.shape[0], -1).to(torch.float64)
            g = f @ f.T
            g.diagonal().zero_()
            grams.append(g)
        stacked = torch.stack(grams)  # layers × B × B
        rows = stacked.sum(2)  # K̃1 per layer
        return stacked.flatten(1), rows, rows.sum(1)

    @staticmethod
    def _hsic(flat_a: Any, rows_a: Any, sum_a: Any, flat_b: Any, rows_b: Any, sum_b: Any,
              n: int) -> Any:
        trace = flat_a @ flat_b.T
        ones = sum_a[:, None] * sum_b[None, :] / ((n - 1) * (n - 2))
        cross = rows_a @ rows_b.T * (2.0 / (n - 2))
        return (trace + ones - cross) / (n * (n - 3))

    def update(self, reference: Sequence[Any], others: Sequence[Sequence[Any]]) -> None:
        """One minibatch: the reference's per-layer features and each other model's."""
        n = int(reference[0].shape[0])
        if len(reference) != self.num_reference_layers or [len(o) for o in others] != \
                self.num_other_layers:
            raise ValueError("every update must bring the same layers as the first")
        if n < 4:
            self.skipped_examples += n
            return
        with torch.inference_mode():
            a = self._hsic_parts(reference)
            xx = torch.diagonal(self._hsic(*a, *a, n))
            self._xx = xx if self._xx is None else self._xx + xx
            for m, other in enumerate(others):
                # The reference itself among the others (its own layer × layer matrix) reuses
                # its Grams.
                c = a if other is reference else self._hsic_parts(other)
                yy = xx if other is reference else torch.diagonal(self._hsic(*c, *c, n))
                xy = self._hsic(*a, *c, n)
                if len(self._xy) <= m:
                    self._yy.append(yy)
                    self._xy.append(xy)
                else:
                    self._yy[m] = self._yy[m] + yy
                    self._xy[m] = self._xy[m] + xy
        self.batches += 1

    def values(self) -> list[np.ndarray]:
        """Per other model, the L₁ × L₂ matrix of minibatch CKA (0.0 where a layer has no
        variance in any batch)."""
        if self.batches == 0:
            raise ValueError("minibatch CKA needs at least one batch of 4 or more examples")
        xx = self._xx.cpu().numpy()
        out = []
        for xy, yy in zip(self._xy, self._yy, strict=True):
            xy, yy = xy.cpu().numpy(), yy.cpu().numpy()
            denominator = np.sqrt(np.clip(np.outer(xx, yy), 0.0, None))
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(denominator > 0, xy / denominator, 0.0))
        return out
