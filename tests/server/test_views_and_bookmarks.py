"""Views that survive a link: short view ids, project bookmarks that lead nowhere else, result
arrays as Parquet/CSV/npy files, the tables' migration, and the dashboard's header controls."""

from __future__ import annotations

import base64
import io
import posixpath
import sys
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from alembic import command
from alembic.config import Config
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from prunescope.server.db import MIGRATIONS_DIR, session_scope
from prunescope.server.errors import Conflict, InvalidInput, NotFound
from prunescope.server.services import results as result_service
from prunescope.server.services import views
from prunescope.server.storage import ArtifactStore
from prunescope.server.tables import AnalysisResult, Bookmark, Project

BOOKMARKS_PATH = "/api/v1/projects/{project_id}/bookmarks"


def _project(name: str) -> int:
    with session_scope() as s:
        row = Project(name=name, architecture="mlp", architecture_config={})
        s.add(row)
        s.flush()
        return row.id


@pytest.fixture
def project_ids(settings) -> tuple[int, int]:
    return _project("one"), _project("two")


# ------------------------------------------------------------------ short ids for view state


def test_view_state_round_trips_through_a_short_random_id(settings) -> None:
    long_text = "z" + "AbC-_" * 400
    short_id = views.store_view_state(long_text)
    assert views.load_view_state(short_id) == long_text
    # URL-safe base64 of at least 64 random bits.
    assert all(ch.isalnum() or ch in "-_" for ch in short_id)
    assert len(base64.urlsafe_b64decode(short_id + "=" * (-len(short_id) % 4))) * 8 >= 64
    assert views.store_view_state(long_text) == short_id  # same text, same id
    other = views.store_view_state(long_text + "x")
    assert other != short_id and views.load_view_state(other) == long_text + "x"


def test_unknown_or_malformed_view_ids_are_not_found(settings) -> None:
    for bad in ("AAAAAAAAAAAAAAAA", "", "../etc/passwd", "x" * 100):
        with pytest.raises(NotFound, match="not found"):
            views.load_view_state(bad)
    with pytest.raises(InvalidInput, match="empty"):
        views.store_view_state("")


# ------------------------------------------------------------------ bookmark addresses

REFUSED = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "  javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http://evil.example/projects/{p}/geometry",
    "https://evil.example/projects/{p}",
    "//evil.example/projects/{p}/geometry",
    "https:/projects/{p}/geometry",
    "/projects/{q}/geometry",
    "/projects/{p}0/geometry",  # another project whose id starts with the same digits
    "/projects/{p}/../{q}/geometry",
    "/projects/{p}/%2e%2e/{q}/geometry",
    "/projects/{p}/geometry/..",
    "/projects/{p}/./geometry",
    "/projects/{p}\\..\\{q}",
    "projects/{p}/geometry",
    "../projects/{p}/geometry",
    "/projectsX/{p}",
    "/",
    "",
    "/projects/{p}/geometry\n?x=1",
    "/projects/{p}/geometry\x00",
    "/projects/{p}/geo metry",
]
ACCEPTED = [
    "/projects/{p}",
    "/projects/{p}?methods=magnitude,random",
    "/projects/{p}/geometry?checkpoint=dense-90&sel=3-5.7",
    "/projects/{p}/dynamics?sel=vAbCdEfGhIjKlMnOp#top",
    "/projects/{p}/bookmarks",
]


def _stays_in_project(url: str, project_id: int) -> bool:
    """An independent reading: where a browser on a project page goes when it follows `url`."""
    base = f"https://prunescope.test/projects/{project_id}/geometry?x=1"
    target = urlsplit(urljoin(base, url))
    path = posixpath.normpath(unquote(target.path))
    home = f"/projects/{project_id}"
    return (
        target.scheme == "https"
        and target.netloc == "prunescope.test"
        and (path == home or path.startswith(home + "/"))
    )


@pytest.mark.parametrize("template", REFUSED)
def test_bookmarks_refuse_addresses_outside_the_project(template: str) -> None:
    url = template.format(p=1, q=2)
    with pytest.raises(InvalidInput) as refused:
        views.project_url(1, url)
    assert "/projects/1" in refused.value.detail or "link" in refused.value.detail


@pytest.mark.parametrize("template", ACCEPTED)
def test_bookmarks_accept_the_project_pages(template: str) -> None:
    url = template.format(p=7)
    assert views.project_url(7, url) == url
    assert _stays_in_project(url, 7)


