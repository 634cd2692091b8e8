"""Analysis results: summaries as JSON, full arrays as an npz download (no pickles)."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.schemas import ResultPublic, ResultsPublic
from prunescope.server.services import results

router = APIRouter(tags=["results"])


@router.get("/projects/{project_id}/results", response_model=ResultsPublic)
def list_results(project_id: IdPath, settings: SettingsDep) -> ResultsPublic:
    data = results.list_results(project_id, settings)
    return ResultsPublic(data=data, count=len(data))


@router.get("/results/{result_id}", response_model=ResultPublic)
def get_result(result_id: IdPath, settings: SettingsDep) -> ResultPublic:
    return results.get_result(result_id, settings)


@router.get("/results/{result_id}/artifact", response_class=FileResponse)
def download_result(result_id: IdPath, settings: SettingsDep) -> FileResponse:
    """The result's arrays as `.npz`; load with `numpy.load(path, allow_pickle=False)`."""
    path, filename = results.result_file(result_id, settings)
    return FileResponse(path, filename=filename, media_type="application/octet-stream")
