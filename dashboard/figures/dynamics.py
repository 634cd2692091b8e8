"""Dynamics figures: how each training example is learned (MAP-D, Dataset Cartography) and
which examples pruning forgets (pruning-identified exemplars), as pure builders.

Inputs are the arrays of the "dynamics" result
(`prunescope.workers.analyses.dynamics.analyse_dynamics`): R training runs, N training
examples, E epochs, K MAP-D probe suites, M test examples, C classes, P pruned populations.
A population is the runs of one (mode, sparsity); the dense population is the runs of mode
"dense". Wherever a view shows "a run", it may also show a
population's mean: the run choice "mean:dense" or "mean:<population name>" averages the
member runs' per-example statistics.

- Loss per probe suite: Siddiqui et al., "Metadata Archaeology" (MAP-D), ICLR 2023.
- Data map: Swayamdipta et al., "Dataset Cartography", EMNLP 2020 (variability × confidence).
- PIEs and per-class recall: Hooker et al., "What Do Compressed Deep Neural Networks
  Forget?", 2019.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunescope.dashboard.figures.overview import METHOD_COLOURS, empty_figure, method_colour

Arrays = Mapping[str, np.ndarray]

NO_DYNAMICS = ("No dynamics analysis yet: press “Run the dynamics analysis” (it reads the "
               "training runs that “train_dynamics” jobs recorded).")
NO_POPULATION = ("No pruned population to compare: record gmp or finetune training runs "
                 "(“train_dynamics” jobs) and run the dynamics analysis again.")
DENSE = "dense"
MEAN_PREFIX = "mean:"
DENSE_COLOUR = METHOD_COLOURS["dense"]
# The pruning modes in a fixed order, so each keeps its colour on every figure.
MODE_ORDER = ("gmp", "finetune")
# Colours of the MAP-D categories named by `prunescope.workers.analyses.dynamics_training`;
# other names take FALLBACK in the order of the result's categories.
CATEGORY_COLOURS = {
    "typical": "#2ca02c",
    "atypical": "#ff7f0e",
    "mislabeled": "#d62728",
    "random_outputs": "#d62728",
    "corrupted": "#9467bd",
    "random_inputs": "#8c564b",
    "ood": "#17becf",
}
CATEGORY_FALLBACK = ["#1f77b4", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f", "#8c564b"]
BACKGROUND_COLOUR = "#c7c7c7"  # examples outside every probe suite; non-PIEs
PIE_COLOUR = "#e45756"
COLOR_BY = {"mapd": "MAP-D top category", "suite": "planted probe suite",
            "pie": "train PIE of the population"}
SUITE_VIEWS = {"panels": "one panel per suite", "overlay": "suites on one axes"}
GALLERY_SIZE = 48
SIGNIFICANCE = 0.05


class _Missing(Exception):
    """What a figure cannot show, in words for its empty figure."""


def strings(values: Any) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _require(dyn: Arrays | None) -> Arrays:
    if dyn is None:
        raise _Missing(NO_DYNAMICS)
    return dyn


def category_colour(category: str, categories: Sequence[str] = ()) -> str:
    """A probe category's colour, the same on every figure of the page."""
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    index = list(categories).index(category) if category in categories else len(category)
    return CATEGORY_FALLBACK[index % len(CATEGORY_FALLBACK)]


def mode_colour(mode: str) -> str:
    """A pruning mode's colour (dense black), via the project's method palette."""
    return DENSE_COLOUR if mode == DENSE else method_colour(mode, MODE_ORDER)


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# ------------------------------------------------------------------ runs and populations


def population_names(dyn: Arrays | None) -> list[str]:
    return [] if dyn is None else strings(dyn["population_names"])


def dense_runs(dyn: Arrays) -> np.ndarray:
    """Indices of the dense population's runs."""
    return np.flatnonzero(np.asarray(dyn["run_modes"]).astype(str) == DENSE)


def population_runs(dyn: Arrays, population: str) -> np.ndarray:
    """Indices of a population's runs: "dense" or a pruned population's name, whose runs are
    those of its (mode, sparsity). An unknown name has none."""
    if population == DENSE:
        return dense_runs(dyn)
    names = population_names(dyn)
    if population not in names:
        return np.zeros(0, dtype=np.int64)
    p = names.index(population)
    modes = np.asarray(dyn["run_modes"]).astype(str)
    sparsity = np.asarray(dyn["run_sparsity"], dtype=np.float64)
    return np.flatnonzero((modes == str(dyn["population_modes"][p]))
                          & (sparsity == float(dyn["population_sparsity"][p])))


