"""Checkpoint files read safely as a state_dict, recognised from their content, not their name.

- safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
  The header is parsed with bounded size and depth first (a header nested 200,000 levels
  deep is refused in words, not with RecursionError);
- torch state_dict: the zip archive `torch.save` writes (starts with b"PK"), loaded only with
  `torch.load(..., weights_only=True)`, whose restricted unpickler refuses any object other
  than tensors and plain containers. A pickled whole model or a pickle carrying code is
  refused, never unpickled. An upload's archive is measured before torch reads it: the sizes
  its records declare against the limit and against what the project's model can hold, and
  deflated records proven not to inflate past what they declare.

Mask-based pruning state dicts are folded into plain weights (`fold_pruning_masks`).
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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _safetensors_load_file

from prunescope.models.archives import ArchiveError, check_zip_expansion
from prunescope.models.safe_json import JSONRefused, loads_bounded

EXPORT_HINT = (
    "save the weights only, with `torch.save(model.state_dict(), path)` or "
    "`safetensors.torch.save_file(model.state_dict(), path)`"
)
# The largest JSON header we read; real headers are a few hundred bytes per tensor.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
SHOWN = 5  # how many offending keys a message names before it summarises with a count


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
        shown = ", ".join(repr(k) for k in bad[:SHOWN])
        raise CheckpointError(
            f"the state_dict has {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that are not "
            f"named tensors ({shown}{', …' if len(bad) > SHOWN else ''}), e.g. optimizer state "
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


def is_torch_zip(path: Path) -> bool:
    """Whether a zip file is a torch.save archive (it holds a `<name>/data.pkl` record)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # let the torch loader report the corruption in its own words


def check_fits_the_model(path: Path, max_weight_bytes: int) -> None:
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
