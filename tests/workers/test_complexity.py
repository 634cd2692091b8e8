"""Representation complexity: effective rank, participation ratio, 99 % directions, TwoNN."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.workers.metrics.complexity import (
    RANKME_EPSILON,
    complexity_from_covariance,
    directions_from_eigenvalues,
    effective_rank_from_eigenvalues,
    subsample_indices,
    twonn_intrinsic_dimension,
)
from tests.reference.complexity import (
    complexity_from_gram,
    covariance_eigenvalues,
    effective_rank,
    participation_ratio,
    spectral_complexity,
    variance_directions,
)


def _with_variances(variances: list[float], n: int = 400, seed: int = 0) -> np.ndarray:
    """n rows whose covariance is exactly diag(variances), rotated into random axes."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(variances)))
    z -= z.mean(0)
    z = np.linalg.qr(z)[0] * np.sqrt(n - 1)  # orthogonal, centred columns: covariance I
    rotation = np.linalg.qr(rng.normal(size=(len(variances), len(variances))))[0]
    return (z * np.sqrt(variances)) @ rotation + 5.0


def test_effective_rank_of_an_isotropic_gaussian_is_its_dimension():
    x = np.random.default_rng(1).normal(size=(20000, 10))
    assert effective_rank(x) == pytest.approx(10.0, rel=2e-3)
    # …and exactly, up to RankMe's ε, for a spectrum of k equal values.
    assert effective_rank(_with_variances([2.0] * 4 + [0.0] * 3)) == pytest.approx(4.0, rel=1e-5)


def test_rankme_hand_case_with_epsilon():
    # Singular values ∝ √λ = (3, 1): p = (0.75 + ε, 0.25 + ε).
    p = np.array([0.75, 0.25]) + RANKME_EPSILON
    expected = np.exp(-np.sum(p * np.log(p)))
    assert effective_rank_from_eigenvalues([9.0, 1.0]) == pytest.approx(expected, rel=1e-14)
    assert effective_rank_from_eigenvalues([9.0, 1.0], eps=0.0) == pytest.approx(
        np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))), rel=1e-14
    )


@pytest.mark.parametrize("k", [1, 3, 7])
def test_participation_ratio_of_k_equal_variances_is_k(k):
    x = _with_variances([3.0] * k + [0.0] * (9 - k))
    assert participation_ratio(x) == pytest.approx(k, abs=1e-9)


def test_participation_ratio_equals_the_trace_formula():
    # (Σλ)²/Σλ² = tr(C)²/‖C‖²_F, computed without any eigendecomposition.
    x = np.random.default_rng(2).normal(size=(300, 6)) @ np.diag([5, 3, 2, 1, 0.5, 0.1])
    cov = np.cov(x, rowvar=False)
    assert participation_ratio(x) == pytest.approx(np.trace(cov) ** 2 / np.sum(cov**2), rel=1e-10)


def test_directions_for_variance_hand_case():
    x = _with_variances([50.0, 30.0, 19.5, 0.5])  # cumulative 50, 80, 99.5, 100 %
    assert variance_directions(x, 0.99) == 3
    assert variance_directions(x, 0.996) == 4
    assert variance_directions(x, 0.80 - 1e-9) == 2
    assert variance_directions(x, 0.5 - 1e-9) == 1
    assert directions_from_eigenvalues([4.0, 0.0, 0.0], 1.0) == 1
    with pytest.raises(ValueError, match="fraction"):
        directions_from_eigenvalues([1.0], 0.0)


@pytest.mark.parametrize(("n", "p"), [(300, 12), (20, 50)])
def test_covariance_and_gram_routes_equal_the_data_route(n, p):
    rng = np.random.default_rng(n + p)
    x = rng.normal(size=(n, 6)) @ rng.normal(size=(6, p)) + rng.normal(size=(n, p)) * 0.05
    x = x + 100.0
    data = spectral_complexity(x)
    xc = x - x.mean(0)
    routes = [
        complexity_from_covariance(np.cov(x, rowvar=False), n),
        complexity_from_covariance(xc.T @ xc / n, n, mean=x.mean(0)),
        complexity_from_gram(xc @ xc.T, p),
    ]
    for route in routes:
        assert route.effective_rank == pytest.approx(data.effective_rank, rel=1e-8)
        assert route.participation_ratio == pytest.approx(data.participation_ratio, rel=1e-10)
        assert route.variance_directions == data.variance_directions
    assert data.effective_rank == pytest.approx(effective_rank(x))


