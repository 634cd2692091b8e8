"""The table that network modules register their `nn.Module` classes into.

It sits below every network module so that they and `prunescope.models.registry` (which imports
them all) can reach it without importing each other. Registering a name also lists its config
class in the torch-free catalogue (`prunescope.models.architectures`), so both know the same
architectures; the config classes themselves live in `prunescope.models.configs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from prunescope.models.architectures import ARCHITECTURE_CONFIGS, UnknownArchitectureError
from prunescope.models.configs import positive_int, positive_ints

__all__ = ["ARCHITECTURES", "UnknownArchitectureError", "positive_int", "positive_ints",
           "register"]

ARCHITECTURES: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])

# What the server reads from a config without building its model (see `configs`).
_CONFIG_NEEDS = ("input_shape", "num_classes", "parameter_count")


def register(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make `create_model(name, **config)` build this model.

    The class must have a `config_class` attribute (a dataclass giving `input_shape`,
    `num_classes` and `parameter_count()`) and take an instance of it as its only constructor
    argument. A name the catalogue already lists must come with the catalogue's config class.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        config_class = getattr(cls, "config_class", None)
        if not dataclasses.is_dataclass(config_class):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class` to be registered")
        fields = {f.name for f in dataclasses.fields(config_class)}
        missing = [a for a in _CONFIG_NEEDS if a not in fields and not hasattr(config_class, a)]
        if missing:
            raise TypeError(f"{config_class.__name__} needs {', '.join(missing)} to be "
                            "registered, so a config says what its model reads and how large "
                            "it is without building it")
        listed = ARCHITECTURE_CONFIGS.setdefault(name, config_class)
        if listed is not config_class:
            raise TypeError(f"{cls.__name__}.config_class must be {listed.__name__}, the config "
                            f"the catalogue lists for {name!r}")
        ARCHITECTURES[name] = cls
        return cls

    return decorator
