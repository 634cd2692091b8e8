"""Reference CKA: the published demo numbers, formulations agreeing, invariances, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from tests.reference import cka as cka_module
from tests.reference.cka import (
    _debiased_hsic_scaled,
    choose_form,
    cka,
    cka_from_grams,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    linear_cka_gram,
    rbf_cka,
    rbf_gram,
)
from tests.reference.cka_streaming import LinearCKAAccumulator


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


# --- form choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p", "q"), [(30, 5, 7), (12, 40, 3), (200, 16, 16), (50, 300, 20), (9, 2, 200)]
)
@pytest.mark.parametrize("debiased", [False, True])
def test_every_form_gives_the_same_value(n, p, q, debiased):
    x, y = _pair(n, p, q, seed=n * p + q)
    reference = linear_cka_gram(x, y, debiased)
    for form in ("auto", "feature", "gram"):
        assert cka(x, y, debiased=debiased, form=form) == pytest.approx(reference, abs=1e-12)


def test_choose_form_picks_the_smaller_multiply_add_count():
    # feature n(p+q)²/2 against Gram n²(p+q)/2 + a few n² passes.
    assert choose_form(2000, 64, 64) == "feature"
    assert choose_form(2000, 4096, 4096) == "gram"
    assert choose_form(500, 16384, 16384) == "gram"
    assert choose_form(2000, 64, 65536) == "gram"  # one wide side is enough
    assert choose_form(2000, 900, 900) == "feature"  # p + q < n
    assert choose_form(2000, 1100, 1100) == "gram"  # p + q > n
    assert choose_form(100, 3, 700) == choose_form(100, 700, 3)
    with pytest.raises(ValueError, match="form must be"):
        cka(np.eye(3), np.eye(3), form="fast")


def test_blocked_feature_products_equal_the_direct_ones(monkeypatch):
    x, y = _pair(40, 23, 17, seed=11)
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.sum((yc.T @ xc) ** 2) / np.sqrt(np.sum((xc.T @ xc) ** 2) * np.sum((yc.T @ yc) ** 2))
    monkeypatch.setattr(cka_module, "_BLOCK_ELEMENTS", 23 * 4)  # blocks of 4 columns, ragged end
    assert cka(x, y, form="feature") == pytest.approx(direct, abs=1e-13)
    assert cka_module._self_product_squared_norm(xc) == pytest.approx(
        np.sum((xc.T @ xc) ** 2), rel=1e-13
    )


def test_feature_space_debiased_hsic_equals_the_gram_estimator():
    # Song et al.'s HSIC₁ from Grams (zeroed diagonals) against the feature-sum rewrite.
    x, y = _pair(25, 6, 9, seed=12)
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    feature_space = _debiased_hsic_scaled(
        float(np.sum((yc.T @ xc) ** 2)), np.sum(xc**2, axis=1), np.sum(yc**2, axis=1), n
    )
    assert feature_space == pytest.approx(n * (n - 3) * hsic_unbiased(x @ x.T, y @ y.T), rel=1e-12)


def test_rank_deficient_inputs_agree_across_forms():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(60, 2)) @ rng.normal(size=(2, 30))  # rank 2 in 30 columns
    y = np.hstack([x[:, :5], x[:, :5]]) + 0.1 * rng.normal(size=(60, 10))
    values = [cka(x, y, form=form) for form in ("feature", "gram")]
    assert np.all(np.isfinite(values)) and values[0] == pytest.approx(values[1], abs=1e-12)
    assert cka(x, x, debiased=True, form="gram") == pytest.approx(1.0, abs=1e-12)


# --- RBF and Gram inputs -------------------------------------------------------------------


def test_published_rbf_demo_value(demo):
    x, y = demo
    assert round(rbf_cka(x, y, sigma_fraction=0.5), 5) == 0.65483


def test_rbf_gram_matches_scipy_distances_and_the_median_rule(demo):
    x, _ = demo
    sq_distances = squareform(pdist(x, "sqeuclidean"))  # exact, no dot-product cancellation
    sigma_squared = 0.5**2 * np.median(sq_distances)  # median over all n² entries
    expected = np.exp(-sq_distances / (2 * sigma_squared))
    np.testing.assert_allclose(rbf_gram(x, sigma_fraction=0.5), expected, atol=1e-12)


def test_rbf_cka_is_the_kernel_cka_of_its_grams_and_tends_to_linear_cka(demo):
    x, y = demo
    k, ell = rbf_gram(x), rbf_gram(y)
    assert rbf_cka(x, y) == pytest.approx(
        hsic_biased(k, ell) / np.sqrt(hsic_biased(k, k) * hsic_biased(ell, ell)), abs=1e-12
    )
    assert rbf_cka(x, y, debiased=True) == pytest.approx(
        hsic_unbiased(k, ell) / np.sqrt(hsic_unbiased(k, k) * hsic_unbiased(ell, ell)), abs=1e-12
    )
    # exp(−d²/2σ²) ≈ 1 − d²/2σ² for a wide kernel, whose centred form is the linear Gram.
    assert rbf_cka(x, y, sigma_fraction=1e3) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert abs(rbf_cka(x, y) - linear_cka(x, y)) > 0.05


def test_rbf_cka_invariances_and_degenerate_bandwidths():
    x, y = _pair(50, 5, 4, seed=14)
    q, _ = np.linalg.qr(np.random.default_rng(15).normal(size=(5, 5)))
    reference = rbf_cka(x, y)
    assert rbf_cka(x @ q * 7.0 + 3.0, y) == pytest.approx(reference, abs=1e-12)
    assert rbf_cka(np.full((50, 3), 0.1), y) == 0.0
    # Over half the examples identical makes the plain median distance 0: positive median used.
    mostly_dead = np.zeros((50, 5))
    mostly_dead[:10] = x[:10]
    value = rbf_cka(mostly_dead, y)
    assert np.isfinite(value) and 0.0 < value < 1.0
    with pytest.raises(ValueError, match="sigma_fraction"):
        rbf_cka(x, y, sigma_fraction=0.0)


def test_cka_from_grams_equals_feature_cka_and_handles_bad_grams():
    x, y = _pair(30, 5, 8, seed=16)
    x = x + 10.0  # uncentred Grams are centred inside
    for debiased in (False, True):
        assert cka_from_grams(x @ x.T, y @ y.T, debiased=debiased) == pytest.approx(
            linear_cka(x, y, debiased), abs=1e-10
        )
    constant = np.full((30, 3), 0.1)
    assert cka_from_grams(constant @ constant.T, y @ y.T) == 0.0
    assert cka_from_grams(np.ones((30, 30)), y @ y.T) == 0.0  # RBF Gram of a dead layer
    with pytest.raises(ValueError, match="square"):
        cka_from_grams(x, y @ y.T)
    with pytest.raises(ValueError, match="same examples"):
        cka_from_grams(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        cka_from_grams(np.full((4, 4), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="at least 4"):
        cka_from_grams(np.eye(3), np.eye(3), debiased=True)


@pytest.mark.parametrize(
    "metric",
    [
        lambda x, y: cka(x, y, debiased=True, form="gram"),
        lambda x, y: rbf_cka(x, y, debiased=True),
    ],
)
def test_too_few_examples_and_nan_raise_everywhere(metric):
    with pytest.raises(ValueError, match="at least 4"):
        metric(np.eye(3), np.eye(3))
    bad = np.ones((6, 2))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric(bad, np.ones((6, 2)))
