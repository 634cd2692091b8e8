"""Linear CKA: the published demo numbers, two formulations agreeing, invariances, and streaming."""

from __future__ import annotations

import numpy as np
import pytest

from workers.metrics.cka import (
    LinearCKAAccumulator,
    hsic_unbiased,
    linear_cka,
    linear_cka_gram,
)


@pytest.fixture
def demo() -> tuple[np.ndarray, np.ndarray]:
    # Kornblith et al.'s demo data (google-research/representation_similarity).
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def _pair(n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x, y


def test_published_demo_values(demo):
    x, y = demo
    assert round(linear_cka(x, y), 5) == 0.55761
    assert round(linear_cka(x, y, debiased=True), 5) == 0.51346
    assert round(linear_cka_gram(x, y), 5) == 0.55761
    assert round(linear_cka_gram(x, y, debiased=True), 5) == 0.51346


def test_one_feature_each_gives_squared_pearson_correlation():
    x = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 9.0])
    assert linear_cka(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, abs=1e-12)


@pytest.mark.parametrize(("n", "p", "q"), [(30, 5, 7), (12, 40, 3), (200, 16, 16)])
@pytest.mark.parametrize("debiased", [False, True])
def test_feature_and_gram_forms_agree(n, p, q, debiased):
    x, y = _pair(n, p, q, seed=n + p)
    assert linear_cka(x, y, debiased) == pytest.approx(linear_cka_gram(x, y, debiased), abs=1e-12)


def test_unbiased_hsic_does_not_depend_on_feature_means():
    x, y = _pair(40, 6, 4, seed=0)
    shifted = x + 5.0
    assert hsic_unbiased(x @ x.T, y @ y.T) == pytest.approx(
        hsic_unbiased(shifted @ shifted.T, y @ y.T), rel=1e-9
    )


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(debiased):
    x, y = _pair(60, 8, 5, seed=1)
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    reference = linear_cka(x, y, debiased)
    assert linear_cka(x @ q, y, debiased) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(3.7 * x, 0.01 * y, debiased) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x + 4.0, y - 2.0, debiased) == pytest.approx(reference, abs=1e-12)
    # …but not to scaling features unequally, which is what makes CKA more than a rank test.
    stretch = np.diag(np.linspace(0.1, 10.0, 8))
    assert abs(linear_cka(x @ stretch, y, debiased) - reference) > 1e-3


def test_identical_inputs_give_one_and_the_measure_is_symmetric():
    x, y = _pair(50, 6, 9, seed=3)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert 0.0 < linear_cka(x, y) < 1.0


def test_constant_representations_have_cka_zero_not_nan():
    x, _ = _pair(50, 6, 9, seed=4)
    constant = np.full((50, 3), 0.1)  # 0.1 is inexact in binary, so centring leaves dust
    for value in (
        linear_cka(constant, x),
        linear_cka(x, np.zeros((50, 4))),
        linear_cka_gram(constant, x),
        linear_cka(constant, x, debiased=True),
    ):
        assert value == 0.0
    accumulator = LinearCKAAccumulator()
    accumulator.update(x[:20], constant[:20])
    accumulator.update(x[20:], constant[20:])
    assert accumulator.value() == 0.0


def test_constant_columns_next_to_varying_ones_change_nothing():
    x, y = _pair(50, 6, 4, seed=5)
    padded = np.hstack([x, np.full((50, 2), 3.0)])
    assert linear_cka(padded, y) == pytest.approx(linear_cka(x, y), abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "debiased", "message"),
    [
        (np.ones((5, 2)), np.ones((4, 2)), False, "same examples"),
        (np.ones((1, 2)), np.ones((1, 2)), False, "at least 2"),
        (np.eye(3), np.eye(3), True, "at least 4"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]]), np.eye(2), False, "NaN"),
    ],
)
def test_unusable_inputs_raise(x, y, debiased, message):
    with pytest.raises(ValueError, match=message):
        linear_cka(x, y, debiased)


@pytest.mark.parametrize("batch_sizes", [[100], [1, 99], [7] * 14 + [2], [33, 0, 33, 34]])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streaming_accumulator_equals_full_data_cka(batch_sizes, offset):
    x, y = _pair(100, 12, 9, seed=6)
    x = x + offset  # a large mean tests the centring from running sums
    accumulator = LinearCKAAccumulator()
    start = 0
    for size in batch_sizes:
        accumulator.update(x[start : start + size], y[start : start + size])
        start += size
    assert accumulator.num_examples == 100
    assert abs(accumulator.value() - linear_cka(x, y)) < 1e-10


def test_streaming_differs_from_averaging_per_batch_cka():
    # The accumulator is the full-data value; the mean of per-batch CKAs is another quantity.
    x, y = _pair(100, 12, 9, seed=7)
    per_batch = np.mean([linear_cka(x[i : i + 10], y[i : i + 10]) for i in range(0, 100, 10)])
    accumulator = LinearCKAAccumulator()
    for i in range(0, 100, 10):
        accumulator.update(x[i : i + 10], y[i : i + 10])
    assert abs(per_batch - accumulator.value()) > 0.01


def test_accumulator_refuses_changing_widths_and_too_few_examples():
    accumulator = LinearCKAAccumulator()
    with pytest.raises(ValueError, match="at least 2"):
        accumulator.value()
    accumulator.update(np.ones((3, 4)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="features"):
        accumulator.update(np.ones((3, 5)), np.ones((3, 2)))
