"""Geometry page figures: where pruning moves each example's last-layer representation and which
classes, groups and confidences pay for it.

Every builder takes the arrays of one stored "geometry" result and returns a Plotly figure (or
rows for a table). C checkpoints, N examples, K classes, G groups; checkpoints are named as in
`checkpoint_names`, and `reference` indexes the dense one. A missing result, a missing or
inconsistent array, or a choice that is not in the result (checkpoint, class, colouring) gives
an explanatory empty figure (and no rows), never an exception.

The measures (computed by `prunescope.workers.metrics.geometry`, not here):

- per example, after Li et al., "Understanding Robustness Lottery" (IEEE TVCG 2024): the
  feature length ‖f‖, the angle between f and the true class's weight vector W_y, and the
  signed distance to the decision boundary (negative when misclassified);
- a 2-D embedding of every checkpoint's features on shared axes, so positions compare;
- per-class accuracy and confusion matrices; the classes whose accuracy drops most are the
  ones pruning "cannibalizes" (Hooker et al., "What Do Compressed Deep Neural Networks
  Forget?", 2019);
- reliability bins and the expected calibration error, Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|
  (Guo et al., ICML 2017);
- the share of examples on which two checkpoints' top-1 predictions differ, and per-group
  accuracy with its gap (best − worst group).

Large point clouds are WebGL traces whose per-point arrays stay NumPy with small dtypes
(float32 positions, uint8/uint16 codes), which Plotly ships as base64 typed arrays: about
19 bytes of JSON per point for the embedding scatter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from prunescope.dashboard.figures.overview import METHOD_COLOURS, empty_figure, method_colour

Arrays = Mapping[str, Any]

COLOR_BY = ("class", "correct", "margin_change", "group")
COLOR_BY_LABELS = {
    "class": "true class",
    "correct": "correct / wrong",
    "margin_change": "margin change from the dense model",
    "group": "group",
}

NO_GEOMETRY = (
    "No geometry result yet — run the geometry analysis (it needs a classifier and a test set)."
)
NO_GROUPS = (
    "This dataset has no group column, so there is no per-group accuracy. Add a \"group\" "
    "column to the dataset and run the geometry analysis again."
)

REFERENCE_COLOUR = "#b0b0b0"  # the dense model's points and bars, behind the checkpoint's
CORRECT_COLOUR = "#4c78a8"
WRONG_COLOUR = "#e45756"
NO_GROUP_COLOUR = "#d0d0d0"
# ColorBrewer RdBu: red where the margin shrank (towards or past the boundary), blue where it grew.
DIVERGING = [
    [0.0, "#b2182b"], [0.25, "#ef8a62"], [0.5, "#f7f7f7"], [0.75, "#67a9cf"], [1.0, "#2166ac"]
]
# The same scale for matrices of differences: red where the checkpoint has more.
DIVERGING_MORE_RED = [[1.0 - stop, colour] for stop, colour in reversed(DIVERGING)]

# Above this many classes a colour key or a cell's number no longer fits; hover still tells.
_MAX_NAMED_CLASSES = 40
_MAX_ANNOTATED_CELLS = 30
# Constant, so a zoom or lasso survives a redraw with another checkpoint or colouring: every
# checkpoint shares the embedding's axes.
_UIREVISION = "geometry-embedding"


class _Unavailable(Exception):
    """The data a view needs is absent or unusable; the message says what to do."""


# ------------------------------------------------------------------ reading the result


def _array(geom: Arrays | None, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if geom is None:
        raise _Unavailable(NO_GEOMETRY)
    if key not in geom:
        raise _Unavailable(
            f"This geometry result has no {key!r}; run the geometry analysis again."
        )
    array = np.asarray(geom[key])
    if shape is not None and array.shape != shape:
        raise _Unavailable(
            f"The geometry result is inconsistent: {key} has shape {array.shape}, expected "
            f"{shape}. Run the geometry analysis again."
        )
    return array


def _strings(array: np.ndarray) -> list[str]:
    return [str(v) for v in np.asarray(array).reshape(-1).tolist()]


def _names(geom: Arrays | None) -> list[str]:
    return _strings(_array(geom, "checkpoint_names"))


def _class_names(geom: Arrays | None) -> list[str]:
    return _strings(_array(geom, "class_names"))


def _num_examples(geom: Arrays | None) -> int:
    return int(_array(geom, "labels").size)


def _checkpoint(geom: Arrays | None, name: str) -> int:
    names = _names(geom)
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise _Unavailable(
            f"Checkpoint {name!r} is not in this geometry result; choose one of {listed}."
        )
    return names.index(name)


def _reference(geom: Arrays | None) -> int:
    c = len(_names(geom))
    reference = _array(geom, "reference", ())
    if not np.issubdtype(reference.dtype, np.integer) or not 0 <= int(reference) < c:
        raise _Unavailable(
            f"The geometry result's reference {reference.tolist()!r} names no checkpoint "
            f"(there are {c}). Run the geometry analysis again."
        )
    return int(reference)


def _per_example(geom: Arrays | None, key: str) -> np.ndarray:
    """A [C, N] array: one value per checkpoint and example."""
    return _array(geom, key, (len(_names(geom)), _num_examples(geom)))


def _class_codes(geom: Arrays | None, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Labels or predictions, checked to name a class, so a lookup by class never fails."""
    k = len(_class_names(geom))
    codes = _array(geom, key, shape)
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise _Unavailable(
            f"The geometry result's {key} lie outside the {k} classes. "
            "Run the geometry analysis again."
        )
    return codes.astype(np.int64)


