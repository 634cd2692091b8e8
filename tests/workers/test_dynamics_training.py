"""Dynamics training: the GMP schedule, MAP-D probe suites, per-epoch records, Parquet logs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from prunescope.models.pruning.magnitude import global_magnitude_prune
from prunescope.models.sparsity import prunable_modules
from prunescope.workers.analyses.dynamics_training import (
    NOT_A_PROBE,
    DynamicsWriter,
    GmpSchedule,
    ProbeSuites,
    build_probe_suites,
    gmp_sparsity,
    knn_label_consistency,
    read_dynamics,
    train_with_dynamics,
)
from prunescope.workers.datasets import load_builtin
from prunescope.workers.metrics.dynamics import split_probe_suites
from prunescope.workers.training import init_model

TINY_MLP = {"hidden": [32]}


@pytest.fixture(scope="module")
def digits():
    return load_builtin("digits")


# ---------------------------------------------------------------------------- GMP schedule


@pytest.mark.parametrize(
    ("step", "kwargs", "expected"),
    [
        # s_f = 0.9, s_i = 0, t0 = 0, nΔt = 100, Δt = 10
        (0, {}, 0.0),
        (5, {}, 0.0),  # held until the next pruning step
        (10, {}, 0.9 - 0.9 * 0.9**3),  # 0.2439
        (50, {}, 0.9 - 0.9 * 0.5**3),  # 0.7875
        (99, {}, 0.9 - 0.9 * 0.1**3),  # rounded down to step 90: 0.8991
        (100, {}, 0.9),
        (10_000, {}, 0.9),
        # s_i = 0.5, t0 = 20, end = 60, Δt = 20
        (19, {"initial": 0.5, "start": 20, "end": 60, "frequency": 20}, 0.5),
        (20, {"initial": 0.5, "start": 20, "end": 60, "frequency": 20}, 0.5),
        (40, {"initial": 0.5, "start": 20, "end": 60, "frequency": 20}, 0.9 - 0.4 * 0.125),
        (59, {"initial": 0.5, "start": 20, "end": 60, "frequency": 20}, 0.85),
        (60, {"initial": 0.5, "start": 20, "end": 60, "frequency": 20}, 0.9),
        # end − start not a multiple of Δt: the last pruning step is `end` itself
        (24, {"end": 25}, 0.9 - 0.9 * 0.2**3),  # 0.8928
        (25, {"end": 25}, 0.9),
    ],
)
def test_gmp_sparsity_matches_hand_computed_values(step, kwargs, expected):
    arguments = {"final": 0.9, "initial": 0.0, "start": 0, "end": 100, "frequency": 10, **kwargs}
    assert gmp_sparsity(step, **arguments) == pytest.approx(expected, abs=1e-12)
    assert GmpSchedule(**arguments).sparsity(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"final": 1.0},
        {"final": 0.3, "initial": 0.5},
        {"frequency": 0},
        {"start": 10, "end": 10},
        {"start": -1},
    ],
)
def test_gmp_rejects_impossible_schedules(kwargs):
    arguments = {"final": 0.9, "start": 0, "end": 100, "frequency": 10, **kwargs}
    with pytest.raises(ValueError):
        gmp_sparsity(0, **arguments)
    with pytest.raises(ValueError):
        GmpSchedule(**arguments)


# ------------------------------------------------------------------------ typicality proxy


def _brute_force_consistency(x, y, k):
    """Loop per example: z-score the features, sort the others by (distance, index)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    std = flat.std(axis=0)
    z = (flat - flat.mean(axis=0)) / np.where(std > 0, std, 1.0)
    scores = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        distance = {j: float(np.sqrt(np.sum((z[i] - z[j]) ** 2))) for j in others}
        nearest = sorted(others, key=lambda j: (distance[j], j))[:k]
        scores.append(sum(y[j] == y[i] for j in nearest) / k)
    return np.array(scores)


