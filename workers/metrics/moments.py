"""Exact streamed second moments of many representations, and the metrics that need only them.

A layer-divergence analysis compares every layer of a reference model (usually the dense one)
with every layer of each other checkpoint. All of linear CKA (biased and debiased), CCA-based
similarity (SVCCA, PWCCA), the orthogonal Procrustes distance and the covariance spectrum
(complexity) are functions of a few sums over examples:

    n, Σ z_i, Σ z_i z_iᵀ                  per model (z_i: all chosen layers side by side),
    Σ x_i y_iᵀ                            per (reference, other) pair,
    and, for debiased CKA, Σ ‖x_i,ℓ‖² y_i, Σ ‖x_i,ℓ‖² ‖y_i,ℓ'‖² per layer.

`MomentAccumulator` folds batches into these sums in float64, on the tensors' device (a GPU
when the worker has one), so the result is exact for the full evaluation set while only one
batch of activations is alive. Before summing, every model's features are shifted by the
mean of its first batch: centring afterwards then subtracts two nearly equal large numbers
much less (the "shifted data" method of computing variances), and all metrics here are
invariant to a shift of either representation.

The metric functions take the centred scatter matrices Sxx = Σ (x−μ)(x−μ)ᵀ, Syy, Sxy; they
are independent formulations of the data-based references in `tests/reference/` (CKA, CCA,
Procrustes, complexity), which the tests compare them with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Eigenvalues below this fraction of the largest are numerical noise (rank deficiency).
_RANK_RTOL = 1e-10


@dataclass(frozen=True)
class Block:
    """Where one layer's features sit inside a model's concatenated feature vector."""

    start: int
    stop: int


def blocks(widths: Sequence[int]) -> list[Block]:
    edges = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    return [Block(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class MomentAccumulator:
    """Running sums for a reference representation and `others`, each split into layers.

    `update(reference, others)` takes, for one batch, a (batch, P) tensor of the reference
    model's concatenated layer features and a list of (batch, Q_m) tensors, one per other
    model. Widths are fixed by `reference_widths` and `other_widths` (per layer).

    Two choices keep the cost near the arithmetic it cannot avoid:
    - batches are buffered (in their own dtype) and folded `fold_rows` examples at a time: a
      p × p sum updated from a batch of b rows moves 16·p² bytes for 2·b·p² flops, so small
      batches (32 sentences through MiniLM's 7 × 384 hidden states) leave the update bound by
      memory traffic; folding ≥ 256 rows at once makes it bound by arithmetic. Exactness is
      unchanged (the same sums, in float64).
    - only the reference keeps Σ z zᵀ across all its layers (the reference-vs-itself layer ×
      layer matrix needs it); another model keeps one block per layer, since only its
      same-layer covariances are ever read, with its cross products against the reference.
    """

    def __init__(
        self,
        reference_widths: Sequence[int],
        other_widths: Sequence[Sequence[int]],
        device: torch.device | str = "cpu",
        *,
        fold_rows: int = 256,
    ) -> None:
        self.device = torch.device(device)
        self.fold_rows = max(1, int(fold_rows))
        self.ref_blocks = blocks(reference_widths)
        self.other_blocks = [blocks(w) for w in other_widths]
        widths = [sum(reference_widths), *[sum(w) for w in other_widths]]
        layer_counts = [len(reference_widths), *[len(w) for w in other_widths]]
        f64 = {"dtype": torch.float64, "device": self.device}
        self.n = 0
        self._pending: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self._pending_rows = 0
        self.shift: list[torch.Tensor | None] = [None] * len(widths)
        self.sum = [torch.zeros(p, **f64) for p in widths]
        # Σ z zᵀ: the reference's whole matrix, one block per layer for the others
        self.gram_ref = torch.zeros(widths[0], widths[0], **f64)
        self.gram_blocks = [
            [torch.zeros(b.stop - b.start, b.stop - b.start, **f64) for b in model_blocks]
            for model_blocks in self.other_blocks
        ]
        # Σ ‖z_ℓ‖² z and Σ ‖z_ℓ‖² ‖z_ℓ'‖² per model (for debiased CKA's normalisers)
        self.norm_z = [torch.zeros(k, p, **f64) for k, p in zip(layer_counts, widths, strict=True)]
        self.norm_norm = [torch.zeros(k, k, **f64) for k in layer_counts]
        self.norm_sum = [torch.zeros(k, **f64) for k in layer_counts]
        p_ref, k_ref = widths[0], layer_counts[0]
        # Per other model: Σ x yᵀ, Σ ‖x_ℓ‖² y, Σ ‖y_ℓ‖² x, Σ ‖x_ℓ‖²‖y_ℓ'‖²
        self.cross = [torch.zeros(p_ref, q, **f64) for q in widths[1:]]
        self.xnorm_y = [torch.zeros(k_ref, q, **f64) for q in widths[1:]]
        self.ynorm_x = [torch.zeros(k, p_ref, **f64) for k in layer_counts[1:]]
        self.xnorm_ynorm = [torch.zeros(k_ref, k, **f64) for k in layer_counts[1:]]

    def _prepare(self, index: int, z: torch.Tensor, layer_blocks: list[Block]) -> tuple:
        z = z.to(self.device, torch.float64).reshape(z.shape[0], -1)
        if self.shift[index] is None:
            self.shift[index] = z.mean(0)
        z = z - self.shift[index]
        norms = torch.stack([(z[:, b.start : b.stop] ** 2).sum(1) for b in layer_blocks], 1)
        self.sum[index] += z.sum(0)
        # In place: `+= a @ b` allocates a p × p temporary per fold.
        if index == 0:
            self.gram_ref.addmm_(z.T, z)
        else:
            for gram, b in zip(self.gram_blocks[index - 1], layer_blocks, strict=True):
                zb = z[:, b.start : b.stop]
                gram.addmm_(zb.T, zb)
        self.norm_z[index].addmm_(norms.T, z)
        self.norm_norm[index].addmm_(norms.T, norms)
        self.norm_sum[index] += norms.sum(0)
        return z, norms

    def update(self, reference: torch.Tensor, others: Sequence[torch.Tensor]) -> None:
        if len(others) != len(self.other_blocks):
            raise ValueError(f"expected {len(self.other_blocks)} other models, got {len(others)}")
        rows = reference.shape[0]
        if any(y.shape[0] != rows for y in others):
            raise ValueError("every model must see the same examples in a batch")
        flat = lambda t: t.detach().reshape(rows, -1)  # noqa: E731
        self._pending.append((flat(reference), [flat(y) for y in others]))
        self._pending_rows += rows
        if self._pending_rows >= self.fold_rows:
            self._fold()

    @torch.inference_mode()
    def _fold(self) -> None:
        if not self._pending:
            return
        if len(self._pending) == 1:  # a batch of fold_rows or more: no copy
            reference, others = self._pending[0]
        else:
            reference = torch.cat([r for r, _ in self._pending])
            others = [torch.cat([o[m] for _, o in self._pending]) for m in range(len(self.cross))]
        self._pending, self._pending_rows = [], 0
        x, x_norms = self._prepare(0, reference, self.ref_blocks)
        for m, y in enumerate(others):
            y, y_norms = self._prepare(m + 1, y, self.other_blocks[m])
            self.cross[m].addmm_(x.T, y)
            self.xnorm_y[m].addmm_(x_norms.T, y)
            self.ynorm_x[m].addmm_(y_norms.T, x)
            self.xnorm_ynorm[m].addmm_(x_norms.T, y_norms)
        self.n += x.shape[0]

    def finish(self) -> MomentAccumulator:
        """Fold what is still buffered; read-outs call it, so calling it is optional."""
        self._fold()
        return self

    # ---------------------------------------------------------------- read-out

    def _model_blocks(self, model: int) -> list[Block]:
        return self.ref_blocks if model == 0 else self.other_blocks[model - 1]

    def _gram_block(self, model: int, layer: int) -> torch.Tensor:
        self._fold()
        if model == 0:
            b = self.ref_blocks[layer]
            return self.gram_ref[b.start : b.stop, b.start : b.stop]
        return self.gram_blocks[model - 1][layer]

    def scatter(self, model: int, layer: int) -> np.ndarray:
        """Centred scatter Σ (z−μ)(z−μ)ᵀ of one model's layer (model 0 is the reference)."""
        b = self._model_blocks(model)[layer]
        g = self._gram_block(model, layer)
        s = self.sum[model][b.start : b.stop]
        return (g - torch.outer(s, s) / self.n).cpu().numpy()

    def cross_scatter(self, other: int, ref_layer: int, other_layer: int) -> np.ndarray:
        """Centred Σ (x−μx)(y−μy)ᵀ between a reference layer and a layer of other model `other`
        (1-based, as in `scatter`)."""
        self._fold()
        bx, by = self.ref_blocks[ref_layer], self.other_blocks[other - 1][other_layer]
        sx = self.sum[0][bx.start : bx.stop]
        sy = self.sum[other][by.start : by.stop]
        c = self.cross[other - 1][bx.start : bx.stop, by.start : by.stop]
        return (c - torch.outer(sx, sy) / self.n).cpu().numpy()

    def self_cross_scatter(self, layer_i: int, layer_j: int) -> np.ndarray:
        """Centred cross scatter between two layers of the reference model itself."""
        self._fold()
        bi, bj = self.ref_blocks[layer_i], self.ref_blocks[layer_j]
        s, g = self.sum[0], self.gram_ref
        block = g[bi.start : bi.stop, bj.start : bj.stop]
        outer = torch.outer(s[bi.start : bi.stop], s[bj.start : bj.stop])
        return (block - outer / self.n).cpu().numpy()

    def _self_hsic_terms(self, model: int, layer: int) -> tuple[float, float, float]:
        b = self._model_blocks(model)[layer]
        g = self._gram_block(model, layer)
        s = self.sum[model][b.start : b.stop]
        nz = self.norm_z[model][layer, b.start : b.stop]
        norm = float(self.norm_sum[model][layer])
        return _hsic_terms(
            float((g**2).sum()), float(self.norm_norm[model][layer, layer]), float(s @ s),
            float(s @ s), norm, norm, float(s @ g @ s), float(nz @ s), float(nz @ s),
        )

    def _debiased(
        self, xy: tuple[float, float, float], x: tuple[int, int], y: tuple[int, int]
    ) -> float:
        if self.n < 4:
            raise ValueError(f"debiased CKA needs at least 4 examples, got {self.n}")
        xx = self._self_hsic_terms(*x)
        yy = self._self_hsic_terms(*y)
        return _ratio(_unbiased_hsic(self.n, *xy), _unbiased_hsic(self.n, *xx),
                      _unbiased_hsic(self.n, *yy))

    def debiased_cka(self, other: int, ref_layer: int, other_layer: int) -> float:
        """Debiased linear CKA (unbiased HSIC, Song et al. 2012) from the streamed sums."""
        self._fold()
        bx, by = self.ref_blocks[ref_layer], self.other_blocks[other - 1][other_layer]
        sx = self.sum[0][bx.start : bx.stop]
        sy = self.sum[other][by.start : by.stop]
        c = self.cross[other - 1][bx.start : bx.stop, by.start : by.stop]
        xy = _hsic_terms(
            float((c**2).sum()), float(self.xnorm_ynorm[other - 1][ref_layer, other_layer]),
            float(sx @ sx), float(sy @ sy), float(self.norm_sum[0][ref_layer]),
            float(self.norm_sum[other][other_layer]), float(sx @ c @ sy),
            float(self.xnorm_y[other - 1][ref_layer, by.start : by.stop] @ sy),
            float(self.ynorm_x[other - 1][other_layer, bx.start : bx.stop] @ sx),
        )
        return self._debiased(xy, (0, ref_layer), (other, other_layer))

    def self_debiased_cka(self, layer_i: int, layer_j: int) -> float:
        """Debiased CKA between two layers of the reference model itself."""
        self._fold()
        bi, bj = self.ref_blocks[layer_i], self.ref_blocks[layer_j]
        si = self.sum[0][bi.start : bi.stop]
        sj = self.sum[0][bj.start : bj.stop]
        c = self.gram_ref[bi.start : bi.stop, bj.start : bj.stop]
        xy = _hsic_terms(
            float((c**2).sum()), float(self.norm_norm[0][layer_i, layer_j]), float(si @ si),
            float(sj @ sj), float(self.norm_sum[0][layer_i]), float(self.norm_sum[0][layer_j]),
            float(si @ c @ sj), float(self.norm_z[0][layer_i, bj.start : bj.stop] @ sj),
            float(self.norm_z[0][layer_j, bi.start : bi.stop] @ si),
        )
        return self._debiased(xy, (0, layer_i), (0, layer_j))


def _hsic_terms(
    cross_sq: float, norm_norm: float, sx_sq: float, sy_sq: float, norm_x: float,
    norm_y: float, sx_c_sy: float, xnorm_y_sy: float, ynorm_x_sx: float,
) -> tuple[float, float, float]:
    """tr(K̃L̃), 1ᵀK̃1·1ᵀL̃1 and 1ᵀK̃L̃1 for K = XXᵀ, L = YYᵀ with zeroed diagonals.

    tr(K̃L̃) = ‖XᵀY‖²_F − Σ_i ‖x_i‖²‖y_i‖²; 1ᵀK̃1 = ‖Σx_i‖² − Σ‖x_i‖²; and
    1ᵀK̃L̃1 = Σ_i (x_i·s_x − ‖x_i‖²)(y_i·s_y − ‖y_i‖²), expanded into streamed sums.
    """
    trace = cross_sq - norm_norm
    ones_k = sx_sq - norm_x
    ones_l = sy_sq - norm_y
    ones_kl = sx_c_sy - xnorm_y_sy - ynorm_x_sx + norm_norm
    return trace, ones_k * ones_l, ones_kl


def _unbiased_hsic(n: int, trace: float, ones_product: float, ones_kl: float) -> float:
    return (trace + ones_product / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_kl) / (n * (n - 3))


def _ratio(xy: float, xx: float, yy: float) -> float:
    # A representation without variance shares no structure with anything: 0, not 0/0.
    if xx <= 0 or yy <= 0:
        return 0.0
    return float(xy / np.sqrt(xx * yy))


def _degenerate(scatter: np.ndarray) -> bool:
    total = float(np.trace(scatter))
    return not np.isfinite(total) or total <= 0.0


def linear_cka_from_scatter(sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray) -> float:
    """Linear CKA = ‖Sxy‖²_F / (‖Sxx‖_F ‖Syy‖_F) (Kornblith et al. 2019, feature-space form).

    0.0 when either representation has no variance.
    """
    if _degenerate(sxx) or _degenerate(syy):
        return 0.0
    value = float((sxy**2).sum() / (np.linalg.norm(sxx) * np.linalg.norm(syy)))
    return min(value, 1.0)  # identical inputs can round a hair above 1


def procrustes_from_scatter(sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray) -> float:
    """Orthogonal Procrustes distance (Ding, Denain & Steinhardt 2021) from scatter matrices.

    For centred X, Y scaled to unit Frobenius norm, d = 2 − 2‖XᵀY‖_* (nuclear norm); here
    ‖X‖²_F = tr Sxx, so d = 2 − 2‖Sxy‖_* / √(tr Sxx · tr Syy). It lies in [0, 2]; 0 means
    one representation is a rotation (and scaling) of the other. A representation without
    variance gets the maximum distance 2.0.
    """
    if _degenerate(sxx) or _degenerate(syy):
        return 2.0
    nuclear = np.linalg.svd(sxy, compute_uv=False).sum()
    value = 2.0 - 2.0 * nuclear / np.sqrt(np.trace(sxx) * np.trace(syy))
    return float(max(value, 0.0))  # rounding can dip a hair below 0 for identical inputs


Eigen = tuple[np.ndarray, np.ndarray]


def eigen_decomposition(scatter: np.ndarray) -> Eigen:
    """(values, vectors) of a symmetric scatter matrix, largest first.

    SVCCA, PWCCA and the complexity measures of one layer all start from it; an analysis
    computes it once per (model, layer) and passes it on as `eig_x` / `eig_y`.
    """
    values, vectors = np.linalg.eigh((scatter + scatter.T) / 2)
    return values[::-1], vectors[:, ::-1]


def _principal(scatter: np.ndarray, eig: Eigen | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a scatter matrix, largest first, trimmed to the numerical rank."""
    values, vectors = eig if eig is not None else eigen_decomposition(scatter)
    keep = values > _RANK_RTOL * max(values[0], 0.0) if values.size and values[0] > 0 else []
    return values[keep], vectors[:, keep]


def _directions_explaining(values: np.ndarray, keep_variance: float) -> int:
    """How many of the leading eigenvalues (largest first) explain `keep_variance`."""
    cumulative = np.cumsum(values) / values.sum()
    return int(np.searchsorted(cumulative, keep_variance - 1e-12) + 1)


def _whitened_cross(
    sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, eig_x: Eigen | None, eig_y: Eigen | None,
) -> tuple[np.ndarray, ...] | None:
    """(M, Wx, Wy, λx, λy) with Wx = Ux Λx^{-1/2} over each side's principal directions (see
    `_principal`) and M = Wxᵀ Sxy Wy, whose singular values are the canonical correlations;
    None when either side has no variance."""
    lx, ux = _principal(sxx, eig_x)
    ly, uy = _principal(syy, eig_y)
    if lx.size == 0 or ly.size == 0:
        return None
    wx = ux / np.sqrt(lx)
    wy = uy / np.sqrt(ly)
    return wx.T @ sxy @ wy, wx, wy, lx, ly


def svcca_and_pwcca_from_scatter(
    sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, *, keep_variance: float = 0.99,
    eig_x: Eigen | None = None, eig_y: Eigen | None = None,
) -> tuple[float, float]:
    """(SVCCA, PWCCA) of one pair from its scatter matrices; 0.0 each when either side has no
    variance.

    SVCCA (Raghu et al. 2017): keep each side's top principal directions explaining
    `keep_variance` (99 %) of the variance, then the mean canonical correlation between the two
    subspaces. PWCCA (Morcos, Raghu & Bengio 2018): canonical correlations weighted by how much
    of a representation each canonical variate accounts for — with unit-norm canonical
    variates h_i = X a_i, α_i = Σ_j |⟨h_i, x_j⟩| over the neurons x_j, i.e. the row sums of
    |Aᵀ Sxx|, and PWCCA = Σ α_i ρ_i / Σ α_i. As in the reference code, the side with fewer
    canonical directions (x on a tie) sets the weights, since each of its variates has a
    partner correlation. Where correlations nearly tie, the directions inside the tie are
    ill-determined and |⟨h_i, x_j⟩| is not rotation invariant, so equivalent computations
    (other batching, data vs moments) agree to about 1e-4 there.

    The two share their work: SVCCA's principal directions are the leading ones of PWCCA's
    (the same eigenvalues, cut at `keep_variance`), so its whitened cross-covariance is a
    leading block of PWCCA's, and its correlations need singular values only."""
    whitened = _whitened_cross(sxy, sxx, syy, eig_x, eig_y)
    if whitened is None:
        return 0.0, 0.0
    m, wx, wy, lx, ly = whitened
    kx = _directions_explaining(lx, keep_variance)
    ky = _directions_explaining(ly, keep_variance)
    return _mean_correlation(m[:kx, :ky]), _pwcca(m, wx, wy, sxx, syy)


def _mean_correlation(whitened_cross: np.ndarray) -> float:
    rho = np.linalg.svd(whitened_cross, compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def _pwcca(m: np.ndarray, wx: np.ndarray, wy: np.ndarray, sxx: np.ndarray,
           syy: np.ndarray) -> float:
    """PWCCA from `_whitened_cross`: only the weighting side's directions are formed."""
    u, rho, vt = np.linalg.svd(m, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    if wx.shape[1] <= wy.shape[1]:
        directions, scatter = wx @ u, sxx
    else:
        directions, scatter = wy @ vt.T, syy
    weights = np.abs(directions.T @ scatter).sum(axis=1)
    return float((weights * rho).sum() / weights.sum())