def _labels(geom: Arrays | None) -> np.ndarray:
    return _class_codes(geom, "labels", (_num_examples(geom),))


def _predictions(geom: Arrays | None) -> np.ndarray:
    return _class_codes(geom, "predictions", (len(_names(geom)), _num_examples(geom)))


def _embedding(geom: Arrays | None) -> np.ndarray:
    shape = (len(_names(geom)), _num_examples(geom), 2)
    return _array(geom, "embedding", shape).astype(np.float32, copy=False)


def _embedding_method(geom: Arrays) -> str:
    method = geom.get("embedding_method")
    return "2-D embedding" if method is None else " ".join(_strings(np.asarray(method)))


def _valid_indices(indices: Sequence[int] | None, n: int) -> np.ndarray | None:
    """The in-range example indices, in the given order; None when that leaves none.

    A stale URL or an earlier result can name examples this result lacks; they are dropped,
    and a selection of nothing valid counts as no selection.
    """
    if indices is None:
        return None
    chosen = np.asarray(indices).reshape(-1)
    if chosen.size == 0 or not np.issubdtype(chosen.dtype, np.number):
        return None
    chosen = chosen[np.isfinite(chosen)].astype(np.int64)
    chosen = chosen[(chosen >= 0) & (chosen < n)]
    return chosen if chosen.size else None


