"""Layers page figures: where pruned networks drift from the dense model, layer by layer.

Every builder takes the arrays of one stored result
(`prunescope.server.services.layer_analysis`) and returns a Plotly figure; the `*_table`
helpers return the same numbers as rows for CSV export, so a downloaded table always matches
the figure it came from. Missing results or arrays give an explanatory empty figure (and no
rows); arrays whose shapes disagree raise ValueError naming the array.

The measures (computed by `prunescope.workers.analyses.layers.compare_layers` and
`prunescope.workers.analyses.masks_and_neurons`, not here):

- linear CKA, ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) (Kornblith et al., ICML 2019), and its debiased
  form with the unbiased HSIC of Song et al. (2012);
- SVCCA, the mean canonical correlation after keeping 99 % of each side's variance (Raghu et
  al., NeurIPS 2017), and PWCCA, Σαᵢρᵢ / Σαᵢ weighting each canonical correlation by how much
  of the representation its direction carries (Morcos et al., NeurIPS 2018);
- orthogonal Procrustes distance 2 − 2‖XᵀY‖_* of centred, unit-norm representations, in
  [0, 2] with 0 for identical ones (Ding, Denain & Steinhardt, NeurIPS 2021);
- complexity: RankMe effective rank exp(−Σ pₖ log pₖ) (Garrido et al., ICML 2023), the
  participation ratio (Σλ)²/Σλ², the principal directions holding 99 % of the variance, and
  the TwoNN intrinsic dimension (Facco et al., Sci. Rep. 2017);
- mask IoU |A ∩ B| / |A ∪ B| of the kept weights, beside the IoU two independent random
  masks of the same per-layer counts would have;
- Wasserstein neurons: the 1-Wasserstein distance between a dense neuron's outputs and a
  Gaussian of the same mean and variance, over σ (Sawmya et al., 2024), against the share
  of that neuron's incoming weights a method pruned, with Spearman's ρ between the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunescope.dashboard.figures.overview import METHOD_COLOURS, empty_figure, method_colour

Arrays = Mapping[str, Any]


class Measure(NamedTuple):
    key: str  # array name in the stored result
    label: str  # axis and legend text


# URL value → stored array. Each is a per-layer comparison with the dense model's same layer.
SIMILARITY_METRICS: dict[str, Measure] = {
    "cka": Measure("cka", "linear CKA to dense"),
    "cka_debiased": Measure("cka_debiased_diag", "debiased linear CKA to dense"),
    "svcca": Measure("svcca", "SVCCA to dense"),
    "pwcca": Measure("pwcca", "PWCCA to dense"),
    "procrustes": Measure("procrustes", "Procrustes distance to dense (0 = identical)"),
}
# Dense layer i against layer j of one checkpoint.
LAYER_MATRICES: dict[str, Measure] = {
    "cka": Measure("cka_layers", "linear CKA"),
    "cka_debiased": Measure("cka_debiased", "debiased linear CKA"),
}
COMPLEXITY_MEASURES: dict[str, Measure] = {
    "effective_rank": Measure("effective_rank", "effective rank (RankMe)"),
    "participation_ratio": Measure("participation_ratio", "participation ratio"),
    "dims_99": Measure("dims_99", "principal directions for 99 % of the variance"),
    "twonn": Measure("twonn", "TwoNN intrinsic dimension"),
}
# Similarities bounded by 1 share one fixed axis so panels and methods compare at a glance.
_UNIT_RANGE = {"cka", "svcca", "pwcca"}

NO_EVALUATION = (
    "No evaluation yet — run the analysis job (“Run analysis” on the project page)."
)
NO_MASKS = (
    "No mask comparison yet — the analysis job compares the masks of pruned checkpoints "
    "whose layers kept their shape."
)
NO_NEURONS = (
    "No Wasserstein-neuron result — the analysis job computes it (parameter neurons=true) "
    "for registry models with pruned checkpoints whose layers kept their width."
)
ALL_LAYERS = "all"


class _Missing(Exception):
    """The data a view needs is absent; the message tells the user how to get it."""


def _choose(table: Mapping[str, Measure], name: str, what: str) -> Measure:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return table[name]


def _array(data: Arrays, key: str, what: str) -> np.ndarray:
    if key not in data:
        raise _Missing(f"This {what} result has no {key!r}; run the analysis job again.")
    return np.asarray(data[key])


def _shaped(array: np.ndarray, key: str, expected: tuple[int, ...]) -> np.ndarray:
    if array.shape != expected:
        raise ValueError(f"{key} has shape {array.shape}, expected {expected}")
    return array


def _strings(array: np.ndarray) -> list[str]:
    return [str(v) for v in array.tolist()]


@dataclass(frozen=True)
class _Evaluation:
    """One evaluation's checkpoints (rows) with one per-layer array, shapes checked."""

    names: list[str]
    roles: list[str]
    methods: list[str]  # "" for uploaded pruned checkpoints becomes "uploaded"
    sparsity: np.ndarray  # [C], measured
    layers: list[str]
    values: np.ndarray  # [C, L] or [C, L, L]

    @property
    def dense(self) -> int | None:
        return next((i for i, role in enumerate(self.roles) if role == "dense"), None)

    def by_method(self) -> dict[str, list[int]]:
        """Pruned rows per method, each ordered by measured sparsity."""
        groups: dict[str, list[int]] = {}
        for i, (role, method) in enumerate(zip(self.roles, self.methods, strict=True)):
            if role != "dense":
                groups.setdefault(method, []).append(i)
        return {
            m: sorted(rows, key=lambda i: self.sparsity[i]) for m, rows in sorted(groups.items())
        }


