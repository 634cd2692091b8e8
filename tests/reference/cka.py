"""Reference CKA: linear (feature and Gram forms), debiased, RBF and kernel CKA, for the tests.

Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019. For column-centred X (n × p) and Y (n × q), rows being the same n examples,

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)
              = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)),   K = XXᵀ, L = YYᵀ.

It lies in [0, 1], is invariant to orthogonal transforms and isotropic scaling of either
representation, and not to arbitrary invertible linear maps.

Formulations here, all float64:
- `cka` computes linear CKA either in feature space (three p×p/q×q/q×p products, n·(p+q)²/2
  multiply-adds, memory bounded by column blocks) or through the n × n Gram matrices
  (n²·(p+q)/2 multiply-adds, 2n² floats), whichever `choose_form` predicts is cheaper; the
  two give the same value to rounding. `linear_cka` is the feature form, `linear_cka_gram` an
  independent Gram route (raw rows, centring on the Gram) kept for cross-checks.
- `rbf_cka`: Gaussian-kernel CKA with Kornblith's bandwidth convention; `cka_from_grams` for
  any pair of kernel matrices.
- `hsic_biased`, `hsic_unbiased`: the two HSIC estimators on Gram matrices.
Streaming forms of these are in `tests/reference/cka_streaming.py`. The analysis' own CKA is
`prunescope.workers.metrics.moments` (exact, from streamed scatter matrices) and
`prunescope.workers.metrics.minibatch_cka` (Nguyen et al.'s estimate); both are tested against
these functions, which reproduce Kornblith et al.'s published demo values.

Degenerate inputs: a representation with no variance across examples (every column constant,
e.g. a layer whose units all died after pruning) shares no example structure with anything,
and its CKA is defined here as 0.0 rather than the 0/0 of the formula. Inputs counted as
constant are those whose centred sum of squares is below 1e-20 of their raw sum of squares,
which is far below float32 resolution, so only rounding noise is treated as constant.
NaN or Inf anywhere raises ValueError; so do mismatched rows and too few examples (2, or 4 for
the debiased estimator).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix

_CONSTANT_RTOL = 1e-20
# Gram matrices handed in from outside carry centring dust of a few ε relative to their size,
# so "no example structure" there means ‖HKH‖_F below 1e-12·‖K‖_F (std/mean below ~1e-6).
_GRAM_CONSTANT_RTOL = 1e-12
# Feature-form products are formed this many float64 elements at a time (32 MiB), so a
# 16,384-wide layer never materialises its 2 GiB p×p matrix.
_BLOCK_ELEMENTS = 1 << 22
# choose_form's price of the Gram form's memory-bound work (writing, symmetrising and reading
# the two n × n matrices) in multiply-adds per Gram element. Measured on 2 cores: ~150 when the
# products are thin (p = 4), far less when they are wide; 32 puts the crossover where the
# timings of n = 500…4,000, p + q ≈ n cross. Near it both forms cost within 1.5× anyway.
_GRAM_PASS_COST = 32.0

Form = Literal["feature", "gram"]


def _check_pair(x: Any, y: Any, min_examples: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_activation_matrix(x, "x"), as_activation_matrix(y, "y")
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


def _centred_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Column-centred x and y, or None when either has no variance across examples."""
    xc, yc = _centre_columns(x), _centre_columns(y)
    if not (
        _has_variance(float(np.vdot(xc, xc)), float(np.vdot(x, x)))
        and _has_variance(float(np.vdot(yc, yc)), float(np.vdot(y, y)))
    ):
        return None
    return xc, yc