def run_options(dyn: Arrays | None) -> list[dict[str, str]]:
    """The run choices: each population's mean (dense first), then every single run."""
    if dyn is None:
        return []
    options = []
    for population in [DENSE, *population_names(dyn)]:
        size = population_runs(dyn, population).size
        if size:
            options.append({"label": f"{population} (mean of {size} run{'s' * (size != 1)})",
                            "value": MEAN_PREFIX + population})
    options += [{"label": name, "value": name} for name in strings(dyn["run_names"])]
    return options


def run_members(dyn: Arrays, run: str | None) -> np.ndarray:
    """The runs a run choice averages: one run by name, or a population ("mean:<name>")."""
    if run is not None and run.startswith(MEAN_PREFIX):
        members = population_runs(dyn, run[len(MEAN_PREFIX):])
    else:
        names = strings(dyn["run_names"])
        members = np.array([names.index(run)] if run in names else [], dtype=np.int64)
    if members.size == 0:
        raise _Missing(f"no run or population {run!r} in this analysis; choose one of the list")
    return members


def run_label(run: str) -> str:
    return f"{run[len(MEAN_PREFIX):]} (mean)" if run.startswith(MEAN_PREFIX) else run


def modal_labels(labels: np.ndarray, ties: str = "highest") -> np.ndarray:
    """The most frequent value per column of `labels` [runs, examples]; ties go to the
    highest value ("highest", the PIE rule of Hooker et al.'s code) or the lowest ("lowest",
    the rule of the result's dense_mapd_top). Compares runs pairwise, so memory is
    runs² × examples whatever the number of classes."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim == 1:
        return labels.copy()
    agree = (labels[:, None, :] == labels[None, :, :]).sum(axis=1)  # votes for each run's label
    span = int(labels.max() - labels.min()) + 1 if labels.size else 1
    tie_break = labels - labels.min() if ties == "highest" else labels.max() - labels
    winner = np.argmax(agree * span + tie_break, axis=0)
    return labels[winner, np.arange(labels.shape[1])]


def _top_category(dyn: Arrays, members: np.ndarray,
                  examples: np.ndarray | slice = slice(None)) -> np.ndarray:
    """MAP-D top category per example over `members` (modal, ties to the lowest index)."""
    return modal_labels(np.asarray(dyn["mapd_top"])[members][:, examples], ties="lowest")


def _member_mean(dyn: Arrays, key: str, members: np.ndarray,
                 examples: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Mean over member runs of a per-run, per-example array, in float64."""
    return np.asarray(dyn[key])[members][:, examples].astype(np.float64).mean(axis=0)


def _population_index(dyn: Arrays, population: str | None) -> int:
    names = population_names(dyn)
    if not names:
        raise _Missing(NO_POPULATION)
    if population not in names:
        raise _Missing(f"no pruned population {population!r}; choose one of "
                       f"{', '.join(names)}")
    return names.index(population)


def _population_colour(dyn: Arrays, p: int) -> str:
    return mode_colour(str(dyn["population_modes"][p]))


# ---------------------------------------------------------------- loss per probe suite


