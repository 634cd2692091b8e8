"""Pruning methods: exact sparsity, the magnitude rule checked independently, seeded randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunescope.models.pruning.magnitude import global_magnitude_prune
from prunescope.models.pruning.methods import PRUNING_METHODS
from prunescope.models.pruning.random_unstructured import random_unstructured_prune
from prunescope.models.registry import create_model
from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names


def _model(name: str = "cnn_small", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name)


def _masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k] != 0 for k in prunable_parameter_names(model)}


def _calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))]


# Global methods rank all weights together, so the global count is exact; per-layer methods are
# exact per tensor instead (tests/models/test_layerwise_pruning.py, test_pruning_methods.py).
GLOBAL_METHODS = ["magnitude_global", "random", "snip", "grasp"]
# Covered elsewhere: imp_rewind trains (tests/workers/test_imp.py); attention_heads needs a
# Transformer and zeroes the removed heads' biases too (tests/models/test_pruning_methods.py).
CNN_METHODS = sorted(set(PRUNING_METHODS) - {"imp_rewind", "attention_heads"})


@pytest.mark.parametrize("method", GLOBAL_METHODS)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_measured_global_sparsity_is_the_target_within_one_weight(method, sparsity):
    model = PRUNING_METHODS[method](_model(), sparsity, seed=3, calibration=_calibration())
    stats = checkpoint_stats(model.state_dict(), prunable_parameter_names(model))
    pruned = stats["num_params"] - stats["num_nonzero"]
    assert abs(pruned - sparsity * stats["num_params"]) <= 1


@pytest.mark.parametrize("method", CNN_METHODS)
def test_pruning_leaves_plain_weights_and_untouched_biases(method):
    dense = _model()
    fn = PRUNING_METHODS[method]
    sparsity = getattr(fn, "fixed_sparsity", 0.7)  # N:M fix theirs
    model = fn(_model(), sparsity, seed=0, calibration=_calibration())
    assert sorted(model.state_dict()) == sorted(dense.state_dict())  # no _orig / _mask keys
    assert all(not hasattr(m, "weight_mask") for m in model.modules())
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    for key, value in dense.state_dict().items():
        after = model.state_dict()[key]
        if key.endswith("bias"):
            assert torch.equal(after, value)
        elif not getattr(fn, "updates_weights", False):  # SparseGPT re-fits the survivors
            kept = after != 0
            assert torch.equal(after[kept], value[kept])  # survivors keep their values


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_magnitude_mask_equals_a_global_threshold_on_absolute_weights(sparsity):
    dense = _model("mlp", seed=1)
    names = prunable_parameter_names(dense)
    magnitudes = np.concatenate(
        [dense.state_dict()[k].abs().numpy().ravel() for k in names]
    )
    k = round(sparsity * magnitudes.size)
    threshold = np.sort(magnitudes)[k - 1]  # the k-th smallest |w| is the last one pruned
    expected = {n: dense.state_dict()[n].abs().numpy() > threshold for n in names}

    mask = _masks(global_magnitude_prune(_model("mlp", seed=1), sparsity))
    for name in names:
        np.testing.assert_array_equal(mask[name].numpy(), expected[name], err_msg=name)
    # Global, not per layer: layers end up with different sparsities.
    per_layer = [1 - m.float().mean().item() for m in mask.values()]
    assert max(per_layer) - min(per_layer) > 0.05


def test_random_pruning_is_deterministic_per_seed_and_leaves_the_rng_alone():
    models = [_model() for _ in range(3)]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = _masks(random_unstructured_prune(models[0], 0.5, seed=7))
    assert torch.equal(torch.get_rng_state(), rng_before)
    second = _masks(random_unstructured_prune(models[1], 0.5, seed=7))
    other = _masks(random_unstructured_prune(models[2], 0.5, seed=8))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_random_and_magnitude_choose_different_weights():
    magnitude = _masks(PRUNING_METHODS["magnitude_global"](_model(), 0.5))
    random = _masks(PRUNING_METHODS["random"](_model(), 0.5, seed=0))
    agreement = np.mean(
        np.concatenate([(magnitude[k] == random[k]).numpy().ravel() for k in magnitude])
    )
    assert 0.4 < agreement < 0.6  # independent masks at 50 % agree on about half the weights


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
def test_sparsity_outside_zero_to_one_is_refused(method, sparsity):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="sparsity"):
        PRUNING_METHODS[method](model, sparsity, seed=0, calibration=_calibration())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
