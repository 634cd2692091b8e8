"""URL ⇄ view state: everything a view shows is named in its query string, so links reopen it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode


def parse_list(value: str | None) -> list[str] | None:
    """`a,b` → ['a', 'b']; absent → None (meaning: all)."""
    if value is None:
        return None
    return [v for v in value.split(",") if v]


def project_view_query(methods: list[str] | None, all_methods: list[str]) -> str:
    """Query string for the project page; the default view (every method) has none."""
    if methods is None or sorted(methods) == sorted(all_methods):
        return ""
    return "?" + urlencode({"methods": ",".join(sorted(methods))})


def parse_query(search: str | None) -> dict[str, str]:
    parsed = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}
