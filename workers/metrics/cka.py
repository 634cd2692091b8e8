"""Centered kernel alignment (CKA): how similar two representations of the same examples are.

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
- Streaming: `LinearCKAAccumulator` (exact, p×p sums; numpy or torch batches, torch on the
  batch's device) for layers up to a few thousand features, and `LinearGramAccumulator` /
  `GramCKAAccumulator` (exact, n × n Grams) for layers much wider than the number of examples.

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
import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

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


def as_activation_matrix(a: Any, name: str = "x") -> np.ndarray:
    """Activations as a float64 (n × features) matrix; 1-D is one feature, >2-D is flattened.

    Raises ValueError naming `name` if any value is NaN or Inf.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; the similarity is undefined for it")
    return a


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


# --- streaming -----------------------------------------------------------------------------


def _torch_module():
    return sys.modules.get("torch")


def _is_torch(a: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(a, torch.Tensor)


def _torch_matrix(a: Any, name: str, device: Any, keep_dtype: bool = False) -> Any:
    """A 2-D torch tensor on `device`, float64 (or its own float dtype); NaN/Inf raise."""
    torch = _torch_module()
    t = a.detach() if _is_torch(a) else torch.from_numpy(np.asarray(a))
    if t.ndim == 1:
        t = t[:, None]
    elif t.ndim != 2:
        t = t.reshape(t.shape[0], -1)
    dtype = t.dtype if keep_dtype and t.is_floating_point() else torch.float64
    t = t.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; CKA is undefined for it")
    return t


def _numpy_matrix(a: Any, name: str) -> np.ndarray:
    if _is_torch(a):
        a = a.detach().cpu().numpy()
    return as_activation_matrix(a, name)


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

    Batches may be numpy arrays or torch tensors. The first batch fixes where the sums live:
    a torch tensor keeps them in float64 on its device (a GPU's sums never leave it; `value()`
    returns a Python float), numpy keeps them in numpy. Later batches of the other kind are
    moved there.

    Memory is O(p² + q² + pq) float64 values for p and q features, so it suits layers up to a
    few thousand features; flattened feature maps wider than that need the Gram-space
    `GramCKAAccumulator` (n × n) instead — see `choose_form`.
    """

    def __init__(self) -> None:
        self.num_examples = 0
        self._device: Any = None  # a torch.device when the sums are torch tensors
        self._shift_x: Any = None
        self._shift_y: Any = None
        self._sum_x: Any = None
        self._sum_y: Any = None
        self._xtx: Any = None
        self._yty: Any = None
        self._ytx: Any = None

    def _as_batch(self, x: Any, y: Any) -> tuple[Any, Any]:
        if self._shift_x is None:
            first_torch = next((a for a in (x, y) if _is_torch(a)), None)
            self._device = None if first_torch is None else first_torch.device
        if self._device is None:
            return _numpy_matrix(x, "x"), _numpy_matrix(y, "y")
        return _torch_matrix(x, "x", self._device), _torch_matrix(y, "y", self._device)

    def update(self, x: Any, y: Any) -> None:
        """Fold in one batch: x (b × p) and y (b × q) of the same b examples."""
        x, y = self._as_batch(x, y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must describe the same examples: got {x.shape[0]} and {y.shape[0]} rows"
            )
        if x.shape[0] == 0:
            return
        if self._shift_x is None:
            self._shift_x, self._shift_y = x.mean(axis=0), y.mean(axis=0)
        elif x.shape[1] != self._shift_x.shape[0] or y.shape[1] != self._shift_y.shape[0]:
            raise ValueError(
                f"batch has {x.shape[1]} and {y.shape[1]} features, earlier batches had "
                f"{self._shift_x.shape[0]} and {self._shift_y.shape[0]}"
            )
        xs, ys = x - self._shift_x, y - self._shift_y
        if self._sum_x is None:
            self._sum_x, self._sum_y = xs.sum(axis=0), ys.sum(axis=0)
            self._xtx, self._yty, self._ytx = xs.T @ xs, ys.T @ ys, ys.T @ xs
        else:
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
        sx, sy = self._sum_x, self._sum_y
        # Written with operators common to numpy and torch so the sums stay on their device.
        cxx = self._xtx - sx[:, None] * sx[None, :] / n
        cyy = self._yty - sy[:, None] * sy[None, :] / n
        cyx = self._ytx - sy[:, None] * sx[None, :] / n
        raw_x = _raw_sum_squares(self._xtx, sx, self._shift_x, n)
        raw_y = _raw_sum_squares(self._yty, sy, self._shift_y, n)
        if not (
            _has_variance(float(cxx.diagonal().sum()), raw_x)
            and _has_variance(float(cyy.diagonal().sum()), raw_y)
        ):
            return 0.0
        cross = float((cyx * cyx).sum())
        return cross / (math.sqrt(float((cxx * cxx).sum())) * math.sqrt(float((cyy * cyy).sum())))


def _raw_sum_squares(shifted_gram: Any, shifted_sum: Any, shift: Any, n: int) -> float:
    # Σ‖xᵢ‖² = Σ‖xᵢ − c‖² + 2c·Σ(xᵢ − c) + n‖c‖²: the scale the constant test compares to.
    return float(
        shifted_gram.diagonal().sum() + 2 * (shift * shifted_sum).sum() + n * (shift * shift).sum()
    )


class LinearGramAccumulator:
    """The exact n × n centred linear Gram matrix of one representation, built from batches.

    Why it keeps the rows: the Gram form needs xᵢ·xⱼ for every pair of examples, and a batch
    meets earlier batches only through their activations — any exact one-pass state must let
    a future row be multiplied with every earlier row, which takes the earlier rows (or a basis
    of their span, no smaller when p ≥ n). So `update` keeps each batch in its own dtype
    (float32 activations stay float32: lossless, as float32 → float64 is exact) and, for torch
    tensors, on their device; `gram()` then forms K = X_c X_cᵀ in float64 one feature chunk at
    a time (K = Σ_chunks X_c,chunk X_c,chunkᵀ, with each column centred by its full-data mean),
    so no float64 copy of all n × p activations ever exists.

    Memory: n·p activations in their dtype, plus n² float64 for K and one n × chunk float64
    block. Against `LinearCKAAccumulator`'s p² + pq + q² float64 sums this wins whenever p > n:
    a ResNet-18 stage with 65,536 features over 10,000 examples needs 2.6 GB of float32 rows
    and a 0.8 GB Gram instead of ~100 GB of p×p sums. Where even n·p does not fit, run on a
    fixed subsample of the examples (exact CKA of that subsample, an estimate of the full value).

    `finalize()` forms the Gram and frees the rows, e.g. for the dense model's layer, whose
    Gram is then reused against every pruned checkpoint via `gram_accumulator_cka`.
    """

    _CHUNK_ELEMENTS = 1 << 24  # float64 elements per feature chunk (128 MiB)

    def __init__(self) -> None:
        self.num_examples = 0
        self._blocks: list[Any] = []
        self._width: int | None = None
        self._device: Any = None
        self._gram: np.ndarray | None = None
        self._has_variance = False
        self._finalized = False

    def update(self, x: Any) -> None:
        """Keep one batch of rows x (b × p); numpy or torch (kept on its device)."""
        if self._finalized:
            raise ValueError("this Gram accumulator was finalized; it takes no more batches")
        if self._width is None and _is_torch(x):
            self._device = x.device
        if self._device is not None:
            # A copy, as the caller may reuse its buffer (a hook's output) for the next batch.
            rows = _torch_matrix(x, "x", self._device, keep_dtype=True).clone()
        else:
            rows = _numpy_matrix_keep_dtype(x)
        if self._width is not None and rows.shape[1] != self._width:
            raise ValueError(
                f"batch has {rows.shape[1]} features, earlier batches had {self._width}"
            )
        self._width = rows.shape[1]
        if rows.shape[0] == 0:
            return
        self._blocks.append(rows)
        self.num_examples += rows.shape[0]
        self._gram = None

    def _build(self) -> None:
        n, p = self.num_examples, self._width or 0
        if n == 0:
            raise ValueError("no examples were added; a Gram matrix needs at least one")
        chunk = max(1, self._CHUNK_ELEMENTS // n)
        torch = _torch_module() if self._device is not None else None
        if torch is not None:
            gram = torch.zeros((n, n), dtype=torch.float64, device=self._device)
        else:
            gram = np.zeros((n, n))
        raw = 0.0
        for start in range(0, p, chunk):
            if torch is not None:
                columns = torch.cat([b[:, start : start + chunk] for b in self._blocks])
                columns = columns.to(torch.float64)
                raw += float((columns * columns).sum())
                columns -= columns.mean(dim=0, keepdim=True)
            else:
                columns = np.concatenate([b[:, start : start + chunk] for b in self._blocks])
                columns = columns.astype(np.float64, copy=False)
                raw += float(np.vdot(columns, columns))
                columns = columns - columns.mean(axis=0, keepdims=True)
            gram += columns @ columns.T
        if torch is not None:
            gram = gram.cpu().numpy()
        self._has_variance = _has_variance(float(np.trace(gram)), raw)
        self._gram = gram

    def gram(self) -> np.ndarray:
        """The centred linear Gram matrix HXXᵀH (n × n, float64) of all rows so far."""
        if self._gram is None:
            self._build()
        return self._gram

    @property
    def has_variance(self) -> bool:
        """False when the representation is constant across examples (see module docstring)."""
        self.gram()
        return self._has_variance

    def finalize(self) -> None:
        """Form the Gram matrix now and release the kept rows; later updates are refused."""
        self.gram()
        self._blocks = []
        self._finalized = True


def _numpy_matrix_keep_dtype(x: Any) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.array(x, copy=True)  # the caller may reuse its buffer for the next batch
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    elif a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError("x contains NaN or Inf; CKA is undefined for it")
    return a


def gram_accumulator_cka(
    x: LinearGramAccumulator,
    y: LinearGramAccumulator,
    *,
    debiased: bool = False,
    kernel: Literal["linear", "rbf"] = "linear",
    sigma_fraction: float = 0.5,
) -> float:
    """CKA (linear or RBF, optionally debiased) between two filled Gram accumulators.

    Same value as `cka` / `rbf_cka` on the full activations, including the 0.0 for a constant
    representation. The accumulators may be shared: keep one for the dense model's layer and
    pair it with each pruned checkpoint's.
    """
    if x.num_examples != y.num_examples:
        raise ValueError(
            f"x and y must describe the same examples: got {x.num_examples} and "
            f"{y.num_examples} rows"
        )
    n = x.num_examples
    if n < (4 if debiased else 2):
        raise ValueError(f"CKA needs at least {4 if debiased else 2} examples, got {n}")
    if not (x.has_variance and y.has_variance):
        return 0.0
    k, ell = x.gram(), y.gram()
    if kernel == "rbf":
        _check_sigma_fraction(sigma_fraction)
        return _cka_of_grams(
            _rbf_from_linear_gram(k, sigma_fraction),
            _rbf_from_linear_gram(ell, sigma_fraction),
            debiased,
        )
    if kernel != "linear":
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    return _cka_from_products(
        float(np.vdot(k, ell)),
        float(np.vdot(k, k)),
        float(np.vdot(ell, ell)),
        np.diagonal(k),
        np.diagonal(ell),
        n,
        debiased,
    )


class GramCKAAccumulator:
    """Exact full-data CKA of two wide representations through their n × n Gram matrices.

    The Gram-space counterpart of `LinearCKAAccumulator` for layers with more features than
    examples; see `LinearGramAccumulator` for what it keeps and why. `update(x, y)` takes
    one batch of both (numpy or torch); `value()` gives `cka(X, Y, debiased=…)` and
    `rbf_value()` gives `rbf_cka` of all rows seen.
    """

    def __init__(self) -> None:
        self.x = LinearGramAccumulator()
        self.y = LinearGramAccumulator()

    @property
    def num_examples(self) -> int:
        return self.x.num_examples

    def update(self, x: Any, y: Any) -> None:
        """Keep one batch: x (b × p) and y (b × q) of the same b examples."""
        if len(x) != len(y):
            raise ValueError(
                f"x and y must describe the same examples: got {len(x)} and {len(y)} rows"
            )
        self.x.update(x)
        self.y.update(y)

    def value(self, *, debiased: bool = False) -> float:
        """Linear CKA of all rows seen (Kornblith et al. 2019; debiased: Song et al. 2012)."""
        return gram_accumulator_cka(self.x, self.y, debiased=debiased)

    def rbf_value(self, *, sigma_fraction: float = 0.5, debiased: bool = False) -> float:
        """RBF CKA of all rows seen, bandwidth as in `rbf_gram`."""
        return gram_accumulator_cka(
            self.x, self.y, debiased=debiased, kernel="rbf", sigma_fraction=sigma_fraction
        )


class MinibatchCKAAccumulator:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith, ICLR 2021) for every layer pair at once.

        CKA_mb(X, Y) = mean_b HSIC₁(K_b, L_b) / √(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b)),

    with K_b = X_b X_bᵀ the Gram matrix of minibatch b and HSIC₁ the unbiased estimator
    (`hsic_unbiased`). This is an estimate whose value depends on the batch size (the exact
    full-data CKA is `prunescope.workers.metrics.moments`' job); it is offered for very large evaluation
    sets and to compare like with like against tools that compute it (torch_cka).

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
        import torch

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
        import torch

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
