"""Checkpoint files: load a state_dict safely, check it fits an architecture, save safetensors.

Single files (safetensors, torch.save archives) are read by
`prunescope.models.checkpoint_files`, which this module re-exports (`load_state_dict_file`,
`CheckpointError`). `read_checkpoint_upload` accepts, besides those, a Hugging Face model folder
packed as .zip, .tar or .tar.gz (unpacked by `prunescope.models.archives`, read by
`prunescope.models.hf`).

A pruned checkpoint may also be *structurally* pruned (Torch-Pruning output: whole channels,
neurons or heads removed, so tensors are smaller than the dense model's). Its tensors are
matched to the architecture by name, the smaller parameters replace the model's, and the
model must still run and produce the dense model's output shape; see `model_from_state_dict`.

`CheckpointError` messages are shown to users as they are: each says what is wrong with the
file and what to do instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file as _safetensors_save_file
from torch import nn

from prunescope.models import hf
from prunescope.models.archives import ArchiveError, archive_format, extract_archive
from prunescope.models.checkpoint_files import (
    EXPORT_HINT,
    SHOWN,
    CheckpointError,
    check_fits_the_model,
    fold_pruning_masks,
    is_torch_zip,
    load_state_dict_file,
)
from prunescope.models.registry import create_model

__all__ = ["EXPORT_HINT", "CheckpointError", "LoadedCheckpoint", "fold_pruning_masks",
           "load_model", "load_state_dict_file", "model_from_state_dict",
           "read_checkpoint_upload", "save_safetensors", "validate_for_architecture"]


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} ({shown}{more})"


def _hints(missing: list[str], unexpected: list[str]) -> list[str]:
    hints = []
    if any(k.endswith(("_orig", "_mask")) for k in unexpected):
        hints.append(
            "keys ending in _orig/_mask come from torch.nn.utils.prune: call "
            "prune.remove(module, 'weight') on each pruned module before saving"
        )
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hints.append(
            "the keys start with 'module.' (saved from DataParallel/DistributedDataParallel): "
            "save model.module.state_dict() instead"
        )
    if missing and not unexpected:
        hints.append("was the checkpoint saved from a model with a different configuration?")
    return hints


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from an upload: its (mask-folded) state_dict and what it was."""

    state_dict: dict[str, torch.Tensor]
    format: str
    hf_folder: hf.ModelFolder | None = None  # set when the upload was a model-folder archive


def read_checkpoint_upload(
    path: str | os.PathLike[str], work_dir: str | os.PathLike[str], *, max_expanded_bytes: int,
    max_weight_bytes: int | None = None,
) -> LoadedCheckpoint:
    """Read any accepted checkpoint upload; archives are unpacked into the empty `work_dir`.

    Single files go through `load_state_dict_file`. A zip that is not a torch.save archive, a
    tar or a tar.gz is taken for a Hugging Face model folder: unpacked safely (never past
    `max_expanded_bytes`), config.json found, weights read (sharded safetensors merged). The
    format reads e.g. "hf_folder(zip)+safetensors". CheckpointError explains any refusal.
    The weights a torch archive inflates to are bounded by `max_expanded_bytes` and, when
    given, by `max_weight_bytes` (what the project's model can hold) before torch reads them.
    """
    path = Path(path)
    kind = archive_format(path)
    budget = min(max_expanded_bytes, max_weight_bytes or max_expanded_bytes)
    if kind is None or (kind == "zip" and is_torch_zip(path)):
        if kind == "zip" and max_weight_bytes is not None:
            check_fits_the_model(path, max_weight_bytes)
        state_dict, fmt = load_state_dict_file(path, max_expanded_bytes=max_expanded_bytes)
        return LoadedCheckpoint(state_dict, fmt)
    try:
        extract_archive(path, work_dir, max_total_bytes=max_expanded_bytes)
        folder = hf.find_model_folder(Path(work_dir))
    except (ArchiveError, hf.HFModelError) as exc:
        raise CheckpointError(str(exc)) from None
    state_dict: dict[str, torch.Tensor] = {}
    conventions: set[str] = set()
    for weights in folder.weight_files:
        shard, fmt = load_state_dict_file(weights, max_expanded_bytes=max(budget, 0))
        budget -= sum(t.numel() * t.element_size() for t in shard.values())
        conventions.update(fmt.split("+")[1:])
        clash = sorted(set(shard) & set(state_dict))
        if clash:
            raise CheckpointError(f"the weight shards both hold {_listing(clash)}")
        state_dict.update(shard)
    fmt = "+".join([f"hf_folder({kind})", folder.weight_format, *sorted(conventions)])
    return LoadedCheckpoint(state_dict, fmt, folder)


def _check_finite(state_dict: Mapping[str, torch.Tensor], keys: list[str]) -> None:
    not_float = [k for k in keys if not state_dict[k].is_floating_point()]
    if not_float:
        raise CheckpointError(
            f"tensors with a non-floating dtype: {_listing(not_float)}; save float weights"
        )
    non_finite = [k for k in keys if not bool(torch.isfinite(state_dict[k]).all())]
    if non_finite:
        raise CheckpointError(
            f"tensors containing NaN or Inf values: {_listing(non_finite)}; the training run "
            "that produced them diverged — export a checkpoint from before it did"
        )