def _evaluation(evaluation: Arrays | None, key: str, *, square: bool = False) -> _Evaluation:
    if evaluation is None:
        raise _Missing(NO_EVALUATION)
    names = _strings(_array(evaluation, "checkpoint_names", "evaluation"))
    layers = _strings(_array(evaluation, "layers", "evaluation"))
    c, n = len(names), len(layers)
    roles = _strings(_shaped(_array(evaluation, "checkpoint_roles", "evaluation"),
                             "checkpoint_roles", (c,)))
    methods = _strings(_shaped(_array(evaluation, "checkpoint_methods", "evaluation"),
                               "checkpoint_methods", (c,)))
    sparsity = _shaped(_array(evaluation, "sparsity", "evaluation"), "sparsity", (c,))
    values = _array(evaluation, key, "evaluation")
    values = _shaped(values, key, (c, n, n) if square else (c, n)).astype(float)
    return _Evaluation(
        names=names,
        roles=roles,
        methods=[m or "uploaded" for m in methods],
        sparsity=sparsity.astype(float),
        layers=layers,
        values=values,
    )


def _index(options: Sequence[str], value: str, what: str) -> int:
    if value not in options:
        raise _Missing(
            f"{what} {value!r} is not in this result; choose one of {', '.join(options)}."
        )
    return list(options).index(value)


def short_layer(name: str) -> str:
    """State-dict key → module name ("conv1.0.weight" → "conv1.0")."""
    return name.removesuffix(".weight")


# ------------------------------------------------------------------ similarity vs sparsity


def _grid(n_panels: int, columns: int) -> tuple[int, int]:
    cols = max(1, min(n_panels, columns))
    return math.ceil(n_panels / cols), cols


def metric_vs_sparsity(
    evaluation: Arrays | None, metric: str = "cka", *, columns: int = 4
) -> go.Figure:
    """One panel per layer: the chosen similarity to the dense model against measured sparsity,
    one line per pruning method starting at the dense model (its row compares it with itself).
    """
    measure = _choose(SIMILARITY_METRICS, metric, "metric")
    try:
        ev = _evaluation(evaluation, measure.key)
    except _Missing as exc:
        return empty_figure(str(exc))
    groups = ev.by_method()
    if not ev.layers or not groups:
        return empty_figure("No pruned checkpoints in this evaluation — prune or upload one.")
    rows, cols = _grid(len(ev.layers), columns)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=ev.layers,
        horizontal_spacing=0.05,
        vertical_spacing=min(0.15, 0.9 / max(rows - 1, 1)),
    )
    order = list(groups)
    start = [] if ev.dense is None else [ev.dense]
    for layer_index, layer in enumerate(ev.layers):
        row, col = divmod(layer_index, cols)
        for method, members in groups.items():
            points = start + members
            fig.add_trace(
                go.Scatter(
                    x=(100 * ev.sparsity[points]).tolist(),
                    y=ev.values[points, layer_index].tolist(),
                    text=[ev.names[i] for i in points],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=layer_index == 0,
                    line={"color": method_colour(method, order)},
                    hovertemplate=(
                        f"%{{text}}<br>sparsity %{{x:.1f}}%<br>{measure.label} %{{y:.4f}}"
                        f"<extra>{layer}</extra>"
                    ),
                ),
                row=row + 1,
                col=col + 1,
            )
    fig.update_xaxes(range=[-3, 103])
    fig.update_xaxes(title_text="measured sparsity (%)", row=rows)
    fig.update_yaxes(matches="y")
    fig.update_yaxes(title_text=measure.label, col=1)
    if metric in _UNIT_RANGE:
        fig.update_yaxes(range=[0, 1.03])
    elif metric == "procrustes":
        fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        template="plotly_white",
        height=290 * rows + 110,
        legend={"orientation": "h", "y": -0.22 if rows == 1 else -0.1},
        margin={"l": 60, "r": 20, "t": 60, "b": 80},
    )
    return fig


