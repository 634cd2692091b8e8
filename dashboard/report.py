"""A project's report as one self-contained HTML file: the method comparison and pinned figures.

The file opens offline: Plotly's JavaScript is inlined once (with the first figure), nothing
is fetched from elsewhere, and links to the dashboard's pages are left out (they would not
resolve from a file). Figures come from the same builders as the pages
(`prunescope.dashboard.figures.*`), so a report shows what the dashboard showed. `router`
serves it to API callers as `GET /api/v1/projects/{id}/report`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, NamedTuple

import plotly.graph_objects as go
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from prunescope.dashboard.figures import attention, dynamics, layers, overview
from prunescope.dashboard.figures.comparison import (
    comparison_columns,
    headline_vs_sparsity,
    plottable_columns,
)
from prunescope.server.api.deps import IdPath, SettingsDep
from prunescope.server.errors import InvalidInput
from prunescope.server.schemas import REFUSALS
from prunescope.server.services import analyses, checkpoints, projects
from prunescope.server.services.comparison import COMPARISON_COLUMNS, Column, comparison_rows

Arrays = Mapping[str, Any]
COMPARISON_PREFIX = "comparison:"


@dataclass(frozen=True)
class ReportInputs:
    """What a report (and the project page's comparison) is built from."""

    project_id: int
    name: str
    description: str = ""
    architecture: str = ""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    evaluation: Arrays | None = None
    dynamics: Arrays | None = None
    geometry: Arrays | None = None
    layer_sparsity: Mapping[str, Any] | None = None


def report_inputs(project_id: int, settings: Any = None) -> ReportInputs:
    """The project's checkpoints and newest analyses, read through the service layer
    (NotFound for an unknown project or one the caller may not read)."""
    project = projects.get_project(project_id, settings)
    return ReportInputs(
        project_id=project_id,
        name=project.name,
        description=project.description or "",
        architecture=project.architecture,
        checkpoints=[c.model_dump() for c in checkpoints.list_checkpoints(project_id, settings)],
        evaluation=analyses.layer_analysis(project_id, settings)["evaluation"],
        dynamics=analyses.dynamics_analysis(project_id, settings)["dynamics"],
        geometry=analyses.geometry_analysis(project_id, settings)["geometry"],
        layer_sparsity=checkpoints.layer_sparsity(project_id, settings),
    )


def comparison_of(inputs: ReportInputs) -> list[dict[str, Any]]:
    """`comparison_rows` of the inputs."""
    return comparison_rows(inputs.project_id, inputs.checkpoints, inputs.evaluation,
                           inputs.dynamics, inputs.geometry)


# ------------------------------------------------------------------- pinnable figures


class Pinnable(NamedTuple):
    label: str
    build: Callable[[ReportInputs], go.Figure]
    available: Callable[[ReportInputs], bool]


def _accuracy(inputs: ReportInputs) -> go.Figure:
    return overview.accuracy_vs_sparsity(
        overview.checkpoint_rows(inputs.checkpoints, inputs.evaluation))


def _cka_heatmap(inputs: ReportInputs) -> go.Figure:
    ev = inputs.evaluation
    if ev is None or "cka" not in ev:
        return overview.empty_figure("No layer comparison yet — the analysis job fills this in.")
    return overview.layer_cka_heatmap([str(v) for v in ev["layers"]],
                                      [str(v) for v in ev["checkpoint_names"]], ev["cka"])


def _layer_sparsity(inputs: ReportInputs) -> go.Figure:
    per_layer = inputs.layer_sparsity or {}
    return overview.layer_sparsity_heatmap(per_layer.get("layers", []),
                                           per_layer.get("checkpoints", []),
                                           per_layer.get("sparsity", []), per_layer.get("n_m"))


def _has(key: str, where: str = "evaluation") -> Callable[[ReportInputs], bool]:
    return lambda inputs: (arrays := getattr(inputs, where)) is not None and key in arrays


PINNABLE_FIGURES: dict[str, Pinnable] = {
    "accuracy": Pinnable("Accuracy versus sparsity", _accuracy, lambda inputs: True),
    "cka_heatmap": Pinnable("Linear CKA to the dense model, per layer", _cka_heatmap,
                            _has("cka")),
    "cka_vs_sparsity": Pinnable("Linear CKA versus sparsity, one panel per layer",
                                lambda i: layers.metric_vs_sparsity(i.evaluation, "cka"),
                                _has("cka")),
    "layer_sparsity": Pinnable("Sparsity per layer", _layer_sparsity,
                               lambda i: bool((i.layer_sparsity or {}).get("layers"))),
    "attention_lines": Pinnable("Attention JS divergence from dense, per layer",
                                lambda i: attention.per_layer_lines(i.evaluation, "js"),
                                _has("attention_js")),
    "lm_quality": Pinnable("Language-model quality versus sparsity",
                           lambda i: attention.lm_quality_lines(i.evaluation),
                           _has("lm_quality")),
    "pie_fraction": Pinnable("PIE fraction versus sparsity",
                             lambda i: dynamics.pie_fraction_figure(i.dynamics),
                             _has("population_names", "dynamics")),
}


def pinnable_options(inputs: ReportInputs,
                     rows: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, str]]:
    """The figures these inputs can show, as checklist options (label, value = pin key):
    the registry's available ones and "comparison:<column>" per plottable column."""
    rows = comparison_of(inputs) if rows is None else rows
    options = [{"label": p.label, "value": key} for key, p in PINNABLE_FIGURES.items()
               if p.available(inputs)]
    options += [{"label": f"Comparison: {c.label} versus sparsity",
                 "value": COMPARISON_PREFIX + c.key} for c in plottable_columns(rows)]
    return options


