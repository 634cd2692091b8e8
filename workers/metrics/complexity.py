"""Representation complexity of one layer: how many directions its activations really use.

Four measures of an (n examples × p features) representation X:
- effective rank (RankMe; Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the
  Downstream Performance of Pretrained Self-Supervised Representations by Their Rank", ICML
  2023): exp of the entropy of the normalised singular values,
- participation ratio (Σλ)² / Σλ² of the covariance eigenvalues (Gao, Trautmann, Yu et al.
  2017, "A theory of multineuronal dimensionality, dynamics and measurement"),
- the number of principal directions needed for a fraction (default 99 %) of the variance,
- the TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez & Laio, "Estimating the intrinsic
  dimension of datasets by a minimal neighborhood information", Sci. Rep. 2017).

The first three depend only on the covariance spectrum, so the layers analysis computes them
from its streamed sums: `complexity_from_covariance(cov, n)` (p × p). The data route (an SVD of
X) and the n × n Gram route are the references in `tests/reference/complexity.py` that the
tests hold it to. TwoNN needs the points themselves and runs on a fixed random subsample
(`subsample_indices`, at most 5,000 examples by default), so a streaming caller keeps only
those rows.

Conventions shared by the spectral measures: activations are centred per feature (a
covariance; RankMe as published uses raw embeddings, a second-moment matrix), the spectrum has
min(n, p) values (as an SVD of X has, whichever route computed it), and eigenvalues below
1e-12·λ_max — singular values below 1e-6·σ_max, the accuracy limit of the covariance route —
are set to zero in every route so that the routes agree. A layer with no variance (every
feature constant across examples, e.g. dead after pruning: centred sum of squares ≤ 1e-20 of
the raw one) has effective rank 0.0, participation ratio 0.0, 0 directions and TwoNN
dimension 0.0. NaN or Inf raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix

RANKME_EPSILON = 1e-7  # Garrido et al.'s ε added to each normalised singular value
_SPECTRUM_RTOL = 1e-12
_CONSTANT_RTOL = 1e-20
# Above this many features a k-d tree degrades to a slow brute force; BLAS brute force wins.
_KD_TREE_MAX_DIMENSIONS = 20
# log(r₂/r₁) below this is rounding in the distances, not geometry: the neighbours are tied.
_TIED_LOG_RATIO = 1e-12


@dataclass(frozen=True)
class SpectralComplexity:
    """The covariance-spectrum measures of one representation."""

    effective_rank: float
    participation_ratio: float
    variance_directions: int
    variance_fraction: float


def _clean_spectrum(eigenvalues: Any, keep: int | None = None) -> np.ndarray:
    """Descending, non-negative eigenvalues, the top `keep`, rounding-level ones zeroed."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or Inf")
    if keep is not None:
        lam = lam[:keep]
    lam = np.maximum(lam, 0.0)
    if lam.size and lam[0] > 0:
        lam[lam < _SPECTRUM_RTOL * lam[0]] = 0.0
    return lam


def effective_rank_from_eigenvalues(eigenvalues: Any, eps: float = RANKME_EPSILON) -> float:
    """RankMe (Garrido et al. 2023, eq. 1) from covariance eigenvalues λ (σₖ ∝ √λₖ).

    pₖ = σₖ / Σσ + ε,  RankMe = exp(−Σₖ pₖ log pₖ), over all min(n, p) singular values.
    Between 1 and the number of values (up to ε); 0.0 when every value is zero.
    """
    lam = _clean_spectrum(eigenvalues)
    sigma = np.sqrt(lam)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    probabilities = sigma / total + eps
    return float(np.exp(-np.sum(probabilities * np.log(probabilities))))


def participation_ratio_from_eigenvalues(eigenvalues: Any) -> float:
    """Participation ratio (Σλ)² / Σλ² of covariance eigenvalues; 0.0 when all are zero."""
    lam = _clean_spectrum(eigenvalues)
    squares = float(np.sum(lam * lam))
    return float(lam.sum() ** 2 / squares) if squares > 0 else 0.0


def directions_from_eigenvalues(eigenvalues: Any, fraction: float = 0.99) -> int:
    """Smallest k with λ₁ + … + λₖ ≥ fraction · Σλ (principal directions for that variance)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    lam = _clean_spectrum(eigenvalues)
    total = lam.sum()
    if total <= 0:
        return 0
    cumulative = np.cumsum(lam)
    # The full sum counts as reaching every fraction ≤ 1, whatever cumsum's rounding says.
    k = int(np.searchsorted(cumulative, fraction * total, side="left")) + 1
    return min(k, int(np.count_nonzero(lam)))


def _summary(lam: np.ndarray, fraction: float) -> SpectralComplexity:
    return SpectralComplexity(
        effective_rank=effective_rank_from_eigenvalues(lam),
        participation_ratio=participation_ratio_from_eigenvalues(lam),
        variance_directions=directions_from_eigenvalues(lam, fraction),
        variance_fraction=fraction,
    )


def complexity_from_covariance(
    cov: Any, n: int | None = None, *, fraction: float = 0.99, mean: Any = None,
    eigenvalues: Any = None,
) -> SpectralComplexity:
    """The spectral measures from a p × p covariance (or second-moment) matrix of n examples.

    Equals the data route (`tests/reference/complexity.spectral_complexity`) of the data it
    came from (any normalisation of cov: the measures are scale-free). n matters because the
    data route sees only min(n, p) singular values, and RankMe's ε counts each; n=None keeps
    all p (the same when n ≥ p). Pass the feature means as `mean` to let a covariance whose
    trace is rounding noise next to ‖mean‖² count as "no variance"; without it only a trace
    ≤ 0 does. `eigenvalues`: those of cov (any order) when already computed.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be a square p × p matrix, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError("cov contains NaN or Inf")
    if n is not None and n < 2:
        raise ValueError(f"a covariance spectrum needs at least 2 examples, got {n}")
    keep = cov.shape[0] if n is None else min(n, cov.shape[0])
    trace = float(np.trace(cov))
    raw = trace if mean is None else trace + float(np.sum(np.square(mean)))
    if not trace > _CONSTANT_RTOL * raw or trace <= 0:
        return _summary(np.zeros(keep), fraction)
    if eigenvalues is None:
        eigenvalues = np.linalg.eigvalsh((cov + cov.T) / 2)
    return _summary(_clean_spectrum(np.sort(np.asarray(eigenvalues, np.float64)), keep), fraction)


