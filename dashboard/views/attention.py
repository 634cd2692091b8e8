"""The Attention page's view in its URL: measure, method, sparsity (percent), layer, head,
sentence, probing task and drift measure (`VIEW_KEYS`); an older link's `checkpoint` still
opens its method and sparsity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from prunescope.dashboard.figures.attention import (
    ATTENTION_MEASURES,
    DRIFT_MEASURES,
    as_int,
    methods_of,
    nearest,
    pruned_checkpoints,
)

VIEW_KEYS = ("measure", "method", "sparsity", "layer", "head", "sentence", "task", "drift")


def attention_shape(evaluation: Any) -> tuple[int, int]:
    """(attention layers, heads) of the analysed model; (0, 0) without attention results."""
    if evaluation is None or "attention_js" not in evaluation:
        return 0, 0
    return tuple(evaluation["attention_js"].shape[1:3])  # type: ignore[return-value]


def sparsity_marks(evaluation: Any, method: str | None) -> tuple[dict, int, int]:
    """Marks, min and max of the sparsity slider for one method's checkpoints."""
    values = sorted({c.sparsity for c in pruned_checkpoints(evaluation) if c.method == method})
    if not values:
        return {0: "0%"}, 0, 100
    return {v: f"{v}%" for v in values}, values[0], values[-1]


def parse_view(query: Mapping[str, str], evaluation: Any, sentences: int,
               tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """The view a query string asks for, each value replaced by a valid one where needed.
    The probing task is checked only against `tasks` when given (the first task, or None,
    when it is not one of them)."""
    checkpoints = pruned_checkpoints(evaluation)
    methods = methods_of(checkpoints)
    legacy = next((c for c in checkpoints if c.name == query.get("checkpoint")), None)
    method = query.get("method") if query.get("method") in methods else (
        legacy.method if legacy else (methods[0] if methods else None))
    wanted = as_int(query.get("sparsity"), legacy.sparsity if legacy else None)
    chosen = nearest(checkpoints, method, wanted) if method else None
    layers, heads = attention_shape(evaluation)
    layer, head = as_int(query.get("layer"), 0), as_int(query.get("head"), 0)
    task = query.get("task")
    if tasks is not None and task not in tasks:
        task = tasks[0] if tasks else None
    return {
        "measure": query.get("measure") if query.get("measure") in ATTENTION_MEASURES else "js",
        "method": method,
        "sparsity": chosen.sparsity if chosen else None,
        "layer": layer if 0 <= layer < max(layers, 1) else 0,
        "head": head if 0 <= head < max(heads, 1) else 0,
        "sentence": min(max(as_int(query.get("sentence"), 0), 0), max(sentences - 1, 0)),
        "task": task,
        "drift": query.get("drift") if query.get("drift") in DRIFT_MEASURES else "cka",
    }


def view_query(view: Mapping[str, Any]) -> str:
    """The query string naming every chosen value, in `VIEW_KEYS` order."""
    pairs = [(k, view[k]) for k in VIEW_KEYS if view.get(k) is not None]
    return "?" + urlencode(pairs) if pairs else ""
