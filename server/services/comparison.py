"""Method comparison: one row of headline numbers per checkpoint, each linked to its view, and
the rows as CSV, Parquet or JSON records (`GET /projects/{id}/comparison`, the project page's
comparison table and the report).

Pure builders over what the project's analyses stored: the checkpoints' own statistics
(`checkpoints.list_checkpoints`), the analyze job's evaluation arrays
(`analyses.layer_analysis`, see `prunescope.workers.analyses.evaluation.evaluate_checkpoints`),
the "dynamics" arrays (`analyses.dynamics_analysis`) and the "geometry" arrays
(`analyses.geometry_analysis`); `project_comparison` reads them for a stored project.
Nothing is recomputed from examples; each headline is a short reduction of a stored array:

- mean CKA = (1/L) Σₗ CKA(dense, pruned)ₗ over the layers (linear CKA, Kornblith et al., ICML
  2019), its drift 1 − mean CKA, and the CKA of the last analysed layer (nearest the output);
- mean attention JS = (1/AH) Σ JS divergence (bits) of each head's attention from the dense
  model's, over attention layers and heads (Transformers);
- PIE fraction: share of test examples whose modal label in a pruned population differs from
  the dense population's (Hooker et al., "What Do Compressed Deep Neural Networks Forget?",
  2019);
- MAP-D mislabeled count: training examples whose dense-population MAP-D top category is
  "mislabeled" (Siddiqui et al., "Metadata Archaeology", ICLR 2023), a project-level number.

A missing analysis, array or checkpoint leaves its cells empty (None), never an error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlencode

import numpy as np

from prunescope.server.config import Settings
from prunescope.server.services import analyses, checkpoints

Arrays = Mapping[str, Any]
DENSE = "dense"
MISLABELED = "mislabeled"
CHECKPOINT, DYNAMICS = "checkpoint", "training runs"  # where a row's numbers come from


class Column(NamedTuple):
    key: str
    label: str
    kind: str  # "percent", "score" (3 decimals), "ratio" (2 decimals), "count" or "general"


COMPARISON_COLUMNS: dict[str, Column] = {c.key: c for c in (
    Column("sparsity", "sparsity", "percent"),
    Column("accuracy", "accuracy", "percent"),
    Column("perplexity", "perplexity", "general"),
    Column("masked_token_accuracy", "masked-token accuracy", "percent"),
    Column("mean_cka", "mean CKA to dense", "score"),
    Column("cka_drift", "mean CKA drift (1 − mean CKA)", "score"),
    Column("top_layer_cka", "top-layer CKA", "score"),
    Column("attention_js", "mean attention JS (bits)", "score"),
    Column("pie_fraction", "PIE fraction", "percent"),
    Column("mislabeled_count", "MAP-D mislabeled (dense)", "count"),
    Column("compression_ratio", "compression", "ratio"),
    Column("theoretical_speedup", "theor. speedup", "ratio"),
)}
VIEW_NAMES = ("layers", "attention", "dynamics", "geometry")


# ------------------------------------------------------------------------------ helpers


def _strings(values: Any) -> list[str]:
    return [str(v) for v in np.asarray(values).reshape(-1).tolist()]


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _finite_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries; NaN where a row has none."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=-1)
    total = np.where(finite, values, 0.0).sum(axis=-1)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)


def _percent(value: float) -> int:
    return int(round(100 * float(value)))


def view_url(project_id: int, view: str, **query: Any) -> str:
    """A link to one of the project's pages, e.g. ("layers", metric="cka", checkpoint=n)."""
    if view not in VIEW_NAMES:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEW_NAMES)}")
    pairs = [(k, v) for k, v in query.items() if v is not None]
    return f"/projects/{project_id}/{view}" + ("?" + urlencode(pairs) if pairs else "")


def _empty_row(row_id: str, source: str, name: str, role: str, method: str,
               sparsity: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": row_id, "name": name, "source": source, "role": role,
                           "method": method}
    row.update(dict.fromkeys(COMPARISON_COLUMNS))
    row["sparsity"] = sparsity
    row["links"] = {}
    return row


# ------------------------------------------------------------------ per-analysis parts


