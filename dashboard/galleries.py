"""Tables of examples the pages show beside their maps: each example's input as a thumbnail
where the result stores one, its label and how the checkpoints or runs see it."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from dash import html
from PIL import Image

from prunescope.dashboard.figures.dynamics import example_rows, pie_rows, surfaced_rows
from prunescope.dashboard.figures.geometry import example_rows as geometry_example_rows
from prunescope.dashboard.views.geometry import reference_name

GALLERY_SIZE = 48  # examples a gallery shows; the downloads hold all
THUMBNAIL_PIXELS = 56  # a thumbnail's longer side on screen, about


def thumbnail_uri(image: np.ndarray, scale: int = 6) -> str:
    """A grey-level or RGB example as a PNG data URI, each pixel `scale` pixels wide."""
    picture = Image.fromarray(image)
    picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------- geometry


def geometry_gallery(geom: Any, selection: list[int], checkpoint: str | None) -> Any:
    """A table of the first GALLERY_SIZE selected examples: input, label, both predictions."""
    if geom is None or not selection or checkpoint is None:
        return html.P("Select examples in either map to see them here.", className="muted")
    rows = geometry_example_rows(geom, selection, checkpoint, limit=GALLERY_SIZE)
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


# ------------------------------------------------------------------------------- dynamics


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def example_table(rows: Sequence[dict[str, Any]], thumbnails: Any, id_: str,
                  empty: str) -> Any:
    """A table of the first GALLERY_SIZE rows, each example's thumbnail first when the
    result has thumbnails (grey-level [examples, H, W])."""
    if not rows:
        return html.P(empty, className="muted", id=id_)
    shown = list(rows[:GALLERY_SIZE])
    columns = list(shown[0])
    scale = 1
    if thumbnails is not None:
        scale = max(1, round(THUMBNAIL_PIXELS / max(np.asarray(thumbnails).shape[1:])))

    def cells(row: dict[str, Any]) -> list:
        image = []
        if thumbnails is not None:
            picture = np.asarray(thumbnails[row["index"]], dtype=np.uint8)
            image = [html.Td(html.Img(src=thumbnail_uri(picture, scale),
                                      alt=f"example {row['index']}"))]
        changed = row.get("label") != row.get("original_label", row.get("label"))
        return [*image, *(html.Td(_cell(row[c]), style={"color": "#e45756"}
                                  if changed and c == "original_label" else None)
                          for c in columns)]

    head = [*(["input"] if thumbnails is not None else []), *columns]
    return html.Table(
        [html.Thead(html.Tr([html.Th(h.replace("_", " ")) for h in head])),
         html.Tbody([html.Tr(cells(r), className="gallery-row") for r in shown])],
        id=id_,
    )


def _thumbnails(dyn: Any, key: str) -> Any:
    return dyn[key] if dyn is not None and key in dyn else None


def selection_gallery(dyn: Any, selection: list[int], run: str | None,
                      population: str | None) -> Any:
    rows = example_rows(dyn, selection[:GALLERY_SIZE], run, population)
    return example_table(rows, _thumbnails(dyn, "train_thumbnails"), "dynamics-gallery-table",
                         "Lasso examples in the data map to see them here.")


def surfaced_gallery(dyn: Any, run: str | None, category: str | None) -> Any:
    rows = surfaced_rows(dyn, run, category)
    return example_table(rows, _thumbnails(dyn, "train_thumbnails"), "dynamics-surfaced-table",
                         "No training example has this MAP-D top category." if dyn is not None
                         else "No dynamics analysis yet.")


def pie_table(dyn: Any, population: str | None) -> Any:
    rows = pie_rows(dyn, population, "test", limit=GALLERY_SIZE)
    return example_table(rows, _thumbnails(dyn, "test_thumbnails"), "dynamics-pie-table",
                         f"No test PIEs for {population}." if population else
                         "No pruned population to compare yet.")
