"""Checkpoint files: load a state_dict safely, check it fits an architecture, save safetensors.

Two formats are accepted, recognised from the file's content rather than its name:

- safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes;
- torch state_dict: the zip archive `torch.save` writes (starts with b"PK"), loaded only with
  `torch.load(..., weights_only=True)`, whose restricted unpickler refuses any object other
  than tensors and plain containers. A pickled whole model or a pickle carrying code is
  refused, never unpickled.

`read_checkpoint_upload` accepts, besides those single files, a Hugging Face model folder
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
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _safetensors_load_file
from safetensors.torch import save_file as _safetensors_save_file
from torch import nn

from prunescope.models import hf
from prunescope.models.archives import (
    ArchiveError,
    archive_format,
    check_zip_expansion,
    extract_archive,
)
from prunescope.models.registry import create_model
from prunescope.models.safe_json import JSONRefused, loads_bounded

EXPORT_HINT = (
    "save the weights only, with `torch.save(model.state_dict(), path)` or "
    "`safetensors.torch.save_file(model.state_dict(), path)`"
)
# The largest JSON header we read; real headers are a few hundred bytes per tensor.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_SHOW = 5  # how many offending keys a message names before it summarises with a count


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is meant for the user as is."""


def _read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _looks_like_safetensors(path: Path) -> bool:
    head = _read_prefix(path, 9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= header_len <= _MAX_SAFETENSORS_HEADER


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    file_size = path.stat().st_size
    (header_len,) = struct.unpack("<Q", _read_prefix(path, 8))
    if 8 + header_len > file_size:
        raise CheckpointError(
            "the safetensors file is truncated (its header is cut off); upload the complete file"
        )
    try:
        # Parsed here first so a crafted header (200,000 levels deep, say) is refused in words.
        loads_bounded(_read_prefix(path, 8 + header_len)[8:], what="the safetensors header",
                      max_bytes=_MAX_SAFETENSORS_HEADER)
    except JSONRefused as exc:
        raise CheckpointError(f"{exc}; the file is corrupt, re-export it") from None
    try:
        return _safetensors_load_file(str(path), device="cpu")
    except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"the safetensors file is truncated or corrupt ({exc}); upload the complete file"
        ) from None