def _evaluation_cells(project_id: int, evaluation: Arrays | None) -> dict[int, dict[str, Any]]:
    """Per checkpoint id: the evaluation's headline cells and their links."""
    if evaluation is None or "checkpoint_ids" not in evaluation:
        return {}
    ids = [int(v) for v in np.asarray(evaluation["checkpoint_ids"]).reshape(-1).tolist()]
    c = len(ids)

    def per_checkpoint(key: str, default: Any) -> list[Any]:
        values = evaluation.get(key)
        values = default if values is None else _strings(values)
        return values if len(values) == c else default

    names = per_checkpoint("checkpoint_names", [str(i) for i in ids])
    roles = per_checkpoint("checkpoint_roles", ["pruned"] * c)
    methods = per_checkpoint("checkpoint_methods", [""] * c)
    sparsity = np.asarray(evaluation.get("sparsity", np.full(c, np.nan)),
                          dtype=np.float64).reshape(-1)
    accuracy = np.asarray(evaluation.get("accuracy", np.full(c, np.nan)),
                          dtype=np.float64).reshape(-1)
    cka = np.asarray(evaluation.get("cka", np.zeros((c, 0))), dtype=np.float64)
    if cka.ndim != 2 or cka.shape[0] != c:
        cka = np.zeros((c, 0))
    mean_cka = _finite_mean(cka)
    top_cka = cka[:, -1] if cka.shape[1] else np.full(c, np.nan)
    js = evaluation.get("attention_js")
    js = np.asarray(js, dtype=np.float64) if js is not None else None
    mean_js = _finite_mean(js.reshape(c, -1)) if js is not None and js.ndim == 3 \
        and js.shape[0] == c else None
    lm_column, lm_quality = None, np.zeros(0)
    if "lm_quality" in evaluation and "lm_measure" in evaluation:
        measure = str(np.asarray(evaluation["lm_measure"]))
        lm_column = measure if measure in COMPARISON_COLUMNS else None
        lm_quality = np.asarray(evaluation["lm_quality"], dtype=np.float64).reshape(-1)
    cells: dict[int, dict[str, Any]] = {}
    for i, cid in enumerate(ids):
        values: dict[str, Any] = {
            "accuracy": _finite_or_none(accuracy[i]) if accuracy.size == c else None,
            "mean_cka": _finite_or_none(mean_cka[i]),
            "top_layer_cka": _finite_or_none(top_cka[i]),
        }
        values["cka_drift"] = None if values["mean_cka"] is None else 1.0 - values["mean_cka"]
        if mean_js is not None:
            values["attention_js"] = _finite_or_none(mean_js[i])
        if lm_column is not None and lm_quality.size == c:
            values[lm_column] = _finite_or_none(lm_quality[i])
        links: dict[str, str] = {}
        layers = view_url(project_id, "layers", metric="cka", checkpoint=names[i])
        for key in ("mean_cka", "cka_drift", "top_layer_cka"):
            if values[key] is not None:
                links[key] = layers
        if roles[i] == DENSE:
            attention = view_url(project_id, "attention")
        elif sparsity.size == c and np.isfinite(sparsity[i]):
            attention = view_url(project_id, "attention", method=methods[i] or "uploaded",
                                 sparsity=_percent(sparsity[i]))
        else:
            attention = view_url(project_id, "attention")
        for key in ("attention_js", "perplexity", "masked_token_accuracy"):
            if values.get(key) is not None:
                links[key] = attention
        cells[cid] = {"values": values, "links": links}
    return cells


def _geometry_links(project_id: int, geometry: Arrays | None) -> dict[Any, str]:
    """Geometry page links by checkpoint id (when the result lists ids) and by name."""
    if geometry is None or "checkpoint_names" not in geometry:
        return {}
    names = _strings(geometry["checkpoint_names"])
    links: dict[Any, str] = {n: view_url(project_id, "geometry", checkpoint=n) for n in names}
    if "checkpoint_ids" in geometry:
        ids = np.asarray(geometry["checkpoint_ids"]).reshape(-1).tolist()
        if len(ids) == len(names):
            links.update({int(i): links[n] for i, n in zip(ids, names, strict=True)})
    return links


class _Populations(NamedTuple):
    names: list[str]
    modes: list[str]
    sparsity: np.ndarray  # [P]
    pie_fraction: np.ndarray  # [P]
    accuracy: np.ndarray  # [P] mean final test accuracy of the members
    dense_accuracy: float | None
    mislabeled_count: int | None