def pinned_figure(key: str, inputs: ReportInputs,
                  rows: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, go.Figure]:
    """(title, figure) of one pin key; ValueError naming the keys for an unknown one."""
    if key in PINNABLE_FIGURES:
        return PINNABLE_FIGURES[key].label, PINNABLE_FIGURES[key].build(inputs)
    column = key.removeprefix(COMPARISON_PREFIX)
    if key.startswith(COMPARISON_PREFIX) and column in COMPARISON_COLUMNS:
        rows = comparison_of(inputs) if rows is None else rows
        label = COMPARISON_COLUMNS[column].label
        return f"Comparison: {label} versus sparsity", headline_vs_sparsity(rows, column)
    known = ", ".join([*PINNABLE_FIGURES, *(COMPARISON_PREFIX + k for k in COMPARISON_COLUMNS)])
    raise UnknownFigure(f"unknown report figure {key!r}; pin one of {known}")


class UnknownFigure(ValueError):
    """A pin key that names no report figure."""


def _drawn(key: str, inputs: ReportInputs,
           rows: Sequence[Mapping[str, Any]]) -> tuple[str, go.Figure]:
    """`pinned_figure`, or a placeholder that says why a malformed result cannot be drawn
    (the rest of the report is still written)."""
    try:
        return pinned_figure(key, inputs, rows)
    except UnknownFigure:
        raise
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        label = PINNABLE_FIGURES[key].label if key in PINNABLE_FIGURES else key
        return label, overview.empty_figure(f"This result cannot be drawn: {exc!r}")


# ----------------------------------------------------------------------------- HTML


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .muted { color: #666; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }
.text { text-align: left; }
section { margin-top: 2rem; }
"""


def format_cell(value: Any, column: Column | None) -> str:
    """A table cell's text: percentages with two decimals, scores with three, ratios with
    two, counts whole, other numbers with four significant digits; empty for None."""
    if value is None:
        return ""
    if column is None:
        return str(value)
    formats = {"percent": "{:.2%}", "score": "{:.3f}", "ratio": "{:.2f}", "count": "{:d}"}
    return formats.get(column.kind, "{:.4g}").format(value)


def comparison_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a static HTML table (no links: a report is read offline)."""
    if not rows:
        return "<p class='muted'>No checkpoints yet.</p>"
    text = ["name", "role", "method"]
    if len({r.get("source") for r in rows}) > 1:
        text.insert(1, "source")
    numeric = comparison_columns(rows)
    head = "".join(f"<th class='text'>{html.escape(k)}</th>" for k in text) + "".join(
        f"<th>{html.escape(c.label)}</th>" for c in numeric)
    body = []
    for r in rows:
        cells = [f"<td class='text'>{html.escape(str(r.get(k) or ''))}</td>" for k in text]
        cells += [f"<td>{html.escape(format_cell(r.get(c.key), c))}</td>" for c in numeric]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table id='comparison'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def report_html(inputs: ReportInputs, pinned: Sequence[str] = ()) -> str:
    """The report: title and description, the comparison table, accuracy versus sparsity,
    then each pinned figure once, in the order pinned (ValueError for an unknown key)."""
    rows = comparison_of(inputs)
    keys = ["accuracy", *dict.fromkeys(k for k in pinned if k != "accuracy")]
    figures = [_drawn(key, inputs, rows) for key in keys]
    sections = []
    for i, (key, (title, fig)) in enumerate(zip(keys, figures, strict=True)):
        div = fig.to_html(full_html=False, include_plotlyjs=i == 0,
                          div_id=f"figure-{key.replace(':', '-')}",
                          config={"displaylogo": False, "responsive": True})
        sections.append(f"<section><h2>{html.escape(title)}</h2>{div}</section>")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    details = f"architecture {inputs.architecture} · generated {when}"
    description = (f"<p>{html.escape(inputs.description)}</p>" if inputs.description else "")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(inputs.name)} — PruneScope report</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(inputs.name)}</h1><p class='muted'>{html.escape(details)}</p>"
        f"{description}<section><h2>Method comparison</h2>{comparison_table_html(rows)}"
        "</section>" + "".join(sections) + "</body></html>\n"
    )


def project_report_html(project_id: int, pinned: list[str]) -> str:
    """The report of a stored project (`report_inputs`, then `report_html`)."""
    return report_html(report_inputs(project_id), pinned)


# ----------------------------------------------------------------------------- the API route

# Mounted under /api/v1 by the composition root, `prunescope.server.main`.
router = APIRouter(tags=["results"], responses=REFUSALS)


@router.get("/projects/{project_id}/report", response_class=HTMLResponse)
def project_report(
    project_id: IdPath, settings: SettingsDep, pin: Annotated[list[str] | None, Query()] = None
) -> HTMLResponse:
    """The self-contained HTML report the project page exports: the comparison table,
    accuracy versus sparsity and each `pin`ned figure (keys as the page's "pin" list:
    `cka_heatmap`, `layer_sparsity`, `comparison:<column>`, ...); opens offline."""
    inputs = report_inputs(project_id, settings)
    known = {o["value"] for o in pinnable_options(inputs)}
    unknown = [p for p in pin or [] if p not in known]
    if unknown:
        raise InvalidInput(f"cannot pin {unknown}; this project offers {sorted(known)}")
    return HTMLResponse(
        report_html(inputs, pin or []),
        headers={"Content-Disposition":
                 f'attachment; filename="project{project_id}-report.html"'},
    )
