"""Attention consistency figures: does each head of a pruned Transformer attend as the dense one?

Pure builders over the analyze job's evaluation arrays (`attention_*`, [C, A, H]: checkpoints,
attention layers, heads; see `workers.analyses.layers.compare_layers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go

from dashboard.figures.overview import empty_figure, method_colour

Arrays = Mapping[str, np.ndarray]


class AttentionMeasure(NamedTuple):
    key: str
    label: str
    diverging: bool  # centred at 0 (a change) rather than a level


ATTENTION_MEASURES: dict[str, AttentionMeasure] = {
    "js": AttentionMeasure("attention_js", "Jensen–Shannon divergence from dense (bits)", False),
    "overlap": AttentionMeasure("attention_topk_overlap", "top-3 attended tokens shared with "
                                "dense", False),
    "entropy_change": AttentionMeasure("attention_entropy_change", "attention entropy change "
                                       "(bits, pruned − dense)", True),
}
NO_ATTENTION = ("No attention consistency in this project's analysis: it is computed for "
                "Hugging Face Transformer checkpoints. Run the analysis job to fill it in.")


class _Missing(Exception):
    pass


def _strings(values: np.ndarray) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _values(evaluation: Arrays | None, measure: str) -> tuple[np.ndarray, list[str]]:
    if measure not in ATTENTION_MEASURES:
        raise _Missing(f"unknown attention measure {measure!r}; choose one of "
                       f"{', '.join(ATTENTION_MEASURES)}")
    key = ATTENTION_MEASURES[measure].key
    if evaluation is None or key not in evaluation:
        raise _Missing(NO_ATTENTION)
    values = np.asarray(evaluation[key], dtype=float)
    names = _strings(evaluation["checkpoint_names"])
    if values.ndim != 3 or values.shape[0] != len(names):
        raise _Missing(f"{key} has shape {values.shape}; expected [checkpoints, layers, heads]")
    return values, names


def attention_checkpoints(evaluation: Arrays | None) -> list[str]:
    """The checkpoints an attention view can show (all but the reference)."""
    if evaluation is None or "attention_js" not in evaluation:
        return []
    names = _strings(evaluation["checkpoint_names"])
    roles = _strings(evaluation.get("checkpoint_roles", np.array(["pruned"] * len(names))))
    return [n for n, r in zip(names, roles, strict=True) if r != "dense"]


def head_heatmap(evaluation: Arrays | None, checkpoint: str | None,
                 measure: str = "js") -> go.Figure:
    """Layers (rows) × heads (columns) of one checkpoint against the dense model."""
    try:
        values, names = _values(evaluation, measure)
        if checkpoint not in names:
            raise _Missing(f"no checkpoint named {checkpoint!r} in this analysis")
    except _Missing as exc:
        return empty_figure(str(exc))
    m = ATTENTION_MEASURES[measure]
    z = values[names.index(checkpoint)]
    layers, heads = z.shape
    scale = {"colorscale": "RdBu", "zmid": 0.0} if m.diverging else \
        {"colorscale": "Viridis_r" if measure == "overlap" else "Viridis", "zmin": 0.0}
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"head {h}" for h in range(heads)], y=[f"layer {layer}" for layer in range(layers)],
        colorbar={"title": "bits" if measure != "overlap" else "share"},
        text=[[f"{v:.3f}" for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}, %{x}<br>" + m.label + " %{z:.4f}<extra></extra>", **scale,
    ))
    fig.update_layout(template="plotly_white", title={"text": f"{checkpoint}: {m.label}",
                                                      "x": 0.02, "font": {"size": 14}},
                      height=max(320, 40 * layers + 140),
                      yaxis={"autorange": "reversed"}, margin={"l": 80, "r": 20, "t": 60,
                                                               "b": 60})
    return fig


def per_layer_lines(evaluation: Arrays | None, measure: str = "js",
                    checkpoints: Sequence[str] | None = None) -> go.Figure:
    """The head-mean of a measure per layer, one line per checkpoint, coloured by method and
    shaded by sparsity (sparser darker)."""
    try:
        values, names = _values(evaluation, measure)
    except _Missing as exc:
        return empty_figure(str(exc))
    m = ATTENTION_MEASURES[measure]
    chosen = [n for n in (checkpoints or attention_checkpoints(evaluation)) if n in names]
    methods = _strings(evaluation.get("checkpoint_methods", np.array([""] * len(names))))
    sparsity = np.asarray(evaluation.get("sparsity", np.zeros(len(names))), dtype=float)
    fig = go.Figure()
    for name in sorted(chosen, key=lambda n: (methods[names.index(n)],
                                               sparsity[names.index(n)])):
        c = names.index(name)
        fig.add_trace(go.Scatter(
            x=list(range(values.shape[1])), y=np.nanmean(values[c], axis=1).tolist(),
            mode="lines+markers", name=f"{name} ({sparsity[c]:.0%})",
            line={"color": method_colour(methods[c])},
            opacity=float(0.35 + 0.65 * min(max(sparsity[c], 0.0), 1.0)),
            hovertemplate=f"{name}<br>layer %{{x}}<br>{m.label} %{{y:.4f}}<extra></extra>",
        ))
    fig.update_layout(template="plotly_white", height=380,
                      xaxis={"title": "attention layer", "dtick": 1},
                      yaxis={"title": m.label}, margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig


def attention_rows(evaluation: Arrays | None, measure: str = "js") -> list[dict[str, Any]]:
    """Rows (checkpoint, layer, head, value) of every checkpoint's heatmap, for CSV export."""
    try:
        values, names = _values(evaluation, measure)
    except _Missing:
        return []
    key = ATTENTION_MEASURES[measure].key
    return [{"checkpoint": names[c], "layer": layer, "head": h, key: float(values[c, layer, h])}
            for c in range(len(names)) for layer in range(values.shape[1])
            for h in range(values.shape[2])]


