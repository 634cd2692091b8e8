"""Reference orthogonal Procrustes distance, on the data itself, for the tests.

Ding, Denain & Steinhardt, "Grounding Representation Similarity with Statistical Testing",
NeurIPS 2021: for X (n × p) and Y (n × q), each column-centred and scaled to ‖·‖_F = 1,

    d(X, Y) = min_R ‖XR − Y‖²_F  (R with orthonormal columns, the narrower side zero-padded)
            = ‖X‖²_F + ‖Y‖²_F − 2‖XᵀY‖_* = 2 − 2‖XᵀY‖_*,

where ‖·‖_* is the nuclear norm (sum of singular values). d lies in [0, 2]; it is 0 exactly
when one representation is a rotation/reflection (times a scalar) of the other, and it is
symmetric. Unlike CKA it is sensitive to every direction in proportion to its variance.

The analysis computes it from streamed scatter matrices
(`prunescope.workers.metrics.moments.procrustes_from_scatter`); this data-space form is what
the tests compare that with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix

_CONSTANT_RTOL = 1e-20


def _unit_centred(a: np.ndarray) -> np.ndarray | None:
    """Centred a scaled to unit Frobenius norm, reduced to n columns when wider than n.

    XᵀY only enters through its singular values. For a p > n representation the thin QR
    factorisation Xᵀ = QR (Q: p × n, orthonormal columns) gives XᵀY = Q·(RY), whose singular
    values are those of RY = (Rᵀ)ᵀY, so Rᵀ (n × n) stands in for X at O(n²p) cost instead of
    a p × q product.
    """
    ac = a - a.mean(axis=0, keepdims=True)
    norm_squared = float(np.vdot(ac, ac))
    if not norm_squared > _CONSTANT_RTOL * float(np.vdot(a, a)):
        return None
    ac /= np.sqrt(norm_squared)
    if ac.shape[1] > ac.shape[0]:
        ac = np.linalg.qr(ac.T, mode="r").T
    return ac


def procrustes_distance(x: Any, y: Any) -> float:
    """Orthogonal Procrustes distance 2 − 2‖XᵀY‖_* (Ding et al. 2021) of x (n × p), y (n × q).

    Widths may differ. Returns 2.0 — the largest distance, the counterpart of CKA's 0.0 —
    when either representation has no variance across examples (e.g. a dead layer; 1e-20 rule
    of `cka`); the result is clipped to [0, 2] against rounding. Raises ValueError for NaN/Inf,
    mismatched rows or fewer than 2 examples.
    """
    x, y = as_activation_matrix(x, "x"), as_activation_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must describe the same examples: got {x.shape[0]} and {y.shape[0]} rows"
        )
    if x.shape[0] < 2:
        raise ValueError(f"the Procrustes distance needs at least 2 examples, got {x.shape[0]}")
    xn, yn = _unit_centred(x), _unit_centred(y)
    if xn is None or yn is None:
        return 2.0
    nuclear_norm = float(np.linalg.norm(xn.T @ yn, ord="nuc"))
    return float(min(max(2.0 - 2.0 * nuclear_norm, 0.0), 2.0))