def test_every_accepted_address_stays_in_the_project() -> None:
    rng = np.random.default_rng(0)
    pieces = ["/", "projects", "3", "30", "4", "..", ".", "%2e%2e", "%2F", "geometry", "?a=/..",
              "#", "//", "\\", "javascript:", "http:", "evil.example", "?sel=v1"]
    accepted = 0
    for _ in range(3000):
        url = "".join(rng.choice(pieces, size=int(rng.integers(1, 9))))
        if rng.random() < 0.5:
            url = "/projects/3" + url
        try:
            clean = views.project_url(3, url)
        except InvalidInput:
            continue
        accepted += 1
        assert _stays_in_project(clean, 3), url
    assert accepted > 50  # the fuzz reached the accepting side too


# ------------------------------------------------------------------ bookmarks


def test_bookmarks_are_named_uniquely_per_project(project_ids) -> None:
    one, two = project_ids
    first = views.add_bookmark(one, "  lasso of sevens ", f"/projects/{one}/geometry?sel=3")
    assert (first.project_id, first.name) == (one, "lasso of sevens")
    with pytest.raises(Conflict, match="already has a bookmark named"):
        views.add_bookmark(one, "lasso of sevens", f"/projects/{one}/layers")
    same_name_elsewhere = views.add_bookmark(two, "lasso of sevens", f"/projects/{two}")
    second = views.add_bookmark(one, "layers", f"/projects/{one}/layers")
    assert [b.id for b in views.list_bookmarks(one)] == [first.id, second.id]
    assert [b.id for b in views.list_bookmarks(two)] == [same_name_elsewhere.id]
    views.delete_bookmark(first.id)
    assert [b.name for b in views.list_bookmarks(one)] == ["layers"]
    with pytest.raises(NotFound, match=str(first.id)):
        views.delete_bookmark(first.id)
    with pytest.raises(InvalidInput, match="name"):
        views.add_bookmark(one, "   ", f"/projects/{one}")
    with pytest.raises(InvalidInput):
        views.add_bookmark(one, "elsewhere", f"/projects/{two}/geometry")
    with pytest.raises(NotFound, match="project 999"):
        views.add_bookmark(999, "x", "/projects/999/geometry")
    with pytest.raises(NotFound, match="project 999"):
        views.list_bookmarks(999)


def test_bookmarks_go_with_their_project(project_ids) -> None:
    one, two = project_ids
    views.add_bookmark(one, "a", f"/projects/{one}")
    kept = views.add_bookmark(two, "a", f"/projects/{two}")
    with session_scope() as s:
        s.delete(s.get(Project, one))
    with session_scope() as s:
        assert [b.id for b in s.query(Bookmark).all()] == [kept.id]


# ------------------------------------------------------------------ migration


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_the_migration_adds_both_tables_and_keeps_projects(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    command.upgrade(_config(url), "0004_checkpoint_assets")
    engine = create_engine(url)
    assert not {"view_states", "bookmarks"} & set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (name, description, architecture, architecture_config,"
                " created_at) VALUES ('p', '', 'mlp', '{}', '2026-01-01')"
            )
        )
    command.upgrade(_config(url), "head")
    tables = inspect(engine)
    assert {"view_states", "bookmarks"} <= set(tables.get_table_names())
    assert {c["name"] for c in tables.get_columns("bookmarks")} == {
        "id", "project_id", "name", "url", "created_at"
    }
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bookmarks (project_id, name, url, created_at)"
                " VALUES (1, 'b', '/projects/1', '2026-01-01')"
            )
        )
    command.downgrade(_config(url), "0004_checkpoint_assets")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM projects")).scalar() == "p"
    assert not {"view_states", "bookmarks"} & set(inspect(engine).get_table_names())


