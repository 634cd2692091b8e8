"""Dataset figures: examples per class and split, from a dataset's stored preview."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

SPLIT_COLOURS = {"train": "#0b61a4", "test": "#f28e2b"}


def class_counts_figure(
    class_names: Sequence[str], counts: Mapping[str, Sequence[int]]
) -> go.Figure:
    """Stacked bars, one per class: how many train and test examples it has.

    `counts` maps "train" and "test" to one count per class, in `class_names` order (the
    `class_counts` of `prunescope.workers.dataset_formats.preview`).
    """
    names = [str(c) for c in class_names]
    fig = go.Figure()
    for split in ("train", "test"):
        values = list(counts.get(split, []))[: len(names)]
        fig.add_trace(
            go.Bar(
                x=names[: len(values)],
                y=values,
                name=split,
                marker_color=SPLIT_COLOURS[split],
                hovertemplate=f"%{{x}}: %{{y}} {split} examples<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        template="plotly_white",
        height=320,
        margin={"l": 50, "r": 10, "t": 10, "b": 60},
        xaxis={"title": "class", "type": "category"},
        yaxis={"title": "examples"},
        legend={"orientation": "h", "y": 1.08, "x": 0},
    )
    return fig


def preview_rows(preview: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(columns, rows) of a table for the first examples of a tabular or text dataset."""
    examples = list(preview.get("examples", []))
    columns = [{"name": "class", "id": "class_name"}]
    if preview.get("has_ids"):
        columns.insert(0, {"name": "id", "id": "id"})
    if any(e.get("group") is not None for e in examples):
        columns.append({"name": "group", "id": "group"})
    if preview.get("kind") == "text":
        columns.append({"name": "text", "id": "text"})
        return columns, [dict(e) for e in examples]
    names = list(preview.get("feature_names") or [])
    width = max((len(e.get("values", [])) for e in examples), default=0)
    names += [f"x{j}" for j in range(len(names), width)]
    columns += [{"name": n, "id": f"f{j}", "type": "numeric"} for j, n in enumerate(names)]
    rows = []
    for e in examples:
        row = {k: e.get(k) for k in ("id", "class_name", "group")}
        row.update({f"f{j}": v for j, v in enumerate(e.get("values", []))})
        rows.append(row)
    return columns, rows
