"""The Datasets page's view in its URL: the dataset previewed ("dataset", its id)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode


def parse_view(query: Mapping[str, str]) -> dict[str, Any]:
    """{"dataset": the id the URL names, or None (the page then previews the active one)}."""
    value = query.get("dataset") or ""
    return {"dataset": int(value) if value.isdigit() else None}


def view_query(view: Mapping[str, Any]) -> str:
    dataset = view.get("dataset")
    return f"?{urlencode({'dataset': dataset})}" if dataset is not None else ""


def datasets_href(project_id: int, dataset_id: int | None = None) -> str:
    """The page's URL, previewing `dataset_id` when given."""
    return f"/projects/{project_id}/datasets" + view_query({"dataset": dataset_id})