def test_knn_proxy_matches_a_brute_force_loop_on_continuous_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 3))
    x[:, 0, 0] = 7.0  # a constant feature
    y = rng.integers(0, 3, size=40)
    np.testing.assert_allclose(knn_label_consistency(x, y, k=5),
                               _brute_force_consistency(x, y, 5))
    np.testing.assert_allclose(knn_label_consistency(x, y), _brute_force_consistency(x, y, 10))


def test_knn_proxy_breaks_distance_ties_by_index_like_the_loop():
    # ±1 columns with as many of each sign are already standardised, so every distance is
    # exact and many tie; duplicated rows tie at distance 0.
    rng = np.random.default_rng(1)
    columns = [rng.permutation(np.repeat([-1.0, 1.0], 12)) for _ in range(4)]
    x = np.stack(columns, axis=1)
    y = rng.integers(0, 2, size=24)
    assert np.array_equal(knn_label_consistency(x, y, k=3), _brute_force_consistency(x, y, 3))
    assert knn_label_consistency(x, y, k=100).shape == (24,)  # k clipped to N − 1


# ---------------------------------------------------------------------------- probe suites


@pytest.fixture(scope="module")
def planted(digits):
    return build_probe_suites(digits, size=60, seed=3, random_inputs=True)


def test_suites_are_disjoint_sized_and_split_in_halves(digits, planted):
    _, suites = planted
    assert suites.categories == ("typical", "atypical", "mislabeled", "corrupted",
                                 "random_inputs")
    assert suites.suite.dtype == np.int8 and suites.suite.shape == (digits.num_train,)
    # One code per example makes the suites disjoint; each has exactly `size` members.
    assert np.bincount(suites.suite[suites.suite >= 0], minlength=5).tolist() == [60] * 5
    assert np.count_nonzero(suites.suite == NOT_A_PROBE) == digits.num_train - 300
    assert np.bincount(suites.suite[suites.reference], minlength=5).tolist() == [30] * 5
    assert not suites.reference[suites.suite == NOT_A_PROBE].any()
    index = np.flatnonzero(suites.suite >= 0)
    split = split_probe_suites(index, suites.suite[index], seed=3)
    assert np.array_equal(np.flatnonzero(suites.reference), split.reference_index)
    assert np.array_equal(suites.split().held_out_index, split.held_out_index)
    assert np.array_equal(suites.original_labels, digits.y_train)


def test_only_the_planted_labels_and_inputs_change(digits, planted):
    data, suites = planted
    code = {name: i for i, name in enumerate(suites.categories)}
    assert data.x_train.shape == digits.x_train.shape and data.x_train.dtype == np.float32
    flipped = suites.suite == code["mislabeled"]
    assert np.all(data.y_train[flipped] != digits.y_train[flipped])
    assert set(data.y_train[flipped]) == set(range(10))  # random classes, all reachable
    label_kept = ~flipped & (suites.suite != code["random_inputs"])
    assert np.array_equal(data.y_train[label_kept], digits.y_train[label_kept])
    for name in ("corrupted", "random_inputs"):
        changed = suites.suite == code[name]
        differs = (data.x_train[changed] != digits.x_train[changed]).reshape(60, -1).any(1)
        assert differs.all()
        assert data.x_train[changed].min() >= digits.x_train.min()
        assert data.x_train[changed].max() <= digits.x_train.max()
    input_kept = ~np.isin(suites.suite, [code["corrupted"], code["random_inputs"]])
    assert np.array_equal(data.x_train[input_kept], digits.x_train[input_kept])
    assert np.array_equal(digits.y_train, suites.original_labels)  # the input is not modified


def test_typical_and_atypical_are_the_extremes_of_the_proxy(digits, planted):
    _, suites = planted
    score = _brute_force_consistency_fast(digits.x_train, digits.y_train)
    typical, atypical = score[suites.suite == 0], score[suites.suite == 1]
    ordinary = score[suites.suite == NOT_A_PROBE]
    assert typical.min() >= ordinary.max() >= ordinary.min() >= atypical.max()
    assert typical.mean() > atypical.mean()


