"""Training dynamics: upload a run recorded by one's own training loop (multipart)."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from prunescope.server.access import require_project
from prunescope.server.api.deps import ACCEPTED, IdPath, SettingsDep, WaitDep, ingest_answer
from prunescope.server.config import Settings
from prunescope.server.schemas import MAX_ID, MAX_NAME_CHARS, JobPublic, ResultPublic
from prunescope.server.services import dynamics_runs
from prunescope.server.storage import CHUNK_BYTES

router = APIRouter(tags=["dynamics"])


class DynamicsRunPublic(BaseModel):
    run: str
    summary: dict[str, Any]
    results: list[ResultPublic]


def _chunks(file: UploadFile):  # noqa: ANN202
    file.file.seek(0)
    while chunk := file.file.read(CHUNK_BYTES):
        yield chunk


def _add(project_id: int, uploads: dict[str, UploadFile], fields: dict[str, Any],
         settings: Settings) -> JobPublic:
    require_project(project_id, "edit", settings)  # before a byte is written
    staged = {}
    try:
        for what, file in uploads.items():
            staged[what] = dynamics_runs.stage_upload(
                _chunks(file), file.filename or what, what.replace("_", " "), settings)
        return dynamics_runs.add_dynamics_run(project_id, **staged, **fields,
                                                settings=settings)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


@router.post(
    "/projects/{project_id}/dynamics",
    response_model=DynamicsRunPublic,
    status_code=status.HTTP_201_CREATED,
    responses=ACCEPTED,
)
async def upload_dynamics_run(
    project_id: IdPath,
    settings: SettingsDep,
    trajectories: Annotated[UploadFile, File(
        description="CSV or Parquet: example, epoch, loss, prediction, p_gold [, margin]")],
    probes: Annotated[UploadFile, File(
        description="CSV or Parquet: example, suite [, reference] [, label]")],
    test_predictions: Annotated[UploadFile, File(
        description="CSV or Parquet: example, prediction (every test example)")],
    run: Annotated[str, Form(max_length=MAX_NAME_CHARS,
                             description="the run's name, unique in the project")],
    mode: Annotated[str, Form(max_length=MAX_NAME_CHARS, description="dense, gmp or finetune")],
    sparsity: Annotated[float, Form(description="final sparsity in [0, 1); 0 for dense")] = 0.0,
    seed: Annotated[int, Form(ge=-MAX_ID - 1, le=MAX_ID,
                              description="the run's seed; runs of one mode and sparsity "
                                          "form a population")] = 0,
    wait: WaitDep = False,
) -> dict[str, Any]:
    """Add a training run recorded by your own training loop, so the dynamics analysis
    (`POST /projects/{id}/jobs` with kind "dynamics") compares it with the project's other
    runs. Each file is CSV with a header row or Parquet (told apart by content); example ids
    are positions in the project's active dataset: 0 … N−1 in its training split, 0 … M−1 in
    its test split.

    - **trajectories**: one row per training example per epoch (every example in every
      epoch), from an evaluation pass after each epoch. `example` int, `epoch` int (only the
      order counts), `loss` float (per-example loss), `prediction` int (top-1 class), `p_gold`
      float in [0, 1] (probability of the label as trained), optional `margin` float (that
      label's logit minus the largest other logit). The file
      `prunescope.workers.analyses.dynamics_training.DynamicsWriter` writes has exactly these
      columns.
    - **probes**: one row per MAP-D probe. `example` int, `suite` text (e.g. typical,
      atypical, mislabeled, corrupted), optional `reference` bool (the kNN references; left
      out, each suite is split in halves at random with seed 0), optional `label` int (the
      label the run trained on where you changed it; empty keeps the dataset's). Runs are
      compared only when they share their probes: upload the same file with each.
    - **test_predictions**: `example` int, `prediction` int, one row per test example, from
      the final model.

    Stored as a "dynamics_run" (canonical Parquet) and a "dynamics_meta" result with summary
    {run, mode, sparsity, seed, epochs, test_accuracy, source: "upload"}. 422 names the
    file, column and rows to fix; 409 when the project already has a run of that name; 413
    past the upload limit.
    """
    uploads = {"trajectories": trajectories, "probes": probes,
               "test_predictions": test_predictions}
    fields = {"run": run, "mode": mode, "sparsity": sparsity, "seed": seed}
    job = await run_in_threadpool(_add, project_id, uploads, fields, settings)
    return await ingest_answer(job, wait, lambda j: dynamics_runs.ingested(j, settings))