def test_a_fresh_database_gets_the_tables(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    command.upgrade(_config(url), "head")
    assert {"view_states", "bookmarks"} <= set(inspect(create_engine(url)).get_table_names())


# ------------------------------------------------------------------ API


@pytest.fixture
def client(settings, monkeypatch):
    """The real app; the views router is mounted here until server/api/__init__.py has it."""
    import prunescope.server.main
    from prunescope.server.api import views

    routes = {getattr(r, "path", None) for r in prunescope.server.main.api_router.routes}
    if "/projects/{project_id}/bookmarks" not in routes:
        combined = APIRouter()
        combined.include_router(prunescope.server.main.api_router)
        combined.include_router(views.router)
        monkeypatch.setattr(prunescope.server.main, "api_router", combined)
    with TestClient(prunescope.server.main.create_app(settings, dashboard=False)) as c:
        yield c


def test_the_routes_are_in_the_api(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/projects/{project_id}/bookmarks",
        "/api/v1/bookmarks/{bookmark_id}",
        "/api/v1/views/{view_id}",
        "/api/v1/results/{result_id}/arrays",
        "/api/v1/results/{result_id}/arrays/{name}",
    ):
        assert path in paths, path


def test_bookmarks_over_the_api(client, project_ids) -> None:
    one, _ = project_ids
    path = BOOKMARKS_PATH.format(project_id=one)
    made = client.post(path, json={"name": "dense map", "url": f"/projects/{one}/geometry"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["name"] == "dense map" and body["url"] == f"/projects/{one}/geometry"
    listed = client.get(path).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == body["id"]
    again = client.post(path, json={"name": "dense map", "url": f"/projects/{one}"})
    assert again.status_code == 409 and "dense map" in again.json()["detail"]
    for url in ("javascript:alert(1)", "http://evil.example/", f"/projects/{one}/../2"):
        bad = client.post(path, json={"name": f"bad {url}", "url": url})
        assert bad.status_code == 422, url
    assert client.post(path, json={"name": "", "url": f"/projects/{one}"}).status_code == 422
    assert client.delete(f"/api/v1/bookmarks/{body['id']}").status_code == 204
    assert client.delete(f"/api/v1/bookmarks/{body['id']}").status_code == 404
    assert client.get(path).json()["count"] == 0
    assert client.get(BOOKMARKS_PATH.format(project_id=999)).status_code == 404


def test_view_ids_resolve_over_the_api(client) -> None:
    short_id = views.store_view_state("z" + "Q" * 600)
    r = client.get(f"/api/v1/views/{short_id}")
    assert r.status_code == 200 and r.json() == {"id": short_id, "text": "z" + "Q" * 600}
    missing = client.get("/api/v1/views/AAAAAAAAAAAAAAAA")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


# ------------------------------------------------------------------ result arrays


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "accuracy": rng.random(7),
        "cka": rng.random((4, 3)).astype(np.float32),
        "counts": rng.integers(-5, 5, size=(5, 2)),
        "names": np.array(["dense", "magnitude-50", "rändom"]),
        "mask": np.array([True, False, True]),
        "embedding": rng.random((2, 3, 2)),
        "reference": np.array(4),
    }


@pytest.fixture
def result_id(settings, project_ids, tmp_path) -> int:
    path = tmp_path / "result.npz"
    np.savez(path, **_arrays())
    digest = ArtifactStore(settings.artifacts_dir).put_file(path)
    with session_scope() as s:
        row = AnalysisResult(project_id=project_ids[0], kind="geometry", artifact_digest=digest)
        s.add(row)
        s.flush()
        return row.id


def test_array_listing_names_dtypes_and_shapes(client, result_id) -> None:
    r = client.get(f"/api/v1/results/{result_id}/arrays")
    assert r.status_code == 200
    listed = {a["name"]: (a["dtype"], a["shape"]) for a in r.json()["data"]}
    assert listed == {k: (str(v.dtype), list(v.shape)) for k, v in _arrays().items()}
    assert client.get("/api/v1/results/999/arrays").status_code == 404


def _download(client, result_id: int, name: str, fmt: str):  # noqa: ANN001, ANN202
    return client.get(f"/api/v1/results/{result_id}/arrays/{name}", params={"format": fmt})


def test_parquet_columns_are_the_arrays_columns(client, result_id) -> None:
    for name, array in _arrays().items():
        if array.ndim > 2:
            continue
        r = _download(client, result_id, name, "parquet")
        assert r.status_code == 200, (name, r.text)
        assert f"geometry-{result_id}-{name}.parquet" in r.headers["content-disposition"]
        table = pq.read_table(io.BytesIO(r.content))
        if array.ndim == 2:
            assert table.column_names == [str(j) for j in range(array.shape[1])]
            for j in range(array.shape[1]):
                column = table.column(str(j)).to_numpy()
                assert column.dtype == array.dtype
                np.testing.assert_array_equal(column, array[:, j])
        else:
            assert table.column_names == [name]
            got = np.asarray(table.column(name).to_pylist())
            np.testing.assert_array_equal(got, array.reshape(-1))


def test_csv_reads_back_to_the_same_numbers(client, result_id) -> None:
    arrays = _arrays()
    r = _download(client, result_id, "cka", "csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    header, *lines = r.text.strip().splitlines()
    assert header == '"0","1","2"'
    got = np.array([[float(v) for v in line.split(",")] for line in lines], dtype=np.float32)
    np.testing.assert_array_equal(got, arrays["cka"])
    names = pcsv.read_csv(io.BytesIO(_download(client, result_id, "names", "csv").content))
    assert names.column("names").to_pylist() == arrays["names"].tolist()
    accuracy = _download(client, result_id, "accuracy", "csv").text.strip().splitlines()
    np.testing.assert_array_equal([float(v) for v in accuracy[1:]], arrays["accuracy"])


def test_npy_keeps_any_shape_without_pickles(client, result_id) -> None:
    for name, array in _arrays().items():
        r = _download(client, result_id, name, "npy")
        assert r.status_code == 200, name
        got = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_three_dimensional_arrays_are_refused_as_tables(client, result_id) -> None:
    for fmt in ("parquet", "csv"):
        r = _download(client, result_id, "embedding", fmt)
        assert r.status_code == 422 and "npy" in r.json()["detail"]
        assert "3 dimensions" in r.json()["detail"]
    missing = _download(client, result_id, "nothing", "npy")
    assert missing.status_code == 404 and "accuracy" in missing.json()["detail"]
    assert _download(client, result_id, "cka", "xlsx").status_code == 422


def test_arrays_without_a_table_form_point_to_npy() -> None:
    with pytest.raises(InvalidInput, match="npy"):
        result_service.array_table(np.array([1 + 2j, 3j]), "z")


# ------------------------------------------------------------------ dashboard controls


def test_the_project_of_a_path() -> None:
    from prunescope.dashboard.app import bookmark_controls, project_id_from_path

    assert project_id_from_path("/projects/12/geometry") == 12
    assert project_id_from_path("/projects/12") == 12
    assert project_id_from_path("/projects/12x/geometry") is None
    assert project_id_from_path("/") is None and project_id_from_path(None) is None
    disabled_name, disabled_button, _href, style = bookmark_controls("/")
    assert disabled_name and disabled_button and style == {"display": "none"}
    assert bookmark_controls("/projects/4/layers")[:3] == (False, False, "/projects/4/bookmarks")


def test_the_header_saves_the_shown_page_as_a_bookmark(project_ids) -> None:
    from prunescope.dashboard.app import save_bookmark

    one, _ = project_ids
    url = f"/projects/{one}/geometry?checkpoint=dense&sel=3-5"
    message, name_value = save_bookmark({"name": "three to five", "url": url})
    assert "three to five" in str(message.children) and name_value == ""
    assert [(b.name, b.url) for b in views.list_bookmarks(one)] == [("three to five", url)]
    again, kept = save_bookmark({"name": "three to five", "url": url})
    assert "already has" in str(again.children) and kept is not None and kept != ""
    outside, _ = save_bookmark({"name": "home", "url": "/"})
    assert "project" in str(outside.children)
    assert len(views.list_bookmarks(one)) == 1


def test_the_header_and_the_bookmarks_page(project_ids, monkeypatch) -> None:
    import dash
    from fastapi import FastAPI

    from prunescope.dashboard.app import create_dash

    one, _ = project_ids
    app = create_dash(FastAPI())
    header = str(app.layout.to_plotly_json())
    for component in ("copy-link", "bookmark-name", "bookmark-save", "bookmarks-link"):
        assert component in header
    scripts = " ".join(str(c.get("clientside_function") or "") for c in app.callback_map.values())
    inline = " ".join(getattr(app, "_inline_scripts", []))
    assert "window.location.href" in inline + scripts and "clipboard" in inline + scripts

    page = next(p for p in dash.page_registry.values()
                if p.get("path_template") == "/projects/<project_id>/bookmarks")
    module = sys.modules[page["module"]]
    mark = views.add_bookmark(one, "sevens", f"/projects/{one}/geometry?sel=7")
    drawn = str(module.layout(project_id=str(one)).to_plotly_json())
    assert "sevens" in drawn and f"/projects/{one}/geometry?sel=7" in drawn
    assert "Project not found" in str(module.layout(project_id="999").to_plotly_json())
    monkeypatch.setattr(
        module, "ctx",
        type("Ctx", (), {"triggered": [{"value": 1}],
                         "triggered_id": {"type": "delete-bookmark", "index": mark.id}})(),
    )
    remaining, message = module.delete([1], one)
    assert "deleted" in str(message.children) and "sevens" not in str(remaining.to_plotly_json())
    assert views.list_bookmarks(one) == []
