"""ResNet-20, ResNet-18 and the small ViT: sizes and costs against published and hand counts,
forward passes against independent formulations, capture, pruning and checkpoint round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunescope.models.capture import capture_layer_outputs, layer_outputs
from prunescope.models.checkpoints import load_model, load_state_dict_file, save_safetensors
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model, default_config
from prunescope.models.sparsity import prunable_modules, sparsity_report

NEW = ["resnet20", "resnet18", "vit_small"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """One default instance of each (ResNet-18 takes a moment to build); tests only read them."""
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in NEW}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ hand-counted sizes


def _conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out


def _bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers, not parameters


def _resnet_params(blocks: list[int], widths: list[int], projection: bool, classes: int) -> int:
    total = _conv(3, 3, widths[0]) + _bn(widths[0])
    c_in = widths[0]
    for n, c in zip(blocks, widths, strict=True):
        for _ in range(n):
            total += _conv(3, c_in, c) + _bn(c) + _conv(3, c, c) + _bn(c)
            if projection and c_in != c:
                total += _conv(1, c_in, c) + _bn(c)
            c_in = c
    return total + c_in * classes + classes


def _vit_params(c: int, size: int, p: int, d: int, depth: int, mlp: int, classes: int) -> int:
    tokens = (size // p) ** 2 + 1
    embed = c * p * p * d + d + d + tokens * d  # patch conv (+bias), CLS, position embeddings
    attention = 4 * (d * d + d)  # query, key, value, proj
    block = 2 * _bn(d) + attention + (d * mlp + mlp) + (mlp * d + d)  # LayerNorm ≙ 2d like BN
    return embed + depth * block + 2 * d + d * classes + classes


def test_resnet20_has_the_published_size(models):
    # He et al. 2016, Table 6: ResNet-20 on CIFAR-10 has 0.27 M parameters (option A).
    hand = _resnet_params([3, 3, 3], [16, 32, 64], projection=False, classes=10)
    assert _params(models["resnet20"]) == hand == 269_722
    assert round(hand / 1e6, 2) == 0.27
    option_b = create_model("resnet20", shortcut="B")
    assert _params(option_b) == _resnet_params([3, 3, 3], [16, 32, 64], True, 10) == hand + 2752


def test_resnet18_has_the_published_size(models):
    # The CIFAR ResNet-18 (3×3 stem, no max-pool) is quoted at 11.17 M parameters.
    hand = _resnet_params([2, 2, 2, 2], [64, 128, 256, 512], projection=True, classes=10)
    assert _params(models["resnet18"]) == hand
    assert round(hand / 1e6, 2) == 11.17
    narrow = create_model("resnet18", base_width=8, num_classes=100)
    assert _params(narrow) == _resnet_params([2, 2, 2, 2], [8, 16, 32, 64], True, 100)


def test_vit_size_follows_the_formula(models):
    cfg = default_config("vit_small")
    assert (cfg["patch_size"], cfg["dim"], cfg["depth"], cfg["heads"]) == (4, 192, 6, 3)
    hand = _vit_params(3, 32, 4, 192, 6, cfg["mlp_ratio"] * 192, 10)
    assert _params(models["vit_small"]) == hand
    other = create_model("vit_small", image_size=16, patch_size=8, dim=32, depth=2, heads=4)
    assert _params(other) == _vit_params(3, 16, 8, 32, 2, 64, 10)


# ------------------------------------------------------------------------------ FLOP counts


def _torch_multiply_accumulates(model: nn.Module) -> tuple[int, dict]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *model.input_shape))
    # FlopCounterMode counts 2 FLOPs (a multiply and an add) per multiply-accumulate;
    # sparsity.py counts multiply-accumulates.
    return counter.get_total_flops() // 2, counter.get_flop_counts()["Global"]


def test_resnet20_costs_41_million_multiply_accumulates(models):
    model = models["resnet20"]
    report = sparsity_report(model)
    stem = 32 * 32 * _conv(3, 3, 16)
    stage1 = 32 * 32 * 6 * _conv(3, 16, 16)
    stage2 = 16 * 16 * (_conv(3, 16, 32) + 5 * _conv(3, 32, 32))  # stride 2 from the first conv
    stage3 = 8 * 8 * (_conv(3, 32, 64) + 5 * _conv(3, 64, 64))
    hand = stem + stage1 + stage2 + stage3 + 64 * 10
    assert report["flops"] == hand == 40_551_040
    assert 40.5e6 < report["flops"] < 41.0e6  # commonly quoted as 40.8 M to 41 M
    assert _torch_multiply_accumulates(model)[0] == hand
    assert report["layers"]["layer2.0.conv1.weight"]["flops"] == 16 * 16 * _conv(3, 16, 32)


def test_resnet18_cost_matches_torch_count(models):
    report = sparsity_report(models["resnet18"])
    assert report["flops"] == _torch_multiply_accumulates(models["resnet18"])[0]
    assert round(report["flops"] / 1e9, 2) == 0.56  # the usual 0.56 G MACs for CIFAR ResNet-18
    # the projection shortcut runs at the output resolution of its stride-2 block
    assert report["layers"]["layer4.0.shortcut.0.weight"]["flops"] == 4 * 4 * 256 * 512


def test_vit_linear_layers_cost_once_per_token(models):
    model = models["vit_small"]
    tokens, d, mlp, depth = 65, 192, 2 * 192, 6
    report = sparsity_report(model)
    hand = 64 * (3 * 16 * d) + depth * tokens * (4 * d * d + 2 * d * mlp) + d * 10
    assert report["flops"] == hand
    torch_macs, by_op = _torch_multiply_accumulates(model)
    # torch also counts the two activation × activation products QKᵀ and PV of every block
    # (tokens² × d each); they have no weights to prune, so sparsity.py leaves them out.
    attention_products = depth * 2 * tokens * tokens * d
    assert by_op[torch.ops.aten.bmm] // 2 == attention_products
    assert torch_macs == hand + attention_products

    pruned_model = PRUNING_METHODS["magnitude_global"](create_model("vit_small"), 0.5)
    pruned = sparsity_report(pruned_model)["layers"]["blocks.0.attn.query.weight"]
    nonzero = int(torch.count_nonzero(pruned_model.blocks[0].attn.query.weight))
    assert pruned["flops_nonzero"] == tokens * nonzero < tokens * d * d


# ------------------------------------------------------------------- forward and capture


EXPECTED_FEATURES = {
    "resnet20": {"layer1": 16 * 32 * 32, "layer2": 32 * 16 * 16, "layer3": 64 * 8 * 8,
                 "pool": 64, "classifier": 10},
    "resnet18": {"layer1": 64 * 32 * 32, "layer2": 128 * 16 * 16, "layer3": 256 * 8 * 8,
                 "layer4": 512 * 4 * 4, "pool": 512, "classifier": 10},
    "vit_small": {**{f"blocks.{i}.cls_out": 192 for i in range(6)}, "norm": 192,
                  "classifier": 10},
}  # fmt: skip


@pytest.mark.parametrize("name", NEW)
def test_analysis_layers_are_captured_with_their_sizes(models, name):
    model = models[name]
    torch.manual_seed(1)
    x = torch.rand(2, *model.input_shape)
    logits, outputs = layer_outputs(model, x, model.analysis_layers)
    assert logits.shape == (2, 10)
    assert {k: v.shape[1] for k, v in outputs.items()} == EXPECTED_FEATURES[name]
    assert list(outputs) == list(model.analysis_layers)
    torch.testing.assert_close(outputs["classifier"], logits)
    # the layer before the logits is exactly what the classifier reads
    penultimate = outputs[model.analysis_layers[-2]]
    torch.testing.assert_close(model.classifier(penultimate), logits)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_pooled_features_are_the_spatial_mean_of_the_last_stage(models, name):
    model = models[name]
    last_stage = model.analysis_layers[-3]
    _, outputs = layer_outputs(model, torch.rand(2, *model.input_shape), [last_stage, "pool"])
    channels = EXPECTED_FEATURES[name]["pool"]
    per_channel = outputs[last_stage].reshape(2, channels, -1)
    torch.testing.assert_close(outputs["pool"], per_channel.mean(-1))
    assert bool((per_channel >= 0).all())  # stage outputs end in the block's ReLU


def test_option_a_shortcut_zero_pads_the_subsampled_input():
    model = create_model("resnet20").eval()
    block = model.layer2[0]
    # Silence the residual branch: the block must return ReLU(shortcut(x)) alone.
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out[:, 8:24], F.relu(x[:, :, ::2, ::2]))
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert not any(isinstance(m, nn.Conv2d) for m in block.shortcut.modules())


def test_vit_block_equals_torch_transformer_encoder_layer(models):
    """Independent formulation: torch's pre-norm encoder layer with the same weights."""
    model = models["vit_small"]
    block = model.blocks[0]
    reference = nn.TransformerEncoderLayer(
        192,
        3,
        dim_feedforward=384,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    ).eval()
    attn = block.attn
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(
            torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
        )
        reference.self_attn.in_proj_bias.copy_(
            torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
        )
        reference.self_attn.out_proj.load_state_dict(attn.proj.state_dict())
        reference.linear1.load_state_dict(block.mlp[0].state_dict())
        reference.linear2.load_state_dict(block.mlp[2].state_dict())
        reference.norm1.load_state_dict(block.norm1.state_dict())
        reference.norm2.load_state_dict(block.norm2.state_dict())
        x = torch.randn(2, 65, 192)
        torch.testing.assert_close(block(x), reference(x), atol=1e-5, rtol=1e-4)


