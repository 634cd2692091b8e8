"""N:M magnitude pruning: the pattern holds, the survivors are each group's largest, 50 % exact."""

import pytest
import torch

from prunescope.models.pruning import PRUNING_METHODS, sparsity_error
from prunescope.models.pruning.n_m import n_m_mask
from prunescope.models.registry import create_model
from prunescope.models.sparsity import follows_n_m, prunable_modules, sparsity_report


def test_mask_keeps_the_largest_of_each_group_of_a_hand_built_row():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 9.0, -8.0, 0.0, 1.0]])
    assert n_m_mask(w, 2, 4).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert n_m_mask(w, 4, 8).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]


@pytest.mark.parametrize(("method", "n", "m"), [("magnitude_2of4", 2, 4), ("magnitude_4of8", 4, 8)])
def test_every_compatible_layer_follows_the_pattern_with_the_largest_weights(method, n, m):
    torch.manual_seed(0)
    model = create_model("cnn_small")
    before = {name: mod.weight.detach().clone() for name, mod in prunable_modules(model)}
    PRUNING_METHODS[method](model, 0.5)
    report = sparsity_report(model)
    for name, module in prunable_modules(model):
        w0, w = before[name], module.weight.detach()
        layer = report["layers"][f"{name}.weight"]
        if w0.shape[1] % m:  # conv1 has one input channel: left dense
            assert torch.equal(w, w0) and layer["sparsity"] == 0.0
            continue
        assert follows_n_m(w, n, m) and f"{n}:{m}" in layer["n_m"]
        assert layer["sparsity"] == 0.5
        # independent check: within each group the kept |w| are the n largest
        groups0 = w0.movedim(1, -1).reshape(-1, m).abs()
        kept = w.movedim(1, -1).reshape(-1, m) != 0
        top = groups0.sort(dim=-1, descending=True).values[:, n - 1 : n]
        assert torch.equal(kept, groups0 >= top)


def test_n_m_methods_refuse_any_other_sparsity():
    assert sparsity_error("magnitude_2of4", 0.5) is None
    assert "50%" in sparsity_error("magnitude_2of4", 0.8)
    assert sparsity_error("magnitude_global", 0.8) is None
    with pytest.raises(ValueError, match="always prunes"):
        PRUNING_METHODS["magnitude_2of4"](create_model("mlp"), 0.7)
