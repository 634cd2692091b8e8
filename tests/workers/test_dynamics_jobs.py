"""Recorded training runs and the dynamics analysis as jobs, on the real digits."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.models.registry import default_config
from prunescope.workers.analyses.dynamics_training import ProbeSuites, read_dynamics
from prunescope.workers.datasets import load_builtin
from prunescope.workers.jobs.train_dynamics import default_probe_size
from prunescope.workers.jobspec import CheckpointRef, JobInputError, ResultRef
from prunescope.workers.runner import run_job
from tests.workers.test_runner import ARCH, Recorder, _spec

EPOCHS = 6


def _results(outputs: list) -> list[ResultRef]:
    refs, ident = [], 0
    for output in outputs:
        for r in output.results:
            ident += 1
            refs.append(ResultRef(ident, r.kind, r.path, r.summary))
    return refs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    outputs = []
    for mode, sparsity in (("dense", 0.0), ("gmp", 0.8)):
        for seed in (0, 1):
            progress = Recorder()
            outputs.append(run_job(_spec(tmp, "train_dynamics", {
                "mode": mode, "sparsity": sparsity, "seed": seed, "epochs": EPOCHS}), progress))
            progress.check()
    return tmp, outputs


def test_a_run_records_every_training_example_every_epoch_and_its_suites(runs):
    _, outputs = runs
    digits = load_builtin("digits")
    n = len(digits.y_train)
    first = outputs[0]
    assert [r.kind for r in first.results] == ["dynamics_run", "dynamics_meta", "run_weights"]
    assert first.summary["run"] == "dense-s0" and outputs[3].summary["run"] == "gmp80-s1"
    trajectories = read_dynamics(first.results[0].path)
    assert trajectories["loss"].shape == (EPOCHS, n)
    assert trajectories["example"].tolist() == list(range(n))
    with np.load(first.results[1].path, allow_pickle=False) as meta:
        suites = ProbeSuites.from_arrays(meta)
        size = default_probe_size(n)
        assert np.bincount(suites.suite[suites.suite >= 0]).tolist() == [size] * 4
        flipped = suites.suite == suites.categories.index("mislabeled")
        assert np.all(meta["train_labels"][flipped] != suites.original_labels[flipped])
        assert np.array_equal(meta["train_labels"][~flipped], digits.y_train[~flipped])
        assert meta["test_predictions"].shape == digits.y_test.shape
    # Every run plants the same suites; the GMP run ends at its sparsity.
    with np.load(outputs[3].results[1].path, allow_pickle=False) as other:
        assert np.array_equal(other["probe_suite"], suites.suite)
    assert outputs[3].summary["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert outputs[0].summary["measured_sparsity"] == 0.0


def test_the_dynamics_job_analyses_the_populations(runs):
    tmp, outputs = runs
    progress = Recorder()
    output = run_job(_spec(tmp, "dynamics", {}, results=_results(outputs)), progress)
    progress.check()
    [result] = output.results
    assert result.kind == "dynamics" and output.summary["runs"] == [
        "dense-s0", "dense-s1", "gmp80-s0", "gmp80-s1"]
    digits = load_builtin("digits")
    with np.load(result.path, allow_pickle=False) as npz:
        assert npz["population_names"].tolist() == ["gmp 80%"]
        assert npz["loss"].shape == (4, len(digits.y_train), EPOCHS)
        assert npz["train_thumbnails"].shape == (len(digits.y_train), 8, 8)
        assert npz["test_thumbnails"].shape == (len(digits.y_test), 8, 8)
        assert npz["pie"].shape == (1, len(digits.y_test))
        # A PIE is where the populations' modal test predictions differ (2 + 2 members).
        dense, pruned = npz["test_predictions"][:2], npz["test_predictions"][2:]
        assert npz["pie"][0].sum() > 0
        assert np.all((dense[0] == dense[1]) & (pruned[0] == pruned[1]) & (dense[0] !=
                      pruned[0]) <= npz["pie"][0])
        assert output.summary["pie_fraction"]["gmp 80%"] == pytest.approx(npz["pie"].mean())


def test_the_jobs_refuse_what_they_cannot_use(runs, tmp_path):
    tmp, outputs = runs
    with pytest.raises(JobInputError, match="no recorded training runs"):
        run_job(_spec(tmp_path, "dynamics", {}), lambda f, m: None)
    with pytest.raises(JobInputError, match="final sparsity"):
        run_job(_spec(tmp_path, "train_dynamics", {"mode": "gmp"}), lambda f, m: None)
    with pytest.raises(JobInputError, match="checkpoint_ids"):
        run_job(_spec(tmp_path, "train_dynamics", {"mode": "finetune"}), lambda f, m: None)
    other = run_job(_spec(tmp_path, "train_dynamics", {"epochs": EPOCHS, "seed": 5,
                                                       "probe_seed": 3}), lambda f, m: None)
    with pytest.raises(JobInputError, match="different probe suites"):
        run_job(_spec(tmp_path, "dynamics", {}, results=_results([*outputs, other])),
                lambda f, m: None)
    sentences = _spec(tmp_path, "train_dynamics", {}, architecture="huggingface",
                      architecture_config={})
    with pytest.raises(JobInputError):
        run_job(sentences, lambda f, m: None)


def test_a_run_can_plant_a_fifth_suite_of_random_inputs(tmp_path):
    output = run_job(_spec(tmp_path, "train_dynamics", {"epochs": 1, "random_inputs": True}),
                     lambda f, m: None)
    with np.load(output.results[1].path, allow_pickle=False) as meta:
        suites = ProbeSuites.from_arrays(meta)
    assert suites.categories[-1] == "random_inputs"
    assert (suites.suite == len(suites.categories) - 1).sum() == default_probe_size(
        len(load_builtin("digits").y_train))


def test_a_pruned_checkpoint_fine_tunes_with_its_zeros_kept(runs, tmp_path):
    from prunescope.models.checkpoints import save_safetensors
    from prunescope.models.pruning import PRUNING_METHODS
    from prunescope.workers.training import init_model

    model = init_model(ARCH, default_config(ARCH), 0)
    PRUNING_METHODS["magnitude_global"](model, 0.7)
    path = tmp_path / "pruned.safetensors"
    save_safetensors(model.state_dict(), path)
    ref = CheckpointRef(7, "mag-70", "pruned", "magnitude_global", 0.7, str(path))
    output = run_job(_spec(tmp_path, "train_dynamics", {
        "mode": "finetune", "checkpoint_ids": [7], "epochs": 2}, checkpoints=[ref]),
        lambda f, m: None)
    assert output.summary["run"] == "finetune70-s0"
    assert output.summary["measured_sparsity"] == pytest.approx(0.7, abs=1e-3)
