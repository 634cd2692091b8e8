"""Iterative magnitude pruning with rewinding: one round replayed by hand, nested masks on the
exponential schedule, and the prune job that runs it."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

from prunescope.models.checkpoints import save_safetensors
from prunescope.models.registry import default_config
from prunescope.models.sparsity import prunable_modules, sparsity_report
from prunescope.workers.datasets import ClassificationData, load_dataset
from prunescope.workers.imp import imp_rewind, round_sparsities
from prunescope.workers.jobspec import CheckpointRef, DatasetRef, JobInputError, JobSpec
from prunescope.workers.runner import run_job
from prunescope.workers.training import init_model, train_classifier

DIGITS = DatasetRef(name="digits", source="builtin", builtin_name="digits")
CONFIG = default_config("cnn_small")


@pytest.fixture(scope="module")
def digits() -> ClassificationData:
    return load_dataset(DIGITS)


@pytest.fixture(scope="module")
def small(digits) -> ClassificationData:
    """300 training and 100 test digits: enough to train a few epochs, quick to do so."""
    return dataclasses.replace(digits, x_train=digits.x_train[:300], y_train=digits.y_train[:300],
                               x_test=digits.x_test[:100], y_test=digits.y_test[:100])


def test_round_sparsities_follow_the_exponential_schedule():
    assert round_sparsities(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    assert round_sparsities(0.6, 1) == [pytest.approx(0.6)]


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_one_round_equals_train_prune_rewind_retrain_by_hand(small, rewind_epoch):
    model = init_model("cnn_small", CONFIG, seed=0)
    reference = copy.deepcopy(model)
    imp_rewind(model, small, 0.6, rounds=1, epochs_per_round=2, rewind_epoch=rewind_epoch,
               seed=5)

    # By hand: train T = 2 epochs, keeping the state after k epochs (k = 0: the start) …
    snapshots = {0: copy.deepcopy(reference.state_dict())}

    def keep(fraction: float, message: str) -> None:
        snapshots[round(fraction * 2)] = copy.deepcopy(reference.state_dict())

    train_classifier(reference, small, epochs=2, seed=5, progress=keep)
    # … prune 60 % by global magnitude with torch.nn.utils.prune itself …
    layers = [m for _, m in prunable_modules(reference)]
    prune.global_unstructured([(m, "weight") for m in layers], prune.L1Unstructured, amount=0.6)
    masks = [m.weight_mask.clone() for m in layers]
    for m in layers:
        prune.remove(m, "weight")
    # … rewind everything to epoch k, keep the mask, retrain T − k epochs (seed + round).
    reference.load_state_dict(snapshots[rewind_epoch])
    for m, mask in zip(layers, masks, strict=True):
        prune.custom_from_mask(m, "weight", mask)
    train_classifier(reference, small, epochs=2 - rewind_epoch, seed=6)
    for m in layers:
        prune.remove(m, "weight")

    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)  # plain weights, no _orig/_mask left
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)


def test_masks_shrink_round_by_round_to_the_exact_target(small):
    model = init_model("cnn_small", CONFIG, seed=1)
    layers = [m for _, m in prunable_modules(model)]
    masks_by_round: dict[str, list[torch.Tensor]] = {}

    def watch(fraction: float, message: str) -> None:
        if message.startswith("round"):
            masks_by_round[message.split(" at ")[0]] = [m.weight_mask.clone() for m in layers]

    history = imp_rewind(model, small, 0.8, rounds=3, epochs_per_round=2, rewind_epoch=1,
                         progress=watch)
    total = sum(m.weight.numel() for m in layers)
    rounds = [masks_by_round[f"round {r}/3"] for r in (1, 2, 3)]
    for target, masks in zip(round_sparsities(0.8, 3), rounds, strict=True):
        pruned = sum(int((mask == 0).sum()) for mask in masks)
        assert abs(pruned - target * total) <= 1  # each round ends on its schedule
    for earlier, later in zip(rounds, rounds[1:], strict=False):
        assert all(bool((b <= a).all()) for a, b in zip(earlier, later, strict=True))  # nested
    assert all(torch.equal(m.weight != 0, mask.bool()) for m, mask in zip(layers, rounds[-1],
                                                                          strict=True))
    assert history["round_sparsity"] == pytest.approx(round_sparsities(0.8, 3))
    assert len(history["round_test_accuracy"]) == 3
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.8, abs=1 / total)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"rewind_epoch": 2, "epochs_per_round": 2}, "rewind_epoch"), ({"rounds": 0}, "rounds"),
     ({"epochs_per_round": True}, "epochs_per_round")],
)
def test_bad_schedules_are_refused(small, kwargs, word):
    with pytest.raises(ValueError, match=word):
        imp_rewind(init_model("cnn_small", CONFIG, seed=0), small, 0.5, **kwargs)


def _job(tmp_path: Path, params: dict, dense: CheckpointRef) -> JobSpec:
    scratch = tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}"
    scratch.mkdir()
    return JobSpec(job_id=1, kind="prune", params=params, architecture="cnn_small",
                   architecture_config=CONFIG, dataset=DIGITS, checkpoints=[dense],
                   scratch_dir=str(scratch))


def test_an_imp_rewind_prune_job_trains_and_reaches_the_target(tmp_path):
    path = tmp_path / "dense.safetensors"
    save_safetensors(init_model("cnn_small", CONFIG, seed=0).state_dict(), path)
    dense = CheckpointRef(1, "dense", "dense", "dense", None, str(path))
    fractions: list[float] = []
    params = {"method": "imp_rewind", "sparsity": 0.7}  # defaults: 3 rounds, 2 + 3 × 1 epochs
    output = run_job(_job(tmp_path, params, dense), lambda f, m: fractions.append(f))
    [ckpt] = output.checkpoints
    assert (ckpt.method, ckpt.name, ckpt.target_sparsity) == ("imp_rewind", "imp_rewind-70", 0.7)
    assert abs(ckpt.stats["sparsity"] - 0.7) <= 1 / ckpt.stats["num_params"]
    history = output.summary["imp_history"]
    assert history["round_sparsity"] == pytest.approx(round_sparsities(0.7, 3))
    assert history["round_test_accuracy"][-1] > 0.5  # the retrained ticket learned (chance 0.1)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    for bad, word in [({"rewind_epoch": 2, "epochs_per_round": 2}, "rewind_epoch"),
                      ({"method": "magnitude_global", "rounds": 2}, "do not apply")]:
        with pytest.raises(JobInputError, match=word):
            run_job(_job(tmp_path, {**params, **bad}, dense), lambda f, m: None)
