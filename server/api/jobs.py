"""Jobs: submit, watch, cancel."""

from fastapi import APIRouter, status

from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.schemas import JobCreate, JobPublic, JobsPublic
from prunescope.server.services import jobs

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=JobsPublic)
def list_all_jobs(settings: SettingsDep) -> JobsPublic:
    data = jobs.list_jobs(None, settings)
    return JobsPublic(data=data, count=len(data))


@router.get("/projects/{project_id}/jobs", response_model=JobsPublic)
def list_jobs(project_id: IdPath, settings: SettingsDep) -> JobsPublic:
    data = jobs.list_jobs(project_id, settings)
    return JobsPublic(data=data, count=len(data))


@router.post(
    "/projects/{project_id}/jobs", response_model=JobPublic, status_code=status.HTTP_201_CREATED
)
def submit_job(project_id: IdPath, body: JobCreate, settings: SettingsDep) -> JobPublic:
    """Queue a job: `train` (a dense model), `prune` (method, sparsity) or `analyze`."""
    return jobs.submit_job(project_id, body, settings)


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: IdPath, settings: SettingsDep) -> JobPublic:
    return jobs.get_job(job_id, settings)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: IdPath, settings: SettingsDep) -> JobPublic:
    return jobs.cancel_job(job_id, settings)
