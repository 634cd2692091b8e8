"""Reference routes to the spectral complexity measures: an SVD of the data, and the Gram matrix.

The layers analysis computes effective rank (RankMe, Garrido et al. 2023), participation ratio
(Gao et al. 2017) and the directions for 99 % of the variance from a streamed covariance
(`prunescope.workers.metrics.complexity.complexity_from_covariance`). The covariance of
centred X (n × p) is XcᵀXc/(n−1); its non-zero eigenvalues are σₖ²/(n−1) for the singular
values σₖ of Xc, and also those of the n × n Gram XcXcᵀ/(n−1). So the same spectrum comes
from three routes, and these two are what the tests hold the production one to. They apply
production's eigenvalue → measure functions, so what they check is the spectrum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix
from prunescope.workers.metrics.complexity import (
    _CONSTANT_RTOL,
    RANKME_EPSILON,
    SpectralComplexity,
    _clean_spectrum,
    _summary,
    complexity_from_covariance,
    directions_from_eigenvalues,
    effective_rank_from_eigenvalues,
    participation_ratio_from_eigenvalues,
)


def covariance_eigenvalues(x: Any, *, centre: bool = True) -> np.ndarray:
    """The min(n, p) eigenvalues of X's covariance XcᵀXc/(n−1), descending, via an SVD of X.

    centre=False gives those of the second-moment matrix XᵀX/n instead. All zero when X has
    no variance across examples.
    """
    x = as_activation_matrix(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a covariance spectrum needs at least 2 examples, got {n}")
    if centre:
        xc = x - x.mean(axis=0, keepdims=True)
        if not float(np.vdot(xc, xc)) > _CONSTANT_RTOL * float(np.vdot(x, x)):
            return np.zeros(min(x.shape))
        x, scale = xc, n - 1
    else:
        scale = n
    singular_values = np.linalg.svd(x, compute_uv=False)
    return _clean_spectrum(singular_values**2 / scale)


def effective_rank(x: Any, *, centre: bool = True, eps: float = RANKME_EPSILON) -> float:
    """RankMe effective rank (Garrido et al. 2023) of activations x (n × p)."""
    return effective_rank_from_eigenvalues(covariance_eigenvalues(x, centre=centre), eps)


def participation_ratio(x: Any, *, centre: bool = True) -> float:
    """Participation ratio (Σλ)² / Σλ² of the covariance eigenvalues of x (n × p)."""
    return participation_ratio_from_eigenvalues(covariance_eigenvalues(x, centre=centre))


def variance_directions(x: Any, fraction: float = 0.99, *, centre: bool = True) -> int:
    """Number of principal directions of x (n × p) that explain `fraction` of its variance."""
    return directions_from_eigenvalues(covariance_eigenvalues(x, centre=centre), fraction)


def spectral_complexity(
    x: Any, *, fraction: float = 0.99, centre: bool = True
) -> SpectralComplexity:
    """Effective rank, participation ratio and directions for `fraction`, from one SVD."""
    return _summary(covariance_eigenvalues(x, centre=centre), fraction)


def complexity_from_gram(gram: Any, p: int, *, fraction: float = 0.99) -> SpectralComplexity:
    """The spectral measures from the n × n centred Gram matrix HXXᵀH of p-feature activations.

    XcXcᵀ and XcᵀXc share their non-zero eigenvalues, so this equals the covariance route;
    `cka_streaming.LinearGramAccumulator.gram()` supplies such a matrix for very wide layers.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square n × n matrix, got shape {gram.shape}")
    return complexity_from_covariance(gram, p, fraction=fraction)