NO_PROBES = ("No probing result yet: press “Run probes” (linear probes on every layer of every "
             "checkpoint, for tasks generated from the project's sentences).")


def probe_tasks(probing: Arrays | None) -> list[str]:
    return [] if probing is None or "tasks" not in probing else _strings(probing["tasks"])


def probe_lines(probing: Arrays | None, task: str | None,
                methods: Mapping[str, str] | None = None) -> go.Figure:
    """Probe test accuracy per layer for one task, one line per checkpoint, with the task's
    majority-class accuracy as a dashed floor."""
    tasks = probe_tasks(probing)
    if not tasks:
        return empty_figure(NO_PROBES)
    if task not in tasks:
        return empty_figure(f"no probing task {task!r}; choose one of {', '.join(tasks)}")
    t = tasks.index(task)
    accuracy = np.asarray(probing["accuracy"], dtype=float)
    layers = _strings(probing["layers"])
    names = _strings(probing["checkpoint_names"])
    fig = go.Figure()
    for c, name in enumerate(names):
        method = (methods or {}).get(name, "dense" if c == 0 else name)
        fig.add_trace(go.Scatter(
            x=layers, y=accuracy[c, t].tolist(), mode="lines+markers", name=name,
            line={"color": "#222222" if method == "dense" else method_colour(method),
                  "width": 3 if method == "dense" else 2},
            hovertemplate=f"{name}<br>%{{x}}<br>accuracy %{{y:.1%}}<extra></extra>",
        ))
    majority = float(np.asarray(probing["majority"])[t])
    fig.add_trace(go.Scatter(x=layers, y=[majority] * len(layers), mode="lines",
                             name="majority class", line={"dash": "dash", "color": "#999999"},
                             hovertemplate="majority class %{y:.1%}<extra></extra>"))
    examples = int(np.asarray(probing["examples"])[t]) if "examples" in probing else None
    fig.update_layout(template="plotly_white", height=400,
                      title={"text": f"{task}" + (f" ({examples} sentences, 25 % held out)"
                                                  if examples else ""), "x": 0.02,
                             "font": {"size": 14}},
                      yaxis={"title": "probe test accuracy", "tickformat": ".0%",
                             "range": [0, 1.02]},
                      xaxis={"title": "layer"}, margin={"l": 70, "r": 20, "t": 60, "b": 60})
    return fig
