"""Wasserstein neurons: how far each neuron's output distribution is from a Gaussian.

Sawmya, Kong, Markov, Alistarh & Shavit, "Wasserstein Distances, Neuronal Entanglement, and
Sparsity" (Sparse Expansion; arXiv 2405.15756, 2024; ICLR 2025) score a neuron by the
1-Wasserstein distance between its output distribution over an evaluation set and a Gaussian
with the same mean and variance; neurons far from Gaussian ("Wasserstein neurons") are the
entangled ones, and sparsifying them costs the most accuracy. A neuron's output is its
pre-activation — the output of the linear or convolution layer, before the nonlinearity —
since a ReLU's output is non-Gaussian by construction.

In one dimension W1(P, Q) = ∫₀¹ |F_P⁻¹(u) − F_Q⁻¹(u)| du. For the empirical distribution of n
values x₍₁₎ ≤ … ≤ x₍ₙ₎ the quantile function is the step x₍ᵢ₎ on ((i−1)/n, i/n], and against
N(μ, σ²) every step integrates in closed form (`_w1_to_standard_normal`), so the distance is
exact to float64 rounding — no quadrature grid, unlike a mid-point sum over
`scipy.stats.norm.ppf`, whose error shrinks only as the grid grows (the tests use that grid as
the independent check). `scipy.stats.wasserstein_distance` takes two samples, not a sample
and a distribution, so it serves `neuron_shift`, where both sides are samples.

Scale. W1 scales with the data (W1(aX, aY) = |a|·W1(X, Y)), so raw distances mix how
non-Gaussian a neuron is with how large its outputs are. Both are reported: `w1`, in the
neuron's own units, and `w1_scaled` = w1 / σ, the distance of the standardised neuron
(zero mean, unit variance) to N(0, 1), comparable across neurons and layers. A constant
neuron (σ ≤ 10⁻⁶·|μ|, which covers float32 rounding of a constant) has no Gaussian to
compare with; it gets 0 for both and is flagged `constant`.

Convolutions. A channel is one neuron applied at every position, as an LLM neuron is applied
at every token, so its output distribution pools examples and positions (`neuron_rows`).
Averaging over space per example instead would pull every channel towards a Gaussian by the
central limit theorem and hide what the measure is after.

Streaming. Exact W1 needs every value of a neuron, not running moments. `NeuronSample` keeps
the rows in a float32 array (rows × units) up to `capacity` rows and beyond that a uniform
reservoir sample of rows (Vitter 1985, "Random Sampling with a Reservoir", Algorithm R). While
rows seen ≤ capacity the result is exact and equals the one-shot value. Beyond, it is the value
of a uniform random subsample of m = capacity rows; that moves W1-to-Gaussian by at most the W1
between subsample and full sample plus the W1 between their two fitted Gaussians, both of order
σ/√m. The first is on average at most J₁/√m with J₁ = ∫√(F(1−F))dx, since
E|F_m(x) − F(x)| ≤ √(F(1−F)/m) (Jensen; Bobkov & Ledoux 2019, "One-dimensional empirical
measures, order statistics, and Kantorovich transport distances"): J₁ ≈ 1.6σ for a Gaussian,
about 1.3 % of σ at the default m = 2¹⁴. The same seed keeps the same rows for two models fed
the same batches, so the comparison of a dense and a pruned model is paired.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special, stats

DEFAULT_CAPACITY = 1 << 14
CONSTANT_RTOL = 1e-6
# Elements per float64 temporary in the vectorised W1 (units are processed in chunks).
_CHUNK_ELEMENTS = 1 << 21
_SQRT_2PI = np.sqrt(2.0 * np.pi)


def _as_values(name: str, a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be (values, units), got shape {a.shape}; turn layer outputs into "
            "per-neuron rows with neuron_rows first"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no values; the evaluation set gave no outputs")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; the Wasserstein distance is undefined")
    return a


def neuron_rows(output: Any, unit_axis: int = -1) -> np.ndarray:
    """A layer's output as float32 rows of per-neuron values, (values, units).

    `unit_axis` is the axis that indexes neurons: -1 for linear layers (outputs (batch, units)
    or (batch, tokens, units)), 1 for convolutions (batch, channels, *spatial). Every other
    axis becomes rows, so a channel's values pool examples and positions.
    """
    if hasattr(output, "detach"):
        output = output.detach().float().cpu().numpy()
    output = np.asarray(output, dtype=np.float32)
    if output.ndim < 2:
        raise ValueError(f"a layer output needs a batch and a unit axis, got shape {output.shape}")
    moved = np.moveaxis(output, unit_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _w1_to_standard_normal(z: np.ndarray) -> np.ndarray:
    """Exact W1 between the empirical distribution of each column of `z` and N(0, 1).

    z (n, u) holds standardised values sorted along axis 0. On the i-th quantile step
    u ∈ ((i−1)/n, i/n] the Gaussian quantile runs over [lᵢ, hᵢ] = [Φ⁻¹((i−1)/n), Φ⁻¹(i/n)], and
    substituting t = Φ⁻¹(u) gives ∫ |zᵢ − t| φ(t) dt over [lᵢ, hᵢ]. Split at s = clip(zᵢ, lᵢ, hᵢ);
    with H(a, b) = ∫ₐᵇ (zᵢ − t) φ(t) dt = zᵢ(Φ(b) − Φ(a)) + φ(b) − φ(a), each step contributes
    H(lᵢ, s) − H(s, hᵢ).
    """
    n = z.shape[0]
    cdf_edges = np.arange(n + 1, dtype=np.float64) / n
    edges = special.ndtri(cdf_edges)  # −inf … +inf
    low, high = edges[:-1, None], edges[1:, None]
    cdf_low, cdf_high = cdf_edges[:-1, None], cdf_edges[1:, None]
    s = np.clip(z, low, high)
    # Where s sits on an edge, use the edge's exact probability rather than Φ(Φ⁻¹(u)).
    cdf_s = np.where(s == low, cdf_low, np.where(s == high, cdf_high, special.ndtr(s)))
    pdf_low = np.exp(-0.5 * low * low) / _SQRT_2PI
    pdf_high = np.exp(-0.5 * high * high) / _SQRT_2PI
    pdf_s = np.exp(-0.5 * s * s) / _SQRT_2PI
    below = z * (cdf_s - cdf_low) + pdf_s - pdf_low
    above = z * (cdf_high - cdf_s) + pdf_high - pdf_s
    return (below - above).sum(axis=0)


def wasserstein_neurons(
    outputs: Any, *, constant_rtol: float = CONSTANT_RTOL
) -> dict[str, np.ndarray]:
    """Per neuron, the 1-Wasserstein distance of its outputs to the Gaussian of equal moments.

    `outputs` (n, units): n values of each neuron (examples, or examples × positions for a
    channel; see `neuron_rows`). With μ and σ the neuron's mean and standard deviation over the
    n values (σ with divisor n, the moments of the empirical distribution itself) returns
    float64 arrays [units]:

    - w1: W1(empirical, N(μ, σ²)) = ∫₀¹ |F⁻¹(u) − μ − σΦ⁻¹(u)| du, exact (module docstring)
    - w1_scaled: w1 / σ, the distance of the standardised neuron to N(0, 1)
    - mean, std: μ and σ
    - constant (bool): σ ≤ constant_rtol·|μ|; w1 and w1_scaled are 0 there
    """
    values = _as_values("outputs", outputs)
    n, units = values.shape
    mean = np.empty(units)
    std = np.empty(units)
    w1_scaled = np.zeros(units)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, units, chunk):
        block = values[:, start:start + chunk].astype(np.float64)
        mu = block.mean(axis=0)
        sigma = np.sqrt(np.mean((block - mu) ** 2, axis=0))
        mean[start:start + chunk], std[start:start + chunk] = mu, sigma
        varies = sigma > constant_rtol * np.abs(mu)
        if varies.any():
            z = np.sort((block[:, varies] - mu[varies]) / sigma[varies], axis=0)
            w1_scaled[start:start + chunk][varies] = _w1_to_standard_normal(z)
    constant = ~(std > constant_rtol * np.abs(mean))
    return {
        "w1": w1_scaled * std,
        "w1_scaled": w1_scaled,
        "mean": mean,
        "std": std,
        "constant": constant,
    }


class NeuronSample:
    """Per-neuron output values gathered batch by batch: all rows, or a uniform reservoir.

    `update(rows)` adds (b, units) rows (`neuron_rows` of one batch). Up to `capacity` rows are
    kept exactly, in a float32 array that grows by doubling; past that, each new row t (counted
    from 0) replaces a uniformly chosen slot with probability capacity/(t+1), so the kept rows
    are a uniform sample without replacement of every row seen (Vitter 1985, Algorithm R), the
    same rows for every unit. `values()` returns what is kept; `exact` says whether that is
    everything. The error of the subsample is discussed in the module docstring.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive number of rows, got {capacity!r}")
        self.capacity = capacity
        self.num_seen = 0
        self._rng = np.random.default_rng(seed)
        self._buffer: np.ndarray | None = None

    @property
    def num_units(self) -> int | None:
        return None if self._buffer is None else self._buffer.shape[1]

    @property
    def exact(self) -> bool:
        """True while every row seen is kept (the values give the full-data distances)."""
        return self.num_seen <= self.capacity

    def _reserve(self, rows: int, units: int) -> np.ndarray:
        buffer = self._buffer
        if buffer is None:
            buffer = np.empty((min(self.capacity, max(rows, 1024)), units), dtype=np.float32)
        elif buffer.shape[1] != units:
            raise ValueError(f"batch has {units} units, earlier batches had {buffer.shape[1]}")
        if buffer.shape[0] < rows:
            grown = np.empty((min(self.capacity, max(rows, 2 * buffer.shape[0])), units),
                             dtype=np.float32)
            grown[: min(self.num_seen, self.capacity)] = buffer[: min(self.num_seen,
                                                                      self.capacity)]
            buffer = grown
        self._buffer = buffer
        return buffer

    def update(self, rows: Any) -> None:
        """Fold in one batch of (b, units) values (a 1-d array is one unit)."""
        if hasattr(rows, "detach"):
            rows = rows.detach().float().cpu().numpy()
        if np.shape(rows)[0] == 0:
            return
        rows = _as_values("rows", rows)
        count = rows.shape[0]
        direct = max(0, min(count, self.capacity - self.num_seen))
        buffer = self._reserve(min(self.capacity, self.num_seen + direct), rows.shape[1])
        buffer[self.num_seen:self.num_seen + direct] = rows[:direct]
        if direct < count:
            # Row number t ≥ capacity lands in slot j ~ U{0..t} when j < capacity.
            t = self.num_seen + np.arange(direct, count)
            slots = self._rng.integers(0, t + 1)
            accepted = slots < self.capacity
            slots, sources = slots[accepted], np.arange(direct, count)[accepted]
            # A slot hit twice in one batch keeps the later row, as one-by-one updates would.
            unique_slots, last = np.unique(slots[::-1], return_index=True)
            buffer[unique_slots] = rows[sources[::-1][last]]
        self.num_seen += count

    def values(self) -> np.ndarray:
        """The kept rows, (min(rows seen, capacity), units) float32 (a view, not a copy)."""
        if self._buffer is None:
            raise ValueError("no values yet; call update() with at least one batch")
        return self._buffer[: min(self.num_seen, self.capacity)]


