"""The analyze job: evaluates the project's checkpoints on its dataset and compares their layers,
masks and neurons with the dense model's (or, given a pruned reference, with that one's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunescope.workers.analyses.pooling import CONV_POOLINGS
from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import CHECKPOINT_IDS, Param, one_of, positive_int
from prunescope.workers.jobspec import JobOutput, JobSpec, NewResult, ProgressFn
from prunescope.workers.text_arrays import pack_texts

if TYPE_CHECKING:
    from prunescope.workers.datasets import ClassificationData

# An evaluation of a text dataset also stores its test sentences, in the split's order, as
# `pack_texts(..., SENTENCES)` arrays (read back with `text_arrays.unpack_texts`).
SENTENCES = "sentences"

PARAMS: dict[str, Param] = {
    "batch_size": positive_int(256),
    "conv_pooling": one_of("mean", CONV_POOLINGS),
    # Wasserstein neurons cost one extra pass per checkpoint; registry models only.
    "neurons": Param(bool, True, "true or false"),
    "checkpoint_ids": CHECKPOINT_IDS,
    # Rows of the layer × layer matrices: a checkpoint other than the dense one gives a
    # "layer_comparison" result (the project's dense-referenced "evaluation" stays as it is).
    "reference_checkpoint_id": Param(int, None, "a checkpoint id of this project"),
}


def run_analyze(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.analyses.evaluation import evaluate_checkpoints
    from prunescope.workers.jobs.common import finite_or_none, project_dataset, scaled

    data = project_dataset(spec)
    reference_id = params["reference_checkpoint_id"]
    reference = next((c for c in spec.checkpoints if c.id == reference_id), None)
    comparison = reference is not None and reference.role != "dense"
    progress(0.0, f"evaluating {len(spec.checkpoints)} checkpoints on {data.name}")
    arrays = evaluate_checkpoints(
        spec.architecture,
        spec.architecture_config,
        spec.checkpoints,
        data,
        batch_size=params["batch_size"],
        conv_pooling=params["conv_pooling"],
        reference_id=reference_id,
        progress=scaled(progress, 0.0, 1.0 if comparison else 0.8),
    )
    scratch = Path(spec.scratch_dir)
    kind = "layer_comparison" if comparison else "evaluation"
    sentences = {}
    if not comparison and data.texts_test is not None:
        # The Attention page lists these to pick an attention_maps job's `sentence` (an index
        # into the same split) without loading the dataset, and torch, in the web process.
        sentences = pack_texts(data.texts_test, SENTENCES)
    np.savez(scratch / f"{kind}.npz", **arrays, **sentences)
    ids = [str(i) for i in arrays["checkpoint_ids"].tolist()]
    summary = {
        "accuracy": dict(zip(ids, finite_or_none(arrays["accuracy"]), strict=True)),
        "mean_cka": dict(zip(ids, arrays["cka"].mean(axis=1).tolist(), strict=True)),
        "layers": arrays["layers"].tolist(),
        "num_examples": int(arrays["labels"].shape[0]),
        "dataset": data.name,  # results stay attributable when the active dataset changes
        "reference_id": int(arrays["reference_id"]),
    }
    if sentences:
        # The dataset row (names are unique in a project and never change) whose sentences
        # the artifact holds: the page offers them only while that dataset is the active one,
        # the one an attention_maps job reads.
        summary["sentences_dataset"] = spec.dataset.name
    results = [NewResult(kind=kind, path=str(scratch / f"{kind}.npz"), summary=summary)]
    if not comparison:
        results += _masks_and_neurons(spec, data, params, scaled(progress, 0.8, 0.99))
    progress(1.0, "analysis written")
    return JobOutput(results=results, summary=summary)


def _masks_and_neurons(
    spec: JobSpec, data: ClassificationData, params: dict[str, Any], progress: ProgressFn
) -> list[NewResult]:
    """Mask overlap between the pruned checkpoints and, for registry models, Wasserstein
    neurons; each a result of its own (skipped where there is nothing to compare)."""
    # torch only in worker processes.
    from prunescope.models.sparsity import prunable_parameter_names
    from prunescope.workers.analyses.evaluation import evaluation_batches
    from prunescope.workers.analyses.layers import is_token_model
    from prunescope.workers.analyses.masks_and_neurons import mask_analysis, wasserstein_analysis
    from prunescope.workers.jobs.common import load_checkpoint_model, scaled

    dense_ref = next(c for c in spec.checkpoints if c.role == "dense")
    pruned_refs = [c for c in spec.checkpoints if c.role != "dense"]
    if not pruned_refs:
        return []
    dense = load_checkpoint_model(spec, dense_ref)
    pruned = {c.name: load_checkpoint_model(spec, c) for c in pruned_refs}
    results = []
    scratch = Path(spec.scratch_dir)
    progress(0.0, "comparing pruning masks")
    try:
        masks = mask_analysis(
            dense.state_dict(), {n: m.state_dict() for n, m in pruned.items()},
            prunable_parameter_names(dense), skip_shape_mismatch=True,
        )
    except ValueError:
        masks = None  # every layer changed shape: structurally pruned, no masks exist
    if masks is not None:
        np.savez(scratch / "masks.npz", **masks)
        results.append(NewResult(kind="masks", path=str(scratch / "masks.npz"), summary={
            "top_magnitude_overlap": dict(zip(
                [str(c.id) for c in pruned_refs],
                masks["top_magnitude_overlap_overall"].tolist(), strict=True)),
        }))
    if params["neurons"] and not is_token_model(dense):
        batches = evaluation_batches(dense, data, dense_ref, batch_size=params["batch_size"])
        comparable = [c for c in pruned_refs if not getattr(pruned[c.name],
                                                            "structural_changes", [])]
        if comparable:
            neurons = wasserstein_analysis(
                dense, {c.name: pruned[c.name] for c in comparable},
                [b.inputs for b in batches], progress=scaled(progress, 0.1, 1.0),
            )
            np.savez(scratch / "neurons.npz", **neurons)
            results.append(NewResult(kind="neurons", path=str(scratch / "neurons.npz"),
                                     summary={"layers": neurons["layers"].tolist()}))
    return results


KIND = JobDeclaration(
    name="analyze",
    position=30,
    params=PARAMS,
    handler=run_analyze,
    writes=("evaluation", "layer_comparison", "masks", "neurons"),
    checkpoint_params=("checkpoint_ids", "reference_checkpoint_id"),
    gpus=0.5,
)