def test_attention_probabilities_are_captured_per_head(models):
    model = models["vit_small"]
    assert model.attention_layers == tuple(f"blocks.{i}.attn.attn_probs" for i in range(6))
    x = torch.rand(3, *model.input_shape)
    layers = [*model.attention_layers, "blocks.2.norm1"]
    _, outputs = layer_outputs(model, x, layers, flatten=False)
    for name in model.attention_layers:
        probs = outputs[name]
        assert probs.shape == (3, 3, 65, 65)
        assert bool((probs >= 0).all())
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, 65))
    # hand-computed softmax(QKᵀ/√d_head) for block 2 from its input and weights
    attn = model.blocks[2].attn
    h = outputs["blocks.2.norm1"]
    with torch.no_grad():
        q = attn.query(h).reshape(3, 65, 3, 64)
        k = attn.key(h).reshape(3, 65, 3, 64)
        expected = torch.einsum("bqhd,bkhd->bhqk", q, k).div(8.0).softmax(-1)
    torch.testing.assert_close(outputs["blocks.2.attn.attn_probs"], expected)
    # the default (flattened) capture of the same maps holds the same numbers
    _, flat = layer_outputs(model, x, ["blocks.2.attn.attn_probs"])
    torch.testing.assert_close(flat["blocks.2.attn.attn_probs"], expected.reshape(3, -1))