def metric_vs_sparsity_table(evaluation: Arrays | None, metric: str = "cka") -> list[dict]:
    """Rows (checkpoint, role, method, sparsity, layer, metric value), every checkpoint × layer."""
    measure = _choose(SIMILARITY_METRICS, metric, "metric")
    try:
        ev = _evaluation(evaluation, measure.key)
    except _Missing:
        return []
    return [
        {
            "checkpoint": name,
            "role": ev.roles[c],
            "method": ev.methods[c],
            "sparsity": float(ev.sparsity[c]),
            "layer": layer,
            metric: float(ev.values[c, j]),
        }
        for c, name in enumerate(ev.names)
        for j, layer in enumerate(ev.layers)
    ]


# ------------------------------------------------------------------ layer × layer


def layer_pair_heatmap(
    values: np.ndarray | None, layers: Sequence[str], rows: str, columns: str,
    matrix: str = "cka", missing: str = "",
) -> go.Figure:
    """CKA between every layer of checkpoint `rows` (y) and every layer of `columns` (x).

    A bright diagonal means each layer still does what the same layer of `rows` did; weight
    off the diagonal shows a layer now resembling an earlier or later one. `values` None draws
    the `missing` message instead.
    """
    measure = _choose(LAYER_MATRICES, matrix, "layer matrix")
    if values is None:
        return empty_figure(missing or f"No layer × layer matrix for {rows} × {columns} yet.")
    z = np.asarray(values, dtype=float)
    if z.shape != (len(layers), len(layers)):
        raise ValueError(f"a {len(layers)}-layer matrix has shape {z.shape}")
    low = 0.0 if matrix == "cka" or not np.isfinite(z).any() else min(0.0, float(np.nanmin(z)))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(layers),
            y=list(layers),
            zmin=low,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": measure.label},
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate=(
                f"{rows} %{{y}} vs {columns} %{{x}}<br>{measure.label} %{{z:.4f}}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        template="plotly_white",
        height=max(340, 55 * len(layers) + 160),
        xaxis={"title": f"layer of {columns}", "tickangle": -30},
        yaxis={"title": f"layer of {rows}", "autorange": "reversed"},
        margin={"l": 100, "r": 20, "t": 30, "b": 90},
    )
    return fig


def layer_pair_table(
    values: np.ndarray | None, layers: Sequence[str], rows: str, columns: str,
    matrix: str = "cka",
) -> list[dict]:
    """Rows (rows_checkpoint, rows_layer, columns_checkpoint, columns_layer, value)."""
    measure = _choose(LAYER_MATRICES, matrix, "layer matrix")
    if values is None:
        return []
    return [
        {"rows_checkpoint": rows, "rows_layer": a, "columns_checkpoint": columns,
         "columns_layer": b, measure.key: float(values[i, j])}
        for i, a in enumerate(layers)
        for j, b in enumerate(layers)
    ]


def dense_name(evaluation: Arrays | None) -> str | None:
    """The name of the checkpoint an evaluation compares everything with."""
    if evaluation is None or "checkpoint_names" not in evaluation:
        return None
    names = _strings(np.asarray(evaluation["checkpoint_names"]))
    if "reference_id" in evaluation:
        ids = np.asarray(evaluation["checkpoint_ids"]).tolist()
        reference = int(np.asarray(evaluation["reference_id"]))
        return names[ids.index(reference)] if reference in ids else None
    roles = _strings(np.asarray(evaluation.get("checkpoint_roles", np.array([]))))
    return names[roles.index("dense")] if "dense" in roles else None


