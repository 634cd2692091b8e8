"""Layer-wise magnitude and L1 structured pruning against independent computations."""

import copy

import pytest
import torch

from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.models.sparsity import prunable_modules


@pytest.fixture
def cnn():  # noqa: ANN201
    torch.manual_seed(0)
    return create_model("cnn_small")


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layerwise_magnitude_prunes_every_layer_to_the_target(cnn, sparsity):
    before = {n: m.weight.detach().clone() for n, m in prunable_modules(cnn)}
    PRUNING_METHODS["magnitude_layerwise"](cnn, sparsity)
    for name, module in prunable_modules(cnn):
        w0, w = before[name], module.weight.detach()
        k = round(sparsity * w0.numel())
        assert int((w == 0).sum()) == k  # exactly the target count in every layer
        # independent: the k smallest |w| are the zeroed ones (ties are measure-zero here)
        threshold = w0.abs().flatten().kthvalue(k).values
        assert torch.equal(w == 0, w0.abs() <= threshold)
        assert torch.equal(w[w != 0], w0[w != 0])  # survivors untouched


def test_l1_structured_zeroes_whole_low_norm_units_and_keeps_the_classes(cnn):
    before = {n: m.weight.detach().clone() for n, m in prunable_modules(cnn)}
    PRUNING_METHODS["l1_structured"](cnn, 0.5)
    layers = prunable_modules(cnn)
    for name, module in layers[:-1]:
        w0, w = before[name], module.weight.detach()
        norms = w0.flatten(1).abs().sum(dim=1)
        k = round(0.5 * w0.shape[0])
        dead = (w.flatten(1) == 0).all(dim=1)
        assert int(dead.sum()) == k
        assert set(torch.nonzero(dead).flatten().tolist()) == set(norms.argsort()[:k].tolist())
        assert torch.equal(w[~dead], w0[~dead])
    last_name, last = layers[-1]
    assert torch.equal(last.weight.detach(), before[last_name])  # output classes left whole


def test_structured_and_unstructured_differ_in_what_they_keep(cnn):
    structured = PRUNING_METHODS["l1_structured"](copy.deepcopy(cnn), 0.5)
    unstructured = PRUNING_METHODS["magnitude_layerwise"](copy.deepcopy(cnn), 0.5)
    (_, s_conv), (_, u_conv) = prunable_modules(structured)[0], prunable_modules(unstructured)[0]
    assert (s_conv.weight.flatten(1) == 0).all(dim=1).any()
    assert not (u_conv.weight.flatten(1) == 0).all(dim=1).any()
