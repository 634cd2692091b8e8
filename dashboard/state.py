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


def parse_sparsities(text: str | None) -> list[float]:
    """'0.5, 80%, .95' → [0.5, 0.8, 0.95]; raises ValueError naming the bad entry."""
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise ValueError(
                f"{part!r} is not a number; write sparsities like 0.5, 0.8 or 90%"
            ) from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"{part!r} is outside (0, 1); a sparsity of 0.9 prunes 90 %")
        values.append(value)
    if not values:
        raise ValueError("give at least one sparsity, e.g. 0.5, 0.8, 0.95")
    return sorted(set(values))