def _mismatch_error(
    architecture: str, config: Mapping[str, Any], missing: list[str], unexpected: list[str],
    mismatched: list[str],
) -> CheckpointError:
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    shown = dict(config) if architecture != hf.HF_ARCHITECTURE else "from config.json"
    return CheckpointError(
        f"the checkpoint does not fit {architecture} with config {shown}: "
        + "; ".join(problems + _hints(missing, unexpected))
    )


def _hf_model(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    try:
        model, report = hf.load_weights(config, state_dict)
    except hf.HFModelError as exc:
        raise CheckpointError(str(exc)) from None
    if report.missing or report.unexpected or report.mismatched:
        raise _mismatch_error(
            hf.HF_ARCHITECTURE, config, report.missing, report.unexpected, report.mismatched
        )
    floats = [k for k, v in state_dict.items() if v.is_floating_point()]
    _check_finite(state_dict, floats)
    return model


def _replace_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Swap the parameter or buffer `key` for an empty one shaped like `value`."""
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(torch.empty_like(value))
    else:
        owner._buffers[attr] = torch.empty_like(value)
    # Keep the size attributes truthful for anything that reads them (repr, cost counts).
    if attr == "weight" and isinstance(owner, nn.Linear):
        owner.out_features, owner.in_features = value.shape
    elif attr == "weight" and isinstance(owner, nn.modules.conv._ConvNd):
        first, second = value.shape[0], value.shape[1] * owner.groups
        owner.in_channels, owner.out_channels = (
            (first, second) if owner.transposed else (second, first)
        )
    elif attr == "weight" and isinstance(owner, nn.modules.batchnorm._NormBase):
        owner.num_features = value.shape[0]


def model_from_state_dict(
    architecture: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    allow_shape_changes: bool = False,
) -> nn.Module:
    """Build the architecture with the checkpoint's weights, in eval mode; CheckpointError if not.

    Keys must match exactly (missing and unexpected ones are named, with hints). Shapes must
    match too unless `allow_shape_changes`: then a structurally pruned checkpoint is accepted
    when every changed tensor is no larger than the architecture's in any dimension, the
    model runs on an example input with those tensors, and its output keeps the dense
    output's shape (so a wrong configuration still fails, naming the tensors). The names of the
    changed tensors are in `model.structural_changes`.
    Hugging Face architectures load through transformers (see `prunescope.models.hf.load_weights`).
    """
    if architecture == hf.HF_ARCHITECTURE:
        model = _hf_model(config, state_dict)
        model.structural_changes = []  # type: ignore[attr-defined]
        return model
    model = create_model(architecture, **config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    changed = [k for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    shrunk = [
        k for k in changed
        if state_dict[k].dim() == expected[k].dim()
        and all(a <= b for a, b in zip(state_dict[k].shape, expected[k].shape, strict=True))
    ]
    bad_shapes = changed if not allow_shape_changes else [k for k in changed if k not in shrunk]
    if missing or unexpected or bad_shapes:
        raise _mismatch_error(
            architecture, config, missing, unexpected,
            [f"{k} is {tuple(state_dict[k].shape)} but {architecture} expects "
             f"{tuple(expected[k].shape)}" for k in bad_shapes],
        )
    _check_finite(state_dict, [k for k, v in expected.items() if v.is_floating_point()])
    if changed:
        dense_output = _output_shape(model)
        for key in changed:
            _replace_tensor(model, key, state_dict[key])
    model.load_state_dict(state_dict, strict=True)
    if changed:
        try:
            output = _output_shape(model)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the checkpoint's smaller tensors ({_listing(changed)}) do not fit together: "
                f"{architecture} fails to run with them ({str(exc).splitlines()[0]}). A "
                "structurally pruned checkpoint must shrink connected layers consistently"
            ) from None
        if output != dense_output:
            raise CheckpointError(
                f"the structurally pruned model outputs shape {output}, the dense model "
                f"{dense_output}; the output layer must keep all its units"
            )
    model.structural_changes = changed  # type: ignore[attr-defined]
    return model.eval()


def _output_shape(model: nn.Module) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(model.eval()(torch.zeros((2, *model.input_shape))).shape)


def validate_for_architecture(
    state_dict: Mapping[str, torch.Tensor],
    architecture: str,
    config: Mapping[str, Any],
    *,
    allow_shape_changes: bool = False,
) -> None:
    """Raise CheckpointError unless `state_dict` loads into the architecture.

    Names missing keys, unexpected keys and shape mismatches (a few of each, with counts), and
    tensors that contain NaN or infinity. See `model_from_state_dict` for shape changes.
    """
    model_from_state_dict(
        architecture, config, state_dict, allow_shape_changes=allow_shape_changes
    )


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write a state_dict as safetensors (CPU, contiguous, detached copies)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    _safetensors_save_file(tensors, str(path))


def load_model(
    architecture: str,
    config: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    assets_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build the architecture and load a stored checkpoint into it; returned in eval mode.

    Stored checkpoints were validated on upload, so structurally pruned ones load too. A
    Hugging Face checkpoint's own config.json (in its `assets_path` zip) takes precedence over
    the project's: it records heads removed by `prune_heads`.
    """
    if architecture == hf.HF_ARCHITECTURE and assets_path is not None:
        config = hf.config_from_assets(assets_path) or config
    state_dict, _ = load_state_dict_file(path)
    return model_from_state_dict(architecture, config, state_dict, allow_shape_changes=True)