def test_rank_deficient_layers_agree_across_routes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 40))  # rank 3 in 40 features
    data = spectral_complexity(x)
    cov = complexity_from_covariance(np.cov(x, rowvar=False), 200)
    assert data.variance_directions == cov.variance_directions <= 3
    assert data.effective_rank == pytest.approx(cov.effective_rank, rel=1e-6)
    assert np.count_nonzero(covariance_eigenvalues(x)) == 3


def test_dead_layers_and_constant_columns():
    dead = np.full((50, 8), 0.1)  # inexact in binary: centring leaves rounding dust
    assert spectral_complexity(dead) == complexity_from_covariance(
        np.cov(dead, rowvar=False), 50, mean=dead.mean(0)
    )
    stats = spectral_complexity(dead)
    assert (stats.effective_rank, stats.participation_ratio, stats.variance_directions) == (
        0.0,
        0.0,
        0,
    )
    assert complexity_from_covariance(np.zeros((4, 4)), 10).effective_rank == 0.0
    assert twonn_intrinsic_dimension(dead) == 0.0
    x = _with_variances([4.0, 1.0])
    padded = np.hstack([x, np.full((400, 3), 7.0)])
    assert participation_ratio(padded) == pytest.approx(participation_ratio(x), rel=1e-12)
    assert variance_directions(padded) == 2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="NaN"):
        complexity_from_covariance(np.full((2, 2), np.inf), 5)
    with pytest.raises(ValueError, match="square"):
        complexity_from_covariance(np.ones((2, 3)), 5)
    with pytest.raises(ValueError, match="at least 2"):
        participation_ratio(np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        twonn_intrinsic_dimension(np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="estimator"):
        twonn_intrinsic_dimension(np.eye(5), estimator="knn")


def _on_subspace(d: int, n: int, ambient: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(ambient, d)))[0]
    return rng.uniform(size=(n, d)) @ basis.T + rng.normal(size=ambient)


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("estimator", ["mle", "linear_fit"])
def test_twonn_recovers_the_dimension_of_a_flat_subspace(d, estimator):
    # Uniform in a d-cube, embedded in 20 dims; the cube's boundary biases the estimate low.
    estimate = twonn_intrinsic_dimension(_on_subspace(d, 2500, 20, seed=d), estimator=estimator)
    assert estimate == pytest.approx(d, rel=0.1)


def test_twonn_in_high_ambient_dimension_uses_the_brute_force_route():
    estimate = twonn_intrinsic_dimension(_on_subspace(3, 1500, 64, seed=4))
    assert estimate == pytest.approx(3, rel=0.1)


def test_twonn_mle_hand_case_and_duplicate_rule():
    # Points 0, 1, 3 on a line: μ = 3/1, 2/1, 3/2 → d = 3 / (log 3 + log 2 + log 1.5).
    points = np.array([[0.0], [1.0], [3.0]])
    expected = 3 / np.log(3 * 2 * 1.5)
    assert twonn_intrinsic_dimension(points) == pytest.approx(expected, rel=1e-12)
    # Duplicates collapse to one point instead of giving r₁ = 0.
    repeated = np.vstack([points, points, points[:1]])
    assert twonn_intrinsic_dimension(repeated) == pytest.approx(expected, rel=1e-12)
    assert twonn_intrinsic_dimension(np.array([[0.0], [1.0], [0.0]])) == 0.0  # 2 distinct
    # Every point's two neighbours equally far (to rounding, for the triangle): d would be ∞.
    for lattice in ([[0, 0], [1, 0], [0.5, np.sqrt(0.75)]], [[0, 0], [1, 0], [0, 1], [1, 1]]):
        with pytest.raises(ValueError, match="equidistant"):
            twonn_intrinsic_dimension(np.array(lattice, dtype=float))


def test_twonn_subsample_is_fixed_and_bounded():
    first = subsample_indices(10_000, 500, seed=3)
    assert len(first) == 500 and len(np.unique(first)) == 500
    np.testing.assert_array_equal(first, subsample_indices(10_000, 500, seed=3))
    np.testing.assert_array_equal(subsample_indices(40, 500), np.arange(40))
    x = _on_subspace(2, 3000, 10, seed=5)
    assert twonn_intrinsic_dimension(x, max_points=400) == twonn_intrinsic_dimension(
        x[subsample_indices(3000, 400)]
    )
