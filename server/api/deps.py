"""Named dependencies, so a handler's signature says what it needs, and the one answer every
upload route gives."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from prunescope.server.config import Settings, get_settings
from prunescope.server.schemas import MAX_ID, JobPublic

SettingsDep = Annotated[Settings, Depends(get_settings)]

# A row id in a path: the database's ids are positive 64-bit integers, so anything past them
# is refused as invalid (422) before a query would overflow the driver's integer.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

WaitDep = Annotated[bool, Query(description=(
    "Answer once the upload is validated: 201 with what was stored, or the 4xx that refused "
    "it. Without it (or when validation outlasts PRUNESCOPE_INGEST_WAIT_SECONDS) the answer "
    "is 202 with the validating job; poll GET /jobs/{id} until it succeeds (its "
    "result_summary names what was stored) or fails (its error says why)."))]

# What an upload route documents beside its 201.
ACCEPTED = {202: {"model": JobPublic, "description": "Stored and queued for validation: the "
                  "ingest job to poll (see `wait`)."}}


async def ingest_answer(job: JobPublic, wait: bool,
                        stored: Callable[[JobPublic], Any | None]) -> Any:
    """201 with `stored(job)` when the caller waits and the job ends in time (its refusal
    raised as the matching 4xx), else 202 with the job."""
    if wait:
        done = await run_in_threadpool(stored, job)
        if done is not None:
            return done
        job = JobPublic.model_validate(job.model_dump())  # unchanged: still validating
    return JSONResponse(status_code=202, content=jsonable_encoder(job))
