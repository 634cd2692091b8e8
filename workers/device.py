"""Where a job's tensors live: the GPU when there is one (else the CPU), host batches in pinned
memory so their copies overlap compute, models streamed to the device block by block when they
do not fit on it together, batches sized to fill it, and its memory given back between jobs."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# Of the device's free memory, the share that models and batches may plan to use; the rest is
# left for the allocator's fragmentation and kernels' workspaces.
DEVICE_MEMORY_SHARE = 0.8


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


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device now; None for the CPU (host memory is not planned here)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each shared tensor once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


class WeightStream:
    """Keeps a model's weights in host memory and brings one block's weights to `device` only
    while that block runs: a forward pre-hook puts device copies in place of the block's
    parameters and buffers, the forward hook puts the host tensors back and drops the copies.
    Layer outputs, and hooks that capture them, see an ordinary model on `device`; outside a
    forward the parameters are the host ones, so state_dicts and weight statistics read the
    real weights. For inference only (the copies do not require grad).

    Blocks are the largest modules of at most `block_bytes` (a leaf module over it is a block
    on its own). A parent too large to be one block streams its own tensors with itself: it
    holds them during its children's forwards too. A module that reads a child's weights
    without calling the child (e.g. `nn.MultiheadAttention`'s out_proj) must fit in a block.

    Hand-rolled rather than `accelerate.cpu_offload`: that one replaces the parameters with
    meta tensors, so the analyses that read weights from the same model (sparsity, masks)
    would read nothing.
    """

    def __init__(self, model: nn.Module, device: torch.device, block_bytes: int) -> None:
        self.model, self.device = model, torch.device(device)
        self.resident = 0  # bytes brought to the device and not yet released
        self.peak = 0
        self.blocks: list[tuple[nn.Module, bool]] = []  # (module, its own tensors only)
        self._handles: list[Any] = []
        self._held: dict[int, list[tuple[nn.Module, str, torch.Tensor]]] = {}
        self._copies: set[int] = set()
        self._choose_blocks(model, block_bytes)
        for module, own_only in self.blocks:
            key = len(self._handles)
            self._handles.append(module.register_forward_pre_hook(
                lambda m, _args, key=key, own=own_only: self._bring(key, m, own)))
            self._handles.append(module.register_forward_hook(
                lambda _m, _args, output, key=key: self._release(key, output)))

    @staticmethod
    def _own(module: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
        return ([(n, t, True) for n, t in module._parameters.items() if t is not None]
                + [(n, t, False) for n, t in module._buffers.items() if t is not None])

    def _choose_blocks(self, module: nn.Module, block_bytes: int) -> None:
        children = list(module.children())
        if module_bytes(module) <= block_bytes or not children:
            if module_bytes(module):
                self.blocks.append((module, False))
            return
        if self._own(module):
            self.blocks.append((module, True))
        for child in children:
            self._choose_blocks(child, block_bytes)

    def _bring(self, key: int, module: nn.Module, own_only: bool) -> None:
        held = self._held.setdefault(key, [])
        owners = [module] if own_only else list(module.modules())
        for owner in owners:
            for name, t, is_parameter in self._own(owner):
                if id(t) in self._copies:
                    continue  # a tensor shared with a block that already brought it
                copy = to_device(t.detach(), self.device)
                if is_parameter:
                    copy = nn.Parameter(copy, requires_grad=False)
                    owner._parameters[name] = copy
                else:
                    owner._buffers[name] = copy
                self._copies.add(id(copy))
                held.append((owner, name, t))
                self.resident += t.numel() * t.element_size()
        self.peak = max(self.peak, self.resident)

    def _release(self, key: int, output: Any) -> Any:
        for owner, name, t in self._held.pop(key, []):
            table = owner._parameters if isinstance(t, nn.Parameter) else owner._buffers
            self._copies.discard(id(table[name]))
            table[name] = t
            self.resident -= t.numel() * t.element_size()
        return output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def place_models(models: Sequence[nn.Module], device: torch.device,
                 budget_bytes: int | None = None) -> list[WeightStream]:
    """Put `models` on `device` for a joint forward pass over each batch: all of them whole
    when their weights fit in `budget_bytes` (default: `DEVICE_MEMORY_SHARE` of the free
    device memory; unlimited on the CPU), else each streamed block by block (`WeightStream`,
    blocks of a quarter of the budget per model) so models larger than the device can still
    be compared layer by layer. Returns the streams (empty when the models are resident);
    `remove()` them when done."""
    device = torch.device(device)
    if budget_bytes is None:
        free = free_device_memory(device)
        budget_bytes = None if free is None else int(DEVICE_MEMORY_SHARE * free)
    total = sum(module_bytes(m) for m in models)
    if budget_bytes is None or total <= budget_bytes:
        for model in models:
            model.to(device)
        return []
    block = max(1, budget_bytes // (4 * max(1, len(models))))
    streams = []
    for model in models:
        model.to("cpu")
        streams.append(WeightStream(model, device, block))
    return streams


def fill_device_batch_size(device: torch.device, default: int,
                           probe: Callable[[int], int] | None, *, limit: int = 4096,
                           probe_size: int = 8, free_bytes: int | None = None) -> int:
    """A batch size that fills the device: on the CPU `default`; on a GPU, `probe(n)` runs
    one batch of n examples and returns its peak memory in bytes, and the batch grows to what
    `DEVICE_MEMORY_SHARE` of the free memory holds at that cost per example, between
    `default` and `limit`."""
    if probe is None:
        return default
    free = free_device_memory(device) if free_bytes is None else free_bytes
    if free is None:
        return default
    per_example = max(1, probe(probe_size)) / probe_size
    fits = int(DEVICE_MEMORY_SHARE * free / per_example)
    return int(min(limit, max(default, fits)))


def peak_memory_probe(device: torch.device, run: Callable[[int], Any]) -> Callable[[int], int]:
    """`fill_device_batch_size`'s probe on a CUDA device: the peak bytes `run(n)` allocates."""

    def probe(n: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        run(n)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start

    return probe


def release_device_memory() -> None:
    """Give back what a finished job held on the GPU, so the next job in this (long-lived)
    worker process starts with the whole device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
