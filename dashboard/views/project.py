"""The project page's view in its URL: the methods shown in the accuracy plot ("methods", a
comma-separated list; absent means every method)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode


def parse_list(value: str | None) -> list[str] | None:
    """`a,b` → ['a', 'b']; absent → None (meaning: all)."""
    if value is None:
        return None
    return [v for v in value.split(",") if v]


def parse_view(query: Mapping[str, str]) -> dict[str, Any]:
    """{"methods": the methods the URL names, or None for every method}. Names the project
    has no checkpoints of are dropped when the page learns its methods."""
    return {"methods": parse_list(query.get("methods"))}


def view_query(view: Mapping[str, Any], all_methods: Sequence[str]) -> str:
    """Query string for the project page; the default view (every method) has none."""
    methods = view.get("methods")
    if methods is None or sorted(methods) == sorted(all_methods):
        return ""
    return "?" + urlencode({"methods": ",".join(sorted(methods))})
