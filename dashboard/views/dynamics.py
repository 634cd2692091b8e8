"""The Dynamics page's view in its URL: run, population, colouring, suite view and MAP-D
category (`VIEW_KEYS`), each checked against the stored analysis, and the lassoed training
examples as "sel" (`prunescope.dashboard.state.encode_selection`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import numpy as np

from prunescope.dashboard.figures.dynamics import (
    COLOR_BY,
    DENSE,
    MEAN_PREFIX,
    MODE_ORDER,
    SUITE_VIEWS,
    population_names,
    run_options,
    strings,
)
from prunescope.dashboard.state import decode_selection, encode_selection

Arrays = Mapping[str, Any]
VIEW_KEYS = ("run", "population", "color", "suite_view", "cat")


def control_options(dyn: Arrays | None) -> dict[str, list[dict[str, str]]]:
    """The choices of the page's controls."""
    return {
        "runs": run_options(dyn),
        "populations": [{"label": n, "value": n} for n in population_names(dyn)],
        "color_by": [{"label": label, "value": key} for key, label in COLOR_BY.items()
                     if key != "pie" or population_names(dyn)],
        "suite_views": [{"label": label, "value": key} for key, label in SUITE_VIEWS.items()],
        "categories": ([] if dyn is None else
                       [{"label": c, "value": c} for c in strings(dyn["categories"])]),
    }


def default_population(dyn: Arrays | None) -> str | None:
    """The sparsest population of the first mode (gmp before finetune): where pruning
    forgets most."""
    names = population_names(dyn)
    if not names:
        return None
    modes = strings(dyn["population_modes"])
    sparsity = np.asarray(dyn["population_sparsity"], dtype=np.float64)
    rank = [MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER) for m in modes]
    return names[min(range(len(names)), key=lambda p: (rank[p], -sparsity[p], p))]


def default_category(dyn: Arrays | None) -> str | None:
    """The first category that is not "typical": typical examples are rarely the question."""
    categories = [] if dyn is None else strings(dyn["categories"])
    return next((c for c in categories if c != "typical"), categories[0] if categories else None)


def example_count(dyn: Arrays | None) -> int:
    """How many training examples a selection chooses among."""
    return 0 if dyn is None else int(np.asarray(dyn["suite"]).shape[0])


def parse_view(query: Mapping[str, str], dyn: Arrays | None) -> dict[str, Any]:
    """The view a URL query asks for (VIEW_KEYS and "sel"), each value checked against what
    the result offers and replaced by the default where it is not; "sel" becomes the list of
    selected training-example indices (`prunescope.dashboard.state.decode_selection`)."""
    options = control_options(dyn)

    def pick(key: str, choices: str, default: Any) -> Any:
        allowed = [o["value"] for o in options[choices]]
        return query.get(key) if query.get(key) in allowed else default

    runs = [o["value"] for o in options["runs"]]
    default_run = MEAN_PREFIX + DENSE if MEAN_PREFIX + DENSE in runs else \
        (runs[0] if runs else None)
    return {
        "run": pick("run", "runs", default_run),
        "population": pick("population", "populations", default_population(dyn)),
        "color": pick("color", "color_by", "mapd"),
        "suite_view": pick("suite_view", "suite_views", "panels"),
        "cat": pick("cat", "categories", default_category(dyn)),
        "sel": decode_selection(query.get("sel"), example_count(dyn)),
    }


def view_query(view: Mapping[str, Any], n: int) -> str:
    """The query string of a view (`parse_view` reads it back); the selection ("sel",
    example indices among `n`) is written compactly (`encode_selection`)."""
    pairs = [(k, view[k]) for k in VIEW_KEYS if view.get(k) is not None]
    if view.get("sel") and (text := encode_selection(list(view["sel"]), n)):
        pairs.append(("sel", text))
    return "?" + urlencode(pairs) if pairs else ""
