"""Wasserstein neurons: closed forms, an independent quadrature, scaling, streaming, shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from prunescope.workers.metrics.wasserstein import (
    NeuronSample,
    neuron_rows,
    neuron_shift,
    pruned_fraction_per_neuron,
    wasserstein_neurons,
    wasserstein_pruning_correlation,
)

SQRT3 = np.sqrt(3.0)


def _midpoint_grid_w1(x: np.ndarray, grid: int) -> float:
    """W1(empirical, N(μ, σ²)) = ∫₀¹|F⁻¹(u) − μ − σΦ⁻¹(u)|du by the mid-point rule on u."""
    x = np.sort(x)
    u = (np.arange(grid) + 0.5) / grid
    empirical_quantile = x[np.minimum((u * x.size).astype(int), x.size - 1)]
    return float(np.mean(np.abs(empirical_quantile - x.mean() - x.std() * stats.norm.ppf(u))))


def test_rademacher_sample_matches_the_closed_form():
    # ±1 with equal mass has mean 0, variance 1; W1 to N(0, 1) = 2∫₀^∞|1 − z|φ(z)dz
    # = 4Φ(1) − 3 − 2φ(0) + 4φ(1).
    x = np.r_[-np.ones(500), np.ones(500)]
    expected = 4 * stats.norm.cdf(1) - 3 - 2 * stats.norm.pdf(0) + 4 * stats.norm.pdf(1)
    result = wasserstein_neurons(x)
    assert result["w1"][0] == pytest.approx(expected, abs=1e-12)
    assert result["w1_scaled"][0] == pytest.approx(expected, abs=1e-12)
    assert result["mean"][0] == 0 and result["std"][0] == 1


def test_uniform_matches_quadrature_of_the_cdf_difference():
    # Independent route: W1 = ∫|F_U(x) − Φ(x)|dx over x, for U(−√3, √3) (mean 0, variance 1).
    def cdf_gap(x: float) -> float:
        return abs(np.clip((x + SQRT3) / (2 * SQRT3), 0, 1) - stats.norm.cdf(x))

    expected, error = integrate.quad(cdf_gap, -12, 12, points=[-SQRT3, 0, SQRT3], limit=200)
    assert error < 1e-7
    n = 20_000
    x = SQRT3 * (2 * (np.arange(n) + 0.5) / n - 1)  # the uniform's mid-point quantiles
    # The sample is within 2√3/(4n) ≈ 4e-5 of U in W1, and its variance 1 − 1/n² ≈ 1.
    assert wasserstein_neurons(x)["w1"][0] == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(0.15428, abs=1e-5)


def test_exact_steps_agree_with_a_fine_quantile_grid():
    rng = np.random.default_rng(0)
    samples = np.stack([rng.exponential(size=300), rng.standard_t(3, size=300),
                        rng.normal(size=300) ** 3], axis=1)
    result = wasserstein_neurons(samples)
    for j in range(samples.shape[1]):
        assert result["w1"][j] == pytest.approx(_midpoint_grid_w1(samples[:, j], 300 * 400),
                                                rel=1e-4)


def test_gaussian_sample_is_near_zero_within_the_sampling_bound():
    rng = np.random.default_rng(1)
    n = 100_000
    x = rng.normal(size=(n, 3))
    # E W1(F_n, Φ) ≤ J₁/√n with J₁ = ∫√(Φ(1 − Φ)) (Jensen on E|F_n − Φ|); refitting μ̂, σ̂ moves
    # the Gaussian by at most |μ̂| + |σ̂ − 1|·E|Z| in W1.
    j1, _ = integrate.quad(lambda t: np.sqrt(stats.norm.cdf(t) * stats.norm.sf(t)),
                           -np.inf, np.inf)
    bound = 5 * j1 / np.sqrt(n) + np.abs(x.mean(0)) + np.abs(x.std(0) - 1) * np.sqrt(2 / np.pi)
    w1 = wasserstein_neurons(x)["w1"]
    assert np.all(w1 < bound)
    assert np.all(bound < 0.155 / 4)  # far below a uniform's 0.154: the test can tell them apart


def test_w1_scales_with_the_data_and_the_scaled_value_does_not():
    rng = np.random.default_rng(2)
    x = np.c_[rng.exponential(size=500), rng.uniform(size=500)]
    base = wasserstein_neurons(x)
    for a, b in [(3.0, 0.0), (0.01, 5.0), (-2.0, -1.0)]:
        moved = wasserstein_neurons(a * x + b)
        assert moved["w1"] == pytest.approx(abs(a) * base["w1"], rel=1e-9)
        assert moved["w1_scaled"] == pytest.approx(base["w1_scaled"], rel=1e-9)
        assert moved["std"] == pytest.approx(abs(a) * base["std"], rel=1e-12)


def test_constant_neurons_get_zero_and_a_flag():
    x = np.c_[np.zeros(50), np.full(50, 0.7, dtype=np.float32),
              np.linspace(-1e-3, 1e-3, 50), np.random.default_rng(0).normal(size=50)]
    result = wasserstein_neurons(x.astype(np.float32))
    assert result["constant"].tolist() == [True, True, False, False]
    assert result["w1"][:2].tolist() == [0.0, 0.0]
    assert result["w1_scaled"][:2].tolist() == [0.0, 0.0]
    assert result["w1_scaled"][2] > 0.05  # a small-scale uniform is not mistaken for constant


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        wasserstein_neurons(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="no values"):
        wasserstein_neurons(np.empty((0, 3)))
    with pytest.raises(ValueError, match="neuron_rows"):
        wasserstein_neurons(np.zeros((2, 3, 4)))


# ------------------------------------------------------------------------------- streaming


def test_streaming_equals_one_shot_while_within_capacity():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, size=(1000, 5)).astype(np.float32)
    sample = NeuronSample(capacity=1000)
    for part in np.split(x, [1, 130, 131, 700]):
        sample.update(torch.from_numpy(part))
    sample.update(np.empty((0, 5), dtype=np.float32))
    assert sample.exact and sample.num_seen == 1000
    assert np.array_equal(sample.values(), x)
    one_shot, streamed = wasserstein_neurons(x), wasserstein_neurons(sample.values())
    for key in one_shot:
        assert np.array_equal(one_shot[key], streamed[key]), key


def test_reservoir_keeps_a_uniform_sample_of_rows():
    n, capacity, seeds = 400, 40, 300
    ids = np.arange(n, dtype=np.float32)[:, None].repeat(2, axis=1)
    included = np.zeros(n)
    for seed in range(seeds):
        sample = NeuronSample(capacity, seed=seed)
        for part in np.split(ids, [25, 60, 61, 300]):  # batches straddling the capacity
            sample.update(part)
        kept = sample.values()
        assert kept.shape == (capacity, 2) and not sample.exact
        assert np.array_equal(kept[:, 0], kept[:, 1])  # whole rows, the same for every unit
        assert len(set(kept[:, 0])) == capacity  # without replacement
        included[kept[:, 0].astype(int)] += 1
    # Every row is kept with probability capacity/n = 0.1, early, late, or in a big batch.
    for group in (slice(0, 40), slice(40, 100), slice(100, 300), slice(300, 400)):
        trials = (group.stop - group.start) * seeds
        rate = included[group].sum() / trials
        assert rate == pytest.approx(capacity / n, abs=5 * np.sqrt(0.1 * 0.9 / trials)), group


def test_reservoir_distance_stays_within_its_documented_error():
    rng = np.random.default_rng(4)
    n, capacity = 20_000, 2_048
    x = np.r_[rng.normal(-2, 1, n // 2), rng.normal(2, 0.5, n // 2)].astype(np.float32)
    rng.shuffle(x)
    sample = NeuronSample(capacity, seed=0)
    for part in np.array_split(x[:, None], 17):
        sample.update(part)
    sub = sample.values()[:, 0].astype(np.float64)
    full = x.astype(np.float64)
    # |W1(sub, G_sub) − W1(full, G_full)| ≤ W1(sub, full) + W1(G_sub, G_full) (triangle), and the
    # Gaussians differ by at most |Δμ| + |Δσ|·E|Z|.
    gap = stats.wasserstein_distance(sub, full)
    bound = gap + abs(sub.mean() - full.mean()) + abs(sub.std() - full.std()) * np.sqrt(2 / np.pi)
    difference = abs(wasserstein_neurons(sub)["w1"][0] - wasserstein_neurons(full)["w1"][0])
    assert difference <= bound + 1e-12
    # The subsample error is of the order J₁/√m, J₁ = ∫√(F(1 − F)) of the full sample.
    sorted_full = np.sort(full)
    cdf = np.arange(1, n) / n
    j1 = float(np.sum(np.diff(sorted_full) * np.sqrt(cdf * (1 - cdf))))
    assert gap < 5 * j1 / np.sqrt(capacity)


def test_sample_refuses_a_changing_unit_count_and_bad_capacity():
    sample = NeuronSample(10)
    sample.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="4"):
        sample.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="capacity"):
        NeuronSample(0)
    with pytest.raises(ValueError, match="no values"):
        NeuronSample(5).values()


def test_conv_channels_pool_examples_and_positions():
    output = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    rows = neuron_rows(output, unit_axis=1)
    assert rows.shape == (8, 3)
    for c in range(3):
        assert sorted(rows[:, c].tolist()) == sorted(output[:, c].flatten().tolist())
    tokens = np.zeros((2, 5, 7))
    assert neuron_rows(tokens).shape == (10, 7)


# ---------------------------------------------------------------------------------- shifts


def test_neuron_shift_of_identical_and_shifted_outputs():
    rng = np.random.default_rng(5)
    dense = rng.exponential(size=(400, 3))
    same = neuron_shift(dense, dense)
    assert np.all(same["w1"] == 0) and np.all(same["mean_change"] == 0)
    moved = neuron_shift(dense, dense + np.array([0.5, -2.0, 0.0]))
    assert moved["w1"] == pytest.approx([0.5, 2.0, 0.0], abs=1e-12)
    assert moved["mean_change"] == pytest.approx([0.5, -2.0, 0.0], abs=1e-12)
    assert moved["std_change"] == pytest.approx([0, 0, 0], abs=1e-12)


def test_neuron_shift_agrees_with_scipy_for_equal_and_unequal_sizes():
    rng = np.random.default_rng(6)
    dense, pruned = rng.normal(size=(300, 4)), rng.gamma(2.0, size=(300, 4))
    shift = neuron_shift(dense, pruned)
    for j in range(4):
        assert shift["w1"][j] == pytest.approx(
            stats.wasserstein_distance(dense[:, j], pruned[:, j]), rel=1e-12)
    unequal = neuron_shift(dense, pruned[:217])
    for j in range(4):
        assert unequal["w1"][j] == pytest.approx(
            stats.wasserstein_distance(dense[:, j], pruned[:217, j]), rel=1e-12)
    doubled = neuron_shift(dense, np.r_[dense, dense])  # same distribution, twice the mass
    assert doubled["w1"] == pytest.approx(np.zeros(4), abs=1e-12)
    with pytest.raises(ValueError, match="structurally pruned"):
        neuron_shift(dense, pruned[:, :3])


# -------------------------------------------------------------------- pruning and correlation


def test_pruned_fraction_per_neuron():
    linear = torch.tensor([[0.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert pruned_fraction_per_neuron(linear).tolist() == [0.5, 0.0, 1.0]
    conv = np.ones((2, 3, 2, 2))
    conv[1, 0] = 0  # 4 of the 12 incoming weights of output channel 1
    assert pruned_fraction_per_neuron(conv).tolist() == [0.0, 4 / 12]
    transposed = np.moveaxis(conv, 0, 1)  # (in, out, k, k)
    assert pruned_fraction_per_neuron(transposed, out_axis=1).tolist() == [0.0, 4 / 12]


def test_spearman_correlation_of_w1_and_pruning():
    w1 = np.array([0.1, 0.5, 0.2, 0.9, 0.0])
    fraction = np.array([0.2, 0.6, 0.3, 0.95, 0.7])
    rho, p = wasserstein_pruning_correlation(w1, fraction)
    assert rho == pytest.approx(stats.spearmanr(w1, fraction).statistic)
    assert 0 < p < 1
    # Excluding the constant (w1 = 0) neuron leaves a perfectly monotone relation.
    rho, _ = wasserstein_pruning_correlation(w1, fraction, exclude=w1 == 0)
    assert rho == pytest.approx(1.0)
    assert np.isnan(wasserstein_pruning_correlation(w1, np.zeros(5))[0])  # nothing pruned
    assert np.isnan(wasserstein_pruning_correlation(w1[:2], fraction[:2])[0])
