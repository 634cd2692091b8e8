"""Capture the outputs of named submodules during ordinary forward passes, via forward hooks.

Each captured output is flattened to (batch, features). For a convolutional block that means
the whole C×H×W map becomes one feature vector per example, as Kornblith et al. (2019) do when
they compare convolutional layers with CKA: it keeps the spatial layout, so two layers only
count as similar if they agree *where* a feature fires, not merely on channel averages
(pooling over space first would be the alternative, and would hide spatial changes).

A layer that outputs a token sequence (batch, tokens, dim) would flatten the same way, to
tokens × dim features in token order. Transformers choose their own summary instead: the
ViT's analysis layers are identity taps on each block's CLS token (`blocks.{i}.cls_out`),
so they arrive here as (batch, dim) already; see `prunescope.models.vit`. Attention maps are
captured unflattened (`flatten=False`) from the `attention_layers` a model lists, as
(batch, heads, tokens, tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _detached(name: str, output: Any, flatten: bool) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; capture a submodule "
            "that returns a single tensor"
        )
    output = output.detach()
    return output.reshape(output.shape[0], -1) if flatten else output


@contextmanager
def capture_layer_outputs(
    model: nn.Module, layer_names: Sequence[str], *, flatten: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of `model` stores each named module's output.

    Yields a dict {layer name: tensor of shape (batch, features)} that each forward pass
    overwrites (with `flatten=False`, the output's own shape, e.g. attention maps
    (batch, heads, tokens, tokens)), so read it after every batch:

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
            outputs[name] = _detached(name, output, flatten)

        return hook

    try:
        for name in layer_names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def layer_outputs(
    model: nn.Module, x: torch.Tensor, layer_names: Sequence[str], *, flatten: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One no-grad forward pass: (model output, {layer name: (batch, features) output}).

    `flatten=False` keeps each output's own shape, as in `capture_layer_outputs`.
    """
    with capture_layer_outputs(model, layer_names, flatten=flatten) as outputs, torch.no_grad():
        result = model(x)
    return result, dict(outputs)