def _smallest_unsigned(values: np.ndarray, largest: int) -> np.ndarray:
    """Non-negative integer codes in the smallest dtype that holds `largest` (base64 size)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)


# ------------------------------------------------------------------ colours


def _palette(n: int) -> list[str]:
    if n <= 10:
        return list(plotly.colors.qualitative.T10[:n])
    if n <= 24:
        return list(plotly.colors.qualitative.Dark24[:n])
    return plotly.colors.sample_colorscale("Turbo", [i / (n - 1) for i in range(n)])


def _discrete_colorscale(colours: Sequence[str]) -> list[list[Any]]:
    """Integer codes 0..n−1 with cmin −0.5 and cmax n−0.5: code k gets colours[k], no blend."""
    n = len(colours)
    scale: list[list[Any]] = []
    for k, colour in enumerate(colours):
        scale += [[k / n, colour], [(k + 1) / n, colour]]
    return scale


def _coded_marker(codes: np.ndarray, colours: Sequence[str], names: Sequence[str],
                  title: str) -> dict[str, Any]:
    n = len(colours)
    colorbar: dict[str, Any] = {"title": title}
    if n <= _MAX_NAMED_CLASSES:
        colorbar.update(tickvals=list(range(n)), ticktext=list(names), ticks="", len=0.9)
    return {
        "color": codes,
        "colorscale": _discrete_colorscale(colours),
        "cmin": -0.5,
        "cmax": n - 0.5,
        "colorbar": colorbar,
    }


def _checkpoint_styles(geom: Arrays | None) -> list[dict[str, Any]]:
    """Colour and opacity per checkpoint: the dense model black, pruned ones in their method's
    colour (as on every page), more opaque as they get sparser within a method."""
    names = _names(geom)
    c = len(names)
    roles = _strings(_array(geom, "checkpoint_roles", (c,)))
    methods = [m or "uploaded" for m in _strings(_array(geom, "checkpoint_methods", (c,)))]
    sparsity = np.nan_to_num(_array(geom, "sparsity", (c,)).astype(float))
    order = sorted({m for m, r in zip(methods, roles, strict=True) if r != "dense"})
    styles: list[dict[str, Any]] = []
    for i in range(c):
        if roles[i] == "dense":
            styles.append({"colour": METHOD_COLOURS["dense"], "opacity": 1.0})
            continue
        peers = [j for j in range(c) if roles[j] != "dense" and methods[j] == methods[i]]
        peers.sort(key=lambda j: (sparsity[j], j))
        rank = peers.index(i) / max(len(peers) - 1, 1)
        styles.append({"colour": method_colour(methods[i], order), "opacity": 0.45 + 0.55 * rank})
    return styles


def _point_axes() -> dict[str, Any]:
    # Projection units mean nothing; only relative positions do.
    return {"showticklabels": False, "ticks": "", "showgrid": False, "zeroline": False,
            "title": None}


# ------------------------------------------------------------------ embedding


def _colouring(geom: Arrays, c: int, color_by: str) -> tuple[dict[str, Any], str]:
    """(marker settings, hover line) for one way of colouring the checkpoint's points."""
    labels = _labels(geom)
    if color_by == "class":
        names = _class_names(geom)
        codes = _smallest_unsigned(labels, max(len(names) - 1, 0))
        marker = _coded_marker(codes, _palette(len(names)), names, "true class")
        return marker, ""
    if color_by == "correct":
        correct = (_predictions(geom)[c] == labels).astype(np.uint8)
        return _coded_marker(correct, [WRONG_COLOUR, CORRECT_COLOUR], ["wrong", "correct"],
                             "prediction"), ""
    if color_by == "margin_change":
        margin = _per_example(geom, "margin").astype(np.float32)
        change = margin[c] - margin[_reference(geom)]
        finite = change[np.isfinite(change)]
        extent = float(np.max(np.abs(finite))) if finite.size else 0.0
        extent = extent if extent > 0 else 1.0
        marker = {
            "color": change,
            "colorscale": DIVERGING,
            "cmin": -extent,
            "cmid": 0.0,
            "cmax": extent,
            "colorbar": {"title": "margin change<br>from dense"},
        }
        return marker, "<br>margin change %{marker.color:+.3f}"
    # group
    group_names = _strings(_array(geom, "group_names"))
    if not group_names:
        raise _Unavailable(NO_GROUPS)
    groups = _array(geom, "groups", (labels.size,)).astype(np.int64)
    if groups.size and (groups.min() < -1 or groups.max() >= len(group_names)):
        raise _Unavailable(
            f"The geometry result's groups lie outside −1..{len(group_names) - 1}. "
            "Run the geometry analysis again."
        )
    codes = _smallest_unsigned(groups + 1, len(group_names))  # 0: in no group
    colours = [NO_GROUP_COLOUR, *_palette(len(group_names))]
    return _coded_marker(codes, colours, ["no group", *group_names], "group"), ""


