"""CKA: the published demo numbers, formulations agreeing, invariances, and streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from prunescope.workers.metrics import cka as cka_module
from prunescope.workers.metrics.cka import (
    GramCKAAccumulator,
    LinearCKAAccumulator,
    LinearGramAccumulator,
    _debiased_hsic_scaled,
    choose_form,
    cka,
    cka_from_grams,
    gram_accumulator_cka,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    linear_cka_gram,
    rbf_cka,
    rbf_gram,
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


# --- streaming -----------------------------------------------------------------------------


def _fill(accumulator, x, y, sizes):  # noqa: ANN001, ANN202
    start = 0
    for size in sizes:
        accumulator.update(x[start : start + size], y[start : start + size])
        start += size


@pytest.mark.parametrize("sizes", [[60], [1, 59], [25, 0, 25, 10]])
def test_gram_accumulator_equals_full_data_cka(sizes):
    x, y = _pair(60, 80, 7, seed=17)  # wider than the number of examples
    x = x + 1e3  # a large mean: columns are centred by their full-data mean before the Gram
    accumulator = GramCKAAccumulator()
    _fill(accumulator, x, y, sizes)
    assert accumulator.num_examples == 60
    assert accumulator.value() == pytest.approx(cka(x, y), abs=1e-10)
    assert accumulator.value(debiased=True) == pytest.approx(cka(x, y, debiased=True), abs=1e-10)
    assert accumulator.rbf_value() == pytest.approx(rbf_cka(x, y), abs=1e-10)


def test_gram_accumulator_chunks_features_keeps_dtype_and_copies_rows(monkeypatch):
    monkeypatch.setattr(LinearGramAccumulator, "_CHUNK_ELEMENTS", 60 * 7)  # 7-feature chunks
    x, y = _pair(60, 50, 9, seed=18)
    x32 = x.astype(np.float32)
    accumulator = GramCKAAccumulator()
    buffer = np.empty((20, 50), dtype=np.float32)
    for start in range(0, 60, 20):
        buffer[:] = x32[start : start + 20]  # one reused buffer, as a hook might hand out
        accumulator.update(buffer, y[start : start + 20])
    buffer[:] = np.nan
    # float32 rows are kept as float32, which float64 represents exactly.
    assert accumulator.value() == pytest.approx(cka(x32, y), abs=1e-12)


def test_gram_accumulators_pair_up_for_reuse_and_free_their_rows():
    x, y = _pair(40, 30, 30, seed=19)
    dense = LinearGramAccumulator()
    pruned = LinearGramAccumulator()
    for start in range(0, 40, 16):
        dense.update(x[start : start + 16])
        pruned.update(torch.from_numpy(y[start : start + 16]).float())
    dense.finalize()
    with pytest.raises(ValueError, match="finalized"):
        dense.update(x[:4])
    assert gram_accumulator_cka(dense, pruned) == pytest.approx(
        cka(x, y.astype(np.float32)), abs=1e-10
    )
    dead = LinearGramAccumulator()
    dead.update(np.full((40, 5), 0.1))
    assert not dead.has_variance
    assert gram_accumulator_cka(dense, dead) == 0.0
    with pytest.raises(ValueError, match="same examples"):
        gram_accumulator_cka(dense, LinearGramAccumulator())
    with pytest.raises(ValueError, match="kernel"):
        gram_accumulator_cka(dense, pruned, kernel="cosine")


def test_gram_accumulator_refuses_bad_batches():
    accumulator = LinearGramAccumulator()
    with pytest.raises(ValueError, match="no examples"):
        accumulator.gram()
    accumulator.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="features"):
        accumulator.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        accumulator.update(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="same examples"):
        GramCKAAccumulator().update(np.ones((3, 4)), np.ones((2, 4)))


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_torch_batches_accumulate_like_numpy_batches(offset):
    x, y = _pair(90, 12, 9, seed=20)
    x = x + offset
    from_numpy, from_torch, mixed = (LinearCKAAccumulator() for _ in range(3))
    _fill(from_numpy, x, y, [30, 30, 30])
    _fill(from_torch, torch.from_numpy(x), torch.from_numpy(y), [30, 30, 30])
    for start in range(0, 90, 30):
        mixed.update(x[start : start + 30], torch.from_numpy(y[start : start + 30]))
    value = from_torch.value()
    assert isinstance(value, float)
    assert abs(value - from_numpy.value()) < 1e-10
    assert abs(mixed.value() - from_numpy.value()) < 1e-10
    assert from_torch._xtx.dtype == torch.float64  # float64 sums on the batch's device


def test_torch_accumulator_takes_float32_feature_maps_and_rejects_nan():
    rng = np.random.default_rng(21)
    maps_x = rng.normal(size=(40, 3, 4, 4)).astype(np.float32)  # conv outputs, flattened
    maps_y = np.maximum(maps_x, 0) + 0.1 * rng.normal(size=maps_x.shape).astype(np.float32)
    accumulator = LinearCKAAccumulator()
    _fill(accumulator, torch.from_numpy(maps_x), torch.from_numpy(maps_y), [16, 16, 8])
    assert abs(accumulator.value() - linear_cka(maps_x, maps_y)) < 1e-10
    with pytest.raises(ValueError, match="NaN"):
        accumulator.update(torch.full((2, 3, 4, 4), float("nan")), torch.ones(2, 3, 4, 4))
    dead = LinearCKAAccumulator()
    _fill(dead, torch.from_numpy(maps_x), torch.full((40, 5), 0.1), [20, 20])
    assert dead.value() == 0.0


def _minibatch_cka_loop(xs, ys, batch):  # noqa: ANN001, ANN202
    """Nguyen et al. (2021), transcribed pair by pair with the NumPy HSIC₁."""
    hxy = np.zeros((len(xs), len(ys)))
    hxx, hyy = np.zeros(len(xs)), np.zeros(len(ys))
    for s in range(0, xs[0].shape[0], batch):
        kb = [x[s : s + batch] @ x[s : s + batch].T for x in xs]
        lb = [y[s : s + batch] @ y[s : s + batch].T for y in ys]
        if kb[0].shape[0] < 4:
            continue
        hxx += [hsic_unbiased(k, k) for k in kb]
        hyy += [hsic_unbiased(m, m) for m in lb]
        hxy += [[hsic_unbiased(k, m) for m in lb] for k in kb]
    return hxy / np.sqrt(np.outer(hxx, hyy))


@pytest.mark.parametrize("batch", [16, 50, 203])
def test_minibatch_cka_equals_the_pairwise_transcription(batch: int) -> None:
    from prunescope.workers.metrics.cka import MinibatchCKAAccumulator

    rng = np.random.default_rng(3)
    base = rng.normal(size=(205, 5))
    xs = [base @ rng.normal(size=(5, 7)), np.tanh(base @ rng.normal(size=(5, 3))) + 2.0]
    ys = [xs[0] @ np.linalg.qr(rng.normal(size=(7, 7)))[0], rng.normal(size=(205, 4)),
          base[:, :2] ** 2]
    acc = MinibatchCKAAccumulator(2, [3, 2])
    for s in range(0, 205, batch):
        acc.update([torch.from_numpy(x[s : s + batch]) for x in xs],
                   [[torch.from_numpy(y[s : s + batch]) for y in ys],
                    [torch.from_numpy(x[s : s + batch]) for x in xs]])
    versus_ys, versus_self = acc.values()
    np.testing.assert_allclose(versus_ys, _minibatch_cka_loop(xs, ys, batch), rtol=1e-9,
                               atol=1e-12)
    # A layer against itself is 1; a rotated copy too (CKA's invariance holds per batch).
    np.testing.assert_allclose(np.diag(versus_self), 1.0, rtol=1e-12)
    assert versus_ys[0, 0] == pytest.approx(1.0, rel=1e-12)
    # A last batch of fewer than 4 examples (205 = 203 + 2) carries no unbiased HSIC: skipped.
    assert acc.skipped_examples == (205 % batch if 205 % batch < 4 else 0)


def test_minibatch_cka_of_one_batch_is_the_debiased_cka_of_centred_inputs() -> None:
    from prunescope.workers.metrics.cka import MinibatchCKAAccumulator

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 6))
    y = np.sin(x @ rng.normal(size=(6, 5)))
    x, y = x - x.mean(0), y - y.mean(0)
    acc = MinibatchCKAAccumulator(1, [1])
    acc.update([torch.from_numpy(x)], [[torch.from_numpy(y)]])
    assert acc.values()[0][0, 0] == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-10)


def test_minibatch_cka_without_a_full_batch_says_so() -> None:
    from prunescope.workers.metrics.cka import MinibatchCKAAccumulator

    acc = MinibatchCKAAccumulator(1, [1])
    acc.update([torch.ones(3, 2)], [[torch.ones(3, 2)]])
    with pytest.raises(ValueError, match="at least one batch of 4"):
        acc.values()
