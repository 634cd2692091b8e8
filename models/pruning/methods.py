"""The pruning methods by name, each called as
`method(model, sparsity, *, seed=0, calibration=None, progress=None)`.

Each method prunes the model in place (weights zeroed, dense tensors) and returns it. The keys
are what jobs and checkpoints record as `method`; what each method needs is declared once, in
`prunescope.models.pruning.catalogue`, and set here as attributes of its entry:

- `needs_calibration = True`: it scores weights with data; `calibration` is a list of
  `(inputs, labels)` batches (`prunescope.models.pruning.calibration`), and it raises
  ValueError without.
- `uses_calibration = True`: it reads calibration data when given and falls back otherwise.
- `fixed_sparsity`: an N:M method, which only prunes to exactly this sparsity.
- `updates_weights = True`: surviving weights change too (SparseGPT), not only the mask.
- `needs_training = True`: it trains between pruning rounds (`imp_rewind`); the training loop
  belongs to workers, so the prune job runs it through `prunescope.workers.imp`, and calling
  the entry here raises ValueError.

`progress(fraction, message)` is called by the long methods (SynFlow iterations, Wanda and
SparseGPT layers); `seed` only matters to `random`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from prunescope.models.pruning.attention_heads import attention_head_prune
from prunescope.models.pruning.calibration import Calibration, ProgressFn
from prunescope.models.pruning.catalogue import FLAGS, PRUNING_CATALOGUE, sparsity_error
from prunescope.models.pruning.common import check_sparsity
from prunescope.models.pruning.grasp import grasp_prune
from prunescope.models.pruning.layerwise import l1_structured_prune, layerwise_magnitude_prune
from prunescope.models.pruning.magnitude import global_magnitude_prune
from prunescope.models.pruning.n_m import n_m_magnitude_prune
from prunescope.models.pruning.random_unstructured import random_unstructured_prune
from prunescope.models.pruning.snip import snip_prune
from prunescope.models.pruning.sparsegpt import sparsegpt_prune
from prunescope.models.pruning.synflow import synflow_prune
from prunescope.models.pruning.wanda import wanda_prune


class PruningMethod(Protocol):
    def __call__(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        seed: int = 0,
        calibration: Calibration | None = None,
        progress: ProgressFn | None = None,
    ) -> nn.Module: ...


Run = Callable[[nn.Module, float, int, "Calibration | None", "ProgressFn | None"], nn.Module]


def _entry(name: str, run: Run, doc: str | None) -> PruningMethod:
    """The entry `name` with the common signature that calls `run(model, sparsity, seed,
    calibration, progress)`, documented by `doc` and carrying its catalogue flags."""

    def method(
        model: nn.Module,
        sparsity: float,
        *,
        seed: int = 0,
        calibration: Calibration | None = None,
        progress: ProgressFn | None = None,
    ) -> nn.Module:
        return run(model, sparsity, seed, calibration, progress)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    info = PRUNING_CATALOGUE[name]
    for flag in FLAGS:
        value = getattr(info, flag)
        if value is not None and value is not False:
            setattr(method, flag, value)
    return method


def _attention_heads(
    model: nn.Module, sparsity: float, calibration: Calibration | None
) -> nn.Module:
    attention_head_prune(model, sparsity, calibration)
    return model


def _imp_rewind_outside_a_job(model: nn.Module, sparsity: float) -> nn.Module:
    check_sparsity(sparsity)
    raise ValueError(
        "imp_rewind trains the model between pruning rounds, which models/ cannot do; run it "
        "as a prune job (params.method='imp_rewind'), or call prunescope.workers.imp.imp_rewind"
    )


_IMP_REWIND_DOC = """Iterative magnitude pruning with rewinding (Frankle et al. 2019/2020, lottery
    tickets: "Stabilizing the Lottery Ticket Hypothesis"; "Linear Mode Connectivity and the
    Lottery Ticket Hypothesis"): rounds of train, prune p % of the remaining weights by
    global magnitude, rewind the survivors to their values at epoch k, retrain.

    It trains, so it runs as a prune job (`prunescope.workers.imp.imp_rewind`, which documents
    the rounds); calling this entry directly raises ValueError.
    """


def _n_m_doc(name: str, doc_from: Callable[..., object]) -> str:
    return f"{PRUNING_CATALOGUE[name].description}\n\n    {(doc_from.__doc__ or '').strip()}"


def _n_m_entries(n: int, m: int) -> dict[str, PruningMethod]:
    fixed = 1 - n / m

    def checked(name: str, run: Callable[..., nn.Module]) -> Run:
        def prune(model: nn.Module, sparsity: float, seed: int, calibration: Calibration | None,
                  progress: ProgressFn | None) -> nn.Module:
            error = sparsity_error(name, check_sparsity(sparsity))
            if error:
                raise ValueError(error)
            return run(model, calibration, progress)

        return prune

    suffix = f"{n}of{m}"
    return {
        f"magnitude_{suffix}": _entry(
            f"magnitude_{suffix}",
            checked(f"magnitude_{suffix}", lambda model, c, p: n_m_magnitude_prune(model, n, m)),
            n_m_magnitude_prune.__doc__,
        ),
        f"wanda_{suffix}": _entry(
            f"wanda_{suffix}",
            checked(f"wanda_{suffix}", lambda model, c, p: wanda_prune(
                model, fixed, c, n_m=(n, m), progress=p)),
            _n_m_doc(f"wanda_{suffix}", wanda_prune),
        ),
        f"sparsegpt_{suffix}": _entry(
            f"sparsegpt_{suffix}",
            checked(f"sparsegpt_{suffix}", lambda model, c, p: sparsegpt_prune(
                model, fixed, c, n_m=(n, m), progress=p)),
            _n_m_doc(f"sparsegpt_{suffix}", sparsegpt_prune),
        ),
    }


PRUNING_METHODS: dict[str, PruningMethod] = {
    "magnitude_global": _entry(
        "magnitude_global",
        lambda model, s, seed, c, p: global_magnitude_prune(model, s),  # deterministic
        global_magnitude_prune.__doc__,
    ),
    "magnitude_layerwise": _entry(
        "magnitude_layerwise",
        lambda model, s, seed, c, p: layerwise_magnitude_prune(model, s),
        layerwise_magnitude_prune.__doc__,
    ),
    "l1_structured": _entry(
        "l1_structured",
        lambda model, s, seed, c, p: l1_structured_prune(model, s),
        l1_structured_prune.__doc__,
    ),
    "random": _entry(
        "random",
        lambda model, s, seed, c, p: random_unstructured_prune(model, s, seed),
        random_unstructured_prune.__doc__,
    ),
    "snip": _entry(
        "snip", lambda model, s, seed, c, p: snip_prune(model, s, c), snip_prune.__doc__,
    ),
    "grasp": _entry(
        "grasp", lambda model, s, seed, c, p: grasp_prune(model, s, c), grasp_prune.__doc__,
    ),
    "synflow": _entry(
        "synflow",
        lambda model, s, seed, c, p: synflow_prune(model, s, progress=p),
        synflow_prune.__doc__,
    ),
    "wanda": _entry(
        "wanda",
        lambda model, s, seed, c, p: wanda_prune(model, s, c, progress=p),
        wanda_prune.__doc__,
    ),
    "sparsegpt": _entry(
        "sparsegpt",
        lambda model, s, seed, c, p: sparsegpt_prune(model, s, c, progress=p),
        sparsegpt_prune.__doc__,
    ),
    "attention_heads": _entry(
        "attention_heads",
        lambda model, s, seed, c, p: _attention_heads(model, s, c),
        attention_head_prune.__doc__,
    ),
    "imp_rewind": _entry(
        "imp_rewind",
        lambda model, s, seed, c, p: _imp_rewind_outside_a_job(model, s),
        _IMP_REWIND_DOC,
    ),
    **_n_m_entries(2, 4),
    **_n_m_entries(4, 8),
}
