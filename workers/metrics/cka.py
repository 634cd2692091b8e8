"""Linear centered kernel alignment (CKA): how similar two representations of the same examples are.

Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019. For column-centred X (n × p) and Y (n × q), rows being the same n examples,

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)
              = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)),   K = XXᵀ, L = YYᵀ.

It lies in [0, 1], is invariant to orthogonal transforms and isotropic scaling of either
representation, and not to arbitrary invertible linear maps. Three formulations live here:
the feature-space form (`linear_cka`, cost O(n·p·q)), the Gram/HSIC form (`linear_cka_gram`,
O(n²·(p+q)), an independent route used to cross-check), and an exact streaming accumulator
(`LinearCKAAccumulator`) that folds batches into p×p, q×q and q×p sums, so a test set never
has to sit in memory at once.

Degenerate inputs: a representation with no variance across examples (every column constant,
e.g. a layer whose units all died after pruning) shares no example structure with anything,
and its CKA is defined here as 0.0 rather than the 0/0 of the formula. Inputs counted as
constant are those whose centred sum of squares is below 1e-20 of their raw sum of squares,
which is far below float32 resolution, so only rounding noise is treated as constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CONSTANT_RTOL = 1e-20


def _as_matrix(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; CKA is undefined for it")
    return a


def _check_pair(x: Any, y: Any, min_examples: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must describe the same examples: got {x.shape[0]} and {y.shape[0]} rows"
        )
    if x.shape[0] < min_examples:
        raise ValueError(f"CKA needs at least {min_examples} examples, got {x.shape[0]}")
    return x, y


def _has_variance(centred_sum_squares: float, raw_sum_squares: float) -> bool:
    return centred_sum_squares > _CONSTANT_RTOL * raw_sum_squares


def _centre_columns(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _debiased_hsic_scaled(
    cross_squared_norm: float,
    row_norms_x: np.ndarray,
    row_norms_y: np.ndarray,
    n: int,
) -> float:
    """n(n−3) · HSIC₁ of the linear kernels of column-centred X and Y, in feature space.

    With centred columns, K̃ = K − diag(K) has K̃1 = −diag(K), so the three terms of Song et
    al.'s estimator become tr(K̃L̃) = ‖YᵀX‖²_F − Σᵢ aᵢbᵢ, 1ᵀK̃1 = −‖X‖²_F and
    1ᵀK̃L̃1 = Σᵢ aᵢbᵢ, where aᵢ = ‖xᵢ‖², bᵢ = ‖yᵢ‖² (row_norms_*).
    """
    ab = float(row_norms_x @ row_norms_y)
    return (
        cross_squared_norm
        - n / (n - 2) * ab
        + float(row_norms_x.sum()) * float(row_norms_y.sum()) / ((n - 1) * (n - 2))
    )


def linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA between representations x (n × p) and y (n × q), feature-space form, float64.

    Biased (Kornblith et al. 2019, eq. above): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred columns.
    debiased=True replaces each HSIC by the unbiased estimator HSIC₁ of Song et al. (2012,
    "Feature Selection via Dependence Maximization"), written in feature space (see
    `_debiased_hsic_scaled`); it corrects the upward bias of CKA when p or q is large relative
    to n, needs n ≥ 4, and can be slightly negative.

    Returns 0.0 when either representation is constant across examples (see module docstring);
    raises ValueError for mismatched rows, too few examples, or NaN/Inf inputs.
    """
    x, y = _check_pair(x, y, 4 if debiased else 2)
    xc, yc = _centre_columns(x), _centre_columns(y)
    row_norms_x = np.einsum("ij,ij->i", xc, xc)
    row_norms_y = np.einsum("ij,ij->i", yc, yc)
    if not (
        _has_variance(row_norms_x.sum(), np.sum(x * x))
        and _has_variance(row_norms_y.sum(), np.sum(y * y))
    ):
        return 0.0
    cross = float(np.sum((yc.T @ xc) ** 2))
    self_x = float(np.sum((xc.T @ xc) ** 2))
    self_y = float(np.sum((yc.T @ yc) ** 2))
    if not debiased:
        return float(cross / (np.sqrt(self_x) * np.sqrt(self_y)))
    n = x.shape[0]
    hsic_xy = _debiased_hsic_scaled(cross, row_norms_x, row_norms_y, n)
    hsic_xx = _debiased_hsic_scaled(self_x, row_norms_x, row_norms_x, n)
    hsic_yy = _debiased_hsic_scaled(self_y, row_norms_y, row_norms_y, n)
    return _normalise_debiased(hsic_xy, hsic_xx, hsic_yy)


