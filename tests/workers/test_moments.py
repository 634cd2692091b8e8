"""Streamed second moments: every metric equals its data-based formulation on the full set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from prunescope.workers.metrics.moments import (
    MomentAccumulator,
    linear_cka_from_scatter,
    procrustes_from_scatter,
    svcca_and_pwcca_from_scatter,
)
from tests.reference.cca import pwcca
from tests.reference.cka import linear_cka

RNG = np.random.default_rng(0)
N = 300


def _representations() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """A reference with two layers and two other models with related and unrelated layers."""
    base = RNG.normal(size=(N, 6))
    ref = [base @ RNG.normal(size=(6, 8)) + 5.0, np.tanh(base @ RNG.normal(size=(6, 5)))]
    rotated = ref[0] @ np.linalg.qr(RNG.normal(size=(8, 8)))[0] * 3.0
    noisy = ref[1] + 0.5 * RNG.normal(size=(N, 5))
    others = [[rotated, noisy, RNG.normal(size=(N, 3))], [RNG.normal(size=(N, 4)) + 100.0]]
    return ref, others


def _accumulate(ref, others, batch: int = 64, fold_rows: int = 256) -> MomentAccumulator:  # noqa: ANN001
    acc = MomentAccumulator([a.shape[1] for a in ref], [[a.shape[1] for a in o] for o in others],
                            fold_rows=fold_rows)
    x = torch.from_numpy(np.concatenate(ref, 1))
    ys = [torch.from_numpy(np.concatenate(o, 1)) for o in others]
    for start in range(0, x.shape[0], batch):
        acc.update(x[start : start + batch], [y[start : start + batch] for y in ys])
    return acc


def _centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(0)


@pytest.fixture(scope="module")
def streamed():
    ref, others = _representations()
    return ref, others, _accumulate(ref, others)


def test_the_analysis_cka_reproduces_kornblith_et_als_published_demo_values() -> None:
    # google-research/representation_similarity's demo: linear CKA 0.55761, debiased 0.51346.
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    acc = _accumulate([x], [[y]], batch=32)
    sxy, sxx, syy = acc.cross_scatter(1, 0, 0), acc.scatter(0, 0), acc.scatter(1, 0)
    assert round(linear_cka_from_scatter(sxy, sxx, syy), 5) == 0.55761
    assert round(acc.debiased_cka(1, 0, 0), 5) == 0.51346


def test_scatter_matrices_equal_the_full_data_ones(streamed) -> None:
    ref, others, acc = streamed
    for layer, a in enumerate(ref):
        np.testing.assert_allclose(acc.scatter(0, layer), _centred(a).T @ _centred(a), atol=1e-8)
    for m, layers in enumerate(others, start=1):
        for j, b in enumerate(layers):
            for i, a in enumerate(ref):
                expected = _centred(a).T @ _centred(b)
                np.testing.assert_allclose(acc.cross_scatter(m, i, j), expected, atol=1e-7)


def test_linear_and_debiased_cka_equal_the_data_formulas_for_every_layer_pair(streamed) -> None:
    ref, others, acc = streamed
    for m, layers in enumerate(others, start=1):
        for i, a in enumerate(ref):
            for j, b in enumerate(layers):
                sxy, sxx, syy = acc.cross_scatter(m, i, j), acc.scatter(0, i), acc.scatter(m, j)
                assert linear_cka_from_scatter(sxy, sxx, syy) == pytest.approx(
                    linear_cka(a, b), abs=1e-10
                )
                assert acc.debiased_cka(m, i, j) == pytest.approx(
                    linear_cka(a, b, debiased=True), abs=1e-9
                )


def test_a_rotated_scaled_copy_has_cka_one_and_procrustes_zero(streamed) -> None:
    _, _, acc = streamed
    args = acc.cross_scatter(1, 0, 0), acc.scatter(0, 0), acc.scatter(1, 0)
    assert linear_cka_from_scatter(*args) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_from_scatter(*args) == pytest.approx(0.0, abs=1e-9)
    assert svcca_and_pwcca_from_scatter(*args) == pytest.approx((1.0, 1.0), abs=1e-9)


def test_procrustes_equals_scipys_orthogonal_procrustes_on_normalised_data(streamed) -> None:
    ref, others, acc = streamed
    a, b = ref[1], others[0][1]
    x = _centred(a) / np.linalg.norm(_centred(a))
    y = _centred(b) / np.linalg.norm(_centred(b))
    # Pad the narrower side with zero columns so one rotation maps between them.
    width = max(x.shape[1], y.shape[1])
    xp = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    yp = np.pad(y, ((0, 0), (0, width - y.shape[1])))
    rotation, _ = orthogonal_procrustes(yp, xp)
    direct = np.linalg.norm(xp - yp @ rotation) ** 2
    got = procrustes_from_scatter(acc.cross_scatter(1, 1, 1), acc.scatter(0, 1), acc.scatter(1, 1))
    assert got == pytest.approx(direct, abs=1e-9)


def _svcca_direct(a: np.ndarray, b: np.ndarray, keep: float = 0.99) -> float:
    """Raghu et al.'s recipe on data: SVD-reduce each side, then CCA by QR (Björck–Golub)."""

    def reduce(z: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(_centred(z), full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / (s**2).sum(), keep - 1e-12) + 1)
        return u[:, :k] * s[:k]

    qx, _ = np.linalg.qr(reduce(a))
    qy, _ = np.linalg.qr(reduce(b))
    return float(np.linalg.svd(qx.T @ qy, compute_uv=False).mean())


