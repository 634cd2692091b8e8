"""Method comparison drawn: which columns a table shows, its rows for a Dash DataTable with
links to the views, and a headline column against sparsity.

The rows themselves — one per checkpoint and per unmatched training population, with their
headline numbers and links — and their CSV / Parquet exports come from
`prunescope.server.services.comparison`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from prunescope.dashboard.figures.overview import METHOD_COLOURS, empty_figure, method_colour
from prunescope.server.services.comparison import CHECKPOINT, COMPARISON_COLUMNS, DENSE, Column

# Project-level numbers and the x axis itself make no line against sparsity.
NOT_PLOTTED = ("sparsity", "mislabeled_count")
HEADLINE_ORDER = ("accuracy", "perplexity", "masked_token_accuracy", "mean_cka")


def comparison_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The numeric columns at least one row has a value for (sparsity always), in order."""
    return [c for key, c in COMPARISON_COLUMNS.items()
            if key == "sparsity" or any(r.get(key) is not None for r in rows)]


def plottable_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The columns `headline_vs_sparsity` can draw for these rows."""
    return [c for c in comparison_columns(rows) if c.key not in NOT_PLOTTED]


def default_column(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Accuracy where measured, else the language-model quality, else mean CKA."""
    keys = [c.key for c in plottable_columns(rows)]
    return next((k for k in HEADLINE_ORDER if k in keys), keys[0] if keys else None)


def view_links_markdown(row: Mapping[str, Any]) -> str:
    """The row's distinct view links as markdown, e.g. "[layers](/projects/1/layers?…)"."""
    urls = list(dict.fromkeys(row.get("links", {}).values()))
    parts = []
    for url in urls:
        view = url.split("?")[0].rsplit("/", 1)[-1]
        parts.append(f"[{view}]({url})")
    return " · ".join(parts)


def comparison_table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a Dash DataTable: plain values plus a markdown "views" column of links."""
    return [{**{k: v for k, v in r.items() if k != "links"}, "views": view_links_markdown(r)}
            for r in rows]



# ------------------------------------------------------------------------------ figure


def headline_vs_sparsity(rows: Sequence[Mapping[str, Any]], column: str | None) -> go.Figure:
    """A headline column against sparsity, one line per method, each starting at the dense
    row of its source (the dense checkpoint, or the dense population for training runs)."""
    if column not in COMPARISON_COLUMNS or column in NOT_PLOTTED:
        choices = ", ".join(k for k in COMPARISON_COLUMNS if k not in NOT_PLOTTED)
        return empty_figure(f"Choose a column to plot: {choices}.")
    spec = COMPARISON_COLUMNS[column]
    have = [r for r in rows if r.get(column) is not None and r.get("sparsity") is not None]
    if not have:
        return empty_figure(f"No checkpoint has a {spec.label} yet.")
    scale = 100.0 if spec.kind == "percent" else 1.0
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in have:
        if r.get("role") != DENSE:
            groups.setdefault((r.get("source", CHECKPOINT), r.get("method") or "uploaded"),
                              []).append(r)
    order = sorted({method for _, method in groups})
    fig = go.Figure()
    for (source, method), members in sorted(groups.items()):
        dense = next((r for r in have if r.get("role") == DENSE
                      and r.get("source", CHECKPOINT) == source), None)
        points = ([dense] if dense else []) + sorted(members, key=lambda r: r["sparsity"])
        fig.add_trace(go.Scatter(
            x=[100 * p["sparsity"] for p in points], y=[scale * p[column] for p in points],
            text=[p["name"] for p in points], mode="lines+markers",
            name=method if source == CHECKPOINT else f"{method} ({source})",
            line={"color": method_colour(method, order),
                  "dash": "solid" if source == CHECKPOINT else "dot"},
            hovertemplate="%{text}<br>sparsity %{x:.1f}%<br>" + spec.label
            + " %{y:.4g}<extra></extra>",
        ))
    for dense in (r for r in have if r.get("role") == DENSE):
        fig.add_trace(go.Scatter(
            x=[100 * dense["sparsity"]], y=[scale * dense[column]], mode="markers",
            name=f"dense ({dense['name']})",
            marker={"color": METHOD_COLOURS["dense"], "size": 12, "symbol": "star"},
            hovertemplate=f"{dense['name']}<br>{spec.label} %{{y:.4g}}<extra></extra>",
        ))
    unit = " (%)" if spec.kind == "percent" else ""
    fig.update_layout(
        template="plotly_white", height=380,
        xaxis={"title": "sparsity of prunable weights (%)", "range": [-2, 100]},
        yaxis={"title": spec.label + unit, **({"type": "log"} if column == "perplexity" else {})},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 30, "b": 60},
    )
    return fig