def _suite_curves(dyn: Arrays, members: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean over member runs of each run's suite mean, q25 and q75: [K, E] each. The band is
    the members' mean quartiles (a run's quartiles are over its suite's examples)."""
    return tuple(np.asarray(dyn[key], dtype=np.float64)[members].mean(axis=0)
                 for key in ("suite_mean", "suite_q25", "suite_q75"))


def suite_loss_figure(dyn: Arrays | None, population: str | None = None,
                      view: str = "panels") -> go.Figure:
    """Per-epoch loss of each probe suite: the dense population's mean line and q25–q75 band
    against a pruned population's. `view` "panels" gives one panel per suite (dense black,
    pruned in its mode's colour); "overlay" draws the suites on one axes in their category
    colours, dense solid and pruned dashed. Every trace's `meta` names its side, category
    and statistic."""
    try:
        dyn = _require(dyn)
        categories = strings(dyn["categories"])
        if not categories:
            raise _Missing("This analysis has no probe suites.")
        sides = []
        dense = dense_runs(dyn)
        if dense.size:
            sides.append((DENSE, dense, DENSE_COLOUR, "solid"))
        if population is not None and population in population_names(dyn):
            p = population_names(dyn).index(population)
            members = population_runs(dyn, population)
            if members.size:
                sides.append((population, members, _population_colour(dyn, p), "dash"))
        if not sides:
            raise _Missing("No runs to draw: the dense population is empty and no pruned "
                           "population is chosen.")
    except _Missing as exc:
        return empty_figure(str(exc))
    epochs = np.asarray(dyn["epochs"]).tolist()
    panels = view != "overlay"
    fig = make_subplots(rows=1, cols=len(categories), shared_yaxes=True,
                        subplot_titles=categories, horizontal_spacing=0.03) if panels \
        else go.Figure()
    for side, members, colour, dash in sides:
        mean, q25, q75 = _suite_curves(dyn, members)
        for k, category in enumerate(categories):
            line_colour = colour if panels else category_colour(category, categories)
            where = {"row": 1, "col": k + 1} if panels else {}
            group = side if panels else f"{side}/{category}"
            name = side if panels else f"{category} · {side}"
            fig.add_trace(go.Scatter(
                x=epochs, y=q25[k].tolist(), mode="lines", line={"width": 0},
                hoverinfo="skip", showlegend=False, legendgroup=group,
                meta={"side": side, "category": category, "stat": "q25"}), **where)
            fig.add_trace(go.Scatter(
                x=epochs, y=q75[k].tolist(), mode="lines", line={"width": 0}, fill="tonexty",
                fillcolor=_rgba(line_colour, 0.15), hoverinfo="skip", showlegend=False,
                legendgroup=group, meta={"side": side, "category": category, "stat": "q75"}),
                **where)
            fig.add_trace(go.Scatter(
                x=epochs, y=mean[k].tolist(), mode="lines", name=name, legendgroup=group,
                showlegend=(k == 0) or not panels,
                line={"color": line_colour, "width": 2, "dash": "solid" if panels else dash},
                hovertemplate=f"{side} ({members.size} run{'s' * (members.size != 1)})<br>"
                f"{category}<br>epoch %{{x}}<br>mean loss %{{y:.3f}}<extra></extra>",
                meta={"side": side, "category": category, "stat": "mean"}), **where)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss (cross-entropy)", rangemode="tozero",
                     **({"col": 1} if panels else {}))
    fig.update_layout(template="plotly_white", height=380,
                      legend={"orientation": "h", "y": -0.25},
                      margin={"l": 70, "r": 20, "t": 50, "b": 60})
    return fig


# ------------------------------------------------------------------------- data map


def _colour_groups(dyn: Arrays, members: np.ndarray, color: str,
                   population: str | None) -> list[tuple[str, str, np.ndarray]]:
    """(name, colour, example indices) per colour group of the data map, background first."""
    categories = strings(dyn["categories"])
    if color == "mapd":
        top = _top_category(dyn, members)
        return [(c, category_colour(c, categories), np.flatnonzero(top == k))
                for k, c in enumerate(categories)]
    if color == "suite":
        suite = np.asarray(dyn["suite"], dtype=np.int64)
        return [("not a probe", BACKGROUND_COLOUR, np.flatnonzero(suite < 0))] + [
            (c, category_colour(c, categories), np.flatnonzero(suite == k))
            for k, c in enumerate(categories)]
    if color == "pie":
        p = _population_index(dyn, population)
        pie = np.asarray(dyn["train_pie"], dtype=bool)[p]
        return [("not a PIE", BACKGROUND_COLOUR, np.flatnonzero(~pie)),
                (f"train PIE ({population})", PIE_COLOUR, np.flatnonzero(pie))]
    raise _Missing(f"unknown colouring {color!r}; choose one of {', '.join(COLOR_BY)}")