def checkpoint_id(evaluation: Arrays | None, name: str | None) -> int | None:
    """The id of a checkpoint of an evaluation, by name."""
    if evaluation is None or name is None or "checkpoint_names" not in evaluation:
        return None
    names = _strings(np.asarray(evaluation["checkpoint_names"]))
    return int(np.asarray(evaluation["checkpoint_ids"])[names.index(name)]) if name in names \
        else None


def layer_by_layer_heatmap(
    evaluation: Arrays | None, checkpoint: str, matrix: str = "cka"
) -> go.Figure:
    """CKA between every dense layer (y) and every layer of one checkpoint (x), annotated."""
    measure = _choose(LAYER_MATRICES, matrix, "layer matrix")
    try:
        ev = _evaluation(evaluation, measure.key, square=True)
        c = _index(ev.names, checkpoint, "checkpoint")
    except _Missing as exc:
        return empty_figure(str(exc))
    return layer_pair_heatmap(ev.values[c], ev.layers, dense_name(evaluation) or "dense",
                              checkpoint, matrix)


def layer_by_layer_table(
    evaluation: Arrays | None, checkpoint: str, matrix: str = "cka"
) -> list[dict]:
    """Rows (checkpoint, dense_layer, checkpoint_layer, value) of the heatmap's matrix."""
    measure = _choose(LAYER_MATRICES, matrix, "layer matrix")
    try:
        ev = _evaluation(evaluation, measure.key, square=True)
        c = _index(ev.names, checkpoint, "checkpoint")
    except _Missing:
        return []
    return [
        {
            "checkpoint": checkpoint,
            "dense_layer": dense_layer,
            "checkpoint_layer": layer,
            measure.key: float(ev.values[c, i, j]),
        }
        for i, dense_layer in enumerate(ev.layers)
        for j, layer in enumerate(ev.layers)
    ]


# ------------------------------------------------------------------ complexity


def complexity_by_layer(evaluation: Arrays | None, measure: str = "effective_rank") -> go.Figure:
    """The chosen complexity of each layer, one line per checkpoint; the dense model in bold
    black, pruned checkpoints in their method's colour, darker as they get sparser."""
    chosen = _choose(COMPLEXITY_MEASURES, measure, "complexity measure")
    try:
        ev = _evaluation(evaluation, chosen.key)
    except _Missing as exc:
        return empty_figure(str(exc))
    if not ev.layers:
        return empty_figure("This evaluation compared no layers.")
    widths = evaluation.get("widths") if evaluation is not None else None
    widths = None if widths is None or np.shape(widths) != ev.values.shape else np.asarray(widths)
    groups = ev.by_method()
    order = list(groups)
    fig = go.Figure()
    rows = ([] if ev.dense is None else [ev.dense]) + [i for m in groups.values() for i in m]
    for c in rows:
        name, method = ev.names[c], ev.methods[c]
        if c == ev.dense:
            style: dict[str, Any] = {"line": {"color": METHOD_COLOURS["dense"], "width": 4}}
        else:
            members = groups[method]
            rank = members.index(c) / max(len(members) - 1, 1)
            style = {"line": {"color": method_colour(method, order), "width": 2},
                     "opacity": 0.4 + 0.6 * rank}
        customdata = None if widths is None else widths[c].tolist()
        fig.add_trace(
            go.Scatter(
                x=ev.layers,
                y=ev.values[c].tolist(),
                customdata=customdata,
                mode="lines+markers",
                name=name,
                legendgroup=method if c != ev.dense else "dense",
                hovertemplate=(
                    f"{name}<br>%{{x}}<br>{chosen.label} %{{y:.3f}}"
                    + ("<br>width %{customdata}" if customdata is not None else "")
                    + "<extra></extra>"
                ),
                **style,
            )
        )
    fig.update_layout(
        template="plotly_white",
        height=420,
        xaxis={"title": "layer", "type": "category"},
        yaxis={"title": chosen.label, "rangemode": "tozero"},
        margin={"l": 60, "r": 20, "t": 30, "b": 60},
    )
    return fig


