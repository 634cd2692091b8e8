"""The Geometry page's view logic, apart from its callbacks: the view a URL asks for, the
failure sets its buttons select, and the example gallery (pure functions, tested without a
browser or a Dash app)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from dash import html

from prunescope.dashboard.figures.geometry import example_rows, geometry_view_options
from prunescope.dashboard.state import encode_selection

VIEW_KEYS = ("checkpoint", "color", "view", "cls", "cmp")
GALLERY_SIZE = 48


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


def resolve_geometry_view(query: dict[str, str], geom: Any) -> dict[str, str | None]:
    """The view a URL asks for, each value checked against what the result offers."""
    options = geometry_view_options(geom)
    names = [o["value"] for o in options["checkpoints"]]
    colours = [o["value"] for o in options["color_by"]]
    classes = [o["value"] for o in options["classes"]]
    return {
        "checkpoint": query.get("checkpoint") if query.get("checkpoint") in names
        else default_checkpoint(geom),
        "color": query.get("color") if query.get("color") in colours else "class",
        "view": query.get("view") if query.get("view") in ("side", "movement") else "side",
        "cls": query.get("cls") if query.get("cls") in classes else (classes[0] if classes
                                                                      else None),
        # The angle-and-length view compares the checkpoint with this one (the dense model).
        "cmp": query.get("cmp") if query.get("cmp") in names else reference_name(geom),
    }


def geometry_view_query(view: dict[str, Any], selection: list[int], n: int) -> str:
    from urllib.parse import urlencode

    pairs = [(k, view[k]) for k in VIEW_KEYS if view.get(k) is not None]
    if selection and (text := encode_selection(selection, n)):
        pairs.append(("sel", text))
    return "?" + urlencode(pairs) if pairs else ""


def failures(geom: Any, kind: str) -> list[int]:
    """The examples a failure button selects (`analyses.geometry_failures`)."""
    from prunescope.server.services import analyses

    return analyses.geometry_failures(geom, kind)


def thumbnail_uri(image: np.ndarray, scale: int = 6) -> str:
    from PIL import Image

    picture = Image.fromarray(image)
    picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery(geom: Any, selection: list[int], checkpoint: str | None) -> Any:
    """A table of the first GALLERY_SIZE selected examples: input, label, both predictions."""
    if geom is None or not selection or checkpoint is None:
        return html.P("Select examples in either map to see them here.", className="muted")
    rows = example_rows(geom, selection, checkpoint, limit=GALLERY_SIZE)
    has_images = "thumbnails" in geom
    reference = reference_name(geom)
    head = ["example", *(["input"] if has_images else []), "label",
            f"{reference}: prediction (confidence)", f"{checkpoint}: prediction (confidence)",
            "margin dense → pruned"]

    def cell(row: dict) -> list:
        ident = str(geom["example_ids"][row["index"]]) if "example_ids" in geom else row["index"]
        image = ([html.Td(html.Img(src=thumbnail_uri(np.asarray(geom["thumbnails"][row["index"]])),
                                   alt=f"example {row['index']}"))] if has_images else [])

        def shown(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        changed = row["dense_prediction"] != row["pruned_prediction"]
        return [
            html.Td(ident), *image, html.Td(row["label"]),
            html.Td(f"{row['dense_prediction']} ({shown(row['dense_confidence'])})"),
            html.Td(f"{row['pruned_prediction']} ({shown(row['pruned_confidence'])})",
                    style={"color": "#e45756"} if changed else None),
            html.Td(f"{shown(row['dense_margin'])} → {shown(row['pruned_margin'])}"),
        ]

    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in head])),
         html.Tbody([html.Tr(cell(r), className="gallery-row") for r in rows])],
        id="geometry-gallery-table",
    )


