"""Bookmarks of project views, short view ids, result arrays as Parquet, CSV or `.npy`, and
the method comparison (JSON, CSV, Parquet) of a project. (Its HTML report is the
dashboard's: `prunescope.dashboard.report.router`.)"""

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.services import comparison, results, views
from prunescope.server.services.results import ArrayFormat, ArraysPublic
from prunescope.server.services.views import (
    BookmarkCreate,
    BookmarkPublic,
    BookmarksPublic,
    ViewStatePublic,
)

router = APIRouter()


@router.get(
    "/projects/{project_id}/bookmarks", response_model=BookmarksPublic, tags=["bookmarks"]
)
def list_bookmarks(project_id: IdPath, settings: SettingsDep) -> BookmarksPublic:
    data = views.list_bookmarks(project_id, settings)
    return BookmarksPublic(data=data, count=len(data))


@router.post(
    "/projects/{project_id}/bookmarks",
    response_model=BookmarkPublic,
    status_code=201,
    tags=["bookmarks"],
)
def add_bookmark(project_id: IdPath, body: BookmarkCreate, settings: SettingsDep) -> BookmarkPublic:
    """Save a page of the project under a name; `url` is its path and query, e.g.
    `/projects/3/geometry?checkpoint=dense`."""
    return views.add_bookmark(project_id, body.name, body.url, settings)


@router.delete("/bookmarks/{bookmark_id}", status_code=204, tags=["bookmarks"])
def delete_bookmark(bookmark_id: IdPath, settings: SettingsDep) -> Response:
    views.delete_bookmark(bookmark_id, settings)
    return Response(status_code=204)


@router.get("/views/{view_id}", response_model=ViewStatePublic, tags=["views"])
def get_view_state(view_id: str, settings: SettingsDep) -> ViewStatePublic:
    """The long view state a link names by a short id: a `sel=v<id>` selection in a page's
    query is `prunescope.dashboard.state.decode_selection` of this text."""
    return ViewStatePublic(id=view_id, text=views.load_view_state(view_id, settings))


@router.get("/results/{result_id}/arrays", response_model=ArraysPublic, tags=["results"])
def list_result_arrays(result_id: IdPath, settings: SettingsDep) -> ArraysPublic:
    data = results.result_arrays(result_id, settings)
    return ArraysPublic(data=data, count=len(data))


@router.get(
    "/results/{result_id}/arrays/{name}",
    response_class=Response,
    tags=["results"],
    responses={200: {"content": {t: {} for t in results.MEDIA_TYPES.values()}}},
)
def download_result_array(
    result_id: IdPath, name: str, settings: SettingsDep, format: ArrayFormat = "parquet"
) -> Response:
    """One array of a result: Parquet or CSV (a 1-D array is one column, a 2-D array one
    column per column index) or `.npy` (any shape; `numpy.load(path, allow_pickle=False)`)."""
    content, filename, media_type = results.export_result_array(
        result_id, name, format, settings
    )
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


ComparisonFormat = Literal["json", "csv", "parquet"]


@router.get(
    "/projects/{project_id}/comparison",
    tags=["results"],
    responses={200: {"content": {"application/json": {}, "text/csv": {},
                                 results.MEDIA_TYPES["parquet"]: {}}}},
)
def method_comparison(
    project_id: IdPath, settings: SettingsDep, format: ComparisonFormat = "json"
) -> Response:
    """The project page's method-comparison table: one row per checkpoint (and per
    population of recorded training runs) with each analysis's headline number. `json` gives
    `{"data": [...rows], "count": n}`; `csv` and `parquet` the columns the page exports
    (text as strings, counts as int64, other numbers as float64, empty cells null)."""
    rows = comparison.project_comparison(project_id, settings)
    stem = f"project{project_id}-comparison"
    if format == "csv":
        return Response(comparison.comparison_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
    if format == "parquet":
        return Response(comparison.comparison_parquet(rows),
                        media_type=results.MEDIA_TYPES["parquet"],
                        headers={"Content-Disposition": f'attachment; filename="{stem}.parquet"'})
    records = comparison.export_records(rows)
    return JSONResponse({"data": jsonable_encoder(records), "count": len(records)})