def complexity_table(evaluation: Arrays | None, measure: str = "effective_rank") -> list[dict]:
    """Rows (checkpoint, role, method, sparsity, layer, width, measure), checkpoint × layer."""
    chosen = _choose(COMPLEXITY_MEASURES, measure, "complexity measure")
    try:
        ev = _evaluation(evaluation, chosen.key)
    except _Missing:
        return []
    widths = evaluation.get("widths") if evaluation is not None else None
    widths = None if widths is None or np.shape(widths) != ev.values.shape else np.asarray(widths)
    return [
        {
            "checkpoint": name,
            "role": ev.roles[c],
            "method": ev.methods[c],
            "sparsity": float(ev.sparsity[c]),
            "layer": layer,
            "width": None if widths is None else int(widths[c, j]),
            measure: float(ev.values[c, j]),
        }
        for c, name in enumerate(ev.names)
        for j, layer in enumerate(ev.layers)
    ]


# ------------------------------------------------------------------ mask overlap


@dataclass(frozen=True)
class _MaskIoU:
    names: list[str]
    layer: str  # ALL_LAYERS or a state-dict key
    iou: np.ndarray  # [P, P]
    chance: np.ndarray | None  # [P, P], None when the result lacks it


def _mask_iou(masks: Arrays | None, layer: str | None) -> _MaskIoU:
    if masks is None:
        raise _Missing(NO_MASKS)
    names = _strings(_array(masks, "checkpoint_names", "masks"))
    layers = _strings(_array(masks, "layers", "masks"))
    p = len(names)
    if layer in (None, "", ALL_LAYERS):
        iou = _shaped(_array(masks, "iou_kept_overall", "masks"), "iou_kept_overall", (p, p))
        chance = masks.get("iou_kept_chance_overall")
        key, layer = "iou_kept_chance_overall", ALL_LAYERS
    else:
        index = _index(layers, layer, "layer")
        per_layer = _shaped(_array(masks, "iou_kept", "masks"), "iou_kept", (len(layers), p, p))
        iou = per_layer[index]
        chance = masks.get("iou_kept_chance")
        chance = None if chance is None else _shaped(
            np.asarray(chance), "iou_kept_chance", (len(layers), p, p)
        )[index]
        key = "iou_kept_chance"
    if chance is not None:
        chance = _shaped(np.asarray(chance, dtype=float), key, (p, p))
    return _MaskIoU(names, layer, iou.astype(float), chance)


def mask_iou_heatmap(masks: Arrays | None, layer: str | None = None) -> go.Figure:
    """P × P IoU of the weights each pair of pruned checkpoints kept, over all layers or one;
    the hover adds the IoU that independent random masks of the same counts would reach."""
    try:
        m = _mask_iou(masks, layer)
    except _Missing as exc:
        return empty_figure(str(exc))
    if not m.names:
        return empty_figure("No pruned checkpoints were compared.")
    chance = np.full_like(m.iou, np.nan) if m.chance is None else m.chance
    fig = go.Figure(
        go.Heatmap(
            z=m.iou,
            x=m.names,
            y=m.names,
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar={"title": "IoU kept"},
            customdata=chance,
            text=[[f"{v:.2f}" for v in row] for row in m.iou],
            texttemplate="%{text}",
            hovertemplate=(
                "%{y} and %{x}<br>IoU of kept weights %{z:.3f}"
                "<br>chance (independent random masks) %{customdata:.3f}<extra></extra>"
            ),
        )
    )
    where = "all layers" if m.layer == ALL_LAYERS else short_layer(m.layer)
    fig.update_layout(
        template="plotly_white",
        title={"text": f"kept-weight IoU, {where}", "x": 0.02},
        height=max(360, 45 * len(m.names) + 200),
        xaxis={"tickangle": -30},
        yaxis={"autorange": "reversed"},
        margin={"l": 140, "r": 20, "t": 70, "b": 120},
    )
    return fig


def mask_iou_table(masks: Arrays | None, layer: str | None = None) -> list[dict]:
    """Rows (layer, checkpoint_a, checkpoint_b, iou_kept, iou_kept_chance) for every pair."""
    try:
        m = _mask_iou(masks, layer)
    except _Missing:
        return []
    return [
        {
            "layer": m.layer,
            "checkpoint_a": a,
            "checkpoint_b": b,
            "iou_kept": float(m.iou[i, j]),
            "iou_kept_chance": None if m.chance is None else float(m.chance[i, j]),
        }
        for i, a in enumerate(m.names)
        for j, b in enumerate(m.names)
    ]


# ------------------------------------------------------------------ Wasserstein neurons