def _brute_force_consistency_fast(x, y, k=10):
    """The proxy via scikit-learn's exact neighbours (scores without ties at the k-th)."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x.reshape(len(x), -1).astype(np.float64))
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    neighbours = neighbours[:, 1:]  # drop the example itself (digits has no duplicates)
    return (y[neighbours] == y[:, None]).mean(axis=1)


def test_given_typicality_scores_choose_the_typical_suites(digits):
    score = np.arange(digits.num_train, dtype=np.float64)
    _, suites = build_probe_suites(digits, size=20, seed=0, typicality=score)
    rest = np.flatnonzero(np.isin(suites.suite, [0, 1, NOT_A_PROBE]))
    assert np.array_equal(np.flatnonzero(suites.suite == 0), rest[-20:])
    assert np.array_equal(np.flatnonzero(suites.suite == 1), rest[:20])


def test_suites_depend_only_on_the_seed(digits, planted):
    data, suites = planted
    again_data, again = build_probe_suites(digits, size=60, seed=3, random_inputs=True)
    other_data, other = build_probe_suites(digits, size=60, seed=4, random_inputs=True)
    for a, b in zip(suites.to_arrays().values(), again.to_arrays().values(), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(data.x_train, again_data.x_train)
    assert np.array_equal(data.y_train, again_data.y_train)
    assert not np.array_equal(suites.suite, other.suite)
    assert not np.array_equal(data.x_train, other_data.x_train)


def test_suite_size_is_clipped_and_tiny_sets_are_refused(digits):
    _, suites = build_probe_suites(digits, size=500, seed=0)
    assert np.bincount(suites.suite[suites.suite >= 0]).tolist() == [digits.num_train // 8] * 4
    tiny = dataclasses.replace(digits, x_train=digits.x_train[:15], y_train=digits.y_train[:15])
    with pytest.raises(ValueError, match="too few"):
        build_probe_suites(tiny, size=2, seed=0, typicality=np.zeros(15))
    with pytest.raises(ValueError, match="one score per training example"):
        build_probe_suites(digits, size=10, seed=0, typicality=np.zeros(3))


def test_probe_suites_round_trip_through_npz(planted, tmp_path):
    _, suites = planted
    np.savez(tmp_path / "suites.npz", **suites.to_arrays())
    with np.load(tmp_path / "suites.npz", allow_pickle=False) as stored:
        back = ProbeSuites.from_arrays(dict(stored))
    assert back.categories == suites.categories
    assert back.suite.dtype == np.int8 and back.original_labels.dtype == np.int64
    for name in ("suite", "reference", "original_labels"):
        assert np.array_equal(getattr(back, name), getattr(suites, name))
    broken = suites.to_arrays() | {"probe_suite": np.full(suites.suite.shape, 9)}
    with pytest.raises(ValueError, match="outside"):
        ProbeSuites.from_arrays(broken)


# ------------------------------------------------------------------- training with records


def _independent_records(model, data):
    """Loss, p_gold and margin from the logits in float64, each formula written out."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(data.x_train)).double().numpy()
    y = data.y_train
    rows = np.arange(len(y))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    p_gold = np.exp(shifted[rows, y] - log_z)
    others = [np.max(np.delete(logits[i], y[i])) for i in rows]
    return logits, {"loss": log_z - shifted[rows, y], "p_gold": p_gold,
                    "margin": logits[rows, y] - np.array(others)}


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    data, _ = planted
    path = tmp_path_factory.mktemp("dynamics") / "records.parquet"
    seen = []
    model = init_model("mlp", TINY_MLP, seed=0)
    with DynamicsWriter(path, data.num_train) as writer:
        def record(epoch, records):
            seen.append((epoch, {k: v.copy() for k, v in records.items()}))
            writer(epoch, records)

        result = train_with_dynamics(model, data, epochs=3, seed=0, record=record)
    return model, result, seen, path