def data_map_figure(dyn: Arrays | None, run: str | None, color: str = "mapd",
                    population: str | None = None,
                    selection: Sequence[int] | None = None) -> go.Figure:
    """Dataset Cartography's data map: variability (std over epochs of p(label)) against
    confidence (their mean) per training example, for one run or a population's mean.
    Coloured by MAP-D top category ("mapd"), planted probe suite ("suite") or train-PIE
    status of a pruned population ("pie"); one WebGL trace per colour group, each point's
    customdata its example index, lasso ready. `selection` (example indices) is shown as
    each trace's selectedpoints."""
    try:
        dyn = _require(dyn)
        members = run_members(dyn, run)
        groups = _colour_groups(dyn, members, color, population)
    except _Missing as exc:
        return empty_figure(str(exc))
    variability = _member_mean(dyn, "variability", members)
    confidence = _member_mean(dyn, "confidence", members)
    chosen = None if selection is None else np.asarray(sorted(set(selection)), dtype=np.int64)
    fig = go.Figure()
    for name, colour, indices in groups:
        if indices.size == 0:
            continue
        selected = None if chosen is None else np.flatnonzero(np.isin(indices, chosen)).tolist()
        fig.add_trace(go.Scattergl(
            x=variability[indices].astype(np.float32), y=confidence[indices].astype(np.float32),
            customdata=indices.astype(np.int32), mode="markers",
            name=f"{name} ({indices.size})",
            marker={"color": colour, "size": 4, "opacity": 0.75},
            selectedpoints=selected, meta={"group": name},
            hovertemplate="example %{customdata}<br>variability %{x:.3f}<br>confidence "
            f"%{{y:.3f}}<extra>{name}</extra>"))
    for text, x, y in (("easy to learn", 0.02, 0.98), ("ambiguous", 0.98, 0.5),
                       ("hard to learn", 0.02, 0.02)):
        fig.add_annotation(text=text, xref="paper", yref="paper", x=x, y=y, showarrow=False,
                           xanchor="left" if x < 0.5 else "right", font={"color": "#888"})
    fig.update_layout(template="plotly_white", height=520, dragmode="lasso",
                      title={"text": run_label(run), "x": 0.02, "font": {"size": 14}},
                      xaxis={"title": "variability (std of p(label) over epochs)",
                             "rangemode": "tozero"},
                      yaxis={"title": "confidence (mean p(label) over epochs)",
                             "range": [-0.02, 1.02]},
                      legend={"itemsizing": "constant"},
                      margin={"l": 70, "r": 20, "t": 50, "b": 60})
    return fig


def map_traces(dyn: Arrays | None, run: str | None, color: str = "mapd",
               population: str | None = None) -> list[np.ndarray]:
    """The example indices of each trace `data_map_figure` draws, in trace order."""
    try:
        groups = _colour_groups(_require(dyn), run_members(dyn, run), color, population)
    except _Missing:
        return []
    return [indices for _, _, indices in groups if indices.size]


def selection_from_event(selected: Mapping[str, Any] | None,
                         traces: Sequence[np.ndarray] | None = None) -> list[int]:
    """Example indices of a data-map lasso (`selectedData`): each point's customdata, or,
    where the event leaves it out (dash does for WebGL traces), its trace's example at
    pointIndex (`traces` from `map_traces` for the map as drawn)."""
    found = set()
    for point in (selected or {}).get("points", []) or []:
        value = point.get("customdata")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.add(int(value))
            continue
        curve, index = point.get("curveNumber"), point.get("pointIndex")
        if traces is not None and isinstance(curve, int) and isinstance(index, int) and \
                0 <= curve < len(traces) and 0 <= index < len(traces[curve]):
            found.add(int(traces[curve][index]))
    return sorted(found)


# ---------------------------------------------------------------------------- PIEs