@dataclass(frozen=True)
class _Neurons:
    dense_w1_scaled: np.ndarray  # [n]
    pruned_fraction: np.ndarray  # [n]
    shift_w1: np.ndarray  # [n]
    rho: float


def _neurons(neurons: Arrays | None, layer: str, checkpoint: str) -> _Neurons:
    if neurons is None:
        raise _Missing(NO_NEURONS)
    names = _strings(_array(neurons, "checkpoint_names", "neurons"))
    layers = _strings(_array(neurons, "layers", "neurons"))
    p, n_layers = len(names), len(layers)
    units = _shaped(_array(neurons, "num_units", "neurons"), "num_units", (n_layers,))
    dense = _array(neurons, "dense_w1_scaled", "neurons")
    if dense.ndim != 2 or dense.shape[0] != n_layers:
        raise ValueError(f"dense_w1_scaled has shape {dense.shape}, expected ({n_layers}, U)")
    width = dense.shape[1]
    if units.size and (units.min() < 0 or units.max() > width):
        raise ValueError(f"num_units {units.tolist()} do not fit the padded width {width}")
    fraction = _shaped(_array(neurons, "pruned_fraction", "neurons"), "pruned_fraction",
                       (p, n_layers, width))
    shift = _shaped(_array(neurons, "shift_w1", "neurons"), "shift_w1", (p, n_layers, width))
    rho = _shaped(_array(neurons, "rho_w1_scaled", "neurons"), "rho_w1_scaled", (p, n_layers))
    j = _index(layers, layer, "layer")
    c = _index(names, checkpoint, "checkpoint")
    n = int(units[j])
    return _Neurons(
        dense_w1_scaled=dense[j, :n].astype(float),
        pruned_fraction=fraction[c, j, :n].astype(float),
        shift_w1=shift[c, j, :n].astype(float),
        rho=float(rho[c, j]),
    )


def wasserstein_neurons_scatter(neurons: Arrays | None, layer: str, checkpoint: str) -> go.Figure:
    """Each neuron of one layer: the dense model's W1/σ (x) against the share of its incoming
    weights a checkpoint pruned (y), coloured by how far pruning moved its outputs (W1 shift).
    A negative Spearman ρ means the method spared the neurons that are far from Gaussian."""
    try:
        data = _neurons(neurons, layer, checkpoint)
    except _Missing as exc:
        return empty_figure(str(exc))
    index = np.arange(data.dense_w1_scaled.size)
    fig = go.Figure(
        go.Scattergl(
            x=data.dense_w1_scaled,
            y=data.pruned_fraction,
            mode="markers",
            customdata=np.column_stack([index, data.shift_w1]),
            marker={
                "color": data.shift_w1,
                "colorscale": "Plasma",
                "colorbar": {"title": "W1 shift"},
                "size": 7,
                "opacity": 0.8,
            },
            hovertemplate=(
                "neuron %{customdata[0]}<br>dense W1/σ %{x:.4f}<br>pruned %{y:.1%}"
                "<br>W1 shift dense → pruned %{customdata[1]:.4f}<extra></extra>"
            ),
            name=checkpoint,
        )
    )
    rho = f"Spearman ρ = {data.rho:+.3f}" if np.isfinite(data.rho) else "Spearman ρ undefined"
    fig.update_layout(
        template="plotly_white",
        title={"text": f"{layer}, {checkpoint}: {rho}", "x": 0.02},
        height=440,
        xaxis={"title": "dense neuron's W1 distance to a Gaussian / σ"},
        yaxis={"title": "share of incoming weights pruned", "tickformat": ".0%",
               "range": [-0.03, 1.03]},
        margin={"l": 70, "r": 20, "t": 70, "b": 60},
    )
    return fig


def wasserstein_neurons_table(
    neurons: Arrays | None, layer: str, checkpoint: str
) -> list[dict]:
    """Rows (layer, checkpoint, neuron, dense_w1_scaled, pruned_fraction, shift_w1)."""
    try:
        data = _neurons(neurons, layer, checkpoint)
    except _Missing:
        return []
    return [
        {
            "layer": layer,
            "checkpoint": checkpoint,
            "neuron": i,
            "dense_w1_scaled": float(data.dense_w1_scaled[i]),
            "pruned_fraction": float(data.pruned_fraction[i]),
            "shift_w1": float(data.shift_w1[i]),
        }
        for i in range(data.dense_w1_scaled.size)
    ]