def test_records_match_an_independent_recomputation(planted, trained):
    data, _ = planted
    model, result, _, _ = trained
    n = data.num_train
    for name, dtype in (("loss", np.float32), ("prediction", np.int32),
                        ("p_gold", np.float32), ("margin", np.float32)):
        assert result[name].shape == (3, n) and result[name].dtype == dtype
    logits, expected = _independent_records(model, data)
    final = {name: result[name][-1] for name in result if name in expected}
    torch_loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(data.y_train),
                                 reduction="none").numpy()
    np.testing.assert_allclose(final["loss"], torch_loss, rtol=1e-5, atol=1e-6)
    for name in ("loss", "p_gold", "margin"):
        np.testing.assert_allclose(final[name], expected[name], rtol=1e-5, atol=1e-6)
    assert np.array_equal(result["prediction"][-1], logits.argmax(axis=1))
    # A positive margin is exactly a correct prediction (no ties in float logits).
    assert np.array_equal(result["margin"][-1] > 0, result["prediction"][-1] == data.y_train)
    test_logits = model(torch.from_numpy(data.x_test)).detach().numpy()
    assert np.array_equal(result["test_predictions"], test_logits.argmax(axis=1))
    assert result["test_predictions"].dtype == np.int64
    assert result["test_accuracy"][-1] == pytest.approx(
        np.mean(result["test_predictions"] == data.y_test))
    assert result["test_accuracy"][-1] > 0.5  # chance is 0.1; 22 % of training is probes
    assert result["loss"][-1].mean() < result["loss"][0].mean()


def test_record_callback_sees_every_epoch_in_order(trained):
    _, result, seen, _ = trained
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    for e, (_, records) in enumerate(seen):
        for name in ("loss", "prediction", "p_gold", "margin"):
            assert np.array_equal(records[name], result[name][e])


def test_training_is_deterministic_per_seed_and_leaves_the_rng_alone(digits):
    def run(seed):
        model = init_model("mlp", TINY_MLP, seed=0)
        return train_with_dynamics(model, digits, epochs=2, seed=seed)

    torch.manual_seed(11)
    rng_before = torch.get_rng_state()
    first, second, other = run(1), run(1), run(2)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for name in ("loss", "prediction", "p_gold", "margin", "test_predictions"):
        assert np.array_equal(first[name], second[name])
    assert not np.array_equal(first["loss"], other["loss"])


def _zero_masks(model):
    return [m.weight.detach() == 0 for _, m in prunable_modules(model)]


def test_gmp_follows_the_schedule_step_by_step_and_masks_only_grow(digits):
    model = init_model("mlp", TINY_MLP, seed=0)
    total = sum(m.weight.numel() for _, m in prunable_modules(model))
    steps_per_epoch = math.ceil(digits.num_train / 64)  # 22
    schedule = GmpSchedule(final=0.8, start=3, end=2 * steps_per_epoch, frequency=5)
    seen = []

    def before_training_step(module, inputs):
        if module.training:  # training forwards only; step t comes after t updates
            seen.append(_zero_masks(module))

    model.register_forward_pre_hook(before_training_step)
    result = train_with_dynamics(model, digits, epochs=3, seed=0, gmp=schedule)
    assert len(seen) == 3 * steps_per_epoch
    for t, masks in enumerate(seen):
        zeros = sum(int(m.sum()) for m in masks)
        assert zeros == round(gmp_sparsity(t, final=0.8, start=3, end=44, frequency=5) * total)
        if t:
            assert all(bool((old <= new).all()) for old, new in zip(seen[t - 1], masks,
                                                                     strict=True))
    final_zeros = sum(int(m.sum()) for m in _zero_masks(model))
    assert final_zeros == round(0.8 * total)
    assert result["sparsity"][-1] == pytest.approx(0.8, abs=0.5 / total)
    assert result["sparsity"][0] < result["sparsity"][1] == result["sparsity"][2]
    assert all(bool((old <= new).all()) for old, new in zip(seen[-1], _zero_masks(model),
                                                             strict=True))


def test_a_schedule_ending_after_training_is_refused(digits):
    with pytest.raises(ValueError, match="lower gmp.end"):
        train_with_dynamics(init_model("mlp", TINY_MLP, seed=0), digits, epochs=1,
                            gmp=GmpSchedule(final=0.5, start=0, end=1000, frequency=10))


