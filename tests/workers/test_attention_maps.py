"""One sentence's attention maps in every checkpoint, on the real MiniLM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from prunescope.models.pruning import PRUNING_METHODS
from prunescope.workers.analyses.attention_maps import attention_maps
from tests.real_models import real_minilm

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    dense, tokenizer = real_minilm()
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.7, seed=0)
    return [dense.eval(), pruned.eval()], tokenizer


def test_maps_are_the_models_own_attentions_with_js_per_head_over_real_queries(pair):
    models, tokenizer = pair
    out = attention_maps(models, ["dense", "m70"], tokenizer, SENTENCE)
    enc = tokenizer(SENTENCE, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert out["tokens"].tolist() == tokens and str(out["text"]) == SENTENCE
    assert not bool(out["truncated"])
    t = len(tokens)
    assert out["attention"].shape == (2, 6, 12, t, t) and out["attention"].dtype == np.float16
    with torch.inference_mode():
        own = models[1](**enc, output_attentions=True).attentions
    np.testing.assert_allclose(out["attention"][1, 3], own[3][0].numpy(), atol=1e-3)
    np.testing.assert_allclose(out["attention"].astype(np.float64).sum(-1), 1.0, atol=1e-2)
    # head_js: scipy's JS distance squared, averaged over the non-special query rows.
    with torch.inference_mode():
        own_dense = models[0](**enc, output_attentions=True).attentions
    layer, head = 2, 5
    dense, pruned = own_dense[layer][0, head].double().numpy(), own[layer][0, head].double().numpy()
    rows = range(1, t - 1)  # [CLS] and [SEP] are not queries
    expected = np.mean([jensenshannon(dense[i], pruned[i], base=2) ** 2 for i in rows])
    assert out["head_js"][1, layer, head] == pytest.approx(expected, abs=1e-6)
    assert np.all(out["head_js"][0] == 0.0) and out["head_js"][1].max() > 0.01


def test_long_sentences_are_cut_and_bad_input_is_refused(pair):
    models, tokenizer = pair
    long = " ".join(["word"] * 200)
    out = attention_maps(models[:1], ["dense"], tokenizer, long, max_tokens=16)
    assert out["attention"].shape[-1] == 16 and bool(out["truncated"])
    assert out["tokens"][-1] == "[SEP]"
    with pytest.raises(ValueError, match="empty"):
        attention_maps(models, ["dense", "m70"], tokenizer, "   ")
    with pytest.raises(ValueError, match="max_tokens"):
        attention_maps(models, ["dense", "m70"], tokenizer, SENTENCE, max_tokens=2)


def test_the_attention_maps_job_reads_one_sentence_of_the_evaluation_split(tmp_path):
    from prunescope.workers.datasets import load_builtin
    from prunescope.workers.jobspec import DatasetRef, JobInputError, JobSpec
    from prunescope.workers.runner import run_job
    from tests.real_models import tiny_bert_checkpoints
    from tests.workers.test_runner import _spec

    config, refs = tiny_bert_checkpoints(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sentences = DatasetRef(name="english_sentences", source="builtin",
                           builtin_name="english_sentences")

    def spec(params: dict) -> JobSpec:
        return JobSpec(job_id=1, kind="attention_maps", params=params,
                       architecture="huggingface", architecture_config=config,
                       dataset=sentences, checkpoints=refs[::-1], scratch_dir=str(scratch))

    output = run_job(spec({"sentence": 3, "max_tokens": 12}), lambda f, m: None)
    [result] = output.results
    assert result.kind == "attention_maps" and output.summary["sentence"] == 3
    texts = load_builtin("english_sentences").texts_test
    with np.load(result.path, allow_pickle=False) as npz:
        assert str(npz["text"]) == texts[3]
        assert npz["checkpoint_ids"].tolist() == [1, 2]  # the dense model first
        assert npz["attention"].shape == (2, 1, 2, *[npz["tokens"].shape[0]] * 2)
        assert npz["tokens"].shape[0] <= 12 and np.all(npz["head_js"][0] == 0)
    with pytest.raises(JobInputError, match=f"choose 0–{len(texts) - 1}"):
        run_job(spec({"sentence": len(texts)}), lambda f, m: None)
    with pytest.raises(JobInputError, match="has no text"):
        run_job(_spec(tmp_path, "attention_maps", {}), lambda f, m: None)