def _populations(dynamics: Arrays | None) -> _Populations | None:
    if dynamics is None or "population_names" not in dynamics:
        return None
    names = _strings(dynamics["population_names"])
    p = len(names)
    modes = _strings(dynamics.get("population_modes", np.array([""] * p)))
    sparsity = np.asarray(dynamics.get("population_sparsity", np.full(p, np.nan)),
                          dtype=np.float64).reshape(-1)
    pie = np.asarray(dynamics.get("pie_fraction", np.full(p, np.nan)),
                     dtype=np.float64).reshape(-1)
    if not (len(modes) == sparsity.size == pie.size == p):
        return None
    run_modes = np.asarray(dynamics.get("run_modes", np.array([], np.str_))).astype(str)
    run_sparsity = np.asarray(dynamics.get("run_sparsity", np.zeros(run_modes.size)),
                              dtype=np.float64)
    run_accuracy = np.asarray(dynamics.get("run_test_accuracy", np.full(run_modes.size, np.nan)),
                              dtype=np.float64)
    if not run_modes.size == run_sparsity.size == run_accuracy.size:
        run_modes = run_modes[:0]
        run_sparsity, run_accuracy = run_sparsity[:0], run_accuracy[:0]
    # members[p, r]: run r belongs to population p (same mode and sparsity)
    members = (run_modes[None, :] == np.asarray(modes, dtype=str)[:, None]) \
        & (run_sparsity[None, :] == sparsity[:, None])
    accuracy = _finite_mean(np.where(members, run_accuracy[None, :], np.nan))
    dense = run_modes == DENSE
    dense_accuracy = _finite_or_none(_finite_mean(run_accuracy[dense])) if dense.any() else None
    mislabeled = None
    categories = _strings(dynamics.get("categories", np.array([], np.str_)))
    if "dense_mapd_top" in dynamics and MISLABELED in categories:
        top = np.asarray(dynamics["dense_mapd_top"], dtype=np.int64)
        mislabeled = int(np.count_nonzero(top == categories.index(MISLABELED)))
    return _Populations(names, modes, sparsity, pie, accuracy, dense_accuracy, mislabeled)


def _matching_population(populations: _Populations, method: str,
                         sparsity: float | None) -> int | None:
    """The population trained with the checkpoint's method (mode == method) at the same
    sparsity in whole percent (the populations' own naming); the closest if several."""
    if sparsity is None or not np.isfinite(sparsity):
        return None
    found = [p for p, mode in enumerate(populations.modes)
             if mode == method and _percent(populations.sparsity[p]) == _percent(sparsity)]
    if not found:
        return None
    return min(found, key=lambda p: abs(populations.sparsity[p] - sparsity))


# ------------------------------------------------------------------------------- rows


def comparison_rows(
    project_id: int,
    checkpoints: Sequence[Mapping[str, Any]],
    evaluation: Arrays | None = None,
    dynamics: Arrays | None = None,
    geometry: Arrays | None = None,
) -> list[dict[str, Any]]:
    """One row of headline numbers per checkpoint, then one per unmatched training population.

    `checkpoints`: dicts as `checkpoints.list_checkpoints` gives them (id, name, role, method,
    target_sparsity, measured_sparsity, compression_ratio, theoretical_speedup). The arrays
    are the newest evaluation, dynamics and geometry results, or None.

    Each row has id, name, source ("checkpoint" or "training runs"), role, method, one value
    per `COMPARISON_COLUMNS` key (None where its analysis is missing) and `links`: column →
    URL of the view the value summarises (Layers for CKA, Attention for attention and
    language-model quality, Geometry for accuracy, Dynamics for PIEs and MAP-D).

    The evaluation is joined by checkpoint id. A pruned population of the dynamics result
    joins the checkpoint whose method is the population's mode (e.g. an uploaded checkpoint
    with method "gmp") at the same whole-percent sparsity (target sparsity where known);
    the other populations get rows of their own (source "training runs"; accuracy the
    members' mean final test accuracy, sparsity the population's target), together with a
    "dense population" row that starts their lines in `headline_vs_sparsity`. The MAP-D
    mislabeled count is shown on every dense row.
    """
    cells = _evaluation_cells(project_id, evaluation)
    geometry_links = _geometry_links(project_id, geometry)
    populations = _populations(dynamics)
    matched: set[int] = set()
    rows = []
    for ckpt in checkpoints:
        cid = int(ckpt["id"])
        role = str(ckpt.get("role") or "")
        method = str(ckpt.get("method") or "")
        sparsity = ckpt.get("measured_sparsity")
        row = _empty_row(f"checkpoint-{cid}", CHECKPOINT, str(ckpt["name"]), role, method,
                         None if sparsity is None else float(sparsity))
        for key in ("compression_ratio", "theoretical_speedup"):
            if ckpt.get(key) is not None:
                row[key] = _finite_or_none(ckpt[key])
        if cid in cells:
            row.update(cells[cid]["values"])
            row["links"].update(cells[cid]["links"])
        geometry_link = geometry_links.get(cid, geometry_links.get(row["name"]))
        if geometry_link is not None and row["accuracy"] is not None:
            row["links"]["accuracy"] = geometry_link
        elif geometry_link is not None:
            row["links"]["geometry"] = geometry_link
        if populations is not None and role == DENSE:
            row["mislabeled_count"] = populations.mislabeled_count
        elif populations is not None:
            target = ckpt.get("target_sparsity")
            p = _matching_population(populations, method, target if target is not None
                                     else sparsity)
            if p is not None:
                matched.add(p)
                row["pie_fraction"] = _finite_or_none(populations.pie_fraction[p])
                row["links"]["pie_fraction"] = view_url(project_id, "dynamics",
                                                        population=populations.names[p])
        if row["mislabeled_count"] is not None:
            row["links"]["mislabeled_count"] = _mislabeled_url(project_id)
        rows.append(row)
    if populations is not None:
        rows += _population_rows(project_id, populations, matched,
                                 has_dense=any(r["role"] == DENSE for r in rows))
    return rows


