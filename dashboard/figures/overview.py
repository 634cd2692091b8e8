"""Project overview figures: accuracy versus sparsity, and per-layer CKA to the dense model."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import plotly.graph_objects as go

# Colour per method stays fixed across figures, so a method is recognisable everywhere.
METHOD_COLOURS = {
    "magnitude_global": "#1f77b4",
    "random": "#d62728",
    "uploaded": "#2ca02c",
    "dense": "#111111",
}
FALLBACK_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

# Plotly's own modebar gives PNG; the second button set gives SVG through the same menu.
GRAPH_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "svg", "scale": 2},
    "modeBarButtonsToAdd": ["toImage"],
}


def method_colour(method: str, order: Sequence[str] = ()) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    index = list(order).index(method) if method in order else len(method)
    return FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 14, "color": "#666"})
    fig.update_layout(
        xaxis={"visible": False}, yaxis={"visible": False}, height=320, template="plotly_white"
    )
    return fig


@lru_cache(maxsize=32)
def _empty_figure_json(message: str) -> str:
    return empty_figure(message).to_json()


def loading_figure(message: str = "loading…") -> dict[str, Any]:
    """`empty_figure(message)` as a plain figure dict, built once: pages put one in every
    graph of their layout, and building a templated go.Figure costs milliseconds each."""
    return json.loads(_empty_figure_json(message))


def accuracy_vs_sparsity(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None
) -> go.Figure:
    """One line per pruning method, from the dense model (sparsity 0) to the sparsest checkpoint.

    `rows`: dicts with name, role, method, measured_sparsity, accuracy (None when not evaluated).
    """
    evaluated = [r for r in rows if r.get("accuracy") is not None]
    if not evaluated and any(r.get("mean_cka") is not None for r in rows):
        return empty_figure(
            "No accuracy: the model has no classifier head. The Layers page compares its layers."
        )
    if not evaluated:
        return empty_figure("No evaluated checkpoints yet — the analysis job fills this in.")
    dense = next((r for r in evaluated if r["role"] == "dense"), None)
    by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in evaluated:
        if r["role"] != "dense":
            by_method[r.get("method") or "uploaded"].append(r)
    order = sorted(by_method)
    fig = go.Figure()
    for method in order:
        if methods is not None and method not in methods:
            continue
        points = sorted(by_method[method], key=lambda r: r["measured_sparsity"])
        if dense is not None:
            points = [dense, *points]
        fig.add_trace(
            go.Scatter(
                x=[100 * p["measured_sparsity"] for p in points],
                y=[100 * p["accuracy"] for p in points],
                text=[p["name"] for p in points],
                mode="lines+markers",
                name=method,
                line={"color": method_colour(method, order)},
                hovertemplate="%{text}<br>sparsity %{x:.1f}%<br>accuracy %{y:.2f}%<extra></extra>",
            )
        )
    if dense is not None:
        fig.add_trace(
            go.Scatter(
                x=[100 * dense["measured_sparsity"]],
                y=[100 * dense["accuracy"]],
                mode="markers",
                name=f"dense ({dense['name']})",
                marker={"color": METHOD_COLOURS["dense"], "size": 12, "symbol": "star"},
                hovertemplate="dense<br>accuracy %{y:.2f}%<extra></extra>",
            )
        )
    fig.update_layout(
        template="plotly_white",
        height=380,
        xaxis={"title": "measured sparsity of prunable weights (%)", "range": [-2, 100]},
        yaxis={"title": "test accuracy (%)", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 30, "b": 60},
    )
    return fig


def _layer_by_checkpoint_layout(fig: go.Figure, n_layers: int) -> go.Figure:
    """Shared layout of the layer × checkpoint heatmaps: layers top-down, one row each."""
    fig.update_layout(
        template="plotly_white",
        height=max(300, 60 * n_layers + 120),
        xaxis={"title": "checkpoint", "tickangle": -30},
        yaxis={"title": "layer", "autorange": "reversed"},
        margin={"l": 90, "r": 20, "t": 30, "b": 90},
    )
    return fig


def layer_cka_heatmap(
    layers: Sequence[str], checkpoint_names: Sequence[str], cka: np.ndarray
) -> go.Figure:
    """Layer × checkpoint heatmap of linear CKA between each checkpoint and the dense model.

    `cka` has shape (n_checkpoints, n_layers), as the evaluation artifact stores it.
    """
    cka = np.asarray(cka, dtype=float)
    if cka.size == 0:
        return empty_figure("No layer comparison yet — the analysis job fills this in.")
    if cka.shape != (len(checkpoint_names), len(layers)):
        raise ValueError(
            f"cka has shape {cka.shape}, expected ({len(checkpoint_names)}, {len(layers)})"
        )
    z = cka.T  # layers on the y axis, checkpoints on the x axis
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(checkpoint_names),
            y=list(layers),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": "linear CKA"},
            text=np.vectorize(lambda v: f"{v:.2f}")(z),
            texttemplate="%{text}",
            hovertemplate="layer %{y}<br>%{x}<br>CKA to dense %{z:.4f}<extra></extra>",
        )
    )
    return _layer_by_checkpoint_layout(fig, len(layers))


def layer_sparsity_heatmap(
    layers: Sequence[str],
    checkpoint_names: Sequence[str],
    sparsity: Sequence[Sequence[Any]],
    n_m: Sequence[Sequence[Any]] | None = None,
) -> go.Figure:
    """Layer × checkpoint heatmap of the share of zero weights, to compare how methods spread
    the same overall sparsity over the layers. `sparsity` is indexed [layer][checkpoint].

    `n_m` (same indexing) lists the N:M patterns each layer follows; a sparse layer that
    follows one is labelled with it (e.g. "50 · 2:4"), since only those run faster on sparse
    tensor cores. Dense layers follow every pattern trivially and are not labelled.
    """
    if not layers or not checkpoint_names:
        return empty_figure("No checkpoints yet.")
    z = np.array(
        [[np.nan if v is None else 100 * float(v) for v in row] for row in sparsity], dtype=float
    )
    if z.shape != (len(layers), len(checkpoint_names)):
        raise ValueError(
            f"sparsity has shape {z.shape}, expected ({len(layers)}, {len(checkpoint_names)})"
        )
    short = [name.removesuffix(".weight") for name in layers]
    patterns = [
        [
            ", ".join(n_m[i][j] or []) if n_m is not None and z[i, j] > 0 else ""
            for j in range(z.shape[1])
        ]
        for i in range(z.shape[0])
    ]
    text = [
        [
            "" if np.isnan(v) else f"{v:.0f}" + (f" · {p}" if p else "")
            for v, p in zip(row, prow, strict=True)
        ]
        for row, prow in zip(z, patterns, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(checkpoint_names),
            y=short,
            zmin=0.0,
            zmax=100.0,
            colorscale="Blues",
            colorbar={"title": "zeros (%)"},
            text=text,
            customdata=[[p or "none" for p in prow] for prow in patterns],
            texttemplate="%{text}",
            hovertemplate=(
                "layer %{y}<br>%{x}<br>%{z:.2f}% zeros<br>N:M pattern: %{customdata}"
                "<extra></extra>"
            ),
        )
    )
    return _layer_by_checkpoint_layout(fig, len(layers))


def checkpoint_rows(
    checkpoints: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Checkpoint table rows with the newest evaluation's accuracy and mean CKA joined in."""
    accuracy: dict[int, float] = {}
    mean_cka: dict[int, float] = {}
    if evaluation:
        cka = np.asarray(evaluation["cka"], dtype=float)
        for i, cid in enumerate(evaluation["checkpoint_ids"]):
            value = float(evaluation["accuracy"][i])
            if np.isfinite(value):  # NaN: a model without a classifier head
                accuracy[int(cid)] = value
            if cka.size:
                mean_cka[int(cid)] = float(np.mean(cka[i]))
    rows = []
    for c in checkpoints:
        rows.append(
            {
                "id": c["id"],
                "name": c["name"],
                "role": c["role"],
                "method": c.get("method") or "",
                "target_sparsity": c.get("target_sparsity"),
                "measured_sparsity": c["measured_sparsity"],
                "num_params": c["num_params"],
                "num_nonzero": c["num_nonzero"],
                "accuracy": accuracy.get(c["id"]),
                "mean_cka": mean_cka.get(c["id"]),
                "compression_ratio": c.get("compression_ratio"),
                "theoretical_speedup": c.get("theoretical_speedup"),
                "format": c["format"],
            }
        )
    return rows
