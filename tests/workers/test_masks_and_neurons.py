"""Mask and Wasserstein-neuron analyses on digits models: relations that must hold, npz output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunescope.models.capture import layer_outputs
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names
from prunescope.workers.analyses.masks_and_neurons import mask_analysis, wasserstein_analysis
from prunescope.workers.datasets import as_model_input, load_dataset
from prunescope.workers.jobspec import DatasetRef
from prunescope.workers.metrics.wasserstein import neuron_rows, wasserstein_neurons

PRUNINGS = [("magnitude_global", 0.5), ("magnitude_global", 0.8), ("random", 0.5)]
LINEAR_AND_CONV = {
    "mlp": ["fc1.0", "fc2.0", "classifier"],
    "cnn_small": ["conv1.0", "conv2.0", "fc.1", "classifier"],
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetRef(name="digits", source="builtin", builtin_name="digits"))


def _models(architecture: str) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """A randomly initialised dense model, an unpruned copy, and pruned versions of it."""
    torch.manual_seed(0)
    dense = create_model(architecture)
    pruned = {"copy": copy.deepcopy(dense)}
    for method, sparsity in PRUNINGS:
        model = copy.deepcopy(dense)
        PRUNING_METHODS[method](model, sparsity, seed=0)
        pruned[f"{method}@{sparsity}"] = model
    return dense, pruned


def _batches(digits, model: torch.nn.Module, n: int = 150) -> list[torch.Tensor]:
    x = as_model_input(digits.x_test[:n], model.input_shape)
    return list(torch.from_numpy(x).split(64))


def _round_trip(arrays: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=False) as loaded:
        return {key: loaded[key] for key in loaded.files}


@pytest.mark.parametrize("architecture", ["mlp", "cnn_small"])
def test_mask_analysis_relations(architecture, tmp_path):
    dense, pruned = _models(architecture)
    layers = prunable_parameter_names(dense)
    states = {name: model.state_dict() for name, model in pruned.items() if name != "copy"}
    states["magnitude_global@0.5 again"] = copy.deepcopy(states["magnitude_global@0.5"])
    result = _round_trip(mask_analysis(dense.state_dict(), states, layers), tmp_path / "m.npz")

    names = result["checkpoint_names"].tolist()
    c, n_layers = len(names), len(layers)
    assert names == list(states) and result["layers"].tolist() == layers
    for key in ("iou_kept", "iou_pruned", "iou_kept_chance", "iou_pruned_chance"):
        assert result[key].shape == (n_layers, c, c)
    for key in ("iou_kept_overall", "iou_pruned_overall"):
        assert result[key].shape == (c, c)
        assert np.allclose(np.diag(result[key]), 1.0)
        assert np.allclose(result[key], result[key].T)
    half, most, random, again = (names.index(k) for k in (
        "magnitude_global@0.5", "magnitude_global@0.8", "random@0.5", "magnitude_global@0.5 again"))
    assert result["iou_kept_overall"][half, again] == 1.0
    assert result["iou_pruned_overall"][half, again] == 1.0
    # Global magnitude masks are nested: IoU of kept sets = |kept 80 %| / |kept 50 %|.
    kept = result["kept_fraction"] * result["numel"]
    assert result["iou_kept_overall"][half, most] == pytest.approx(
        kept[most].sum() / kept[half].sum())
    for name, row in zip(names, result["kept_fraction"], strict=True):
        layer_stats = checkpoint_stats(states[name], layers)["layers"]
        assert row == pytest.approx([1 - layer_stats[k]["sparsity"] for k in layers])
    top = result["top_magnitude_overlap"]
    assert top.shape == (c, n_layers)
    assert np.all(top[[half, most, again]] == 1.0)
    assert np.all(result["top_magnitude_overlap_global"][[half, most, again]] == 1.0)
    # Random pruning keeps the top weights at about the kept fraction (loose: the small conv1
    # of cnn_small has 144 weights).
    assert top[random] == pytest.approx(result["kept_fraction"][random], abs=0.25)
    assert abs(result["top_magnitude_overlap_overall"][random] - 0.5) < 0.05


def test_mask_analysis_refuses_or_skips_structurally_pruned_layers():
    dense, pruned = _models("mlp")
    layers = prunable_parameter_names(dense)
    shrunk = dict(pruned["random@0.5"].state_dict())
    shrunk["fc2.0.weight"] = shrunk["fc2.0.weight"][:32]
    states = {"random": pruned["random@0.5"].state_dict(), "shrunk": shrunk}
    with pytest.raises(ValueError, match=r"'fc2\.0\.weight' changed shape"):
        mask_analysis(dense.state_dict(), states, layers)
    result = mask_analysis(dense.state_dict(), states, layers, skip_shape_mismatch=True)
    assert result["skipped_layers"].tolist() == ["fc2.0.weight"]
    assert result["layers"].tolist() == ["fc1.0.weight", "classifier.weight"]
    with pytest.raises(ValueError, match="at least one"):
        mask_analysis(dense.state_dict(), {}, layers)


@pytest.mark.parametrize(("architecture", "capacity"), [("mlp", 1 << 14), ("cnn_small", 1000)])
def test_wasserstein_analysis_relations(architecture, capacity, digits, tmp_path):
    dense, pruned = _models(architecture)
    batches = _batches(digits, dense)
    calls: list[float] = []
    result = _round_trip(
        wasserstein_analysis(dense, pruned, batches, progress=lambda f, m: calls.append(f),
                             capacity=capacity),
        tmp_path / "w.npz",
    )
    layers = LINEAR_AND_CONV[architecture]
    assert result["layers"].tolist() == layers
    c, n_layers, width = len(pruned), len(layers), int(result["num_units"].max())
    assert result["dense_w1"].shape == (n_layers, width)
    for key in ("pruned_w1", "pruned_fraction", "shift_w1", "shift_mean", "shift_std"):
        assert result[key].shape == (c, n_layers, width)
    assert result["rho_w1_scaled"].shape == (c, n_layers)
    assert calls == sorted(calls) and calls[-1] == 1.0

    copy_row = result["checkpoint_names"].tolist().index("copy")
    valid = ~np.isnan(result["dense_w1"])
    assert valid.sum() == result["num_units"].sum()  # padding only past each layer's units
    # The unpruned copy: nothing pruned, nothing moved, the same distances (the reservoir picks
    # the same rows for every model, so this holds exactly also when it samples).
    assert np.all(result["shift_w1"][copy_row][valid] == 0)
    assert np.all(result["shift_mean"][copy_row][valid] == 0)
    assert np.array_equal(result["pruned_w1"][copy_row][valid], result["dense_w1"][valid])
    assert np.all(result["pruned_fraction"][copy_row][valid] == 0)
    assert np.all(np.isnan(result["rho_w1"][copy_row]))  # no pruning: no correlation

    # Pruned shares agree with the checkpoints' own sparsity (every neuron has the same fan-in).
    for row, name in enumerate(result["checkpoint_names"]):
        stats = checkpoint_stats(pruned[name].state_dict(), [f"{k}.weight" for k in layers])
        for li, layer in enumerate(layers):
            units = result["num_units"][li]
            assert result["pruned_fraction"][row, li, :units].mean() == pytest.approx(
                stats["layers"][f"{layer}.weight"]["sparsity"])
    pruned_rows = [i for i, n in enumerate(result["checkpoint_names"]) if n != "copy"]
    assert np.all(np.nanmax(result["shift_w1"][pruned_rows], axis=2) > 0)
    assert np.all(np.isfinite(result["rho_w1_scaled"][pruned_rows]))

    # Dense distances equal a direct computation on one full-batch forward pass.
    modules = dict(dense.named_modules())
    _, outputs = layer_outputs(dense, torch.cat(batches), layers, flatten=False)
    for li, layer in enumerate(layers):
        unit_axis = 1 if isinstance(modules[layer], torch.nn.Conv2d) else -1
        rows = neuron_rows(outputs[layer], unit_axis)
        assert result["num_values_seen"][li] == rows.shape[0]
        if rows.shape[0] <= capacity:
            assert result["num_values"][li] == rows.shape[0]
            expected = wasserstein_neurons(rows)["w1"]
            assert result["dense_w1"][li, : rows.shape[1]] == pytest.approx(expected, rel=1e-9)
        else:  # conv layers pool 150 examples × positions: sampled
            assert result["num_values"][li] == capacity


def test_wasserstein_analysis_refuses_layers_it_cannot_measure(digits):
    dense, pruned = _models("cnn_small")
    batches = _batches(digits, dense, n=10)
    with pytest.raises(ValueError, match="not a linear or convolution layer.*conv1.0"):
        wasserstein_analysis(dense, {}, batches, layers=["conv1"])
    with pytest.raises(ValueError, match="empty"):
        wasserstein_analysis(dense, {}, [], layers=["fc.1"])
    result = wasserstein_analysis(dense, {}, batches, layers=["fc.1"])
    assert result["pruned_w1"].shape == (0, 1, 64) and result["rho_w1"].shape == (0, 1)
