"""Linear probes per layer on the real MiniLM, and the probe itself on known data."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from prunescope.workers.analyses.probing import probe_accuracy, probe_checkpoints
from prunescope.workers.datasets import load_builtin
from prunescope.workers.jobspec import JobInputError


def test_a_probe_finds_a_linear_signal_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    separable = (x[:, 3] > 0).astype(np.int64)
    train, test = np.arange(300), np.arange(300, 400)
    assert probe_accuracy(x, separable, train, test) > 0.95
    noise = rng.integers(0, 2, 400)
    assert abs(probe_accuracy(x, noise, train, test) - 0.5) < 0.15
    assert np.isnan(probe_accuracy(x, np.zeros(400, dtype=np.int64), train, test))


def test_minilm_layers_encode_sentence_length_above_the_majority_baseline() -> None:
    from prunescope.models.pruning import PRUNING_METHODS
    from tests.real_models import real_minilm

    dense, tokenizer = real_minilm()
    pruned = copy.deepcopy(dense)
    PRUNING_METHODS["magnitude_global"](pruned, 0.5)
    data = load_builtin("english_sentences")
    texts = [*data.texts_train.tolist(), *data.texts_test.tolist()]
    out = probe_checkpoints([dense, pruned], ["dense", "mag-50"], tokenizer, texts,
                            tasks=("sentence_length", "bigram_shift"), max_examples=240)
    assert out["accuracy"].shape == (2, 2, 7)
    assert out["layers"].tolist()[:2] == ["embeddings", "block 1"]
    assert out["examples"].tolist() == [240, 240]
    assert out["majority"][1] == pytest.approx(0.5, abs=0.05)  # balanced binary task
    # Six length bins: the majority is about 1/6; mean-pooled MiniLM layers read length.
    assert out["majority"][0] < 0.3
    assert out["accuracy"][0, 0].max() > out["majority"][0] + 0.15
    assert np.all((out["accuracy"] >= 0) & (out["accuracy"] <= 1))
    with pytest.raises(ValueError, match="unknown probing task"):
        probe_checkpoints([dense], ["dense"], tokenizer, texts, tasks=("parsing",))


def test_the_probe_job_refuses_a_dataset_without_text(tmp_path) -> None:  # noqa: ANN001
    from prunescope.workers.runner import run_job
    from tests.workers.test_runner import _spec

    with pytest.raises(JobInputError, match="has no text"):
        run_job(_spec(tmp_path, "probe", {}), lambda f, m: None)


def test_the_probe_job_reads_a_transformer_project_with_its_tokenizer(tmp_path) -> None:  # noqa: ANN001
    from prunescope.workers.jobspec import DatasetRef, JobSpec
    from prunescope.workers.runner import run_job
    from tests.real_models import tiny_bert_checkpoints

    config, refs = tiny_bert_checkpoints(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spec = JobSpec(job_id=1, kind="probe",
                   params={"tasks": ["sentence_length"], "max_examples": 60},
                   architecture="huggingface", architecture_config=config,
                   dataset=DatasetRef(name="english_sentences", source="builtin",
                                      builtin_name="english_sentences"),
                   checkpoints=refs, scratch_dir=str(scratch))
    output = run_job(spec, lambda f, m: None)
    [result] = output.results
    assert result.kind == "probing" and output.summary["tasks"] == ["sentence_length"]
    with np.load(result.path, allow_pickle=False) as npz:
        assert npz["accuracy"].shape == (2, 1, 2)  # embeddings and the one block
        assert npz["checkpoint_ids"].tolist() == [1, 2]
        assert npz["examples"].tolist() == [60]