def pie_fraction_figure(dyn: Arrays | None) -> go.Figure:
    """Share of test examples that are PIEs against sparsity, one line per pruning mode."""
    try:
        dyn = _require(dyn)
        names = population_names(dyn)
        if not names:
            raise _Missing(NO_POPULATION)
    except _Missing as exc:
        return empty_figure(str(exc))
    modes = strings(dyn["population_modes"])
    sparsity = np.asarray(dyn["population_sparsity"], dtype=np.float64)
    fraction = np.asarray(dyn["pie_fraction"], dtype=np.float64)
    size = np.asarray(dyn["population_size"], dtype=np.int64)
    ordered = sorted(set(modes), key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER
                                                else len(MODE_ORDER), m))
    fig = go.Figure()
    for mode in ordered:
        members = sorted((p for p in range(len(names)) if modes[p] == mode),
                         key=lambda p: (sparsity[p], p))
        fig.add_trace(go.Scatter(
            x=(100 * sparsity[members]).tolist(), y=(100 * fraction[members]).tolist(),
            text=[names[p] for p in members], customdata=size[members].tolist(),
            mode="lines+markers", name=mode, line={"color": mode_colour(mode)},
            hovertemplate="%{text} (%{customdata} runs)<br>sparsity %{x:.0f}%<br>PIEs "
            "%{y:.2f}% of the test set<extra></extra>"))
    fig.update_layout(template="plotly_white", height=360,
                      xaxis={"title": "target sparsity (%)", "range": [0, 100]},
                      yaxis={"title": "PIEs (% of test examples)", "rangemode": "tozero"},
                      margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig


PIE_SUBSETS = ("PIEs", "non-PIEs", "all")


def pie_accuracy_figure(dyn: Arrays | None, population: str | None) -> go.Figure:
    """Mean member top-1 accuracy of the dense and a pruned population on the population's
    PIEs, the other test examples and all of them (grouped bars)."""
    try:
        dyn = _require(dyn)
        p = _population_index(dyn, population)
    except _Missing as exc:
        return empty_figure(str(exc))
    accuracy = np.asarray(dyn["pie_accuracy"], dtype=np.float64)[p]  # [subset, side]
    pies = int(np.asarray(dyn["pie"], dtype=bool)[p].sum())
    total = int(np.asarray(dyn["test_labels"]).shape[0])
    labels = [f"{s} (n={n})" for s, n in zip(PIE_SUBSETS, (pies, total - pies, total),
                                            strict=True)]
    fig = go.Figure()
    sides = ((f"{DENSE} ({int(dyn['dense_population_size'])} runs)", DENSE_COLOUR, 0),
             (f"{population} ({int(dyn['population_size'][p])} runs)",
              _population_colour(dyn, p), 1))
    for name, colour, side in sides:
        values = 100 * accuracy[:, side]
        fig.add_trace(go.Bar(
            x=labels, y=values.tolist(), name=name, marker={"color": colour},
            text=["–" if np.isnan(v) else f"{v:.1f}%" for v in values], textposition="outside",
            hovertemplate=f"{name}<br>%{{x}}<br>accuracy %{{y:.2f}}%<extra></extra>"))
    fig.update_layout(template="plotly_white", height=360, barmode="group",
                      yaxis={"title": "top-1 accuracy (%)", "range": [0, 105]},
                      title={"text": "no PIEs at this sparsity" if pies == 0 else "",
                             "x": 0.02, "font": {"size": 13}},
                      legend={"orientation": "h", "y": -0.2},
                      margin={"l": 70, "r": 20, "t": 40, "b": 60})
    return fig


def class_recall_order(change: np.ndarray) -> np.ndarray:
    """Classes from the most harmed (most negative change) up, NaN last, ties by class."""
    change = np.asarray(change, dtype=np.float64)
    missing = np.isnan(change)
    return np.lexsort((np.arange(change.size), np.where(missing, 0.0, change), missing))


def class_recall_figure(dyn: Arrays | None, population: str | None,
                        alpha: float = SIGNIFICANCE) -> go.Figure:
    """Per-class recall change of a pruned population against the dense one (normalised by
    the populations' accuracy change), most harmed first; classes whose Welch p-value is
    below `alpha` are coloured and starred."""
    try:
        dyn = _require(dyn)
        p = _population_index(dyn, population)
    except _Missing as exc:
        return empty_figure(str(exc))
    change = np.asarray(dyn["class_recall_change"], dtype=np.float64)[p]
    p_value = np.asarray(dyn["class_recall_p"], dtype=np.float64)[p]
    classes = strings(dyn["class_names"])
    order = class_recall_order(change)
    significant = np.nan_to_num(p_value, nan=1.0) < alpha
    colours = np.where(~significant, BACKGROUND_COLOUR,
                       np.where(change < 0, "#d62728", "#1f77b4"))
    fig = go.Figure(go.Bar(
        x=[classes[c] for c in order], y=(100 * change[order]).tolist(),
        customdata=p_value[order].tolist(), marker={"color": colours[order].tolist()},
        text=["*" if s else "" for s in significant[order]], textposition="outside",
        hovertemplate="%{x}<br>change %{y:+.2f} points<br>Welch p = %{customdata:.3g}"
        "<extra></extra>"))
    note = (f"* p < {alpha:g} (Welch t-test over member runs)" if not np.isnan(p_value).all()
            else "p-values need at least 2 runs in each population")
    fig.add_hline(y=0, line={"color": "#666", "width": 1})
    fig.update_layout(template="plotly_white", height=380,
                      title={"text": note, "x": 0.02, "font": {"size": 13}},
                      xaxis={"title": "class", "type": "category"},
                      yaxis={"title": "normalised recall change (points)"},
                      margin={"l": 70, "r": 20, "t": 50, "b": 80})
    return fig


# --------------------------------------------------------------------------- MAP-D


def probe_confusion_figure(dyn: Arrays | None, run: str | None) -> go.Figure:
    """MAP-D's held-out probes: true suite (rows) against predicted (columns), counts summed
    over the run choice's runs, coloured by row share; the title gives held-out accuracy
    (mean over the runs)."""
    try:
        dyn = _require(dyn)
        members = run_members(dyn, run)
        categories = strings(dyn["categories"])
        if not categories:
            raise _Missing("This analysis has no probe suites.")
    except _Missing as exc:
        return empty_figure(str(exc))
    counts = np.asarray(dyn["probe_confusion"], dtype=np.int64)[members].sum(axis=0)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    accuracy = float(np.asarray(dyn["probe_accuracy"], dtype=np.float64)[members].mean())
    fig = go.Figure(go.Heatmap(
        z=share, x=categories, y=categories, zmin=0, zmax=1, colorscale="Blues",
        text=counts.astype(str), texttemplate="%{text}", colorbar={"title": "row share"},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} probes (%{z:.0%})"
        "<extra></extra>"))
    fig.update_layout(template="plotly_white", height=380,
                      title={"text": f"{run_label(run)}: held-out probe accuracy "
                             f"{accuracy:.1%}", "x": 0.02, "font": {"size": 14}},
                      xaxis={"title": "predicted category"},
                      yaxis={"title": "true suite", "autorange": "reversed"},
                      margin={"l": 100, "r": 20, "t": 50, "b": 70})
    return fig


