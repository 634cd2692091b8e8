"""The dashboard as served: a first visit to any page gets the stylesheet and scripts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.main import create_app


def test_a_first_visit_straight_to_a_project_page_loads_the_assets(settings) -> None:
    with TestClient(create_app(settings)) as client:
        html = client.get("/projects/1").text  # no request to "/" before this one
    assert "assets/style.css" in html
    assert "assets/checkpoint_upload.js" in html and "assets/tus.min.js" in html