def test_attention_runs_with_heads_narrowed_by_structured_pruning():
    torch.manual_seed(0)
    attn = create_model("vit_small").blocks[0].attn.eval()
    keep = torch.cat([h * 64 + torch.arange(32) for h in range(3)])  # half of every head
    for name in ("query", "key"):
        layer = getattr(attn, name)
        narrow = nn.Linear(192, 96)
        narrow.load_state_dict({"weight": layer.weight[keep], "bias": layer.bias[keep]})
        setattr(attn, name, narrow)
    x = torch.randn(2, 65, 192)
    _, out = layer_outputs(attn, x, ["attn_probs"], flatten=False)
    with torch.no_grad():
        q = attn.query(x).reshape(2, 65, 3, 32)
        k = attn.key(x).reshape(2, 65, 3, 32)
        expected = torch.einsum("bqhd,bkhd->bhqk", q, k).div(32**0.5).softmax(-1)
    torch.testing.assert_close(out["attn_probs"], expected)


def test_vit_cls_summary_is_the_block_output_cls_token(models):
    model = models["vit_small"]
    x = torch.rand(2, *model.input_shape)
    with capture_layer_outputs(model, ["blocks.5", "blocks.5.cls_out", "norm"]) as out:
        with torch.no_grad():
            model(x)
    tokens = out["blocks.5"].reshape(2, 65, 192)  # a raw block output flattens token by token
    torch.testing.assert_close(out["blocks.5.cls_out"], tokens[:, 0])
    torch.testing.assert_close(out["norm"], model.norm(tokens[:, 0]))


