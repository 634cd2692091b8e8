"""Evaluation: accuracy and per-layer CKA from one streamed pass, checked by direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.capture import layer_outputs
from models.checkpoints import load_model, save_safetensors
from models.pruning import PRUNING_METHODS
from models.registry import default_config
from workers.analyses.evaluation import evaluate_checkpoints
from workers.datasets import load_dataset
from workers.jobspec import CheckpointRef, DatasetRef, JobInputError
from workers.metrics.cka import linear_cka
from workers.training import init_model, train_classifier

CONFIG = default_config("mlp")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetRef(name="digits", source="builtin", builtin_name="digits"))


@pytest.fixture(scope="module")
def refs(digits, tmp_path_factory) -> list[CheckpointRef]:
    """A briefly trained dense MLP, the same weights again, and two pruned versions."""
    root = tmp_path_factory.mktemp("ckpts")
    dense = init_model("mlp", CONFIG, seed=0)
    train_classifier(dense, digits, epochs=4, seed=0)
    save_safetensors(dense.state_dict(), root / "dense.safetensors")
    out = [
        CheckpointRef(1, "dense", "dense", "dense", None, str(root / "dense.safetensors")),
        CheckpointRef(2, "copy", "pruned", "uploaded", None, str(root / "dense.safetensors")),
    ]
    for ident, (method, sparsity) in enumerate([("magnitude_global", 0.7), ("random", 0.7)], 3):
        model = init_model("mlp", CONFIG, seed=0)
        model.load_state_dict(dense.state_dict())
        PRUNING_METHODS[method](model, sparsity, seed=0)
        path = root / f"{method}.safetensors"
        save_safetensors(model.state_dict(), path)
        out.append(CheckpointRef(ident, method, "pruned", method, sparsity, str(path)))
    return out


def _model(ref: CheckpointRef) -> torch.nn.Module:
    return load_model("mlp", CONFIG, ref.path)


def test_arrays_match_a_direct_full_batch_computation(digits, refs):
    calls = []
    result = evaluate_checkpoints(
        "mlp", CONFIG, refs, digits, batch_size=100, progress=lambda f, m: calls.append(f)
    )
    layers = ["fc1", "fc2", "classifier"]
    assert result["layers"].tolist() == layers
    assert result["checkpoint_ids"].tolist() == [1, 2, 3, 4]
    assert result["checkpoint_names"].tolist() == ["dense", "copy", "magnitude_global", "random"]
    np.testing.assert_array_equal(result["labels"], digits.y_test)
    assert result["cka"].shape == (4, 3) and result["predictions"].shape == (4, 450)
    np.testing.assert_allclose(result["sparsity"], [0, 0, 0.7, 0.7], atol=1e-3)

    x = torch.from_numpy(digits.x_test.reshape(450, 64))
    dense_logits, dense_outputs = layer_outputs(_model(refs[0]), x, layers)
    for i, ref in enumerate(refs):
        logits, outputs = layer_outputs(_model(ref), x, layers)
        predicted = logits.argmax(1).numpy()
        np.testing.assert_array_equal(result["predictions"][i], predicted)
        assert result["accuracy"][i] == np.mean(predicted == digits.y_test)
        expected = [linear_cka(dense_outputs[k].numpy(), outputs[k].numpy()) for k in layers]
        np.testing.assert_allclose(result["cka"][i], expected, atol=1e-10)

    np.testing.assert_allclose(result["cka"][0], 1.0, atol=1e-12)  # the dense model itself
    np.testing.assert_allclose(result["cka"][1], 1.0, atol=1e-9)  # same weights, computed
    assert np.all(result["cka"][2:] < 1.0)
    # One pass: 4 loading steps, then one report per batch of all four models.
    assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) == 4 + 5


def test_no_array_needs_pickle(digits, refs, tmp_path):
    result = evaluate_checkpoints("mlp", CONFIG, refs[:2], digits)
    np.savez(tmp_path / "r.npz", **result)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(result)
        assert all(loaded[k].dtype != object for k in loaded.files)


@pytest.mark.parametrize("roles", [("pruned", "pruned"), ("dense", "dense")])
def test_exactly_one_dense_checkpoint_is_required(digits, refs, roles):
    two = [
        CheckpointRef(r.id, r.name, role, r.method, r.target_sparsity, r.path)
        for r, role in zip(refs[:2], roles, strict=True)
    ]
    with pytest.raises(JobInputError, match="exactly one dense"):
        evaluate_checkpoints("mlp", CONFIG, two, digits)


def test_an_unreadable_checkpoint_is_named(digits, refs, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    bad = CheckpointRef(9, "broken-one", "pruned", None, None, str(broken))
    with pytest.raises(JobInputError, match="'broken-one' \\(id 9\\)"):
        evaluate_checkpoints("mlp", CONFIG, [refs[0], bad], digits)


def test_a_structurally_pruned_checkpoint_is_compared_through_its_activations(
    digits, refs, tmp_path
):
    import torch_pruning as tp

    model = _model(refs[0])
    pruner = tp.pruner.MagnitudePruner(
        model, torch.zeros(1, 64), importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5, ignored_layers=[model.classifier],
    )
    pruner.step()
    path = tmp_path / "tp.safetensors"
    save_safetensors(model.state_dict(), path)
    shrunk = CheckpointRef(9, "tp-50", "pruned", "torch_pruning", 0.5, str(path))
    result = evaluate_checkpoints("mlp", CONFIG, [refs[0], shrunk], digits, batch_size=150)
    # fc1 and fc2 lost half their units; the classifier keeps its 10 outputs.
    assert result["widths"].tolist() == [[128, 64, 10], [64, 32, 10]]
    x = torch.from_numpy(digits.x_test.reshape(450, 64))
    _, dense_out = layer_outputs(_model(refs[0]), x, ["fc1", "fc2", "classifier"])
    with torch.inference_mode():
        pruned_out = {}
        h = x
        for name in ("fc1", "fc2"):
            h = getattr(model, name)(h)
            pruned_out[name] = h
        pruned_out["classifier"] = model.classifier(h)
    for j, name in enumerate(["fc1", "fc2", "classifier"]):
        expected = linear_cka(dense_out[name].numpy(), pruned_out[name].numpy())
        assert result["cka"][1, j] == pytest.approx(expected, abs=1e-9)
    assert result["accuracy"][1] == np.mean(
        pruned_out["classifier"].argmax(1).numpy() == digits.y_test
    )
