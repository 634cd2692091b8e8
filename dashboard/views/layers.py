"""The Layers page's view in its URL: one query value per control (`VIEW_KEYS`), each checked
against the choices the stored analysis offers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import numpy as np

from prunescope.dashboard.figures.layers import (
    ALL_LAYERS,
    COMPLEXITY_MEASURES,
    LAYER_MATRICES,
    SIMILARITY_METRICS,
    dense_name,
    short_layer,
)

Arrays = Mapping[str, Any]
VIEW_KEYS = (
    "metric", "rows", "checkpoint", "matrix", "complexity", "iou_layer", "neuron_layer",
    "neuron_checkpoint",
)


def _option(value: str, label: str | None = None) -> dict[str, str]:
    return {"label": label or value, "value": value}


def _strings(arrays: Arrays | None, key: str) -> list[str]:
    if arrays is None or key not in arrays:
        return []
    return [str(v) for v in np.asarray(arrays[key]).tolist()]


def control_options(data: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The choices each control offers, from `services.layer_analysis`'s result."""
    evaluation, masks, neurons = data.get("evaluation"), data.get("masks"), data.get("neurons")
    return {
        "metric": [_option(k, m.label.replace(" to dense", "")) for k, m in
                   SIMILARITY_METRICS.items()],
        "checkpoint": [_option(n) for n in _strings(evaluation, "checkpoint_names")],
        "rows": [_option(n) for n in _strings(evaluation, "checkpoint_names")],
        "matrix": [_option(k, m.label) for k, m in LAYER_MATRICES.items()],
        "complexity": [_option(k, m.label) for k, m in COMPLEXITY_MEASURES.items()],
        "iou_layer": [_option(ALL_LAYERS, "all layers")]
        + [_option(n, short_layer(n)) for n in _strings(masks, "layers")],
        "neuron_layer": [_option(n) for n in _strings(neurons, "layers")],
        "neuron_checkpoint": [_option(n) for n in _strings(neurons, "checkpoint_names")],
    }


def _sparsest_pruned(evaluation: Arrays | None) -> str | None:
    keys = ("checkpoint_names", "checkpoint_roles", "sparsity")
    if evaluation is None or any(k not in evaluation for k in keys):
        return None
    names = _strings(evaluation, "checkpoint_names")
    roles = _strings(evaluation, "checkpoint_roles")
    sparsity = np.asarray(evaluation["sparsity"], dtype=float)
    if not len(names) == len(roles) == sparsity.size:
        return None
    pruned = [i for i, role in enumerate(roles) if role != "dense"]
    if not pruned:
        return names[0] if names else None
    # The sparsest checkpoint shows the most drift; on a tie the first listed wins.
    return names[max(pruned, key=lambda i: (sparsity[i], -i))]


def parse_view(
    query: Mapping[str, str], options: Mapping[str, list[dict[str, str]]],
    data: Mapping[str, Any] | None = None,
) -> dict[str, str | None]:
    """The view a URL asks for: each query value that is one of its control's options
    (`control_options`), else the default (CKA, linear matrix, effective rank, all layers,
    the sparsest pruned checkpoint, the first neuron layer); None where a control has
    nothing to offer."""
    sparsest = _sparsest_pruned((data or {}).get("evaluation"))
    defaults = {
        "metric": "cka",
        "matrix": "cka",
        "complexity": "effective_rank",
        "iou_layer": ALL_LAYERS,
        "checkpoint": sparsest,
        "rows": dense_name((data or {}).get("evaluation")),
        "neuron_checkpoint": sparsest,
    }
    view: dict[str, str | None] = {}
    for key in VIEW_KEYS:
        values = [o["value"] for o in options.get(key, [])]
        wanted = query.get(key)
        if wanted in values:
            view[key] = wanted
        elif defaults.get(key) in values:
            view[key] = defaults[key]
        else:
            view[key] = values[0] if values else None
    return view


def view_query(view: Mapping[str, str | None]) -> str:
    """The query string naming every control's value, in a fixed order."""
    pairs = [(k, view[k]) for k in VIEW_KEYS if view.get(k) is not None]
    return "?" + urlencode(pairs) if pairs else ""
