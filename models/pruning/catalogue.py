"""What each pruning method is and needs, without torch: names, one-line descriptions, flags.

The web server validates prune jobs and lists the methods from here, so it never imports torch;
`prunescope.models.pruning.methods` builds the callable methods under the same names and
carries these flags as attributes (a test checks that each description is its method's
docstring summary).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruningMethodInfo:
    """One pruning method as a caller needs to know it before running it."""

    name: str
    description: str  # one sentence: the scoring rule and its paper
    # Scores weights with data: `calibration` batches are required (ValueError without).
    needs_calibration: bool = False
    # Reads calibration batches when given and falls back otherwise.
    uses_calibration: bool = False
    # N:M methods only prune to exactly this sparsity.
    fixed_sparsity: float | None = None
    # Trains between pruning rounds (imp_rewind); the prune job runs it through workers.
    needs_training: bool = False
    # Surviving weights change too (SparseGPT), not only the mask.
    updates_weights: bool = False


_WANDA = "Wanda {n}:{m}: in every {m} consecutive inputs of a row keep the {n} with the highest " \
    "|W_ij|·‖X_j‖₂ (Sun et al. 2023)."
_SPARSEGPT = "SparseGPT {n}:{m}: in every {m} consecutive inputs of a row keep the {n} of " \
    "highest OBS saliency, updating the rest (Frantar & Alistarh 2023)."
_N_M_MAGNITUDE = (
    'N:M magnitude pruning (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"; the '
    "N:M baseline of Wanda and SparseGPT)."
)


def _n_m(n: int, m: int) -> list[PruningMethodInfo]:
    suffix, fixed = f"{n}of{m}", 1 - n / m
    return [
        PruningMethodInfo(f"magnitude_{suffix}", _N_M_MAGNITUDE, fixed_sparsity=fixed),
        PruningMethodInfo(f"wanda_{suffix}", _WANDA.format(n=n, m=m), fixed_sparsity=fixed,
                          needs_calibration=True),
        PruningMethodInfo(f"sparsegpt_{suffix}", _SPARSEGPT.format(n=n, m=m),
                          fixed_sparsity=fixed, needs_calibration=True, updates_weights=True),
    ]


_METHODS = [
    PruningMethodInfo(
        "magnitude_global",
        'One-shot global magnitude pruning (Han et al. 2015, "Learning both Weights and '
        'Connections for Efficient Neural Networks"; the criterion Zhu & Gupta 2017 apply '
        "gradually).",
    ),
    PruningMethodInfo(
        "magnitude_layerwise",
        "Layer-wise (uniform) magnitude pruning (Han et al. 2015; Zhu & Gupta 2017).",
    ),
    PruningMethodInfo(
        "l1_structured",
        'L1-norm structured pruning of output channels / neurons (Li et al. 2017, "Pruning '
        'Filters for Efficient ConvNets").',
    ),
    PruningMethodInfo(
        "random",
        "Zero round(sparsity × N) prunable weights chosen uniformly at random across all layers.",
    ),
    PruningMethodInfo(
        "snip",
        'SNIP (Lee, Ajanthan & Torr, ICLR 2019, "SNIP: Single-shot Network Pruning based on '
        'Connection Sensitivity"): score s = |g ⊙ w|, g the loss gradient on calibration '
        "batches.",
        needs_calibration=True,
    ),
    PruningMethodInfo(
        "grasp",
        'GraSP (Wang, Zhang & Grosse, ICLR 2020, "Picking Winning Tickets Before Training by '
        'Preserving Gradient Flow"): score S = −θ ⊙ Hg, Hg by double backprop on calibration '
        "batches.",
        needs_calibration=True,
    ),
    PruningMethodInfo(
        "synflow",
        'SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020, "Pruning neural networks '
        'without any data by iteratively conserving synaptic flow"): data-free, score '
        "|θ ⊙ ∂R/∂θ| with R = 1ᵀ(∏|W|)1, recomputed on the masked network over `iterations` "
        "rounds.",
    ),
    PruningMethodInfo(
        "wanda",
        'Wanda (Sun, Liu, Bair & Kolter, 2023, "A Simple and Effective Pruning Approach for '
        'Large Language Models"): score S_ij = |W_ij| · ‖X_j‖₂, compared within each output '
        "row.",
        needs_calibration=True,
    ),
    PruningMethodInfo(
        "sparsegpt",
        'SparseGPT (Frantar & Alistarh, ICML 2023, "SparseGPT: Massive Language Models Can Be '
        'Accurately Pruned in One-Shot"): per layer, H = 2XXᵀ/n + λI (λ = 1 % of the mean '
        "diagonal), mask chosen per 128-column block by w²/[H⁻¹]_jj, OBS update of the rest.",
        needs_calibration=True,
        updates_weights=True,
    ),
    PruningMethodInfo(
        "attention_heads",
        'Attention-head pruning (Michel, Levy & Neubig, NeurIPS 2019, "Are Sixteen Heads Really '
        'Better than One?"): remove round(sparsity × H) of all H heads, ranked globally.',
        uses_calibration=True,
    ),
    PruningMethodInfo(
        "imp_rewind",
        "Iterative magnitude pruning with rewinding (Frankle et al. 2019/2020, lottery tickets: "
        '"Stabilizing the Lottery Ticket Hypothesis"; "Linear Mode Connectivity and the Lottery '
        'Ticket Hypothesis"): rounds of train, prune p % of the remaining weights by global '
        "magnitude, rewind the survivors to their values at epoch k, retrain.",
        needs_training=True,
    ),
    *_n_m(2, 4),
    *_n_m(4, 8),
]

# The names jobs and checkpoints record as `method`, in the order the methods are listed.
PRUNING_CATALOGUE: dict[str, PruningMethodInfo] = {info.name: info for info in _METHODS}

# The flags a caller may ask `method_flag` about.
FLAGS = ("needs_calibration", "uses_calibration", "fixed_sparsity", "needs_training",
         "updates_weights")


def sparsity_error(method: str, sparsity: float) -> str | None:
    """Why `method` cannot prune to `sparsity`, or None (N:M methods fix their sparsity)."""
    info = PRUNING_CATALOGUE.get(method)
    fixed = info.fixed_sparsity if info is not None else None
    if fixed is not None and abs(float(sparsity) - fixed) > 1e-9:
        return f"{method} always prunes {fixed:.0%} of each compatible layer; use sparsity {fixed}"
    return None


def method_flag(method: str, flag: str) -> bool:
    """Whether the catalogued `method` has `flag` (one of FLAGS, e.g. "needs_calibration")."""
    if flag not in FLAGS:
        raise ValueError(f"unknown pruning method flag {flag!r}; known: {', '.join(FLAGS)}")
    return bool(getattr(PRUNING_CATALOGUE[method], flag))
