"""The attention_maps job: every head's attention over one evaluation sentence, for the dense
Transformer and its pruned checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import CHECKPOINT_IDS, Param
from prunescope.workers.jobspec import JobInputError, JobOutput, JobSpec, NewResult, ProgressFn

PARAMS: dict[str, Param] = {
    # Position in the evaluation (test) split's sentences: the order the analyze job stores
    # them in for the Attention page's picker (`analyze.SENTENCES`).
    "sentence": Param(int, 0, "an integer from 0 to 10,000,000",
                      lambda v: 0 <= v <= 10_000_000),
    "max_tokens": Param(int, 64, "an integer from 4 to 512", lambda v: 4 <= v <= 512),
    "checkpoint_ids": CHECKPOINT_IDS,
}


def run_attention_maps(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.analyses.attention_maps import attention_maps
    from prunescope.workers.analyses.evaluation import dense_checkpoint, tokenizer_of
    from prunescope.workers.jobs.common import scaled, text_dataset, token_models

    data = text_dataset(spec, "attention maps")
    sentence, count = params["sentence"], len(data.texts_test)
    if sentence >= count:
        raise JobInputError(f"params.sentence {sentence} is out of range: the evaluation split "
                            f"of {data.name!r} has {count} sentences; choose 0–{count - 1}")
    dense = dense_checkpoint(spec.checkpoints)
    refs = [dense, *[c for c in spec.checkpoints if c.id != dense.id]]
    models = token_models(spec, refs, "attention maps", scaled(progress, 0.0, 0.6))
    try:
        arrays = attention_maps(models, [c.name for c in refs], tokenizer_of(dense),
                                str(data.texts_test[sentence]), max_tokens=params["max_tokens"],
                                progress=scaled(progress, 0.6, 0.99))
    except ValueError as exc:
        raise JobInputError(f"attention maps of sentence {sentence}: {exc}") from exc
    arrays["checkpoint_ids"] = np.array([c.id for c in refs], dtype=np.int64)
    arrays["sentence"] = np.array(sentence, dtype=np.int64)
    path = Path(spec.scratch_dir) / "attention_maps.npz"
    np.savez_compressed(path, **arrays)
    summary = {"dataset": data.name, "sentence": sentence,
               "tokens": int(arrays["tokens"].shape[0]),
               "checkpoint_ids": arrays["checkpoint_ids"].tolist()}
    progress(1.0, "attention maps written")
    return JobOutput(results=[NewResult(kind="attention_maps", path=str(path), summary=summary)],
                     summary=summary)


KIND = JobDeclaration(
    name="attention_maps",
    position=60,
    params=PARAMS,
    handler=run_attention_maps,
    writes=("attention_maps",),
    checkpoint_params=("checkpoint_ids",),
    gpus=0.25,
)