def pie_enrichment_figure(dyn: Arrays | None, population: str | None) -> go.Figure:
    """How much more often each MAP-D category (the dense population's top category) holds
    a population's train PIEs than the training set does: P(category | PIE) / P(category);
    the dashed line at 1 is no enrichment."""
    try:
        dyn = _require(dyn)
        p = _population_index(dyn, population)
    except _Missing as exc:
        return empty_figure(str(exc))
    enrichment = np.asarray(dyn["train_pie_category_enrichment"], dtype=np.float64)[p]
    if np.isnan(enrichment).all():
        return empty_figure(f"No train PIEs for {population}: its modal predictions match the "
                            "dense population's on every training example.")
    counts = np.asarray(dyn["train_pie_category_count"], dtype=np.int64)[p]
    categories = strings(dyn["categories"])
    fig = go.Figure(go.Bar(
        x=categories, y=enrichment.tolist(), customdata=counts.tolist(),
        marker={"color": [category_colour(c, categories) for c in categories]},
        text=[f"n={n}" for n in counts], textposition="outside",
        hovertemplate="%{x}<br>enrichment %{y:.2f}×<br>%{customdata} train PIEs"
        "<extra></extra>"))
    fig.add_hline(y=1.0, line={"dash": "dash", "color": "#666"})
    fig.update_layout(template="plotly_white", height=360,
                      xaxis={"title": "MAP-D top category (dense population)"},
                      yaxis={"title": "enrichment among train PIEs (×)", "rangemode": "tozero"},
                      margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig


def category_transition_figure(dyn: Arrays | None, population: str | None) -> go.Figure:
    """Training examples by their MAP-D category under the dense population (rows) and under
    the pruned population (columns; each population's modal top category): where pruning
    moves examples between typical, atypical, mislabeled and corrupted."""
    try:
        dyn = _require(dyn)
        p = _population_index(dyn, population)
        if "category_transitions" not in dyn:
            raise _Missing("This result predates the category comparison; run the dynamics "
                           "analysis again.")
    except _Missing as exc:
        return empty_figure(str(exc))
    table = np.asarray(dyn["category_transitions"], dtype=np.int64)[p]
    categories = strings(dyn["categories"])
    share = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(
        z=share, x=categories, y=categories, colorscale="Blues", zmin=0, zmax=1,
        text=table.tolist(), texttemplate="%{text}", colorbar={"title": "row share"},
        hovertemplate="dense %{y} → pruned %{x}<br>%{text} examples (%{z:.0%} of the row)"
                      "<extra></extra>"))
    fig.update_layout(template="plotly_white", height=360,
                      xaxis={"title": f"MAP-D category under {population}"},
                      yaxis={"title": "MAP-D category under dense", "autorange": "reversed"},
                      margin={"l": 90, "r": 20, "t": 30, "b": 60})
    return fig


