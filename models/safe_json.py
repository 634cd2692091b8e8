"""JSON from uploaded files, refused cleanly when it is too large or too deeply nested.

Python's json module recurses once per nested array or object, so a safetensors header or a
config.json nested 200,000 levels deep raises RecursionError rather than a parse error, and
code that walks the parsed value recursively would hit the same wall. `loads_bounded` bounds
the text's size first, turns RecursionError into a refusal, and measures the depth of what it
parsed with an explicit stack, refusing anything deeper than a real file needs.
"""

from __future__ import annotations

import json
from typing import Any

# Safetensors headers are 2 levels deep and config.json files rarely pass 5; 64 leaves ample
# room while staying far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64


class JSONRefused(ValueError):
    """JSON that is invalid, too large or too deeply nested; the message says which."""


def json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in a parsed JSON value (0 for a scalar), level by
    level rather than by recursion."""
    depth, level = 0, [value]
    while level := [v for v in level if isinstance(v, (dict, list))]:
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def loads_bounded(data: bytes | str, *, what: str, max_bytes: int,
                  max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(data)` for untrusted input; JSONRefused naming `what` when the text is
    larger than `max_bytes`, nested deeper than `max_depth`, not UTF-8 or not JSON."""
    if len(data) > max_bytes:
        raise JSONRefused(f"{what} is {len(data):,} bytes, more than the limit of "
                          f"{max_bytes:,}")
    try:
        value = json.loads(data)
    except RecursionError:
        value, depth = None, None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JSONRefused(f"{what} is not valid JSON ({exc})") from None
    else:
        depth = json_depth(value)
    if depth is None or depth > max_depth:
        shown = "thousands of" if depth is None else f"{depth:,}"
        raise JSONRefused(f"{what} nests {shown} levels deep, more than the {max_depth} any "
                          "real file needs")
    return value
