"""The architecture registry: uploads and jobs name their network, `create_model` builds it.

Each architecture is one readable section below: a small frozen config dataclass and the
`nn.Module`. Every model exposes

- `config`: its config dataclass,
- `input_shape`: the shape of one example (without the batch dimension),
- `analysis_layers`: the ordered names of the submodules whose outputs layer analyses
  (per-layer CKA, probes) compare. Each names a block that ends in its nonlinearity, so the
  captured output is the representation the next layer actually reads; the last one is the
  classifier's logits and the one before it the features the `classifier` Linear reads.

The small networks live here; the larger ones each have their own module (`prunescope.models.resnet`:
resnet20, resnet18; `prunescope.models.vit`: vit_small), imported at the end of this file so that
`create_model` knows every architecture whichever module is imported first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from prunescope.models import hf


class UnknownArchitectureError(ValueError):
    """An architecture name that is not registered; the message lists the known names."""


_REGISTRY: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def register(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make `create_model(name, **config)` build this model.

    The class must have a `config_class` attribute (a dataclass) and take an instance of it
    as its only constructor argument.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class` to be registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_architectures() -> list[str]:
    """Registered architecture names and `huggingface` (any model built from config.json)."""
    return sorted([*_REGISTRY, hf.HF_ARCHITECTURE])


def _model_class(name: str) -> type[nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_architectures())}"
        ) from None


def default_config(name: str) -> dict[str, Any]:
    """The architecture's default configuration as JSON-able values (tuples become lists).

    Lists rather than tuples so the dict compares equal after a round trip through JSON,
    which is how projects store it. A `huggingface` project's config is its config.json,
    which the first uploaded folder provides, so its default is empty.
    """
    if name == hf.HF_ARCHITECTURE:
        return {}
    config = _model_class(name).config_class()
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }


def build_config(name: str, **config: Any) -> Any:
    """The architecture's config dataclass from keyword values, validated.

    Raises ValueError naming unknown keys or bad values. For `huggingface` it is the
    transformers config object built from the config.json dict.
    """
    if name == hf.HF_ARCHITECTURE:
        return hf.pretrained_config(config)
    config_class = _model_class(name).config_class
    known = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"unknown configuration key(s) {', '.join(map(repr, unknown))} for {name}; "
            f"known keys: {', '.join(known)}"
        )
    return config_class(**config)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a freshly initialised model; missing config keys take their defaults."""
    if name == hf.HF_ARCHITECTURE:
        return hf.build_model(config)
    return _model_class(name)(build_config(name, **config))


def _positive_int(owner: str, key: str, value: Any) -> int:
    # bool is an int subclass; `True` hidden units is a typo, not a size.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{key} must be a positive integer, got {value!r}")
    return value


def _positive_ints(owner: str, key: str, value: Any, *, length: int | None = None) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}.{key} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{owner}.{key} must have {length} entries, got {len(value)}")
    return tuple(_positive_int(owner, key, v) for v in value)


# ---------------------------------------------------------------------------------------- mlp


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 64
    hidden: tuple[int, ...] = (128, 64)
    num_classes: int = 10

    def __post_init__(self) -> None:
        # Stored configs come back from JSON with lists; tuples keep configs comparable and
        # hashable. object.__setattr__ because the dataclass is frozen.
        for key in ("in_features", "num_classes"):
            object.__setattr__(self, key, _positive_int("mlp", key, getattr(self, key)))
        object.__setattr__(self, "hidden", _positive_ints("mlp", "hidden", self.hidden))


@register("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network: fc1 … fcK (Linear + ReLU), then a linear `classifier`."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.input_shape: tuple[int, ...] = (config.in_features,)
        width = config.in_features
        hidden_names = []
        for i, out in enumerate(config.hidden, start=1):
            self.add_module(f"fc{i}", nn.Sequential(nn.Linear(width, out), nn.ReLU()))
            hidden_names.append(f"fc{i}")
            width = out
        self.classifier = nn.Linear(width, config.num_classes)
        self.hidden_names = tuple(hidden_names)
        self.analysis_layers: tuple[str, ...] = (*hidden_names, "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # accepts images too, so one dataset feeds both architectures
        for name in self.hidden_names:
            x = getattr(self, name)(x)
        return self.classifier(x)


# ---------------------------------------------------------------------------------- cnn_small


@dataclass(frozen=True)
class CNNSmallConfig:
    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10

    def __post_init__(self) -> None:
        owner = "cnn_small"
        for key in ("in_channels", "image_size", "hidden", "num_classes"):
            object.__setattr__(self, key, _positive_int(owner, key, getattr(self, key)))
        channels = _positive_ints(owner, "channels", self.channels, length=2)
        object.__setattr__(self, "channels", channels)


@register("cnn_small")
class CNNSmall(nn.Module):
    """Two 3x3 conv + ReLU blocks (the second with stride 2), a ReLU linear layer, a classifier.

    Padding 1 keeps the spatial size through conv1 and stride 2 halves it (rounding up) in
    conv2, so an 8x8 digit becomes a channels[1] x 4 x 4 map before `fc`. Stride rather than
    max-pooling: on digits it trains to about the same test accuracy (97 % vs 98 %) in half the
    CPU time, as the 2x2 pool is the slowest op of this tiny network on CPU.
    """

    config_class = CNNSmallConfig

    def __init__(self, config: CNNSmallConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        side = (config.image_size + 1) // 2
        size = config.image_size
        self.input_shape: tuple[int, ...] = (config.in_channels, size, size)
        self.conv1 = nn.Sequential(nn.Conv2d(config.in_channels, c1, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, config.hidden), nn.ReLU())
        self.classifier = nn.Linear(config.hidden, config.num_classes)
        self.analysis_layers: tuple[str, ...] = ("conv1", "conv2", "fc", "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.conv2(self.conv1(x))))


# ------------------------------------------------------------ architectures in their own module

# Imported last: they register through `register` above. Plain `import` so that importing
# models.resnet first (which imports this module) still works.
import prunescope.models.resnet  # noqa: E402, F401
import prunescope.models.vit  # noqa: E402, F401