def _debiased_hsic_scaled(
    cross_squared_norm: float,
    row_norms_x: np.ndarray,
    row_norms_y: np.ndarray,
    n: int,
) -> float:
    """n(n−3) · HSIC₁ of the linear kernels of column-centred X and Y, in feature space.

    With centred columns, K̃ = K − diag(K) has K̃1 = −diag(K), so the three terms of Song et
    al.'s estimator become tr(K̃L̃) = ‖YᵀX‖²_F − Σᵢ aᵢbᵢ, 1ᵀK̃1 = −‖X‖²_F and
    1ᵀK̃L̃1 = Σᵢ aᵢbᵢ, where aᵢ = ‖xᵢ‖², bᵢ = ‖yᵢ‖² (row_norms_*). No n × n matrix is needed.
    """
    ab = float(row_norms_x @ row_norms_y)
    return (
        cross_squared_norm
        - n / (n - 2) * ab
        + float(row_norms_x.sum()) * float(row_norms_y.sum()) / ((n - 1) * (n - 2))
    )


def _normalise_debiased(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    if hsic_xx <= 0 or hsic_yy <= 0:
        raise ValueError(
            "debiased CKA is undefined here: the unbiased HSIC of a representation with itself "
            "is not positive (too few examples for the number of features?)"
        )
    return float(hsic_xy / (np.sqrt(hsic_xx) * np.sqrt(hsic_yy)))


def _cka_from_products(
    cross: float, self_x: float, self_y: float, row_norms_x, row_norms_y, n: int, debiased: bool
) -> float:
    if not debiased:
        return float(cross / (math.sqrt(self_x) * math.sqrt(self_y)))
    row_norms_x = np.asarray(row_norms_x, dtype=np.float64)
    row_norms_y = np.asarray(row_norms_y, dtype=np.float64)
    return _normalise_debiased(
        _debiased_hsic_scaled(cross, row_norms_x, row_norms_y, n),
        _debiased_hsic_scaled(self_x, row_norms_x, row_norms_x, n),
        _debiased_hsic_scaled(self_y, row_norms_y, row_norms_y, n),
    )


def _self_product_squared_norm(a: np.ndarray) -> float:
    """‖aᵀa‖²_F from the upper block triangle of aᵀa, one column block at a time."""
    p = a.shape[1]
    block = max(1, _BLOCK_ELEMENTS // max(p, 1))
    total = 0.0
    for start in range(0, p, block):
        stop = min(start + block, p)
        columns = np.ascontiguousarray(a[:, start:stop])
        diagonal = columns.T @ columns  # a transpose pair: numpy calls syrk, half the work
        total += float(np.vdot(diagonal, diagonal))
        if stop < p:
            off_diagonal = columns.T @ a[:, stop:]
            total += 2.0 * float(np.vdot(off_diagonal, off_diagonal))
    return total


def _cross_product_squared_norm(a: np.ndarray, b: np.ndarray) -> float:
    """‖aᵀb‖²_F, one column block of b at a time."""
    q = b.shape[1]
    block = max(1, _BLOCK_ELEMENTS // max(a.shape[1], 1))
    total = 0.0
    for start in range(0, q, block):
        product = a.T @ b[:, start : start + block]
        total += float(np.vdot(product, product))
    return total


def _feature_form(xc: np.ndarray, yc: np.ndarray, debiased: bool) -> float:
    """Linear CKA of column-centred xc, yc in feature space, in their own dtype."""
    return _cka_from_products(
        _cross_product_squared_norm(xc, yc),
        _self_product_squared_norm(xc),
        _self_product_squared_norm(yc),
        np.einsum("ij,ij->i", xc, xc),
        np.einsum("ij,ij->i", yc, yc),
        xc.shape[0],
        debiased,
    )


def _gram_form(xc: np.ndarray, yc: np.ndarray, debiased: bool) -> float:
    """Linear CKA of column-centred xc, yc through K = xc xcᵀ and L = yc ycᵀ, in their dtype.

    Centred columns make K and L already centred (HKH = K), and tr(KL) = ‖YᵀX‖²_F with
    diag(K) = row norms, so the same HSIC expressions apply with no n² centring passes.
    """
    k = xc @ xc.T
    ell = yc @ yc.T
    return _cka_from_products(
        float(np.vdot(k, ell)),
        float(np.vdot(k, k)),
        float(np.vdot(ell, ell)),
        np.diagonal(k),
        np.diagonal(ell),
        xc.shape[0],
        debiased,
    )


def choose_form(n: int, p: int, q: int) -> Form:
    """The cheaper exact route to linear CKA of an (n × p) and an (n × q) representation.

    Counted in multiply-adds, with the symmetric products XᵀX and XXᵀ at half price (BLAS
    syrk):
        feature form  n·(p²/2 + p·q + q²/2) = n·(p + q)²/2
        Gram form     n²·(p + q)/2 + c·n²   (c = 32: memory-bound passes over the Grams)
    so, roughly, the feature form wins when p + q < n and the Gram form when p + q > n.
    Memory: the feature form needs O(n·(p + q)) plus fixed-size column blocks; the Gram form
    2n² floats.
    """
    if min(n, p, q) < 0:
        raise ValueError(f"shape sizes must be non-negative, got n={n}, p={p}, q={q}")
    feature_cost = n * (p + q) ** 2 / 2
    gram_cost = n * n * (p + q) / 2 + _GRAM_PASS_COST * n * n
    return "feature" if feature_cost <= gram_cost else "gram"


def cka(
    x: Any, y: Any, *, debiased: bool = False, form: Literal["auto", "feature", "gram"] = "auto"
) -> float:
    """Linear CKA (Kornblith et al. 2019) of x (n × p) and y (n × q), by the cheaper route.

    form="auto" takes `choose_form(n, p, q)`; "feature" or "gram" forces a route. Both give
    the same value to float64 rounding (≈1e-13). debiased=True uses the unbiased HSIC
    estimator of Song et al. (2012) in place of HSIC; it needs n ≥ 4 and can be slightly
    negative. Returns 0.0 when either representation is constant across examples.
    """
    if form not in ("auto", "feature", "gram"):
        raise ValueError(f"form must be 'auto', 'feature' or 'gram', got {form!r}")
    x, y = _check_pair(x, y, 4 if debiased else 2)
    centred = _centred_pair(x, y)
    if centred is None:
        return 0.0
    if form == "auto":
        form = choose_form(x.shape[0], x.shape[1], y.shape[1])
    return (_feature_form if form == "feature" else _gram_form)(*centred, debiased)


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
    return cka(x, y, debiased=debiased, form="feature")


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
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def linear_cka_gram(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA through Gram matrices: HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)).

    K = XXᵀ and L = YYᵀ are built from the raw (uncentred) rows; centring happens on the Gram
    matrices (H K H for the biased HSIC₀; the unbiased HSIC₁ is invariant to it). Same value as
    `linear_cka`, by an independent route, at O(n²) memory — meant for cross-checks and small n.
    """
    x, y = _check_pair(x, y, 4 if debiased else 2)
    if _centred_pair(x, y) is None:
        return 0.0
    return _cka_of_grams(x @ x.T, y @ y.T, debiased)


def _cka_of_grams(k: np.ndarray, ell: np.ndarray, debiased: bool) -> float:
    hsic = hsic_unbiased if debiased else hsic_biased
    hsic_kl, hsic_kk, hsic_ll = hsic(k, ell), hsic(k, k), hsic(ell, ell)
    if debiased:
        return _normalise_debiased(hsic_kl, hsic_kk, hsic_ll)
    return float(hsic_kl / (np.sqrt(hsic_kk) * np.sqrt(hsic_ll)))


def _gram_has_structure(gram: np.ndarray) -> bool:
    return bool(np.linalg.norm(_centre_gram(gram)) > _GRAM_CONSTANT_RTOL * np.linalg.norm(gram))


def cka_from_grams(gram_x: Any, gram_y: Any, *, debiased: bool = False) -> float:
    """CKA from two n × n kernel matrices: HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)).

    Kornblith et al. 2019, eq. 3 with any kernel: K and L are symmetric Gram matrices of the
    same n examples (linear, RBF, centred or not — centring is applied here). debiased=True
    uses Song et al.'s (2012) unbiased HSIC₁ (n ≥ 4).

    A Gram matrix with no example structure (‖HKH‖_F ≤ 1e-12·‖K‖_F — all examples alike)
    gives 0.0. Raises ValueError for non-square or mismatched matrices and NaN/Inf.
    """
    k = np.asarray(gram_x, dtype=np.float64)
    ell = np.asarray(gram_y, dtype=np.float64)
    for name, g in (("gram_x", k), ("gram_y", ell)):
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"{name} must be a square n × n Gram matrix, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name} contains NaN or Inf; CKA is undefined for it")
    if k.shape != ell.shape:
        raise ValueError(f"Gram matrices must cover the same examples: {k.shape} vs {ell.shape}")
    n = k.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"CKA needs at least {4 if debiased else 2} examples, got {n}")
    if not (_gram_has_structure(k) and _gram_has_structure(ell)):
        return 0.0
    return _cka_of_grams(k, ell, debiased)


def _rbf_from_linear_gram(k: np.ndarray, sigma_fraction: float) -> np.ndarray:
    """exp(−d²ᵢⱼ / (2σ²)) with d²ᵢⱼ = Kᵢᵢ + Kⱼⱼ − 2Kᵢⱼ and σ² = fraction² · median(d²).

    The median runs over all n² entries, the zero diagonal included, as in Kornblith et al.'s
    reference code (it reproduces their published 0.65483; the off-diagonal median gives
    0.65401). If half or more of the distances are zero (many duplicate examples), the median
    of the positive distances is used instead, so the bandwidth stays positive.
    """
    sq_norms = np.diagonal(k)
    sq_distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * k
    np.maximum(sq_distances, 0.0, out=sq_distances)  # rounding can dip below zero
    np.fill_diagonal(sq_distances, 0.0)
    median = float(np.median(sq_distances))
    if median <= 0.0:
        positive = sq_distances[sq_distances > 0.0]
        if positive.size == 0:
            return np.ones_like(k)
        median = float(np.median(positive))
    sq_distances *= -1.0 / (2.0 * sigma_fraction**2 * median)
    return np.exp(sq_distances, out=sq_distances)


def _check_sigma_fraction(sigma_fraction: float) -> None:
    if not (np.isfinite(sigma_fraction) and sigma_fraction > 0):
        raise ValueError(f"sigma_fraction must be a positive number, got {sigma_fraction!r}")


def rbf_gram(x: Any, *, sigma_fraction: float = 0.5) -> np.ndarray:
    """Gaussian-kernel Gram matrix exp(−‖xᵢ − xⱼ‖² / (2σ²)), σ = fraction × median distance.

    Kornblith et al. 2019 (§ RBF CKA; reference code `gram_rbf`): σ² = fraction² times the
    median squared Euclidean distance over all pairs. Distances come from the centred linear
    Gram (BLAS, O(n²·p)); see `_rbf_from_linear_gram` for the median rule.
    """
    _check_sigma_fraction(sigma_fraction)
    xc = _centre_columns(as_activation_matrix(x))
    return _rbf_from_linear_gram(xc @ xc.T, sigma_fraction)


def rbf_cka(x: Any, y: Any, *, sigma_fraction: float = 0.5, debiased: bool = False) -> float:
    """CKA with Gaussian (RBF) kernels, bandwidth σ = sigma_fraction × median distance.

    Kornblith et al. 2019: CKA(K, L) with K, L from `rbf_gram`, each representation with its
    own bandwidth. sigma_fraction=0.5 reproduces their published demo value 0.65483. As the
    fraction grows the kernel turns linear (exp(−d²/2σ²) ≈ 1 − d²/2σ²), so RBF CKA tends to
    linear CKA. Memory O(n²). Constant representations give 0.0, like linear CKA.
    """
    _check_sigma_fraction(sigma_fraction)
    x, y = _check_pair(x, y, 4 if debiased else 2)
    centred = _centred_pair(x, y)
    if centred is None:
        return 0.0
    xc, yc = centred
    return _cka_of_grams(
        _rbf_from_linear_gram(xc @ xc.T, sigma_fraction),
        _rbf_from_linear_gram(yc @ yc.T, sigma_fraction),
        debiased,
    )
