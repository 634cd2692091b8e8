"""Reference streaming CKA: batch by batch, numpy or torch, equals the full-data reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.cka import cka, linear_cka, rbf_cka
from tests.reference.cka_streaming import (
    GramCKAAccumulator,
    LinearCKAAccumulator,
    LinearGramAccumulator,
    gram_accumulator_cka,
)


def _pair(n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x, y


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
