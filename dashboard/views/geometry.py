"""The Geometry page's view in its URL: the checkpoint, colouring, map view, class and
comparison checkpoint (`VIEW_KEYS`), and the selected examples as "sel"
(`prunescope.dashboard.state.encode_selection`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import numpy as np

from prunescope.dashboard.figures.geometry import COLOR_BY, COLOR_BY_LABELS
from prunescope.dashboard.state import decode_selection, encode_selection

Arrays = Mapping[str, Any]
VIEW_KEYS = ("checkpoint", "color", "view", "cls", "cmp")
MAP_VIEWS = ("side", "movement")


def _option(value: str, label: str | None = None) -> dict[str, str]:
    return {"label": label or value, "value": value}


def _listed(geom: Arrays | None, key: str) -> list[str]:
    if geom is None or key not in geom:
        return []
    return [str(v) for v in np.asarray(geom[key]).reshape(-1).tolist()]


def control_options(geom: Arrays | None) -> dict[str, list[dict[str, str]]]:
    """The choices of the page's controls: checkpoints by name, classes (value: the class
    index as text, label: its name), and the colourings the result supports (group only when
    the dataset has groups)."""
    has_groups = bool(_listed(geom, "group_names"))
    return {
        "checkpoints": [_option(name) for name in _listed(geom, "checkpoint_names")],
        "classes": [_option(str(k), name) for k, name in
                    enumerate(_listed(geom, "class_names"))],
        "color_by": [
            _option(key, COLOR_BY_LABELS[key])
            for key in COLOR_BY
            if key != "group" or has_groups
        ],
    }


def checkpoint_names(geom: Any) -> list[str]:
    return [str(v) for v in geom["checkpoint_names"].tolist()] if geom is not None else []


def reference_name(geom: Any) -> str | None:
    names = checkpoint_names(geom)
    return names[int(geom["reference"])] if names else None


def default_checkpoint(geom: Any) -> str | None:
    """The sparsest pruned checkpoint: the one that moves examples most."""
    names = checkpoint_names(geom)
    if not names:
        return None
    reference = int(geom["reference"])
    others = [i for i in range(len(names)) if i != reference]
    if not others:
        return names[reference]
    sparsity = np.asarray(geom["sparsity"], dtype=float)
    return names[max(others, key=lambda i: (sparsity[i], -i))]


def example_count(geom: Any) -> int:
    """How many examples a selection chooses among."""
    return int(geom["labels"].shape[0]) if geom is not None else 0


def parse_view(query: Mapping[str, str], geom: Any) -> dict[str, str | None]:
    """The view a URL asks for, each value checked against what the result offers."""
    options = control_options(geom)
    names = [o["value"] for o in options["checkpoints"]]
    colours = [o["value"] for o in options["color_by"]]
    classes = [o["value"] for o in options["classes"]]
    return {
        "checkpoint": query.get("checkpoint") if query.get("checkpoint") in names
        else default_checkpoint(geom),
        "color": query.get("color") if query.get("color") in colours else "class",
        "view": query.get("view") if query.get("view") in MAP_VIEWS else "side",
        "cls": query.get("cls") if query.get("cls") in classes else (classes[0] if classes
                                                                      else None),
        # The angle-and-length view compares the checkpoint with this one (the dense model).
        "cmp": query.get("cmp") if query.get("cmp") in names else reference_name(geom),
    }


def parse_selection(query: Mapping[str, str], geom: Any) -> list[int]:
    """The examples the URL's "sel" selects (none when it names none the result has)."""
    return decode_selection(query.get("sel"), example_count(geom))


def view_query(view: Mapping[str, Any], selection: list[int], n: int) -> str:
    """The query string of a view and a selection among `n` examples (`parse_view` and
    `parse_selection` read it back)."""
    pairs = [(k, view[k]) for k in VIEW_KEYS if view.get(k) is not None]
    if selection and (text := encode_selection(selection, n)):
        pairs.append(("sel", text))
    return "?" + urlencode(pairs) if pairs else ""
