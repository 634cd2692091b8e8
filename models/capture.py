"""Capture the outputs of named submodules during ordinary forward passes, via forward hooks.

Each captured output is flattened to (batch, features). For a convolutional block that means
the whole C×H×W map becomes one feature vector per example, as Kornblith et al. (2019) do when
they compare convolutional layers with CKA: it keeps the spatial layout, so two layers only
count as similar if they agree *where* a feature fires, not merely on channel averages
(pooling over space first would be the alternative, and would hide spatial changes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _flatten(name: str, output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; capture a submodule "
            "that returns a single tensor"
        )
    return output.detach().reshape(output.shape[0], -1)


@contextmanager
def capture_layer_outputs(
    model: nn.Module, layer_names: Sequence[str]
) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of `model` stores each named module's output.

    Yields a dict {layer name: tensor of shape (batch, features)} that each forward pass
    overwrites, so read it after every batch:

        with capture_layer_outputs(model, ["conv1", "fc"]) as outputs:
            for x in batches:
                logits = model(x)
                use(outputs["conv1"], outputs["fc"])

    The outputs are detached from the autograd graph. Hooks are removed when the block exits,
    also on error. Unknown names raise ValueError listing the module names that exist.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in layer_names if n not in modules]
    if unknown:
        known = [n for n in modules if n]
        raise ValueError(
            f"no module named {', '.join(map(repr, unknown))} in {type(model).__name__}; "
            f"modules: {', '.join(known)}"
        )
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs[name] = _flatten(name, output)

        return hook

    try:
        for name in layer_names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def layer_outputs(
    model: nn.Module, x: torch.Tensor, layer_names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One no-grad forward pass: (model output, {layer name: (batch, features) output})."""
    with capture_layer_outputs(model, layer_names) as outputs, torch.no_grad():
        result = model(x)
    return result, dict(outputs)