def group_impact_figure(dyn: Arrays | None, population: str | None) -> go.Figure:
    """Per value of the dataset's group column: the PIE fraction and the accuracy change of
    the pruned population against the dense one (Hooker, Moorosi et al. 2020)."""
    try:
        dyn = _require(dyn)
        p = _population_index(dyn, population)
    except _Missing as exc:
        return empty_figure(str(exc))
    names = strings(dyn["group_names"]) if "group_names" in dyn else []
    if not names:
        return empty_figure("The dataset has no group column; upload one with a group column "
                            "to see PIEs per group.")
    fraction = 100 * np.asarray(dyn["group_pie_fraction"], dtype=np.float64)[p]
    change = 100 * np.asarray(dyn["group_accuracy_change"], dtype=np.float64)[p]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["PIEs (% of the group)",
                                                        "accuracy change (points)"])
    fig.add_trace(go.Bar(x=names, y=fraction.tolist(), name="PIEs", marker={"color": "#4c78a8"},
                         hovertemplate="%{x}<br>%{y:.1f}% PIEs<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=change.tolist(), name="accuracy change",
                         marker={"color": "#e45756"},
                         hovertemplate="%{x}<br>%{y:+.1f} points<extra></extra>"), row=1, col=2)
    fig.update_layout(template="plotly_white", height=340, showlegend=False,
                      margin={"l": 60, "r": 20, "t": 40, "b": 60})
    return fig


# ---------------------------------------------------------------------------- tables