def neuron_shift(dense_outputs: Any, pruned_outputs: Any) -> dict[str, np.ndarray]:
    """Per neuron, how far pruning moved its output distribution: W1 and the moment changes.

    Both arguments are (n, units) values of the same units (the sample sizes may differ).
    Returns float64 arrays [units]:

    - w1: W1 between the dense and the pruned empirical distributions of the neuron
      (`scipy.stats.wasserstein_distance`); for equal sizes computed as the mean of
      |sorted dense − sorted pruned|, the same quantity (both quantile functions are steps on
      the same grid), vectorised over units
    - mean_change: μ_pruned − μ_dense; std_change: σ_pruned − σ_dense (divisor n)
    """
    dense = _as_values("dense_outputs", dense_outputs)
    pruned = _as_values("pruned_outputs", pruned_outputs)
    if dense.shape[1] != pruned.shape[1]:
        raise ValueError(
            f"dense outputs have {dense.shape[1]} units and pruned ones {pruned.shape[1]}; a "
            "structurally pruned layer has no unit-by-unit correspondence to compare"
        )
    units = dense.shape[1]
    w1, mean_change, std_change = np.empty(units), np.empty(units), np.empty(units)
    equal = dense.shape[0] == pruned.shape[0]
    # Units in chunks, so the float64 copies stay small whatever the layer width.
    chunk = max(1, _CHUNK_ELEMENTS // max(dense.shape[0], pruned.shape[0]))
    for start in range(0, units, chunk):
        part = slice(start, start + chunk)
        a = dense[:, part].astype(np.float64)
        b = pruned[:, part].astype(np.float64)
        mean_change[part] = b.mean(axis=0) - a.mean(axis=0)
        std_change[part] = b.std(axis=0) - a.std(axis=0)
        if equal:
            w1[part] = np.abs(np.sort(a, axis=0) - np.sort(b, axis=0)).mean(axis=0)
        else:
            w1[part] = [stats.wasserstein_distance(a[:, j], b[:, j]) for j in range(a.shape[1])]
    return {"w1": w1, "mean_change": mean_change, "std_change": std_change}


def pruned_fraction_per_neuron(weight: Any, *, out_axis: int = 0) -> np.ndarray:
    """Per output neuron, the share of its incoming weights that are zero, float64 [out].

    `weight` is a linear (out, in) or convolution (out, in/groups, *kernel) weight; a
    transposed convolution stores (in, out/groups, *kernel), so pass out_axis=1 for it.
    """
    if hasattr(weight, "detach"):
        zero = (weight.detach() == 0).cpu().numpy()
    else:
        zero = np.asarray(weight) == 0
    if zero.ndim < 2:
        raise ValueError(f"a layer weight has an output and an input axis, got {zero.shape}")
    zero = np.moveaxis(zero, out_axis, 0).reshape(zero.shape[out_axis], -1)
    return zero.mean(axis=1, dtype=np.float64)


def wasserstein_pruning_correlation(
    w1: Any, pruned_fraction: Any, *, exclude: Any = None
) -> tuple[float, float]:
    """Spearman rank correlation (ρ, two-sided p) between neurons' W1 and their pruned share.

    Does a method prune the Wasserstein neurons more (ρ > 0) or spare them (ρ < 0)? Ranks make
    the answer independent of the scale of either quantity (`scipy.stats.spearmanr`). Neurons
    where `exclude` is True (e.g. `constant`) are left out. Returns (nan, nan) when fewer than
    three neurons remain or either quantity does not vary across them.
    """
    w1 = np.asarray(w1, dtype=np.float64).reshape(-1)
    fraction = np.asarray(pruned_fraction, dtype=np.float64).reshape(-1)
    if w1.shape != fraction.shape:
        raise ValueError(
            f"{w1.size} W1 values but {fraction.size} pruned fractions; they must describe the "
            "same neurons"
        )
    keep = np.ones(w1.shape, dtype=bool)
    if exclude is not None:
        keep &= ~np.asarray(exclude, dtype=bool).reshape(-1)
    w1, fraction = w1[keep], fraction[keep]
    if w1.size < 3 or np.ptp(w1) == 0 or np.ptp(fraction) == 0:
        return float("nan"), float("nan")
    result = stats.spearmanr(w1, fraction)
    return float(result.statistic), float(result.pvalue)