def _mislabeled_url(project_id: int) -> str:
    return view_url(project_id, "dynamics", run="mean:" + DENSE, color="mapd", cat=MISLABELED)


def _population_rows(project_id: int, populations: _Populations, matched: set[int],
                     has_dense: bool) -> list[dict[str, Any]]:
    unmatched = [p for p in range(len(populations.names)) if p not in matched]
    rows = []
    if unmatched or (not has_dense and populations.dense_accuracy is not None):
        dense = _empty_row("population-dense", DYNAMICS, "dense population", DENSE, DENSE, 0.0)
        dense["accuracy"] = populations.dense_accuracy
        dense["mislabeled_count"] = populations.mislabeled_count
        if dense["mislabeled_count"] is not None:
            dense["links"]["mislabeled_count"] = _mislabeled_url(project_id)
        if dense["accuracy"] is not None:
            dense["links"]["accuracy"] = view_url(project_id, "dynamics", run="mean:" + DENSE)
        rows.append(dense)
    for p in unmatched:
        name = populations.names[p]
        row = _empty_row(f"population-{name}", DYNAMICS, name, "pruned", populations.modes[p],
                         _finite_or_none(populations.sparsity[p]))
        row["accuracy"] = _finite_or_none(populations.accuracy[p])
        row["pie_fraction"] = _finite_or_none(populations.pie_fraction[p])
        link = view_url(project_id, "dynamics", population=name)
        row["links"].update({k: link for k in ("accuracy", "pie_fraction") if row[k] is not None})
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- exports


EXPORT_TEXT = ("name", "source", "role", "method")


def export_records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as flat records with every column (empty cells None), for CSV and Parquet."""
    return [{**{k: r.get(k) for k in EXPORT_TEXT},
             **{k: r.get(k) for k in COMPARISON_COLUMNS}} for r in rows]


def comparison_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as CSV text (header row; empty cells empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*EXPORT_TEXT, *COMPARISON_COLUMNS],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(export_records(rows))
    return buffer.getvalue()


def comparison_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The comparison as Parquet bytes: text columns as strings, counts as int64, the other
    numbers as float64, empty cells null; the schema is the same whatever is missing."""
    # Deferred: a large library only this export needs.
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(k, pa.string()) for k in EXPORT_TEXT] + [
        pa.field(k, pa.int64() if c.kind == "count" else pa.float64())
        for k, c in COMPARISON_COLUMNS.items()
    ]
    table = pa.Table.from_pylist(export_records(rows), schema=pa.schema(fields))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------- a stored project


def project_comparison(project_id: int, settings: Settings | None = None) -> list[dict[str, Any]]:
    """`comparison_rows` of a stored project's checkpoints and newest analyses (NotFound for
    a project the caller may not read)."""
    return comparison_rows(
        project_id,
        [c.model_dump() for c in checkpoints.list_checkpoints(project_id, settings)],
        analyses.layer_analysis(project_id, settings)["evaluation"],
        analyses.dynamics_analysis(project_id, settings)["dynamics"],
        analyses.geometry_analysis(project_id, settings)["geometry"],
    )