def _class_name(classes: list[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else str(label)


def example_rows(dyn: Arrays | None, indices: Sequence[int], run: str | None,
                 population: str | None = None) -> list[dict[str, Any]]:
    """One row per training example in `indices` (in that order) for a table or CSV: label
    (as trained, and the original when a mislabeled probe changed it), planted suite, MAP-D
    top category and its probability, cartography statistics, forgetting events, the epoch
    by which every run had learned it (None: some run never did), the modal final
    prediction, and whether it is a train PIE of `population` (when given). Statistics are
    means over the run choice's runs. Unknown runs or indices give no rows."""
    if dyn is None:
        return []
    try:
        members = run_members(dyn, run)
    except _Missing:
        return []
    n = int(np.asarray(dyn["suite"]).shape[0])
    chosen = np.asarray([i for i in indices if 0 <= int(i) < n], dtype=np.int64)
    if chosen.size == 0:
        return []
    classes = strings(dyn["class_names"]) if "class_names" in dyn else []
    categories = strings(dyn["categories"])
    top = _top_category(dyn, members, chosen)
    probability = _member_mean(dyn, "mapd_probabilities", members, chosen)
    probability = probability[np.arange(chosen.size), top]
    learned = np.asarray(dyn["learned_epoch"], dtype=np.int64)[members][:, chosen]
    learned_by_all = np.where((learned < 0).any(axis=0), -1, learned.max(axis=0))
    prediction = modal_labels(np.asarray(dyn["final_prediction"])[members][:, chosen])
    stats = {key: _member_mean(dyn, key, members, chosen)
             for key in ("confidence", "variability", "correctness", "forgetting", "mean_loss")}
    label = np.asarray(dyn["train_labels"], dtype=np.int64)[chosen]
    original = np.asarray(dyn["original_labels"], dtype=np.int64)[chosen]
    suite = np.asarray(dyn["suite"], dtype=np.int64)[chosen]
    pie = None
    if population in population_names(dyn):
        p = population_names(dyn).index(population)
        pie = np.asarray(dyn["train_pie"], dtype=bool)[p, chosen]
    rows = []
    for j, i in enumerate(chosen.tolist()):
        row: dict[str, Any] = {
            "index": i,
            "label": _class_name(classes, int(label[j])),
            "original_label": _class_name(classes, int(original[j])),
            "suite": categories[suite[j]] if suite[j] >= 0 else "",
            "mapd_category": categories[top[j]],
            "mapd_probability": float(probability[j]),
            **{key: float(values[j]) for key, values in stats.items()},
            "learned_epoch": int(learned_by_all[j]) if learned_by_all[j] >= 0 else None,
            "prediction": _class_name(classes, int(prediction[j])),
        }
        if pie is not None:
            row["train_pie"] = bool(pie[j])
        rows.append(row)
    return rows


def surfaced_indices(dyn: Arrays | None, run: str | None, category: str | None,
                     limit: int | None = GALLERY_SIZE) -> list[int]:
    """MAP-D's surfaced examples of one category: those whose top category it is, by their
    probability of it (highest first, ties by index), the first `limit` (None: all)."""
    if dyn is None:
        return []
    categories = strings(dyn["categories"])
    try:
        members = run_members(dyn, run)
    except _Missing:
        return []
    if category not in categories:
        return []
    k = categories.index(category)
    candidates = np.flatnonzero(_top_category(dyn, members) == k)
    probability = _member_mean(dyn, "mapd_probabilities", members, candidates)[:, k]
    ranked = candidates[np.lexsort((candidates, -probability))]
    return ranked[:limit].tolist() if limit is not None else ranked.tolist()


def surfaced_rows(dyn: Arrays | None, run: str | None, category: str | None,
                  limit: int | None = GALLERY_SIZE) -> list[dict[str, Any]]:
    """`example_rows` of `surfaced_indices`, each with its rank (1 = most probable)."""
    rows = example_rows(dyn, surfaced_indices(dyn, run, category, limit), run)
    return [{"rank": r, **row} for r, row in enumerate(rows, start=1)]


def pie_rows(dyn: Arrays | None, population: str | None, split: str = "test",
             limit: int | None = None) -> list[dict[str, Any]]:
    """The PIEs of a pruned population (test set, or "train" for the training set), by
    index: true label, the dense population's and every pruned population's modal prediction
    (ties to the highest class, as the PIE rule), and the share of the dense and the chosen
    population's runs that predict their modal label."""
    if dyn is None or population not in population_names(dyn):
        return []
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    p = population_names(dyn).index(population)
    flags, labels_key, predictions_key = (("pie", "test_labels", "test_predictions")
                                          if split == "test" else
                                          ("train_pie", "train_labels", "final_prediction"))
    chosen = np.flatnonzero(np.asarray(dyn[flags], dtype=bool)[p])[:limit]
    if chosen.size == 0:
        return []
    classes = strings(dyn["class_names"])
    predictions = np.asarray(dyn[predictions_key], dtype=np.int64)[:, chosen]
    labels = np.asarray(dyn[labels_key], dtype=np.int64)[chosen]
    modal: dict[str, np.ndarray] = {}
    agreement: dict[str, np.ndarray] = {}
    for name in [DENSE, *population_names(dyn)]:
        members = population_runs(dyn, name)
        if members.size:
            modal[name] = modal_labels(predictions[members])
            agreement[name] = (predictions[members] == modal[name]).mean(axis=0)
    rows = []
    for j, i in enumerate(chosen.tolist()):
        row: dict[str, Any] = {"index": i, "label": _class_name(classes, int(labels[j]))}
        row.update({f"{name} prediction": _class_name(classes, int(values[j]))
                    for name, values in modal.items()})
        for name in (DENSE, population):
            if name in agreement:
                row[f"{name} agreement"] = float(agreement[name][j])
        if split == "test" and "cie_distance" in dyn:
            row["taxicab distance"] = float(np.asarray(dyn["cie_distance"])[p, i])
        rows.append(row)
    return rows