def test_fixed_mask_keeps_pruned_weights_at_zero(digits):
    def pruned():
        return global_magnitude_prune(init_model("mlp", TINY_MLP, seed=0), 0.6)

    model = pruned()
    before = _zero_masks(model)
    weights_before = [m.weight.detach().clone() for _, m in prunable_modules(model)]
    result = train_with_dynamics(model, digits, epochs=1, seed=0, fixed_mask=True)
    after = _zero_masks(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not all(torch.equal(w, m.weight) for w, (_, m) in zip(weights_before,
                                                                 prunable_modules(model),
                                                                 strict=True))
    assert result["sparsity"][-1] == pytest.approx(0.6, abs=1e-3)
    # Without the mask Adam revives the pruned weights, which is what the mask prevents.
    free = pruned()
    train_with_dynamics(free, digits, epochs=1, seed=0)
    assert sum(int(m.sum()) for m in _zero_masks(free)) < sum(int(m.sum()) for m in before)


# ------------------------------------------------------------------------- Parquet records


def test_parquet_round_trip_of_a_training_run(planted, trained):
    data, _ = planted
    _, result, _, path = trained
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    back = read_dynamics(path)
    assert back["epoch"].tolist() == [1, 2, 3]
    assert np.array_equal(back["example"], np.arange(data.num_train))
    for name in ("loss", "prediction", "p_gold", "margin"):
        assert back[name].dtype == result[name].dtype
        assert np.array_equal(back[name], result[name])


def _records(n, seed):
    rng = np.random.default_rng(seed)
    return {"loss": rng.random(n), "prediction": rng.integers(0, 10, n),
            "p_gold": rng.random(n), "margin": rng.normal(size=n)}


def test_reader_sorts_rows_written_in_any_order(tmp_path):
    rows = {"example": [], "epoch": [], "loss": []}
    expected = np.zeros((2, 4))
    for epoch in (7, 2):
        for example in (30, 10, 20, 40):
            value = epoch * 100 + example
            rows["example"].append(example)
            rows["epoch"].append(epoch)
            rows["loss"].append(float(value))
            expected[int(epoch == 7), [10, 20, 30, 40].index(example)] = value
    pq.write_table(pa.table(rows), tmp_path / "user.parquet")
    back = read_dynamics(tmp_path / "user.parquet")
    assert back["epoch"].tolist() == [2, 7]
    assert back["example"].tolist() == [10, 20, 30, 40]
    assert np.array_equal(back["loss"], expected)
    assert "margin" not in back


def test_reader_refuses_incomplete_duplicated_or_broken_files(tmp_path):
    path = tmp_path / "records.parquet"
    with DynamicsWriter(path, 5) as writer:
        writer(1, _records(5, 0))
        writer(2, _records(5, 1))
    table = pq.read_table(path)

    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot be read"):
        read_dynamics(truncated)

    short = tmp_path / "short.parquet"
    pq.write_table(table.slice(0, 9), short)  # epoch 2 lacks its last example
    with pytest.raises(ValueError, match=r"epoch\(s\) 2"):
        read_dynamics(short)

    repeated = tmp_path / "repeated.parquet"
    example = table.column("example").to_numpy().copy()
    example[7] = example[6]  # same count, one example twice and one missing
    pq.write_table(table.set_column(0, "example", pa.array(example)), repeated)
    with pytest.raises(ValueError, match="repeats one example"):
        read_dynamics(repeated)

    doubled = tmp_path / "doubled.parquet"
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), doubled)
    with pytest.raises(ValueError, match="exactly once"):
        read_dynamics(doubled)

    no_loss = tmp_path / "no_loss.parquet"
    pq.write_table(table.drop_columns(["loss"]), no_loss)
    with pytest.raises(ValueError, match="loss"):
        read_dynamics(no_loss)


def test_writer_checks_the_records(tmp_path):
    with DynamicsWriter(tmp_path / "w.parquet", 4) as writer:
        with pytest.raises(ValueError, match="shape"):
            writer(1, _records(3, 0))
        with pytest.raises(ValueError, match="lack"):
            writer(1, {"loss": np.zeros(4)})
