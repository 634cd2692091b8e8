"""The job runner end to end (train → prune → analyze) and the errors a job's inputs can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from prunescope.models.registry import default_config
from prunescope.workers.jobspec import (
    CheckpointRef,
    DatasetRef,
    JobCancelled,
    JobInputError,
    JobOutput,
    JobSpec,
)
from prunescope.workers.runner import run_job

DIGITS = DatasetRef(name="digits", source="builtin", builtin_name="digits")
ARCH = "cnn_small"


def _spec(tmp_path: Path, kind: str, params: dict | None = None,
          checkpoints: list[CheckpointRef] = (), **overrides) -> JobSpec:
    scratch = tmp_path / f"scratch-{kind}-{len(list(tmp_path.iterdir()))}"
    scratch.mkdir()
    fields = {
        "job_id": 1, "kind": kind, "params": params or {}, "architecture": ARCH,
        "architecture_config": default_config(ARCH), "dataset": DIGITS,
        "checkpoints": list(checkpoints), "scratch_dir": str(scratch),
    }
    return JobSpec(**{**fields, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    def __call__(self, fraction: float, message: str) -> None:
        assert isinstance(message, str) and message
        self.fractions.append(fraction)

    def check(self) -> None:
        assert self.fractions == sorted(self.fractions)
        assert 0.0 <= self.fractions[0] and self.fractions[-1] == 1.0


def _ref(ident: int, output: JobOutput) -> CheckpointRef:
    c = output.checkpoints[0]
    return CheckpointRef(ident, c.name, c.role, c.method, c.target_sparsity, c.path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[CheckpointRef, JobOutput]:
    progress = Recorder()
    tmp = tmp_path_factory.mktemp("train")
    output = run_job(_spec(tmp, "train", {"epochs": 8, "seed": 0}), progress)
    progress.check()
    return _ref(1, output), output


def test_train_writes_a_dense_safetensors_checkpoint(trained):
    dense, output = trained
    [ckpt] = output.checkpoints
    assert (ckpt.name, ckpt.role) == ("dense", "dense")
    assert Path(ckpt.path).is_file()
    assert set(load_file(ckpt.path)) == set(ckpt.stats["layers"]) | {
        "conv1.0.bias", "conv2.0.bias", "fc.1.bias", "classifier.bias"
    }
    assert ckpt.stats["sparsity"] == 0.0
    assert output.summary["test_accuracy"] > 0.9
    assert len(output.summary["history"]["test_accuracy"]) == 8


def test_train_prune_analyze_end_to_end(trained, tmp_path):
    dense, _ = trained
    refs = [dense]
    for ident, (method, sparsity) in enumerate(
        [("magnitude_global", 0.5), ("random", 0.5), ("random", 0.9)], start=2
    ):
        progress = Recorder()
        output = run_job(
            _spec(tmp_path, "prune", {"method": method, "sparsity": sparsity}, [dense]), progress
        )
        progress.check()
        [ckpt] = output.checkpoints
        assert ckpt.name == f"{method}-{round(sparsity * 100)}"
        assert (ckpt.role, ckpt.method, ckpt.target_sparsity, ckpt.parent_id) == (
            "pruned", method, sparsity, dense.id
        )
        num_params = ckpt.stats["num_params"]
        assert abs(ckpt.stats["sparsity"] - sparsity) <= 1 / num_params
        refs.append(_ref(ident, output))

    progress = Recorder()
    output = run_job(_spec(tmp_path, "analyze", {}, refs), progress)
    progress.check()
    result, masks, neurons = output.results
    assert (result.kind, masks.kind, neurons.kind) == ("evaluation", "masks", "neurons")
    with np.load(masks.path, allow_pickle=False) as npz:
        # magnitude_global keeps the dense model's largest weights by construction.
        assert npz["top_magnitude_overlap_global"][0] == 1.0
        assert npz["iou_kept_overall"].shape == (3, 3)
    with np.load(neurons.path, allow_pickle=False) as npz:
        assert npz["layers"].tolist() == ["conv1.0", "conv2.0", "fc.1", "classifier"]
    with np.load(result.path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert arrays["layers"].tolist() == ["conv1", "conv2", "fc", "classifier"]
    assert not any(k.startswith("sentences") for k in arrays)  # images: no sentences to store
    assert arrays["checkpoint_names"].tolist() == [
        "dense", "magnitude_global-50", "random-50", "random-90"
    ]
    cka = arrays["cka"]
    accuracy = dict(zip(arrays["checkpoint_names"], arrays["accuracy"], strict=True))
    np.testing.assert_allclose(cka[0], 1.0, atol=1e-12)
    assert np.all((cka >= 0) & (cka <= 1 + 1e-9))
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert accuracy["magnitude_global-50"] > accuracy["random-90"]
    assert arrays["predictions"].shape == (4, 450) and arrays["labels"].shape == (450,)

    summary = result.summary
    assert set(summary) == {"accuracy", "mean_cka", "layers", "num_examples", "dataset",
                            "reference_id"}
    assert summary["dataset"] == "digits"
    assert summary["reference_id"] == refs[0].id == int(arrays["reference_id"])
    assert summary["accuracy"]["1"] == pytest.approx(accuracy["dense"])
    assert summary["mean_cka"] == {
        str(r.id): pytest.approx(float(row.mean())) for r, row in zip(refs, cka, strict=True)
    }
    assert summary["num_examples"] == 450

    # Layer × layer between two pruned checkpoints: rows are the given reference's layers, a
    # result of its own kind; the dense-referenced evaluation is not replaced.
    pair = [refs[3], refs[1]]
    output = run_job(_spec(tmp_path, "analyze", {"reference_checkpoint_id": refs[3].id,
                                                 "neurons": False}, pair), lambda f, m: None)
    assert [r.kind for r in output.results] == ["layer_comparison"]
    with np.load(output.results[0].path, allow_pickle=False) as npz:
        assert int(npz["reference_id"]) == refs[3].id
        assert npz["checkpoint_ids"].tolist() == [refs[3].id, refs[1].id]
        np.testing.assert_allclose(npz["cka"][0], 1.0, atol=1e-12)
        versus = npz["cka_layers"][1]
    # CKA is symmetric: the matrix from the other side is its transpose.
    output = run_job(_spec(tmp_path, "analyze", {"reference_checkpoint_id": refs[1].id,
                                                 "neurons": False}, pair), lambda f, m: None)
    with np.load(output.results[0].path, allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["cka_layers"][0], versus.T, atol=1e-9)
    with pytest.raises(JobInputError, match="include it in checkpoint_ids"):
        run_job(_spec(tmp_path, "analyze", {"reference_checkpoint_id": 999}, pair),
                lambda f, m: None)


def test_random_pruning_job_is_reproducible_per_seed(trained, tmp_path):
    dense, _ = trained

    def weights(seed: int) -> dict:
        params = {"method": "random", "sparsity": 0.3, "seed": seed}
        output = run_job(_spec(tmp_path, "prune", params, [dense]), lambda f, m: None)
        return load_file(output.checkpoints[0].path)

    first, again, other = weights(1), weights(1), weights(2)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_cancellation_from_progress_propagates(tmp_path):
    def cancel(fraction: float, message: str) -> None:
        if fraction > 0:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        run_job(_spec(tmp_path, "train", {"epochs": 100}), cancel)


@pytest.mark.parametrize(
    ("kind", "params", "word"),
    [
        ("explode", {}, "train, prune, analyze, geometry, probe"),
        ("probe", {"max_examples": 5}, "params.max_examples"),
        ("geometry", {"projection": "tsne"}, "params.projection must be one of umap, pca"),
        ("train", {"epochs": 0}, "params.epochs must be an integer from 1 to 10,000"),
        ("train", {"epochs": True}, "params.epochs"),
        ("train", {"lr": -1}, "params.lr"),
        ("train", {"epoch": 3}, "'epoch'"),
        ("train", {"name": "  "}, "params.name"),
        ("prune", {"sparsity": 0.5}, "params.method is required"),
        ("prune", {"method": "astrology", "sparsity": 0.5}, "magnitude_layerwise, random"),
        ("prune", {"method": "random", "sparsity": 1.5}, "params.sparsity"),
        ("prune", {"method": "random", "sparsity": 0}, "params.sparsity"),
        ("prune", {"method": "random", "sparsity": "0.5"}, "params.sparsity"),
        ("analyze", {"batch_size": -3}, "params.batch_size"),
        ("analyze", {"neurons": 1}, "params.neurons must be true or false"),
        ("analyze", {"reference_checkpoint_id": "dense"}, "params.reference_checkpoint_id"),
    ],
)
def test_bad_parameters_are_named(tmp_path, kind, params, word):
    with pytest.raises(JobInputError, match=word):
        run_job(_spec(tmp_path, kind, params), lambda f, m: None)


def test_jobs_need_the_right_inputs(trained, tmp_path):
    dense, output = trained
    pruned = CheckpointRef(5, "p", "pruned", "random", 0.5, dense.path)
    cases = [
        (_spec(tmp_path, "prune", {"method": "random", "sparsity": 0.5}), "exactly one dense"),
        (_spec(tmp_path, "prune", {"method": "random", "sparsity": 0.5}, [pruned]), "dense"),
        (_spec(tmp_path, "analyze", {}, [pruned]), "exactly one dense"),
        (_spec(tmp_path, "analyze", {}, [dense], dataset=None), "needs a dataset"),
        (_spec(tmp_path, "train", {}, architecture_config={"wings": 2}), "wings"),
        (_spec(tmp_path, "analyze", {}, [dense], architecture="mlp",
               architecture_config=default_config("mlp")), "missing keys"),
    ]
    for spec, word in cases:
        with pytest.raises(JobInputError, match=word):
            run_job(spec, lambda f, m: None)