def test_svcca_and_pwcca_equal_direct_data_computations(streamed) -> None:
    ref, others, acc = streamed
    for i, j in [(1, 1), (0, 2), (1, 0)]:
        args = acc.cross_scatter(1, i, j), acc.scatter(0, i), acc.scatter(1, j)
        a, b = ref[i], others[0][j]
        svcca, pwcca_value = svcca_and_pwcca_from_scatter(*args)
        assert svcca == pytest.approx(_svcca_direct(a, b), abs=1e-8)
        # The data route: QR bases and canonical variates in example space.
        assert pwcca_value == pytest.approx(pwcca(a, b), abs=1e-8)


def test_a_large_offset_does_not_cost_precision() -> None:
    # ReLU features with a large common mean: naive Σxxᵀ − nμμᵀ loses digits, the shift keeps them.
    a = RNG.normal(size=(N, 4))
    b = a @ RNG.normal(size=(4, 4)) + 0.1 * RNG.normal(size=(N, 4))
    acc = _accumulate([a + 1e6], [[b - 1e6]])
    sxy, sxx, syy = acc.cross_scatter(1, 0, 0), acc.scatter(0, 0), acc.scatter(1, 0)
    assert linear_cka_from_scatter(sxy, sxx, syy) == pytest.approx(linear_cka(a, b), abs=1e-9)
    assert acc.debiased_cka(1, 0, 0) == pytest.approx(linear_cka(a, b, debiased=True), abs=1e-8)


def test_a_dead_layer_gets_defined_values_not_nan() -> None:
    a = RNG.normal(size=(N, 3))
    dead = np.zeros((N, 5))
    acc = _accumulate([a], [[dead]])
    args = acc.cross_scatter(1, 0, 0), acc.scatter(0, 0), acc.scatter(1, 0)
    assert linear_cka_from_scatter(*args) == 0.0
    assert acc.debiased_cka(1, 0, 0) == 0.0
    assert procrustes_from_scatter(*args) == 2.0
    assert svcca_and_pwcca_from_scatter(*args) == (0.0, 0.0)


def test_debiased_cka_needs_four_examples_and_batches_must_align() -> None:
    acc = MomentAccumulator([2], [[2]])
    acc.update(torch.ones(3, 2), [torch.ones(3, 2)])
    with pytest.raises(ValueError, match="at least 4"):
        acc.debiased_cka(1, 0, 0)
    with pytest.raises(ValueError, match="same examples"):
        acc.update(torch.ones(3, 2), [torch.ones(2, 2)])


def test_layers_of_the_reference_compare_with_each_other(streamed) -> None:
    ref, _, acc = streamed
    sxy, sxx, syy = acc.self_cross_scatter(0, 1), acc.scatter(0, 0), acc.scatter(0, 1)
    assert linear_cka_from_scatter(sxy, sxx, syy) == pytest.approx(linear_cka(ref[0], ref[1]))
    assert acc.self_debiased_cka(0, 1) == pytest.approx(
        linear_cka(ref[0], ref[1], debiased=True), abs=1e-9
    )
    assert acc.self_debiased_cka(1, 1) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fold_rows", [1, 100, 10_000])
def test_folding_buffered_batches_changes_no_sum(streamed, fold_rows: int) -> None:
    """Batches wait in a buffer and fold `fold_rows` at a time; every read-out folds what is
    left, so the sums are the same whether a fold follows each batch or one holds them all."""
    ref, others, acc = streamed
    other = _accumulate(ref, others, batch=37, fold_rows=fold_rows)
    for layer in range(len(ref)):
        np.testing.assert_allclose(other.scatter(0, layer), acc.scatter(0, layer), rtol=1e-10,
                                   atol=1e-8)
        for j in range(len(others[0])):
            np.testing.assert_allclose(other.cross_scatter(1, layer, j),
                                       acc.cross_scatter(1, layer, j), rtol=1e-10, atol=1e-8)
            assert other.debiased_cka(1, layer, j) == pytest.approx(acc.debiased_cka(1, layer, j),
                                                                    abs=1e-10)
    assert other.n == acc.n == N
