"""Reference CCA similarities on the data itself: canonical correlations, SVCCA and PWCCA.

For column-centred X (n × p) and Y (n × q) describing the same n examples, the canonical
correlations ρ₁ ≥ ρ₂ ≥ … are the cosines of the principal angles between the column spaces of
X and Y (Hotelling 1936; Björck & Golub 1973): with Qx, Qy orthonormal bases of those spaces,
ρ = singular values of QxᵀQy. They are invariant to any invertible linear map of either
representation, which is why CCA is usually applied to a reduced representation:

- SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein, NeurIPS 2017): keep, for each
  representation, the top singular directions explaining 99 % of its variance, then CCA; the
  score is the mean canonical correlation.
- PWCCA (Morcos, Raghu & Bengio, NeurIPS 2018): the mean of the canonical correlations weighted
  by how much of the representation each canonical variate accounts for,
  αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩| (hᵢ the i-th unit canonical variate, xⱼ the j-th centred neuron).

Rank-deficient inputs: instead of the ε·I ridge of the reference code, each basis keeps only
the singular directions above rtol·σ_max (default max(n, p)·ε_float64, the numerical-rank
rule of numpy.linalg.matrix_rank and scipy.linalg.orth), so directions without variance never
enter and no regularisation biases the correlations. Columns with no variance across
examples (constant features, centred to rounding dust) are zeroed first, by the 1e-20 rule of
`cka`. A representation with no variance at all has no canonical directions: its correlation
list is empty and SVCCA / PWCCA are defined as 0.0, as CKA is. CCA needs n well above the
ranks to mean anything: with rank(X) + rank(Y) ≥ n the spaces share directions by necessity
and correlations of 1 appear. NaN/Inf, mismatched rows or n < 2 raise ValueError.

The analysis computes SVCCA and PWCCA from streamed scatter matrices
(`prunescope.workers.metrics.moments.svcca_and_pwcca_from_scatter`); these data-space forms,
through orthonormal bases of the example space, are what the tests compare it with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix
from prunescope.workers.metrics.complexity import directions_from_eigenvalues

_CONSTANT_RTOL = 1e-20


def _check_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_activation_matrix(x, "x"), as_activation_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must describe the same examples: got {x.shape[0]} and {y.shape[0]} rows"
        )
    if x.shape[0] < 2:
        raise ValueError(f"CCA needs at least 2 examples, got {x.shape[0]}")
    return x, y


def _centred_varying_columns(x: np.ndarray) -> np.ndarray:
    """Column-centred x with the columns that do not vary across examples set to zero."""
    xc = x - x.mean(axis=0, keepdims=True)
    constant = np.sum(xc * xc, axis=0) <= _CONSTANT_RTOL * np.sum(x * x, axis=0)
    xc[:, constant] = 0.0
    return xc


def _principal_basis(
    xc: np.ndarray, rtol: float | None, variance_fraction: float | None = None
) -> np.ndarray:
    """Orthonormal n × r basis of xc's column space (top directions for variance_fraction)."""
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return u[:, :0]
    tol = rtol if rtol is not None else max(xc.shape) * np.finfo(np.float64).eps
    rank = int(np.count_nonzero(s > tol * s[0]))
    if variance_fraction is not None:
        rank = min(rank, directions_from_eigenvalues(s[:rank] ** 2, variance_fraction))
    return u[:, :rank]


def _correlations_of_bases(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return np.zeros(0)
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def canonical_correlations(x: Any, y: Any, *, rtol: float | None = None) -> np.ndarray:
    """Canonical correlations ρ₁ ≥ … ≥ ρ_r of x (n × p) and y (n × q), r = min of the ranks.

    ρ = singular values of QxᵀQy for orthonormal bases of the centred column spaces (see
    module docstring for rtol and degenerate inputs); values in [0, 1].
    """
    x, y = _check_pair(x, y)
    return _correlations_of_bases(
        _principal_basis(_centred_varying_columns(x), rtol),
        _principal_basis(_centred_varying_columns(y), rtol),
    )


def svcca(x: Any, y: Any, *, variance_fraction: float = 0.99, rtol: float | None = None) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of the SVD-reduced representations.

    Each representation is reduced to its top-k singular directions, k the smallest number
    explaining `variance_fraction` of its variance (Raghu et al. keep 99 %), then CCA is run
    between the two reduced representations. Since CCA sees only the spanned subspaces, the
    reduced representation is represented by its k left singular vectors. In [0, 1]; 0.0 when
    either representation has no variance.
    """
    x, y = _check_pair(x, y)
    rho = _correlations_of_bases(
        _principal_basis(_centred_varying_columns(x), rtol, variance_fraction),
        _principal_basis(_centred_varying_columns(y), rtol, variance_fraction),
    )
    return float(rho.mean()) if rho.size else 0.0


def pwcca(x: Any, y: Any, *, rtol: float | None = None) -> float:
    """PWCCA (Morcos et al. 2018, eq. 4): Σᵢ αᵢρᵢ / Σᵢ αᵢ with αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩|.

    hᵢ are the unit canonical variates (in example space) of the representation with fewer
    canonical directions (x on a tie) — as the reference code weights by the smaller layer,
    where every variate has a partner correlation — and xⱼ its centred neurons. Directions that
    account for much of the representation count more than ones that barely appear in it, so
    noise directions matched by chance weigh little. In [0, 1]; 0.0 when either representation
    has no variance. Not symmetric in general when the ranks tie.
    """
    x, y = _check_pair(x, y)
    xc, yc = _centred_varying_columns(x), _centred_varying_columns(y)
    qx, qy = _principal_basis(xc, rtol), _principal_basis(yc, rtol)
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return 0.0
    left, rho, right_t = np.linalg.svd(qx.T @ qy, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    if qx.shape[1] <= qy.shape[1]:
        variates, neurons = qx @ left, xc
    else:
        variates, neurons = qy @ right_t.T, yc
    weights = np.abs(variates.T @ neurons).sum(axis=1)
    return float(weights @ rho / weights.sum())
