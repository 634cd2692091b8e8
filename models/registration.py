"""The architecture table that network modules register into, and the checks their configs share.

It sits below every network module so that they and `prunescope.models.registry` (which imports
them all) can reach it without importing each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn


class UnknownArchitectureError(ValueError):
    """An architecture name that is not registered; the message lists the known names."""


ARCHITECTURES: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def register(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make `create_model(name, **config)` build this model.

    The class must have a `config_class` attribute (a dataclass) and take an instance of it
    as its only constructor argument.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class` to be registered")
        ARCHITECTURES[name] = cls
        return cls

    return decorator


def positive_int(owner: str, key: str, value: Any) -> int:
    """`value` when it is an integer of at least 1; ValueError naming `owner.key` otherwise."""
    # bool is an int subclass; `True` hidden units is a typo, not a size.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{key} must be a positive integer, got {value!r}")
    return value


def positive_ints(owner: str, key: str, value: Any, *, length: int | None = None) -> tuple:
    """`value` as a tuple of positive integers (of `length` entries when given)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}.{key} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{owner}.{key} must have {length} entries, got {len(value)}")
    return tuple(positive_int(owner, key, v) for v in value)
