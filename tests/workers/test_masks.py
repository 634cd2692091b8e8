"""Mask overlap: hand-counted IoUs, nested magnitude masks, chance levels, top-magnitude share."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.models.sparsity import prunable_parameter_names
from prunescope.workers.metrics import masks
from prunescope.workers.metrics.masks import (
    independent_iou,
    mask_iou,
    mask_iou_matrix,
    mask_of,
    mask_overlap,
    top_magnitude_overlap,
    top_magnitude_overlap_layers,
)


def _pruned(method: str, sparsity: float, dense: torch.nn.Module, seed: int = 0) -> dict:
    model = copy.deepcopy(dense)
    PRUNING_METHODS[method](model, sparsity, seed=seed)
    return model.state_dict()


@pytest.fixture(scope="module")
def mlp() -> tuple[torch.nn.Module, list[str]]:
    torch.manual_seed(0)
    model = create_model("mlp")
    return model, prunable_parameter_names(model)


def _hypergeometric_sd(population: int, successes: int, draws: int) -> float:
    p = successes / population
    return float(np.sqrt(draws * p * (1 - p) * (population - draws) / (population - 1)))


# ---------------------------------------------------------------------------- hand-built masks


def test_mask_of_marks_nonzero_weights_as_kept():
    weight = torch.tensor([[0.0, -0.5], [2.0, 0.0]], dtype=torch.bfloat16)
    assert mask_of(weight).tolist() == [[False, True], [True, False]]
    assert mask_of(np.array([0.0, 1e-30, -0.0])).tolist() == [False, True, False]


def test_hand_built_masks_have_the_counted_iou():
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1], dtype=bool)
    # kept: A∩B = {0, 4}, A∪B = {0, 1, 2, 4}; pruned: {2, 3} ∩ {1, 3} = {3}, ∪ = {1, 2, 3}.
    assert mask_iou(a, b) == pytest.approx(2 / 4)
    assert mask_iou(a, b, of="pruned") == pytest.approx(1 / 3)
    # Weights work as masks: their non-zeros are the kept set.
    assert mask_iou(a * np.array([3.0, -1, 9, 9, 0.5]), torch.tensor(b * 2.0)) == 0.5


def test_empty_sets_count_as_identical():
    zeros, ones = np.zeros(6), np.ones(6)
    assert mask_iou(zeros, zeros) == 1.0  # nothing kept by either
    assert mask_iou(ones, ones, of="pruned") == 1.0  # nothing pruned by either
    assert mask_iou(zeros, ones) == 0.0
    assert mask_iou(zeros, ones, of="pruned") == 0.0


def test_mask_with_itself_is_one_and_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) < rng.random()
        assert mask_iou(m, m) == 1.0
        assert mask_iou(m, m, of="pruned") == 1.0
    with pytest.raises(ValueError, match="shapes"):
        mask_iou(np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="'kept' or 'pruned'"):
        mask_iou(np.ones(4), np.ones(4), of="zeros")


def test_matrix_matches_pairwise_counts_and_pools_by_parameters():
    rng = np.random.default_rng(1)
    states = {
        name: {"a.weight": rng.random((5, 8)) * (rng.random((5, 8)) < p),
               "b.weight": rng.random(30) * (rng.random(30) < q)}
        for name, p, q in [("x", 0.3, 0.9), ("y", 0.5, 0.5), ("z", 0.9, 0.1)]
    }
    for of in ("kept", "pruned"):
        result = mask_iou_matrix(states, ["a.weight", "b.weight"], of=of)
        assert result.per_layer.shape == (2, 3, 3) and result.overall.shape == (3, 3)
        for li, layer in enumerate(["a.weight", "b.weight"]):
            for i, u in enumerate("xyz"):
                for j, v in enumerate("xyz"):
                    expected = mask_iou(states[u][layer], states[v][layer], of=of)
                    assert result.per_layer[li, i, j] == pytest.approx(expected, abs=1e-15)
        # Pooled IoU = IoU of the concatenated masks.
        for i, u in enumerate("xyz"):
            for j, v in enumerate("xyz"):
                cat_u = np.concatenate([states[u]["a.weight"].ravel(), states[u]["b.weight"]])
                cat_v = np.concatenate([states[v]["a.weight"].ravel(), states[v]["b.weight"]])
                assert result.overall[i, j] == pytest.approx(mask_iou(cat_u, cat_v, of=of))
        assert np.allclose(np.diag(result.overall), 1.0)


def test_counts_are_exact_when_split_into_many_chunks(monkeypatch):
    rng = np.random.default_rng(2)
    states = {str(i): {"w": rng.random(1000) < 0.5} for i in range(3)}
    whole = mask_overlap(states, ["w"])
    monkeypatch.setattr(masks, "_CHUNK_ELEMENTS", 30)  # chunks of 10 weights
    chunked = mask_overlap(states, ["w"])
    assert np.array_equal(whole.both_kept, chunked.both_kept)
    direct = [[np.count_nonzero(states[a]["w"] & states[b]["w"]) for b in "012"] for a in "012"]
    assert chunked.both_kept[0].tolist() == direct


def test_independent_iou_formula():
    # Kept fractions a = 0.5, b = 0.2: E|∩| = 0.1N, E|∪| = 0.6N.
    assert independent_iou(50, 20, 100) == pytest.approx(0.1 / 0.6)
    # Pruned fractions 0.5 and 0.8: E|∩| = 0.4N, E|∪| = 0.9N.
    assert independent_iou(50, 20, 100, of="pruned") == pytest.approx(0.4 / 0.9)


# ------------------------------------------------------------------------ real pruning methods


def test_global_magnitude_masks_are_nested_across_sparsities(mlp):
    dense, layers = mlp
    half = _pruned("magnitude_global", 0.5, dense)
    most = _pruned("magnitude_global", 0.8, dense)
    result = mask_iou_matrix({"50": half, "80": most}, layers)
    kept50 = sum(int(mask_of(half[k]).sum()) for k in layers)
    kept80 = sum(int(mask_of(most[k]).sum()) for k in layers)
    for li, layer in enumerate(layers):
        k50, k80 = mask_of(half[layer]), mask_of(most[layer])
        assert not np.any(k80 & ~k50), f"{layer}: the 80 % mask keeps a weight the 50 % one pruned"
        assert result.per_layer[li, 0, 1] == pytest.approx(k80.sum() / k50.sum())
    assert result.overall[0, 1] == pytest.approx(kept80 / kept50)
    assert kept80 / kept50 == pytest.approx(0.2 / 0.5, abs=1e-4)


def test_random_and_magnitude_overlap_at_chance(mlp):
    dense, layers = mlp
    magnitude = _pruned("magnitude_global", 0.5, dense)
    random = _pruned("random", 0.7, dense, seed=3)
    overlap = mask_overlap({"magnitude": magnitude, "random": random}, layers)
    # Given each layer's counts, a random kept set is a uniform k_r-subset, so |∩| is
    # hypergeometric with mean k_m·k_r/N; layers are independent, so variances add.
    expected, variance = 0.0, 0.0
    for li in range(len(layers)):
        n, k_m, k_r = overlap.numel[li], overlap.kept[0, li], overlap.kept[1, li]
        expected += k_m * k_r / n
        variance += _hypergeometric_sd(int(n), int(k_m), int(k_r)) ** 2
    observed = overlap.both_kept[:, 0, 1].sum()
    assert abs(observed - expected) < 5 * np.sqrt(variance)
    # The overall IoU is then near the chance level abN / (a + b − ab)N.
    iou = overlap.iou_matrix("kept")
    a = overlap.kept[0].sum() / overlap.numel.sum()
    b = overlap.kept[1].sum() / overlap.numel.sum()
    assert iou.overall[0, 1] == pytest.approx(a * b / (a + b - a * b), abs=0.01)
    assert iou.chance_overall[0, 1] == pytest.approx(iou.overall[0, 1], abs=0.01)


def test_top_magnitude_overlap_is_one_for_magnitude_and_kept_fraction_for_random(mlp):
    dense, layers = mlp
    dense_state = dense.state_dict()
    layerwise = top_magnitude_overlap_layers(
        dense_state, _pruned("magnitude_layerwise", 0.6, dense), layers
    )
    assert np.array_equal(layerwise.per_layer, np.ones(len(layers)))
    assert layerwise.overall == 1.0
    # One ranking across layers is a different criterion: layer-wise pruning falls short of it.
    assert layerwise.overall_global < 0.99
    global_ = top_magnitude_overlap_layers(
        dense_state, _pruned("magnitude_global", 0.6, dense), layers
    )
    assert global_.overall == 1.0 and global_.overall_global == 1.0

    random = _pruned("random", 0.6, dense, seed=1)
    for layer in layers:
        kept = mask_of(random[layer])
        n, k = kept.size, int(kept.sum())
        share = top_magnitude_overlap(dense_state[layer], random[layer])
        # hits ~ Hypergeometric(N, k top weights, k draws): mean k²/N, so share ≈ k/N.
        tolerance = 5 * _hypergeometric_sd(n, k, k) / k
        assert share == pytest.approx(k / n, abs=tolerance), layer


def test_top_magnitude_ties_resolve_in_the_methods_favour():
    dense = np.array([3.0, 2.0, -2.0, 2.0, 1.0])
    assert top_magnitude_overlap(dense, [3.0, 0, 0, 2.0, 0]) == 1.0  # 3 and one of the 2s
    assert top_magnitude_overlap(dense, [3.0, 0, 0, 0, 1.0]) == 0.5
    assert top_magnitude_overlap(dense, [0, 2.0, -2.0, 0, 0]) == 0.5  # only one 2 fits the top 2
    assert top_magnitude_overlap(dense, np.zeros(5)) == 1.0  # nothing kept: the empty top-0


def test_structurally_pruned_layers_are_refused_or_skipped(mlp):
    dense, layers = mlp
    small = dict(dense.state_dict())
    small["fc1.0.weight"] = small["fc1.0.weight"][:100]
    states = {"dense": dense.state_dict(), "shrunk": small}
    with pytest.raises(ValueError, match=r"'fc1\.0\.weight'.*structurally pruned"):
        mask_iou_matrix(states, layers)
    result = mask_iou_matrix(states, layers, skip_shape_mismatch=True)
    assert result.skipped_layers == ("fc1.0.weight",)
    assert "fc1.0.weight" not in result.layers and len(result.layers) == len(layers) - 1
    with pytest.raises(ValueError, match=r"fc1\.0\.weight"):
        top_magnitude_overlap_layers(dense.state_dict(), small, layers)
    skipped = top_magnitude_overlap_layers(
        dense.state_dict(), small, layers, skip_shape_mismatch=True
    )
    assert skipped.skipped_layers == ("fc1.0.weight",)
    with pytest.raises(ValueError, match="not in checkpoint"):
        mask_iou_matrix(states, ["nope.weight"])
