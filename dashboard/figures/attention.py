"""Attention consistency figures: does each head of a pruned Transformer attend as the dense one?

Pure builders over the analyze job's evaluation arrays (`attention_*`, [C, A, H]: checkpoints,
attention layers, heads; see `prunescope.workers.analyses.layers.compare_layers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunescope.dashboard.figures.overview import empty_figure, method_colour

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


# ------------------------------------------------------------- method × sparsity choice


class PrunedCheckpoint(NamedTuple):
    name: str
    method: str
    sparsity: int  # measured, in whole percent (the slider's unit)


def pruned_checkpoints(evaluation: Arrays | None) -> list[PrunedCheckpoint]:
    """The non-reference checkpoints with attention results, by method then sparsity."""
    names = attention_checkpoints(evaluation)
    if not names:
        return []
    all_names = _strings(evaluation["checkpoint_names"])
    methods = _strings(evaluation.get("checkpoint_methods", np.array([""] * len(all_names))))
    sparsity = np.asarray(evaluation.get("sparsity", np.zeros(len(all_names))), dtype=float)
    rows = [PrunedCheckpoint(n, methods[all_names.index(n)] or "uploaded",
                             int(round(100 * sparsity[all_names.index(n)]))) for n in names]
    return sorted(rows, key=lambda r: (r.method, r.sparsity, r.name))


def methods_of(checkpoints: Sequence[PrunedCheckpoint]) -> list[str]:
    return list(dict.fromkeys(c.method for c in checkpoints))


def nearest(checkpoints: Sequence[PrunedCheckpoint], method: str,
            sparsity: float | None) -> PrunedCheckpoint | None:
    """The checkpoint of `method` whose sparsity is closest to `sparsity` (ties: the sparser;
    None for an unknown method; the sparsest when no sparsity is given)."""
    members = [c for c in checkpoints if c.method == method]
    if not members:
        return None
    if sparsity is None:
        return members[-1]
    return min(members, key=lambda c: (abs(c.sparsity - sparsity), -c.sparsity))


def method_small_multiples(evaluation: Arrays | None, sparsity: float | None,
                           measure: str = "js") -> go.Figure:
    """One layers × heads heatmap per pruning method, each at its checkpoint nearest to
    `sparsity` (its own sparsity in the panel title), on one colour scale."""
    try:
        values, names = _values(evaluation, measure)
    except _Missing as exc:
        return empty_figure(str(exc))
    checkpoints = pruned_checkpoints(evaluation)
    chosen = [c for m in methods_of(checkpoints) if (c := nearest(checkpoints, m, sparsity))]
    if not chosen:
        return empty_figure("No pruned checkpoints in this analysis — prune or upload one.")
    m = ATTENTION_MEASURES[measure]
    panels = [values[names.index(c.name)] for c in chosen]
    if m.diverging:
        bound = max(float(np.nanmax(np.abs(p))) for p in panels) or 1.0
        scale = {"colorscale": "RdBu", "zmin": -bound, "zmax": bound}
    else:
        top = 1.0 if measure == "overlap" else max(float(np.nanmax(p)) for p in panels) or 1.0
        scale = {"colorscale": "Viridis_r" if measure == "overlap" else "Viridis",
                 "zmin": 0.0, "zmax": top}
    fig = make_subplots(rows=1, cols=len(chosen), horizontal_spacing=0.03,
                        subplot_titles=[f"{c.method} {c.sparsity}%" for c in chosen],
                        shared_yaxes=True)
    for i, (c, z) in enumerate(zip(chosen, panels, strict=True)):
        layers, heads = z.shape
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(heads)), y=list(range(layers)), showscale=i == len(chosen) - 1,
            colorbar={"title": "bits" if measure != "overlap" else "share"},
            name=c.name, hovertemplate=f"{c.name}<br>layer %{{y}}, head %{{x}}<br>{m.label} "
            "%{z:.4f}<extra></extra>", **scale,
        ), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title_text="layer", col=1, dtick=1)
    fig.update_xaxes(title_text="head", dtick=2)
    fig.update_layout(template="plotly_white", height=320,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


# ------------------------------------------------------------------ the page's view


def as_int(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def checkpoint_at(evaluation: Any, method: str | None, sparsity: Any) -> str | None:
    found = nearest(pruned_checkpoints(evaluation), method, as_int(sparsity, None)) \
        if method else None
    return found.name if found else None


# -------------------------------------------------------------------- sentence viewer


NO_MAPS = ("This sentence's attention has not been computed yet: press “Show attention”<br>"
           "(one job runs the sentence through every checkpoint; a few seconds).")


def attention_viewer(maps: Arrays | None, checkpoint: str | None, layer: int,
                     head: int) -> go.Figure:
    """Dense and pruned attention of one head side by side, tokens on both axes (rows are
    queries, columns keys), and their difference (pruned − dense)."""
    if maps is None:
        return empty_figure(NO_MAPS)
    names = _strings(maps["checkpoint_names"])
    if checkpoint not in names:
        return empty_figure(f"{checkpoint!r} is not in these maps (computed before it was "
                            "added); press “Show attention” to compute them again")
    attention = maps["attention"]
    layers, heads = attention.shape[1:3]
    if not (0 <= layer < layers and 0 <= head < heads):
        return empty_figure(f"layer {layer}, head {head} is out of range: the model has "
                            f"{layers} layers of {heads} heads")
    tokens = _strings(maps["tokens"])
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]  # repeated tokens stay distinct
    dense = attention[0, layer, head].astype(np.float64)
    pruned = attention[names.index(checkpoint), layer, head].astype(np.float64)
    diff = pruned - dense
    bound = float(np.abs(diff).max()) or 1.0
    js = float(np.asarray(maps["head_js"])[names.index(checkpoint), layer, head]) \
        if "head_js" in maps else float("nan")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=[
        f"{names[0]}", f"{checkpoint}", f"difference (JS {js:.3f} bits)"])
    common = {"x": labels, "y": labels}
    fig.add_trace(go.Heatmap(z=dense, zmin=0, zmax=1, colorscale="Blues", showscale=False,
                             hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra>"
                             f"{names[0]}</extra>", **common), row=1, col=1)
    fig.add_trace(go.Heatmap(z=pruned, zmin=0, zmax=1, colorscale="Blues", showscale=False,
                             hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra>"
                             f"{checkpoint}</extra>", **common), row=1, col=2)
    fig.add_trace(go.Heatmap(z=diff, zmin=-bound, zmax=bound, colorscale="RdBu_r",
                             colorbar={"title": "Δ weight"},
                             hovertemplate="query %{y}<br>key %{x}<br>Δ %{z:+.3f}"
                             "<extra>pruned − dense</extra>", **common), row=1, col=3)
    size = len(tokens)
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9}, nticks=size)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 9}, nticks=size)
    fig.update_layout(template="plotly_white", height=max(380, 12 * size + 200),
                      title={"text": f"layer {layer}, head {head}", "x": 0.02,
                             "font": {"size": 14}},
                      margin={"l": 90, "r": 20, "t": 70, "b": 110})
    return fig


def viewer_rows(maps: Arrays | None, checkpoint: str | None, layer: int,
                head: int) -> list[dict[str, Any]]:
    """(query, key, dense, pruned) rows of the viewed head, for CSV export."""
    if maps is None or checkpoint not in _strings(maps["checkpoint_names"]):
        return []
    names, tokens = _strings(maps["checkpoint_names"]), _strings(maps["tokens"])
    dense = maps["attention"][0, layer, head]
    pruned = maps["attention"][names.index(checkpoint), layer, head]
    return [{"query": f"{i}:{tokens[i]}", "key": f"{j}:{tokens[j]}",
             names[0]: float(dense[i, j]), checkpoint: float(pruned[i, j])}
            for i in range(len(tokens)) for j in range(len(tokens))]


# -------------------------------------------------------- layer drift and language model


DRIFT_MEASURES = {
    "cka": ("cka", "linear CKA with dense (same layer)"),
    "effective_rank": ("effective_rank", "effective rank of the layer's features"),
}


def layer_drift_lines(evaluation: Arrays | None, measure: str = "cka") -> go.Figure:
    """A per-layer measure of every checkpoint's hidden states (x: layer), one line each,
    the dense model bold black and pruned ones in their method's colour, sparser darker."""
    if measure not in DRIFT_MEASURES:
        return empty_figure(f"unknown drift measure {measure!r}; choose one of "
                            f"{', '.join(DRIFT_MEASURES)}")
    key, label = DRIFT_MEASURES[measure]
    if evaluation is None or key not in evaluation:
        return empty_figure("No layer statistics yet: run the analysis job.")
    values = np.asarray(evaluation[key], dtype=float)
    names = _strings(evaluation["checkpoint_names"])
    layers = _strings(evaluation["layers"]) if "layers" in evaluation else \
        [str(i) for i in range(values.shape[1])]
    roles = _strings(evaluation.get("checkpoint_roles", np.array(["pruned"] * len(names))))
    checkpoints = pruned_checkpoints(evaluation)
    order = methods_of(checkpoints)
    fig = go.Figure()
    for c, name in enumerate(names):
        if roles[c] == "dense":
            style: dict[str, Any] = {"line": {"color": "#111111", "width": 4}}
        else:
            found = next((p for p in checkpoints if p.name == name), None)
            method, sparsity = (found.method, found.sparsity) if found else ("uploaded", 50)
            style = {"line": {"color": method_colour(method, order), "width": 2},
                     "opacity": 0.35 + 0.65 * min(max(sparsity / 100, 0.0), 1.0),
                     "legendgroup": method}
        fig.add_trace(go.Scatter(x=layers, y=values[c].tolist(), mode="lines+markers",
                                 name=name, hovertemplate=f"{name}<br>%{{x}}<br>{label} "
                                 "%{y:.4f}<extra></extra>", **style))
    fig.update_layout(template="plotly_white", height=380,
                      xaxis={"title": "layer", "type": "category"},
                      yaxis={"title": label, "rangemode": "tozero"},
                      margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig


NO_LM_HEAD = ("No language-model quality: these checkpoints have no language-model head.<br>"
              "Perplexity needs a causal LM head, masked-token accuracy an MLM head;<br>"
              "all-MiniLM-L6-v2 is a sentence encoder without one.")


def lm_quality_lines(evaluation: Arrays | None) -> go.Figure:
    """Perplexity (decoders) or masked-token accuracy (encoders) against measured sparsity,
    one line per method starting at the dense model."""
    if evaluation is None or "lm_quality" not in evaluation:
        return empty_figure(NO_LM_HEAD)
    measure = str(np.asarray(evaluation["lm_measure"]))
    values = np.asarray(evaluation["lm_quality"], dtype=float)
    names = _strings(evaluation["checkpoint_names"])
    roles = _strings(evaluation.get("checkpoint_roles", np.array(["pruned"] * len(names))))
    sparsity = np.asarray(evaluation.get("sparsity", np.zeros(len(names))), dtype=float)
    methods = _strings(evaluation.get("checkpoint_methods", np.array([""] * len(names))))
    dense = [c for c, r in enumerate(roles) if r == "dense"]
    groups: dict[str, list[int]] = {}
    for c in range(len(names)):
        if roles[c] != "dense":
            groups.setdefault(methods[c] or "uploaded", []).append(c)
    fig = go.Figure()
    for method, members in groups.items():
        points = dense + sorted(members, key=lambda c: sparsity[c])
        fig.add_trace(go.Scatter(
            x=(100 * sparsity[points]).tolist(), y=values[points].tolist(),
            text=[names[c] for c in points], mode="lines+markers", name=method,
            line={"color": method_colour(method, list(groups))},
            hovertemplate="%{text}<br>sparsity %{x:.1f}%<br>" + measure.replace("_", " ")
            + " %{y:.4g}<extra></extra>"))
    perplexity = measure == "perplexity"
    fig.update_layout(template="plotly_white", height=360,
                      xaxis={"title": "measured sparsity (%)"},
                      yaxis={"title": measure.replace("_", " "),
                             **({"type": "log"} if perplexity else {"tickformat": ".0%"})},
                      margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig
