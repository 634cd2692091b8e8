"""The architecture registry: uploads and jobs name their network, `create_model` builds it.

Every model exposes

- `config`: its config dataclass,
- `input_shape`: the shape of one example (without the batch dimension),
- `analysis_layers`: the ordered names of the submodules whose outputs layer analyses
  (per-layer CKA, probes) compare. Each names a block that ends in its nonlinearity, so the
  captured output is the representation the next layer actually reads; the last one is the
  classifier's logits and the one before it the features the `classifier` Linear reads.

Each network module registers its classes into `prunescope.models.registration`; this module
imports them all (`small`: mlp, cnn_small; `resnet`: resnet20, resnet18; `vit`: vit_small), so
`create_model` knows every architecture whichever of them was imported first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

import prunescope.models.resnet  # noqa: F401  (registers resnet20, resnet18)
import prunescope.models.small  # noqa: F401  (registers mlp, cnn_small)
import prunescope.models.vit  # noqa: F401  (registers vit_small)
from prunescope.models import hf
from prunescope.models.registration import ARCHITECTURES, UnknownArchitectureError, register

__all__ = ["UnknownArchitectureError", "build_config", "create_model", "default_config",
           "list_architectures", "register"]


def list_architectures() -> list[str]:
    """Registered architecture names and `huggingface` (any model built from config.json)."""
    return sorted([*ARCHITECTURES, hf.HF_ARCHITECTURE])


def _model_class(name: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[name]
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