def _load_torch(path: Path, max_expanded_bytes: int | None) -> Any:
    if max_expanded_bytes is not None:
        # torch inflates compressed records into memory: bound them before it reads any.
        try:
            check_zip_expansion(path, max_expanded_bytes, what="the torch checkpoint")
        except ArchiveError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        # weights_only=True is the whole safety story: the restricted unpickler only rebuilds
        # tensors and plain containers and raises on any other global. Never drop it.
        # An open file rather than the path, because torch.load picks a loader from a path's
        # extension (".safetensors"), and the format here comes from the content.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, advice a user must not get here;
        # only the name of the refused object is passed on.
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"the file holds Python objects other than tensors{what}, for example a whole "
            "pickled model or code; PruneScope does not unpickle those because unpickling can "
            f"run arbitrary code. Instead, {EXPORT_HINT}"
        ) from None
    except Exception as exc:  # noqa: BLE001
        # Whatever else torch.load raises on a damaged archive (RuntimeError, EOFError,
        # BadZipFile, even AssertionError from its persistent-id check) means a corrupt file.
        raise CheckpointError(
            f"the torch checkpoint is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); upload the complete file"
        ) from None


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": {...}} and check the result is a flat str → Tensor mapping."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"the file holds a {type(obj).__name__}, not a state_dict (a dict of parameter "
            f"name → tensor); {EXPORT_HINT}"
        )
    if not obj:
        raise CheckpointError(f"the state_dict in the file is empty; {EXPORT_HINT}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:_SHOW])
        raise CheckpointError(
            f"the state_dict has {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that are not "
            f"named tensors ({shown}{', …' if len(bad) > _SHOW else ''}), e.g. optimizer state "
            f"or nested dicts; {EXPORT_HINT}"
        )
    return dict(obj)


def _effective(weight: torch.Tensor, mask: torch.Tensor, names: str) -> torch.Tensor:
    if weight.shape != mask.shape:
        raise CheckpointError(
            f"pruning mask {names} has shape {tuple(mask.shape)} but its weight has "
            f"{tuple(weight.shape)}; the file is inconsistent — export it again"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise CheckpointError(f"pruning mask {names} holds values other than 0 and 1")
    return weight * mask.to(weight.dtype)


def fold_pruning_masks(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Turn the state_dicts of mask-based pruning tools into plain (zero-filled) weights.

    - `torch.nn.utils.prune` stores `<name>_orig` (the weights, NOT zeroed) and the buffer
      `<name>_mask`; the effective parameter is `<name> = <name>_orig * <name>_mask`.
    - ShrinkBench-style masking keeps `<name>` unzeroed beside a `<name>_mask` buffer; the
      effective parameter is again their product.
    Returns the folded state_dict and the conventions found ("torch_prune", "shrinkbench").
    """
    out = dict(state_dict)
    found: set[str] = set()
    for key in [k for k in state_dict if k.endswith("_mask")]:
        name = key[: -len("_mask")]
        if name + "_orig" in state_dict:
            out[name] = _effective(state_dict[name + "_orig"], state_dict[key], key)
            del out[name + "_orig"], out[key]
            found.add("torch_prune")
        elif name in state_dict:
            out[name] = _effective(state_dict[name], state_dict[key], key)
            del out[key]
            found.add("shrinkbench")
    return out, sorted(found)


def _with_masks_folded(
    state_dict: dict[str, torch.Tensor], fmt: str
) -> tuple[dict[str, torch.Tensor], str]:
    folded, conventions = fold_pruning_masks(state_dict)
    return folded, "+".join([fmt, *conventions])


def load_state_dict_file(
    path: str | os.PathLike[str], *, max_expanded_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Load a checkpoint file as a CPU state_dict; returns it and its format.

    An upload passes `max_expanded_bytes`: a torch archive whose records would inflate past it
    is refused before torch reads them (stored checkpoints were checked when uploaded).

    The format is "safetensors" or "torch_state_dict", detected from the file's first bytes,
    with "+torch_prune" / "+shrinkbench" appended when pruning masks were folded into the
    weights (see `fold_pruning_masks`).
    Raises CheckpointError for anything else, for truncated or corrupt files, for pickles that
    hold more than tensors, and for objects that are not a flat dict of name → tensor (a dict
    with a "state_dict" key wrapping one is accepted).
    """
    path = Path(path)
    head = _read_prefix(path, 4)
    if not head:
        raise CheckpointError("the file is empty; upload a safetensors or torch state_dict file")
    if head.startswith(b"PK"):
        return _with_masks_folded(_as_state_dict(_load_torch(path, max_expanded_bytes)),
                                  "torch_state_dict")
    if _looks_like_safetensors(path):
        return _with_masks_folded(_as_state_dict(_load_safetensors(path)), "safetensors")
    if head[:1] == b"\x80":
        # A bare pickle stream: Python's pickle.dump, or torch.save's pre-1.6 format. It is
        # refused unread rather than guessed at, since a pickle is code as much as data.
        raise CheckpointError(
            "the file is a bare Python pickle, not a safetensors file or a torch.save zip "
            f"archive; PruneScope never unpickles arbitrary files. {EXPORT_HINT[0].upper()}"
            f"{EXPORT_HINT[1:]} with PyTorch 1.6 or newer"
        )
    raise CheckpointError(
        "the file is not a checkpoint PruneScope can read: expected safetensors or a torch "
        f"state_dict archive; {EXPORT_HINT}"
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
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


def _torch_zip(path: Path) -> bool:
    """Whether a zip file is a torch.save archive (it holds a `<name>/data.pkl` record)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # let the torch loader report the corruption in its own words


def _check_fits_the_model(path: Path, max_weight_bytes: int) -> None:
    """CheckpointError when a torch archive's records declare more bytes than any checkpoint
    of the project's model holds, before torch inflates them."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # the torch loader reports the corruption in its own words
    if declared > max_weight_bytes:
        raise CheckpointError(
            f"the torch checkpoint holds {declared:,} bytes once inflated, more than any "
            f"checkpoint of the project's model ({max_weight_bytes:,} bytes even in float64 "
            "with pruning masks); it is not a checkpoint of this model — check the project's "
            "architecture and configuration"
        )


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
    if kind is None or (kind == "zip" and _torch_zip(path)):
        if kind == "zip" and max_weight_bytes is not None:
            _check_fits_the_model(path, max_weight_bytes)
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