@pytest.mark.parametrize("name", ["resnet20", "vit_small"])
def test_every_parameter_is_trained(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = F.cross_entropy(model(torch.rand(2, *model.input_shape)), torch.tensor([0, 1]))
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


# --------------------------------------------------------------------- pruning, checkpoints


@pytest.mark.parametrize(
    ("name", "config"),
    # ResNet-18 at a quarter width: the same layers, and pruning 0.7 M weights instead of
    # 11 M keeps the test quick (ranking them all globally is what takes the time).
    [("resnet20", {}), ("resnet18", {"base_width": 16}), ("vit_small", {})],
)
def test_global_magnitude_pruning_reaches_the_target(name, config):
    torch.manual_seed(0)
    model = create_model(name, **config).eval()
    weights = [m.weight for _, m in prunable_modules(model)]
    assert prunable_modules(model)[-1][0] == "classifier"  # structured pruning spares it
    before = torch.cat([w.detach().abs().flatten() for w in weights])
    PRUNING_METHODS["magnitude_global"](model, 0.6)
    after = torch.cat([w.detach().flatten() for w in weights])
    report = sparsity_report(model)
    assert report["num_params"] == before.numel()
    assert report["num_params"] - report["num_nonzero"] == round(0.6 * before.numel())
    assert report["sparsity"] == pytest.approx(0.6, abs=1 / before.numel())
    kept = after != 0
    assert before[~kept].max() <= before[kept].min()  # smallest magnitudes went, across layers
    assert report["theoretical_speedup"] > 1.0
    assert torch.isfinite(model(torch.rand(2, *model.input_shape))).all()


ROUND_TRIP_CONFIGS = {
    "resnet20": {"shortcut": "B", "base_width": 8, "num_classes": 7},
    "resnet18": {"base_width": 16, "in_channels": 1},
    "vit_small": {"dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 3},
}


def _saved_pruned_model(name: str, path) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **ROUND_TRIP_CONFIGS[name])
    PRUNING_METHODS["magnitude_global"](model, 0.5)
    model.train()(torch.rand(4, *model.input_shape))  # non-default BatchNorm running statistics
    save_safetensors(model.state_dict(), path)
    return model.eval()


def _assert_same_function(loaded: nn.Module, model: nn.Module) -> None:
    x = torch.rand(2, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    assert sparsity_report(loaded)["sparsity"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_pruned_state_dict_round_trips_through_safetensors(tmp_path, name):
    path = tmp_path / "model.safetensors"
    model = _saved_pruned_model(name, path)
    state_dict, fmt = load_state_dict_file(path)
    assert fmt == "safetensors"
    loaded = create_model(name, **ROUND_TRIP_CONFIGS[name])
    loaded.load_state_dict(state_dict, strict=True)
    _assert_same_function(loaded, model)


@pytest.mark.parametrize("name", NEW)
def test_pruned_checkpoint_loads_through_load_model(tmp_path, name):
    path = tmp_path / "model.safetensors"
    model = _saved_pruned_model(name, path)
    stored = json.loads(json.dumps({**default_config(name), **ROUND_TRIP_CONFIGS[name]}))
    _assert_same_function(load_model(name, stored, path), model)


# ------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("name", "config", "word"),
    [
        ("resnet20", {"shortcut": "C"}, "shortcut"),
        ("resnet20", {"base_width": 0}, "base_width"),
        ("resnet20", {"image_size": "32"}, "image_size"),
        ("resnet18", {"num_classes": 1.5}, "num_classes"),
        ("resnet18", {"shortcut": "A"}, "shortcut"),  # not a resnet18 key: named as unknown
        ("vit_small", {"patch_size": 5}, "patch_size"),
        ("vit_small", {"heads": 5}, "heads"),
        ("vit_small", {"mlp_ratio": 2.5}, "mlp_ratio"),
        ("vit_small", {"depth": True}, "depth"),
    ],
)
def test_bad_config_values_are_refused(name, config, word):
    with pytest.raises(ValueError, match=word):
        create_model(name, **config)
