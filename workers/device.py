"""Where a job's tensors live: the GPU when there is one (else the CPU), host batches in pinned
memory so their copies overlap compute, and the device's memory given back between jobs."""

from __future__ import annotations

import gc
from typing import Any

import torch


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested` when given, else "cuda" when a GPU is visible, else "cpu"."""
    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """A tensor (or a dict of tensors) on `device`. Host tensors bound for a GPU go through
    pinned memory and copy asynchronously; on the CPU this is `.to(device)`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def release_device_memory() -> None:
    """Give back what a finished job held on the GPU, so the next job in this (long-lived)
    worker process starts with the whole device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