def subsample_indices(n: int, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random subsample of at most max_points of n examples.

    Deterministic in (n, max_points, seed), so a streaming caller can decide before the pass
    which examples to keep for TwoNN, and every model keeps the same ones.
    """
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def twonn_intrinsic_dimension(
    x: Any,
    *,
    estimator: Literal["mle", "linear_fit"] = "mle",
    max_points: int = 5000,
    seed: int = 0,
    fit_fraction: float = 0.9,
) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the points x (n × p).

    For each point, μᵢ = r₂/r₁, the ratio of its second- to first-nearest-neighbour distance,
    follows a Pareto law f(μ) = d·μ^(−d−1) on a locally uniform d-dimensional manifold.
    estimator="mle" (default) is its maximum-likelihood estimate d = N / Σᵢ log μᵢ;
    "linear_fit" is the paper's original: a least-squares line through the origin of
    −log(1 − F(μ)) against log μ over the smallest `fit_fraction` of the μ (the largest 10 %
    are discarded as outliers).

    Rules: more than max_points rows → the fixed subsample `subsample_indices(n, max_points,
    seed)`; exact duplicate rows are collapsed to one first (a duplicate has r₁ = 0 and an
    infinite μ); fewer than 3 distinct points (e.g. a dead layer, all rows equal) → 0.0.
    If every μ is 1 (each point's two nearest neighbours equidistant, a perfect lattice; μ
    within 1e-12 of 1 counts as 1) the estimate is infinite and ValueError is raised.
    Neighbours come from scipy's k-d tree up to 20 features and scikit-learn's BLAS brute
    force above (a k-d tree in 200 dimensions was 10× slower); r₁ and r₂ are then recomputed
    exactly from the points.
    """
    if estimator not in ("mle", "linear_fit"):
        raise ValueError(f"estimator must be 'mle' or 'linear_fit', got {estimator!r}")
    if not 0 < fit_fraction <= 1:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction!r}")
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3, got {max_points}")
    x = as_activation_matrix(x)
    x = x[subsample_indices(x.shape[0], max_points, seed)]
    points = np.unique(x, axis=0)
    if points.shape[0] < 3:
        return 0.0
    ratios = np.log(_neighbour_distance_ratios(points))
    ratios[ratios < _TIED_LOG_RATIO] = 0.0  # equal distances up to rounding are ties
    if estimator == "mle":
        total = float(ratios.sum())
        if total <= 0:
            raise ValueError(_ALL_EQUIDISTANT)
        return points.shape[0] / total
    return _twonn_linear_fit(ratios, fit_fraction)


_ALL_EQUIDISTANT = (
    "TwoNN is undefined here: every point's first and second nearest neighbours are "
    "equidistant (a regular lattice), which makes the dimension estimate infinite"
)


def _neighbour_distance_ratios(points: np.ndarray) -> np.ndarray:
    """r₂/r₁ for every point; the points must be distinct."""
    if points.shape[1] <= _KD_TREE_MAX_DIMENSIONS:
        from scipy.spatial import cKDTree

        # Distinct points: the nearest hit is the point itself, at distance 0, so skip it.
        _, neighbours = cKDTree(points).query(points, k=3)
        neighbours = neighbours[:, 1:]
    else:
        from sklearn.neighbors import NearestNeighbors  # heavy import, only needed here

        search = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(points)
        _, neighbours = search.kneighbors()  # without a query, a point is not its own neighbour
    # Brute force ranks by ‖a‖² + ‖b‖² − 2a·b, which cancels for near neighbours: recompute.
    first = np.linalg.norm(points - points[neighbours[:, 0]], axis=1)
    second = np.linalg.norm(points - points[neighbours[:, 1]], axis=1)
    return np.maximum(first, second) / np.minimum(first, second)


def _twonn_linear_fit(log_ratios: np.ndarray, fit_fraction: float) -> float:
    log_ratios = np.sort(log_ratios)
    n = log_ratios.size
    kept = max(1, min(n - 1, int(np.floor(fit_fraction * n))))
    empirical_cdf = np.arange(1, kept + 1) / n
    x, y = log_ratios[:kept], -np.log1p(-empirical_cdf)
    denominator = float(x @ x)
    if denominator <= 0:
        raise ValueError(_ALL_EQUIDISTANT)
    return float(x @ y) / denominator
