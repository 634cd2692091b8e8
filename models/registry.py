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
`create_model` knows every architecture whichever of them was imported first. Names, default
configs and config checks come from the torch-free catalogue, `prunescope.models.architectures`,
which the web server reads instead of this module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import prunescope.models.resnet  # noqa: F401  (registers resnet20, resnet18)
import prunescope.models.small  # noqa: F401  (registers mlp, cnn_small)
import prunescope.models.vit  # noqa: F401  (registers vit_small)
from prunescope.models import architectures, hf
from prunescope.models.architectures import (
    UnknownArchitectureError,
    default_config,
    list_architectures,
)
from prunescope.models.registration import ARCHITECTURES, register

__all__ = ["UnknownArchitectureError", "build_config", "create_model", "default_config",
           "list_architectures", "register"]


def _model_class(name: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_architectures())}"
        ) from None


def build_config(name: str, **config: Any) -> Any:
    """The architecture's config dataclass from keyword values, validated.

    Raises ValueError naming unknown keys or bad values. For `huggingface` it is the
    transformers config object built from the config.json dict.
    """
    if name == hf.HF_ARCHITECTURE:
        return hf.pretrained_config(config)
    return architectures.build_config(name, **config)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a freshly initialised model; missing config keys take their defaults."""
    if name == hf.HF_ARCHITECTURE:
        return hf.build_model(config)
    model_class = _model_class(name)
    return model_class(build_config(name, **config))
