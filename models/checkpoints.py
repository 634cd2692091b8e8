"""Checkpoint files: load a state_dict safely, check it fits an architecture, save safetensors.

Two formats are accepted, recognised from the file's content rather than its name:

- safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes;
- torch state_dict: the zip archive `torch.save` writes (starts with b"PK"), loaded only with
  `torch.load(..., weights_only=True)`, whose restricted unpickler refuses any object other
  than tensors and plain containers. A pickled whole model or a pickle carrying code is
  refused, never unpickled.

`CheckpointError` messages are shown to users as they are: each says what is wrong with the
file and what to do instead.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _safetensors_load_file
from safetensors.torch import save_file as _safetensors_save_file
from torch import nn

from models.registry import create_model

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
        json.loads(_read_prefix(path, 8 + header_len)[8:])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"the safetensors header is not valid JSON ({exc}); the file is corrupt, re-export it"
        ) from None
    try:
        return _safetensors_load_file(str(path), device="cpu")
    except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"the safetensors file is truncated or corrupt ({exc}); upload the complete file"
        ) from None


def _load_torch(path: Path) -> Any:
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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
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


def load_state_dict_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Load a checkpoint file as a CPU state_dict; returns it and its format.

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
        return _with_masks_folded(_as_state_dict(_load_torch(path)), "torch_state_dict")
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


def validate_for_architecture(
    state_dict: Mapping[str, torch.Tensor], architecture: str, config: Mapping[str, Any]
) -> None:
    """Raise CheckpointError unless `state_dict` loads into the architecture exactly.

    Names missing keys, unexpected keys and shape mismatches (a few of each, with counts), and
    tensors that contain NaN or infinity.
    """
    expected = create_model(architecture, **config).state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} is {tuple(state_dict[k].shape)} but {architecture} expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"the checkpoint does not fit {architecture} with config {dict(config)}: "
            + "; ".join(problems + _hints(missing, unexpected))
        )
    not_float = [k for k in expected if not state_dict[k].is_floating_point()]
    if not_float:
        raise CheckpointError(
            f"tensors with a non-floating dtype: {_listing(not_float)}; save float weights"
        )
    non_finite = [k for k in expected if not bool(torch.isfinite(state_dict[k]).all())]
    if non_finite:
        raise CheckpointError(
            f"tensors containing NaN or Inf values: {_listing(non_finite)}; the training run "
            "that produced them diverged — export a checkpoint from before it did"
        )


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write a state_dict as safetensors (CPU, contiguous, detached copies)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    _safetensors_save_file(tensors, str(path))


def load_model(
    architecture: str, config: Mapping[str, Any], path: str | os.PathLike[str]
) -> nn.Module:
    """Build the architecture and load the checkpoint into it; returned in eval mode."""
    state_dict, _ = load_state_dict_file(path)
    validate_for_architecture(state_dict, architecture, config)
    model = create_model(architecture, **config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()