def embedding_scatter(
    geom: Arrays | None,
    checkpoint: str,
    color_by: str = "class",
    selected: Sequence[int] | None = None,
) -> go.Figure:
    """Every example's last-layer features for one checkpoint, projected to 2-D on axes all
    checkpoints share, coloured by true class, correctness, margin change from the dense
    model (diverging at 0) or group.

    One WebGL trace whose point i is example i, so a lasso's `selectedData` point indices
    (and `pointNumber` in hover) are example indices. `customdata[i]` is (label, prediction,
    confidence in %) as small unsigned integers, kept compact for large test sets; class names
    are in the colour key. `selected` (example indices) are highlighted and the rest dimmed;
    the zoom and lasso survive redraws (constant `uirevision`).
    """
    if color_by not in COLOR_BY:
        return empty_figure(f"Unknown colouring {color_by!r}; choose one of {', '.join(COLOR_BY)}.")
    try:
        c = _checkpoint(geom, checkpoint)
        embedding = _embedding(geom)
        labels = _labels(geom)
        predictions = _predictions(geom)[c]
        confidence = _per_example(geom, "confidence")[c].astype(np.float64)
        marker, colour_line = _colouring(geom, c, color_by)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    n = labels.size
    if n == 0:
        return empty_figure("This geometry result holds no examples.")
    k = len(_class_names(geom))
    percent = np.clip(np.rint(100 * np.nan_to_num(confidence)), 0, 100)
    customdata = _smallest_unsigned(
        np.column_stack([labels, predictions, percent]), max(k - 1, 100)
    )
    chosen = _valid_indices(selected, n)
    marker.update(size=4 if n > 20_000 else 6, opacity=0.8)
    trace = go.Scattergl(
        x=np.ascontiguousarray(embedding[c, :, 0]),
        y=np.ascontiguousarray(embedding[c, :, 1]),
        mode="markers",
        customdata=customdata,
        marker=marker,
        name=checkpoint,
        hovertemplate=(
            "example %{pointNumber}<br>label %{customdata[0]} · predicted %{customdata[1]}"
            f"<br>confidence %{{customdata[2]}}%{colour_line}<extra></extra>"
        ),
        # A plain list: Plotly.js reads selectedpoints as given and does not decode a typed
        # array there (a shared link's selection would be lost).
        selectedpoints=None if chosen is None else chosen.tolist(),
        selected={"marker": {"opacity": 1.0}},
        unselected={"marker": {"opacity": 0.12}},
    )
    fig = go.Figure(trace)
    fig.update_layout(
        template="plotly_white",
        # Two short lines: a long one runs under the mode bar of a half-width card.
        title={"text": f"{checkpoint}: {_embedding_method(geom)}<br><sub>last-layer features, "
                       f"coloured by {COLOR_BY_LABELS[color_by]}</sub>", "x": 0.02,
               "font": {"size": 14}},
        height=560,
        dragmode="lasso",
        hovermode="closest",
        uirevision=_UIREVISION,
        xaxis=_point_axes(),
        yaxis={**_point_axes(), "scaleanchor": "x", "scaleratio": 1},
        margin={"l": 20, "r": 20, "t": 60, "b": 20},
    )
    return fig


def movement_figure(
    geom: Arrays | None,
    checkpoint: str,
    selected: Sequence[int] | None = None,
    max_lines: int = 2000,
) -> go.Figure:
    """Where pruning moved each example: its dense position (grey), its position under the
    checkpoint (coloured correct / wrong) and a segment between them for the selected
    examples, or without a selection for those that moved furthest.

    At most `max_lines` segments are drawn, the longest first; they form one trace whose
    segments are separated by NaN. Point i of both point traces is example i.
    """
    try:
        c = _checkpoint(geom, checkpoint)
        reference = _reference(geom)
        embedding = _embedding(geom)
        labels = _labels(geom)
        correct = (_predictions(geom)[c] == labels).astype(np.uint8)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    n = labels.size
    if n == 0:
        return empty_figure("This geometry result holds no examples.")
    start, end = embedding[reference], embedding[c]
    distance = np.hypot(*(end - start).T.astype(np.float64))
    distance = np.where(np.isfinite(distance), distance, -np.inf)  # unplaced points last
    chosen = _valid_indices(selected, n)
    candidates = np.arange(n) if chosen is None else np.unique(chosen)
    order = np.argsort(-distance[candidates], kind="stable")
    lines = candidates[order[: max(int(max_lines), 0)]]
    segments = np.full((lines.size, 3, 2), np.nan, dtype=np.float32)
    segments[:, 0], segments[:, 1] = start[lines], end[lines]
    segments = segments.reshape(-1, 2)
    dense_name = _names(geom)[reference]
    size = 4 if n > 20_000 else 6
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=segments[:, 0],
            y=segments[:, 1],
            mode="lines",
            line={"color": "rgba(90, 90, 90, 0.35)", "width": 1},
            name=f"moved ({lines.size} {'selected' if chosen is not None else 'furthest'})",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=np.ascontiguousarray(start[:, 0]),
            y=np.ascontiguousarray(start[:, 1]),
            mode="markers",
            marker={"color": REFERENCE_COLOUR, "size": size, "opacity": 0.6},
            name=f"{dense_name} (dense)",
            hovertemplate="example %{pointNumber}, dense position<extra></extra>",
        )
    )
    marker = _coded_marker(correct, [WRONG_COLOUR, CORRECT_COLOUR], ["wrong", "correct"],
                           "prediction")
    marker.update(size=size, opacity=0.85)
    fig.add_trace(
        go.Scattergl(
            x=np.ascontiguousarray(end[:, 0]),
            y=np.ascontiguousarray(end[:, 1]),
            mode="markers",
            marker=marker,
            name=checkpoint,
            hovertemplate=f"example %{{pointNumber}}, {checkpoint}<extra></extra>",
        )
    )
    what = "selected examples" if chosen is not None else "examples that moved furthest"
    fig.update_layout(
        template="plotly_white",
        title={"text": f"{dense_name} → {checkpoint}: {lines.size} {what}", "x": 0.02},
        height=560,
        dragmode="lasso",
        hovermode="closest",
        uirevision=_UIREVISION,
        xaxis=_point_axes(),
        yaxis={**_point_axes(), "scaleanchor": "x", "scaleratio": 1},
        legend={"orientation": "h", "y": -0.05},
        margin={"l": 20, "r": 20, "t": 60, "b": 40},
    )
    return fig