def _normalise_debiased(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    if hsic_xx <= 0 or hsic_yy <= 0:
        raise ValueError(
            "debiased CKA is undefined here: the unbiased HSIC of a representation with itself "
            "is not positive (too few examples for the number of features?)"
        )
    return float(hsic_xy / (np.sqrt(hsic_xx) * np.sqrt(hsic_yy)))


def hsic_biased(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """HSIC₀ up to the 1/(n−1)² factor: tr(K H L H), H = I − 11ᵀ/n (Gretton et al. 2005)."""
    kc = _centre_gram(gram_x)
    lc = _centre_gram(gram_y)
    return float(np.sum(kc * lc))  # = tr(KcLc) as both are symmetric


def hsic_unbiased(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """The unbiased HSIC estimator HSIC₁ of Song et al. (2012), from two n × n Gram matrices.

    HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),
    with K̃, L̃ the Gram matrices with zeroed diagonals. Needs n ≥ 4.
    """
    n = gram_x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 examples, got {n}")
    k = gram_x - np.diag(np.diag(gram_x))
    ell = gram_y - np.diag(np.diag(gram_y))
    k_row_sums, l_row_sums = k.sum(axis=1), ell.sum(axis=1)
    total = (
        float(np.sum(k * ell))
        + float(k_row_sums.sum()) * float(l_row_sums.sum()) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * float(k_row_sums @ l_row_sums)
    )
    return total / (n * (n - 3))


def _centre_gram(gram: np.ndarray) -> np.ndarray:
    return (
        gram
        - gram.mean(axis=0, keepdims=True)
        - gram.mean(axis=1, keepdims=True)
        + gram.mean()
    )


def linear_cka_gram(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA through Gram matrices: HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)).

    K = XXᵀ and L = YYᵀ are built from the raw (uncentred) rows; centring happens on the Gram
    matrices (H K H for the biased HSIC₀; the unbiased HSIC₁ is invariant to it). Same value as
    `linear_cka`, by an independent route, at O(n²) memory — meant for cross-checks and small n.
    """
    x, y = _check_pair(x, y, 4 if debiased else 2)
    if not (
        _has_variance(np.sum(_centre_columns(x) ** 2), np.sum(x * x))
        and _has_variance(np.sum(_centre_columns(y) ** 2), np.sum(y * y))
    ):
        return 0.0
    k, ell = x @ x.T, y @ y.T
    hsic = hsic_unbiased if debiased else hsic_biased
    hsic_kl, hsic_kk, hsic_ll = hsic(k, ell), hsic(k, k), hsic(ell, ell)
    if debiased:
        return _normalise_debiased(hsic_kl, hsic_kk, hsic_ll)
    return float(hsic_kl / (np.sqrt(hsic_kk) * np.sqrt(hsic_ll)))


class LinearCKAAccumulator:
    """Exact full-data biased linear CKA, folded batch by batch.

    `update(x_batch, y_batch)` adds the rows of one batch (the same examples in both); `value()`
    gives linear_cka(X, Y) of all rows seen, to float64 rounding. It keeps float64 running
    sums Σx, Σy, XᵀX, YᵀY and YᵀX, and centres at the end through
    XᵀHX = XᵀX − (Σx)(Σx)ᵀ/n (likewise for the other two), so the result is the full-data
    value, not the average over batches of Nguyen et al.'s (2021) minibatch CKA estimator.

    To keep that subtraction from cancelling catastrophically when activations have a large
    mean, every row is first shifted by the first batch's column means; centring makes the
    result independent of the shift.

    Memory is O(p² + q² + pq) float64 values for p and q features, so it suits layers up to a
    few thousand features; flattened feature maps wider than that need a Gram-space (n × n)
    accumulator instead.
    """

    def __init__(self) -> None:
        self.num_examples = 0
        self._shift_x: np.ndarray | None = None
        self._shift_y: np.ndarray | None = None
        self._sum_x: np.ndarray | None = None
        self._sum_y: np.ndarray | None = None
        self._xtx: np.ndarray | None = None
        self._yty: np.ndarray | None = None
        self._ytx: np.ndarray | None = None

    def update(self, x: Any, y: Any) -> None:
        """Fold in one batch: x (b × p) and y (b × q) of the same b examples."""
        x, y = _check_pair(x, y, 0)
        if x.shape[0] == 0:
            return
        if self._shift_x is None:
            self._shift_x, self._shift_y = x.mean(axis=0), y.mean(axis=0)
            p, q = x.shape[1], y.shape[1]
            self._sum_x, self._sum_y = np.zeros(p), np.zeros(q)
            self._xtx, self._yty, self._ytx = np.zeros((p, p)), np.zeros((q, q)), np.zeros((q, p))
        elif x.shape[1] != self._shift_x.shape[0] or y.shape[1] != self._shift_y.shape[0]:
            raise ValueError(
                f"batch has {x.shape[1]} and {y.shape[1]} features, earlier batches had "
                f"{self._shift_x.shape[0]} and {self._shift_y.shape[0]}"
            )
        xs, ys = x - self._shift_x, y - self._shift_y
        self._sum_x += xs.sum(axis=0)
        self._sum_y += ys.sum(axis=0)
        self._xtx += xs.T @ xs
        self._yty += ys.T @ ys
        self._ytx += ys.T @ xs
        self.num_examples += x.shape[0]

    def value(self) -> float:
        """Biased linear CKA of all rows seen so far (0.0 if either side is constant)."""
        n = self.num_examples
        if n < 2:
            raise ValueError(f"CKA needs at least 2 examples, got {n}")
        cxx = self._xtx - np.outer(self._sum_x, self._sum_x) / n
        cyy = self._yty - np.outer(self._sum_y, self._sum_y) / n
        cyx = self._ytx - np.outer(self._sum_y, self._sum_x) / n
        raw_x = _raw_sum_squares(self._xtx, self._sum_x, self._shift_x, n)
        raw_y = _raw_sum_squares(self._yty, self._sum_y, self._shift_y, n)
        if not (_has_variance(np.trace(cxx), raw_x) and _has_variance(np.trace(cyy), raw_y)):
            return 0.0
        return float(np.sum(cyx**2) / (np.linalg.norm(cxx) * np.linalg.norm(cyy)))


def _raw_sum_squares(
    shifted_gram: np.ndarray, shifted_sum: np.ndarray, shift: np.ndarray, n: int
) -> float:
    # Σ‖xᵢ‖² = Σ‖xᵢ − c‖² + 2c·Σ(xᵢ − c) + n‖c‖²: the scale the constant test compares to.
    return float(np.trace(shifted_gram) + 2 * shift @ shifted_sum + n * shift @ shift)
