"""What every page's URL view state shares (`prunescope.dashboard.views`): reading a query
string, and selections of examples written compactly, long ones stored under a short id."""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import parse_qs

import numpy as np

from prunescope.server.services import views as view_service

log = logging.getLogger(__name__)

# A selection code longer than this goes into the database and the URL names it by a short id.
SELECTION_URL_LIMIT = 512
# Set only while the dashboard serves a request (`storing_long_selections`): importing this
# module, a script or a test without a database never writes one.
_long_selection_store: ContextVar[Callable[[str], str] | None] = ContextVar(
    "long_selection_store", default=None
)


@contextmanager
def storing_long_selections(store: Callable[[str], str] | None = None) -> Iterator[None]:
    """Within this block `encode_selection` keeps codes longer than `SELECTION_URL_LIMIT`
    through `store` (text → short id; default `prunescope.server.view_service.store_view_state`)
    and writes "v" + the id. The dashboard opens it around every request it serves."""
    token = _long_selection_store.set(store or view_service.store_view_state)
    try:
        yield
    finally:
        _long_selection_store.reset(token)


def parse_query(search: str | None) -> dict[str, str]:
    parsed = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def parse_sparsities(text: str | None) -> list[float]:
    """'0.5, 80%, .95' → [0.5, 0.8, 0.95]; raises ValueError naming the bad entry."""
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise ValueError(
                f"{part!r} is not a number; write sparsities like 0.5, 0.8 or 90%"
            ) from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"{part!r} is outside (0, 1); a sparsity of 0.9 prunes 90 %")
        values.append(value)
    if not values:
        raise ValueError("give at least one sparsity, e.g. 0.5, 0.8, 0.95")
    return sorted(set(values))


def encode_selection(indices: list[int] | None, n: int) -> str:
    """Selected example positions as a short URL-safe text.

    Runs of consecutive positions as ranges ("3-7.10.15-20", '.' between parts) when that is
    short; otherwise "z" + URL-safe base64 of the zlib-compressed bitset of the n examples,
    whose length stays near n/8 bytes at worst (a lasso over 27,000 points fits in a URL).
    Inside `storing_long_selections`, a code over `SELECTION_URL_LIMIT` characters is stored
    and "v" + its short id (`prunescope.server.view_service`) is written instead; should
    storing fail, the long code still opens the same view. Empty or None → "".
    """
    if not indices:
        return ""
    values = np.unique(np.asarray(indices, dtype=np.int64))
    values = values[(values >= 0) & (values < n)]
    if values.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate([[values[0]], values[breaks + 1]])
    stops = np.concatenate([values[breaks], [values[-1]]])
    ranges = ".".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, stops, strict=True))
    bits = np.zeros(n, dtype=bool)
    bits[values] = True
    packed = "z" + base64.urlsafe_b64encode(zlib.compress(np.packbits(bits).tobytes(), 9)) \
        .decode("ascii").rstrip("=")
    code = ranges if len(ranges) <= len(packed) else packed
    store = _long_selection_store.get()
    if len(code) <= SELECTION_URL_LIMIT or store is None:
        return code
    try:
        return "v" + store(code)
    except Exception:  # noqa: BLE001 - a long link beats a page that fails
        log.warning("could not store a selection of %d characters", len(code), exc_info=True)
        return code


def decode_selection(text: str | None, n: int) -> list[int]:
    """The positions `encode_selection` wrote; anything unreadable or out of range is dropped
    (a hand-edited link gives a smaller selection, never an error). "v" + id is looked up in
    the database; an unknown id, or no database at all, reads as no selection."""
    text = (text or "").strip()
    if not text or n <= 0:
        return []
    if text.startswith("v"):
        try:
            text = view_service.load_view_state(text[1:])
        except Exception:  # noqa: BLE001 - unknown id, other server, no database: no selection
            log.info("selection %r not found", text[:40], exc_info=True)
            return []
        if text.startswith("v"):
            return []  # stored codes are never ids themselves
    if text.startswith("z"):
        body = text[1:] + "=" * (-len(text[1:]) % 4)
        try:
            raw = zlib.decompressobj().decompress(base64.urlsafe_b64decode(body), (n + 7) // 8)
        except (binascii.Error, ValueError, zlib.error):
            return []
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n]
        return np.flatnonzero(bits).tolist()
    out: set[int] = set()
    for part in text.split("."):
        low, _, high = part.partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            continue
        a, b = max(a, 0), min(b, n - 1)
        if b >= a:
            out.update(range(a, b + 1))
    return sorted(out)