# ------------------------------------------------------------------ per class


def angle_norm_figure(
    geom: Arrays | None, class_index: int, checkpoint_a: str, checkpoint_b: str
) -> go.Figure:
    """The examples of one class: angle to the class's weight vector (x) against feature
    length (y) under two checkpoints; misclassified examples are crosses (Li et al. 2024)."""
    try:
        class_names = _class_names(geom)
        checkpoints = [_checkpoint(geom, checkpoint_a), _checkpoint(geom, checkpoint_b)]
        labels = _labels(geom)
        predictions = _predictions(geom)
        angle = _per_example(geom, "angle")
        norm = _per_example(geom, "norm")
        styles = _checkpoint_styles(geom)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    try:
        k = int(class_index)
    except (TypeError, ValueError):
        k = -1
    if not 0 <= k < len(class_names):
        return empty_figure(
            f"Class {class_index!r} is not in this result; choose one of 0..{len(class_names) - 1}."
        )
    members = np.flatnonzero(labels == k)
    if members.size == 0:
        return empty_figure(f"The test set has no examples of class {class_names[k]!r}.")
    colours = [styles[checkpoints[0]]["colour"], styles[checkpoints[1]]["colour"]]
    if colours[1] == colours[0]:
        colours[1] = "#ff7f0e" if colours[0] != "#ff7f0e" else "#17becf"
    fig = go.Figure()
    wrong_counts = []
    for name, c, colour in zip((checkpoint_a, checkpoint_b), checkpoints, colours, strict=True):
        wrong = predictions[c, members] != k
        wrong_counts.append(int(wrong.sum()))
        fig.add_trace(
            go.Scattergl(
                x=angle[c, members].astype(np.float32),
                y=norm[c, members].astype(np.float32),
                mode="markers",
                name=name,
                customdata=np.column_stack([members, predictions[c, members]]).astype(np.int32),
                marker={
                    "color": colour,
                    "symbol": np.where(wrong, "x", "circle"),
                    "size": np.where(wrong, 8, 6).astype(np.uint8),
                    "opacity": 0.75,
                },
                hovertemplate=(
                    f"{name}<br>example %{{customdata[0]}} · predicted %{{customdata[1]}}"
                    "<br>angle %{x:.1f}°<br>norm %{y:.3f}<extra></extra>"
                ),
            )
        )
    summary = ", ".join(
        f"{name} {w}/{members.size} wrong"
        for name, w in zip((checkpoint_a, checkpoint_b), wrong_counts, strict=True)
    )
    fig.update_layout(
        template="plotly_white",
        title={"text": f"class {class_names[k]}: {summary} (crosses)", "x": 0.02},
        height=440,
        hovermode="closest",
        xaxis={"title": "angle to the class's weight vector (°)"},
        yaxis={"title": "feature length ‖f‖", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
    )
    return fig


def _order_by_drop(reference_accuracy: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Class indices by accuracy drop (reference − checkpoint), largest first; NaN drops (no
    examples) last; equal drops keep class order."""
    drop = reference_accuracy - accuracy
    return np.argsort(-drop, kind="stable")  # −NaN sorts after every number


def class_accuracy_figure(geom: Arrays | None, checkpoint: str) -> go.Figure:
    """Per-class accuracy of the dense model and the checkpoint, classes ordered by how much
    accuracy they lost: the classes pruning cannibalizes first (Hooker et al. 2019)."""
    try:
        c = _checkpoint(geom, checkpoint)
        reference = _reference(geom)
        names = _class_names(geom)
        accuracy = _array(geom, "per_class_accuracy", (len(_names(geom)), len(names)))
        styles = _checkpoint_styles(geom)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    if not names:
        return empty_figure("This geometry result has no classes.")
    accuracy = accuracy.astype(float)
    order = _order_by_drop(accuracy[reference], accuracy[c])
    x = [names[k] for k in order]
    drop = 100 * (accuracy[reference, order] - accuracy[c, order])
    dense_name = _names(geom)[reference]
    fig = go.Figure()
    for name, row, colour in (
        (f"{dense_name} (dense)", reference, REFERENCE_COLOUR),
        (checkpoint, c, styles[c]["colour"]),
    ):
        fig.add_trace(
            go.Bar(
                x=x,
                y=100 * accuracy[row, order],
                name=name,
                marker_color=colour,
                customdata=drop,
                hovertemplate=(
                    f"{name}<br>class %{{x}}<br>accuracy %{{y:.1f}}%"
                    "<br>drop from dense %{customdata:+.1f} pp<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        template="plotly_white",
        barmode="group",
        title={"text": f"per-class accuracy, {dense_name} → {checkpoint}: "
                       "largest drop first", "x": 0.02},
        height=420,
        xaxis={"title": "class", "type": "category", "tickangle": -30},
        yaxis={"title": "accuracy (%)", "range": [0, 103]},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 60, "r": 20, "t": 80, "b": 90},
    )
    return fig


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true class's row as shares of its examples; NaN for a class without examples."""
    totals = confusion.sum(axis=-1, keepdims=True).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, confusion / totals, np.nan)


def confusion_difference_figure(geom: Arrays | None, checkpoint: str) -> go.Figure:
    """Row-normalised confusion of the checkpoint minus the dense model's: red where the
    checkpoint sends more of a true class (row) to a predicted class (column). Each row sums
    to 0; a negative diagonal cell is accuracy lost on that class."""
    try:
        c = _checkpoint(geom, checkpoint)
        reference = _reference(geom)
        names = _class_names(geom)
        k = len(names)
        confusion = _array(geom, "confusion", (len(_names(geom)), k, k))
    except _Unavailable as exc:
        return empty_figure(str(exc))
    if k == 0:
        return empty_figure("This geometry result has no classes.")
    difference = _row_normalised(confusion[c]) - _row_normalised(confusion[reference])
    finite = difference[np.isfinite(difference)]
    extent = float(np.max(np.abs(finite))) if finite.size else 0.0
    extent = extent if extent > 0 else 1.0
    annotate = k <= _MAX_ANNOTATED_CELLS
    text = np.where(np.isfinite(difference), np.char.mod("%+.2f", difference), "")
    dense_name = _names(geom)[reference]
    fig = go.Figure(
        go.Heatmap(
            z=difference,
            x=names,
            y=names,
            zmin=-extent,
            zmid=0.0,
            zmax=extent,
            colorscale=DIVERGING_MORE_RED,
            colorbar={"title": "share of<br>true class"},
            text=text if annotate else None,
            texttemplate="%{text}" if annotate else None,
            hovertemplate=(
                "true %{y}, predicted %{x}<br>"
                f"{checkpoint} − {dense_name}: %{{z:+.3f}}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        template="plotly_white",
        title={"text": f"confusion change, {dense_name} → {checkpoint} "
                       "(rows: true class, shares of its examples)", "x": 0.02},
        height=max(380, 28 * k + 200),
        xaxis={"title": "predicted class", "type": "category", "tickangle": -30},
        yaxis={"title": "true class", "type": "category", "autorange": "reversed"},
        margin={"l": 100, "r": 20, "t": 60, "b": 100},
    )
    return fig


# ------------------------------------------------------------------ checkpoints compared


def reliability_figure(geom: Arrays | None, checkpoints: Sequence[str]) -> go.Figure:
    """Reliability diagram (Guo et al. 2017): each confidence bin's mean confidence against
    its accuracy, one line per checkpoint, its expected calibration error in the legend. On
    the diagonal a model is as accurate as it is confident; below it, overconfident."""
    wanted = list(checkpoints or [])
    if not wanted:
        return empty_figure("Choose at least one checkpoint for the reliability diagram.")
    try:
        rows = [_checkpoint(geom, name) for name in wanted]
        c = len(_names(geom))
        ece = _array(geom, "ece", (c,)).astype(float)
        mean_confidence = _array(geom, "reliability_confidence")
        if mean_confidence.ndim != 2 or mean_confidence.shape[0] != c:
            raise _Unavailable(
                f"The geometry result is inconsistent: reliability_confidence has shape "
                f"{mean_confidence.shape}, expected ({c}, bins). Run the geometry analysis again."
            )
        shape = mean_confidence.shape
        accuracy = _array(geom, "reliability_accuracy", shape).astype(float)
        count = _array(geom, "reliability_count", shape).astype(np.int64)
        styles = _checkpoint_styles(geom)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    mean_confidence = mean_confidence.astype(float)
    fig = go.Figure(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"color": "#999", "dash": "dot", "width": 1},
            name="perfect calibration",
            hoverinfo="skip",
        )
    )
    for name, row in zip(wanted, rows, strict=True):
        filled = (count[row] > 0) & np.isfinite(mean_confidence[row]) & np.isfinite(accuracy[row])
        label = f"{name} (ECE {ece[row]:.3f})" if np.isfinite(ece[row]) else f"{name} (ECE –)"
        fig.add_trace(
            go.Scatter(
                x=mean_confidence[row, filled],
                y=accuracy[row, filled],
                customdata=count[row, filled],
                mode="lines+markers",
                name=label,
                line={"color": styles[row]["colour"], "width": 2},
                opacity=styles[row]["opacity"],
                hovertemplate=(
                    f"{name}<br>mean confidence %{{x:.3f}}<br>accuracy %{{y:.3f}}"
                    "<br>%{customdata} examples<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        template="plotly_white",
        title={"text": "reliability: accuracy against confidence", "x": 0.02},
        height=440,
        xaxis={"title": "mean confidence in bin", "range": [0, 1.02]},
        yaxis={"title": "accuracy in bin", "range": [0, 1.02], "scaleanchor": "x"},
        legend={"orientation": "v", "x": 1.02, "y": 1},
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
    )
    return fig


def disagreement_figure(geom: Arrays | None) -> go.Figure:
    """C × C share of test examples on which two checkpoints predict different classes,
    whether or not either is right."""
    try:
        names = _names(geom)
        disagreement = _array(geom, "disagreement", (len(names), len(names))).astype(float)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    if not names:
        return empty_figure("This geometry result compares no checkpoints.")
    finite = disagreement[np.isfinite(disagreement)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    annotate = len(names) <= _MAX_ANNOTATED_CELLS
    text = np.where(
        np.isfinite(disagreement), np.char.mod("%.1f%%", 100 * disagreement), ""
    )
    fig = go.Figure(
        go.Heatmap(
            z=disagreement,
            x=names,
            y=names,
            zmin=0.0,
            zmax=top,
            colorscale="Blues",
            colorbar={"title": "disagree", "tickformat": ".0%"},
            text=text if annotate else None,
            texttemplate="%{text}" if annotate else None,
            hovertemplate="%{y} and %{x}<br>disagree on %{z:.2%} of examples<extra></extra>",
        )
    )
    fig.update_layout(
        template="plotly_white",
        title={"text": "prediction disagreement between checkpoints", "x": 0.02},
        height=max(360, 45 * len(names) + 200),
        xaxis={"type": "category", "tickangle": -30},
        yaxis={"type": "category", "autorange": "reversed"},
        margin={"l": 140, "r": 20, "t": 60, "b": 120},
    )
    return fig


def _group_gaps(accuracy: np.ndarray) -> np.ndarray:
    """Best minus worst group accuracy per checkpoint over groups with examples (NaN: none)."""
    present = np.isfinite(accuracy)
    best = np.max(np.where(present, accuracy, -np.inf), axis=1, initial=-np.inf)
    worst = np.min(np.where(present, accuracy, np.inf), axis=1, initial=np.inf)
    return np.where(present.any(axis=1), best - worst, np.nan)


def group_accuracy_figure(geom: Arrays | None) -> go.Figure:
    """Accuracy within each group of examples, one bar per checkpoint; the legend and hover
    give each checkpoint's gap between its best and worst group."""
    try:
        names = _names(geom)
        group_names = _strings(_array(geom, "group_names"))
        if not group_names:
            raise _Unavailable(NO_GROUPS)
        accuracy = _array(geom, "per_group_accuracy", (len(names), len(group_names)))
        styles = _checkpoint_styles(geom)
    except _Unavailable as exc:
        return empty_figure(str(exc))
    accuracy = accuracy.astype(float)
    gaps = _group_gaps(accuracy)
    fig = go.Figure()
    for c, name in enumerate(names):
        gap = f"{100 * gaps[c]:.1f} pp" if np.isfinite(gaps[c]) else "–"
        fig.add_trace(
            go.Bar(
                x=group_names,
                y=100 * accuracy[c],
                name=f"{name} (gap {gap})",
                marker={"color": styles[c]["colour"], "opacity": styles[c]["opacity"]},
                hovertemplate=(
                    f"{name}<br>group %{{x}}<br>accuracy %{{y:.1f}}%"
                    f"<br>best − worst group: {gap}<extra></extra>"
                ),
            )
        )
    if np.isfinite(gaps).any():
        widest = int(np.nanargmax(gaps))
        title = (f"per-group accuracy; widest gap {100 * gaps[widest]:.1f} pp "
                 f"({names[widest]})")
    else:
        title = "per-group accuracy; no group has examples"
    fig.update_layout(
        template="plotly_white",
        barmode="group",
        title={"text": title, "x": 0.02},
        height=420,
        xaxis={"title": "group", "type": "category"},
        yaxis={"title": "accuracy (%)", "range": [0, 103]},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 60, "b": 90},
    )
    return fig


# ------------------------------------------------------------------ table and controls


def _rounded(values: np.ndarray, digits: int) -> list[float | None]:
    """Plain floats for JSON, None where the value is undefined (NaN is not JSON)."""
    values = np.round(values.astype(np.float64), digits)
    return [v if np.isfinite(v) else None for v in values.tolist()]


def example_rows(
    geom: Arrays | None, indices: Sequence[int], checkpoint: str, limit: int = 200
) -> list[dict[str, Any]]:
    """One row per example (the first `limit` valid indices, in the given order): its index
    and true class, and under the dense model ("dense_…") and the checkpoint ("pruned_…")
    the predicted class, confidence, feature norm, angle (°) and margin, plus margin_change
    (pruned − dense). Plain Python values; an undefined number is None."""
    try:
        c = _checkpoint(geom, checkpoint)
        reference = _reference(geom)
        names = np.asarray(_class_names(geom), dtype=object)
        labels = _labels(geom)
        predictions = _predictions(geom)
        measures = {
            key: _per_example(geom, key) for key in ("confidence", "norm", "angle", "margin")
        }
    except _Unavailable:
        return []
    chosen = _valid_indices(indices, labels.size)
    if chosen is None:
        return []
    chosen = chosen[: max(int(limit), 0)]
    digits = {"confidence": 4, "norm": 4, "angle": 2, "margin": 4}
    columns: dict[str, list[Any]] = {
        "index": chosen.tolist(),
        "label": names[labels[chosen]].tolist(),
    }
    for prefix, row in (("dense", reference), ("pruned", c)):
        columns[f"{prefix}_prediction"] = names[predictions[row, chosen]].tolist()
        for key, values in measures.items():
            columns[f"{prefix}_{key}"] = _rounded(values[row, chosen], digits[key])
    margin = measures["margin"].astype(np.float64)
    columns["margin_change"] = _rounded(margin[c, chosen] - margin[reference, chosen], 4)
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]
