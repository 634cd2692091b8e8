"""The probe job: linear probes of linguistic properties on every layer of Transformer
checkpoints, to show which properties pruning erases where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import CHECKPOINT_IDS, SEED, Param
from prunescope.workers.jobspec import JobInputError, JobOutput, JobSpec, NewResult, ProgressFn

PARAMS: dict[str, Param] = {
    "max_examples": Param(int, 400, "an integer from 20 to 1,000,000",
                          lambda v: 20 <= v <= 1_000_000),
    "tasks": Param(list, None, "a list of probing task names"),
    "seed": SEED,
    "checkpoint_ids": CHECKPOINT_IDS,
}


def run_probe(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch and sklearn only in worker processes; the server imports this declaration.
    from prunescope.workers.analyses.evaluation import dense_checkpoint, tokenizer_of
    from prunescope.workers.analyses.probing import probe_checkpoints
    from prunescope.workers.analyses.probing_tasks import PROBING_TASKS
    from prunescope.workers.jobs.common import scaled, text_dataset, token_models

    data = text_dataset(spec, "linear probes")
    dense = dense_checkpoint(spec.checkpoints)
    models = token_models(spec, list(spec.checkpoints), "linear probes")
    texts = [*data.texts_train.tolist(), *data.texts_test.tolist()]
    try:
        arrays = probe_checkpoints(
            models, [c.name for c in spec.checkpoints], tokenizer_of(dense), texts,
            tasks=params["tasks"] or tuple(PROBING_TASKS), max_examples=params["max_examples"],
            seed=params["seed"], progress=scaled(progress, 0.0, 0.99),
        )
    except ValueError as exc:
        raise JobInputError(f"the probing tasks cannot be built from {data.name!r}: {exc}") \
            from exc
    arrays["checkpoint_ids"] = np.array([c.id for c in spec.checkpoints], dtype=np.int64)
    path = Path(spec.scratch_dir) / "probing.npz"
    np.savez(path, **arrays)
    summary = {"dataset": data.name, "tasks": arrays["tasks"].tolist(),
               "examples": arrays["examples"].tolist(),
               "checkpoint_ids": arrays["checkpoint_ids"].tolist()}
    progress(1.0, "probes written")
    return JobOutput(results=[NewResult(kind="probing", path=str(path), summary=summary)],
                     summary=summary)


KIND = JobDeclaration(
    name="probe",
    position=50,
    params=PARAMS,
    handler=run_probe,
    writes=("probing",),
    checkpoint_params=("checkpoint_ids",),
)
