"""Job parameters: one `Param` per accepted key, and `read_params`, which checks them.

Parameters are read and checked up front, so a typo or an out-of-range value fails at once
with a message naming the parameter, before any work starts — in the web server when a job is
submitted, and again in the worker that runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.workers.jobspec import JobInputError

REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    """One job parameter: its type, default (or required) and the rule its value must meet."""

    type: type
    default: Any = REQUIRED
    rule: str = ""
    valid: Callable[[Any], bool] = lambda value: True


# Every number has an upper bound too: a job asked for 10^29 epochs would hold a worker for
# ever, and one too large for the libraries fails late instead of at submission.
LARGEST_COUNT = 1_000_000


def positive_int(default: int, maximum: int = LARGEST_COUNT) -> Param:
    return Param(int, default, f"an integer from 1 to {maximum:,}", lambda v: 1 <= v <= maximum)


def positive_float(default: float, maximum: float = 1e6) -> Param:
    return Param(float, default, f"a positive number of at most {maximum:g}",
                 lambda v: math.isfinite(v) and 0 < v <= maximum)


def one_of(default: Any, choices: tuple[str, ...]) -> Param:
    return Param(str, default, f"one of {', '.join(choices)}", lambda v: v in choices)


# NumPy's and UMAP's generators take seeds below 2**32.
SEED = Param(int, 0, "an integer from 0 to 2**32 - 1", lambda v: 0 <= v < 2**32)
NAME_RULE = "a non-empty name of at most 200 characters"


def _valid_name(value: str) -> bool:
    return bool(value.strip()) and len(value) <= 200


def name_param(default: str | None) -> Param:
    """The name a job gives what it makes (a checkpoint, a training run)."""
    return Param(str, default, NAME_RULE, _valid_name)


# The server resolves these into spec.checkpoints (and checks they belong to the project);
# the handlers accept them and read spec.checkpoints.
CHECKPOINT_IDS = Param(list, None, "a list of at most 10,000 checkpoint ids",
                       lambda v: len(v) <= 10_000)


def read_params(kind: str, params: Mapping[str, Any], table: Mapping[str, Param]) -> dict[str, Any]:
    """Validated parameters with defaults filled in; JobInputError names the first bad one."""
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise JobInputError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for a {kind} job; "
            f"accepted: {', '.join(table)}"
        )
    values = {}
    for key, param in table.items():
        value = params.get(key)
        if value is None:
            if param.default is REQUIRED:
                raise JobInputError(f"params.{key} is required for a {kind} job: {param.rule}")
            values[key] = param.default
            continue
        # bool is an int subclass, but `epochs: true` is a mistake, not 1 epoch.
        if param.type is bool:
            ok_type = isinstance(value, bool)
        else:
            ok_type = not isinstance(value, bool) and (
                isinstance(value, param.type) or (param.type is float and isinstance(value, int))
            )
        if not ok_type or not param.valid(value):
            raise JobInputError(f"params.{key} must be {param.rule}, got {value!r}")
        values[key] = float(value) if param.type is float else value
    return values
