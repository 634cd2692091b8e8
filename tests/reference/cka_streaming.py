"""Reference streaming CKA: exact full-data linear and RBF CKA folded batch by batch.

Kornblith et al. (2019) CKA of all rows seen, by two exact routes that the tests hold to
`tests/reference/cka.py` on the full data:
- `LinearCKAAccumulator`: float64 running sums Σx, Σy, XᵀX, YᵀY, YᵀX (p × p, numpy or torch on
  the batch's device) centred at the end, XᵀHX = XᵀX − (Σx)(Σx)ᵀ/n; layers up to a few
  thousand features.
- `LinearGramAccumulator` / `GramCKAAccumulator` / `gram_accumulator_cka`: the n × n centred
  Gram HXXᵀH, for layers much wider than the number of examples (linear or RBF, optionally
  debiased with Song et al.'s HSIC₁).
Neither is the analysis' path: that is `prunescope.workers.metrics.moments`.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

import numpy as np

from prunescope.workers.metrics.activations import as_activation_matrix
from tests.reference.cka import (
    _check_sigma_fraction,
    _cka_from_products,
    _cka_of_grams,
    _has_variance,
    _rbf_from_linear_gram,
)


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
