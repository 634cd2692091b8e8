"""Training that records per-example dynamics: MAP-D probe suites, gradual pruning, Parquet logs.

- `build_probe_suites` plants MAP-D probe suites (Siddiqui, Rajkumar, Maharaj, Krueger &
  Hooker, "Metadata Archaeology", ICLR 2023) in a copy of the training set: typical and
  atypical examples by a typicality score, mislabeled examples, corrupted inputs and,
  optionally, random inputs. They stay in training; their loss trajectories are the kNN
  references of `prunescope.workers.metrics.dynamics.map_d`.
- `train_with_dynamics` trains like `prunescope.workers.training.train_classifier` and, after every
  epoch, evaluates every training example without gradients: loss, prediction, probability
  of the given label and margin, the inputs of MAP-D, forgetting events and cartography.
  It can prune gradually on Zhu & Gupta's schedule (`gmp_sparsity`) or keep a pruned
  model's zeros while fine-tuning.
- `DynamicsWriter` appends each epoch's records to a Parquet file (one row group per epoch)
  and `read_dynamics` reads them back as [epochs, examples] arrays, checking they are complete.

Arrays here are [E epochs, N examples]; the metrics in `prunescope.workers.metrics.dynamics` take
[N, E], i.e. the transpose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunescope.models.pruning.common import check_sparsity, global_keep_masks, prunable_weights
from prunescope.models.sparsity import prunable_modules
from prunescope.workers.datasets import ClassificationData, as_model_input, check_model_fits
from prunescope.workers.jobspec import JobInputError
from prunescope.workers.metrics.dynamics import ProbeSplit, split_probe_suites
from prunescope.workers.training import ProgressFn, predict

RecordFn = Callable[[int, dict[str, np.ndarray]], None]

# ------------------------------------------------------------------ gradual magnitude pruning


def gmp_sparsity(
    step: int, *, final: float, initial: float = 0.0, start: int, end: int, frequency: int
) -> float:
    """Target sparsity after `step` optimizer steps on the gradual pruning schedule of Zhu &
    Gupta 2017 ("To prune, or not to prune").

    s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³ with s_i = `initial`, s_f = `final`,
    t₀ = `start`, nΔt = `end` − `start` and Δt = `frequency`, all counted in optimizer steps
    (mini-batch updates, not epochs). The sparsity changes only on the pruning steps
    t₀, t₀ + Δt, t₀ + 2Δt, … and at `end`: between them t is rounded down to the last
    pruning step. It is s_i before t₀ and s_f from `end` on, also when `end` − `start` is
    not a multiple of Δt.
    """
    final, initial = check_sparsity(final), check_sparsity(initial)
    if initial > final:
        raise ValueError(
            f"initial sparsity ({initial}) is above the final one ({final}); pruning only "
            "removes weights, so choose initial ≤ final"
        )
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be a positive number of steps, got {frequency!r}")
    if not 0 <= start < end:
        raise ValueError(f"the schedule needs 0 ≤ start < end (in steps), got {start}, {end}")
    if step < start:
        return initial
    if step >= end:
        return final
    pruning_step = start + (step - start) // frequency * frequency
    return final + (initial - final) * (1.0 - (pruning_step - start) / (end - start)) ** 3


@dataclass(frozen=True)
class GmpSchedule:
    """Gradual magnitude pruning during training: `gmp_sparsity`'s arguments, in steps."""

    final: float
    start: int
    end: int
    frequency: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        self.sparsity(0)  # validates the arguments once, with gmp_sparsity's messages

    def sparsity(self, step: int) -> float:
        return gmp_sparsity(step, final=self.final, initial=self.initial, start=self.start,
                            end=self.end, frequency=self.frequency)


class _WeightMasks:
    """Keep-masks of every prunable weight (linear/conv `weight`s), applied after each update.

    Pruned weights are zero in the model itself, so a checkpoint of it is a plain state_dict
    with zeros, the repository's convention.
    """

    def __init__(self, model: nn.Module, *, from_zeros: bool) -> None:
        self.weights = [module.weight for _, module in prunable_weights(model)]
        self.keep = [
            (w.detach() != 0) if from_zeros else torch.ones_like(w, dtype=torch.bool)
            for w in self.weights
        ]
        self.total = sum(w.numel() for w in self.weights)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Global magnitude pruning of the live weights to `sparsity` of all prunable ones.

        Already pruned weights score −1, below every |w|, and the new mask is and-ed with
        the old one, so masks only shrink.
        """
        scores = [torch.where(k, w.detach().abs(), -1.0) for w, k in zip(self.weights, self.keep,
                                                                         strict=True)]
        keep = global_keep_masks(scores, sparsity)
        self.keep = [old & new for old, new in zip(self.keep, keep, strict=True)]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for weight, keep in zip(self.weights, self.keep, strict=True):
            weight.mul_(keep)

    def mask_gradients(self) -> None:
        # Adam's moments of a pruned weight then stop growing; its value is re-zeroed anyway.
        for weight, keep in zip(self.weights, self.keep, strict=True):
            if weight.grad is not None:
                weight.grad.mul_(keep)


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights (linear/conv `weight`s, biases excluded) that are zero,
    the `prunescope.models.sparsity.checkpoint_stats` definition; 0.0 for a model without any."""
    weights = [module.weight for _, module in prunable_modules(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int(w.numel() - torch.count_nonzero(w)) for w in weights)
    return zeros / total if total else 0.0


# ------------------------------------------------------------------------------ probe suites

PROBE_CATEGORIES = ("typical", "atypical", "mislabeled", "corrupted")
RANDOM_INPUTS = "random_inputs"
NOT_A_PROBE = -1
TYPICALITY_NEIGHBOURS = 10
KNN_PROXY_MAX_EXAMPLES = 60_000  # N² distances: beyond this, pass C-scores as `typicality`
_BLOCK_CELLS = 1 << 22  # distance rows are formed in blocks of at most this many cells


@dataclass(frozen=True)
class ProbeSuites:
    """Which training examples are MAP-D probes, of which suite, and which are kNN references.

    categories: suite names, in the order of the codes in `suite`;
    suite: int8 [n_train], the index into `categories`, NOT_A_PROBE (−1) for other examples;
    reference: bool [n_train], True for the kNN-reference half of each suite (the other
    probes are held out for validation), False outside the suites;
    original_labels: int64 [n_train], every training label before the mislabeled and
    random-input suites changed theirs.
    """

    categories: tuple[str, ...]
    suite: np.ndarray
    reference: np.ndarray
    original_labels: np.ndarray

    @property
    def probe_index(self) -> np.ndarray:
        """Training indices of every probe, ascending."""
        return np.flatnonzero(self.suite != NOT_A_PROBE)

    @property
    def probe_category(self) -> np.ndarray:
        """Suite name of each probe in `probe_index` (unicode array)."""
        return np.asarray(self.categories, dtype=np.str_)[self.suite[self.probe_index]]

    def split(self) -> ProbeSplit:
        """The reference / held-out split, as `probe_validation` (workers/metrics/dynamics.py)
        takes."""
        index, category = self.probe_index, self.probe_category
        is_reference = self.reference[index]
        return ProbeSplit(
            reference_index=index[is_reference],
            reference_category=category[is_reference],
            held_out_index=index[~is_reference],
            held_out_category=category[~is_reference],
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """npz-ready arrays (numeric and unicode only), keys prefixed `probe_`."""
        return {
            "probe_categories": np.asarray(self.categories, dtype=np.str_),
            "probe_suite": self.suite.astype(np.int8),
            "probe_reference": self.reference.astype(bool),
            "probe_original_labels": self.original_labels.astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ProbeSuites:
        """Inverse of `to_arrays`; ValueError when a key is missing or the arrays disagree."""
        keys = ("probe_categories", "probe_suite", "probe_reference", "probe_original_labels")
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise ValueError(f"probe-suite arrays lack {', '.join(missing)}; store all of {keys}")
        categories = tuple(str(c) for c in np.asarray(arrays["probe_categories"]).ravel())
        suite = np.asarray(arrays["probe_suite"]).astype(np.int8)
        reference = np.asarray(arrays["probe_reference"]).astype(bool)
        labels = np.asarray(arrays["probe_original_labels"]).astype(np.int64)
        if not (suite.ndim == 1 and suite.shape == reference.shape == labels.shape):
            raise ValueError("probe_suite, probe_reference and probe_original_labels must be "
                             "1-D arrays of one length (the training set's)")
        if suite.size and (suite.min() < NOT_A_PROBE or suite.max() >= len(categories)):
            raise ValueError(f"probe_suite holds codes outside [-1, {len(categories)})")
        if np.any(reference & (suite == NOT_A_PROBE)):
            raise ValueError("probe_reference marks examples that are in no suite")
        return cls(categories, suite, reference, labels)


def knn_label_consistency(x: np.ndarray, y: np.ndarray, k: int = TYPICALITY_NEIGHBOURS,
                          ) -> np.ndarray:
    """Typicality proxy: the fraction of an example's k nearest training neighbours that share
    its label, float64 [N] in [0, 1].

    A cheap, deterministic stand-in for C-scores (Jiang, Zhang, Talwar & Mozer, ICLR 2021),
    which need thousands of retrainings. Examples are flattened and each feature standardised
    (z-score; a constant feature becomes 0); distances are Euclidean, the example itself is
    left out, and ties at the k-th distance go to the lower training index. k is clipped to
    N − 1. Cost: N² distances, in blocks of bounded memory.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    labels = np.asarray(y)
    n = flat.shape[0]
    if n < 2:
        raise ValueError(f"the typicality proxy needs at least 2 examples, got {n}")
    if n > KNN_PROXY_MAX_EXAMPLES:
        raise ValueError(
            f"the kNN typicality proxy compares all {n}² pairs, too slow above "
            f"{KNN_PROXY_MAX_EXAMPLES} examples; pass typicality scores (e.g. C-scores) instead"
        )
    if not np.all(np.isfinite(flat)):
        raise ValueError("inputs contain NaN or Inf; repair those examples first")
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    std = flat.std(axis=0)
    z = (flat - flat.mean(axis=0)) / np.where(std > 0, std, 1.0)
    squared_norm = np.einsum("ij,ij->i", z, z)
    score = np.empty(n)
    block = max(1, _BLOCK_CELLS // n)
    for lo in range(0, n, block):
        rows = np.arange(lo, min(lo + block, n))
        d = squared_norm[rows, None] + squared_norm[None, :] - 2.0 * (z[rows] @ z.T)
        d[np.arange(rows.size), rows] = np.inf  # an example is not its own neighbour
        kth = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
        closer = d < kth
        # Fill up to k with the lowest-index examples at exactly the k-th distance.
        at_kth = d == kth
        room = k - closer.sum(axis=1, keepdims=True)
        neighbour = closer | (at_kth & (np.cumsum(at_kth, axis=1) <= room))
        same = labels[rows, None] == labels[None, :]
        score[rows] = (neighbour & same).sum(axis=1) / k
    return score


def build_probe_suites(
    data: ClassificationData,
    *,
    size: int,
    seed: int,
    noise_sigma: float = 0.25,
    typicality: np.ndarray | None = None,
    random_inputs: bool = False,
) -> tuple[ClassificationData, ProbeSuites]:
    """MAP-D probe suites planted in (a copy of) the training set, which keeps its order.

    Suites, in this order: "typical", "atypical", "mislabeled" (label replaced by a uniformly
    random *different* class; MAP-D's "random outputs"), "corrupted" (Gaussian noise of std
    `noise_sigma` added to the inputs, then clipped to the training inputs' own [min, max],
    as MAP-D clips images to [0, 1]) and, with `random_inputs`, "random_inputs" (inputs
    uniform in that [min, max] range, labels uniformly random over all classes).

    Each suite has `size` examples, clipped to ⌊n_train / (2 · number of suites)⌋ so that at
    least half of the training set stays ordinary; a training set too small for 2 per suite
    raises ValueError. The mislabeled, corrupted and random-input suites are drawn uniformly
    at random; then, of the examples left, the `size` with the highest typicality form
    "typical" and the `size` with the lowest "atypical" (one global ranking, ties in random
    order). `typicality` is a score per training example (higher = more typical, e.g.
    C-scores); None uses `knn_label_consistency` on the original inputs and labels.

    Each suite is split in half into kNN references and held-out probes by
    `split_probe_suites` with the same seed. Only the mislabeled / random-input labels and
    the corrupted / random inputs change; everything is deterministic in `seed`.
    """
    if data.kind == "text" or int(np.prod(data.x_train.shape[1:])) == 0:
        raise ValueError(f"dataset {data.name!r} has no numeric inputs to corrupt; probe suites "
                         "need an image or tabular dataset")
    if data.num_classes < 2:
        raise ValueError("mislabeled probes need at least two classes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer ≥ 2 (a reference and a held-out probe per "
                         f"suite), got {size!r}")
    if not (math.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise_sigma must be a positive number, got {noise_sigma!r}")
    categories = PROBE_CATEGORIES + ((RANDOM_INPUTS,) if random_inputs else ())
    n = data.num_train
    size = min(size, n // (2 * len(categories)))
    if size < 2:
        raise ValueError(
            f"the training set has {n} examples, too few for {len(categories)} suites of 2; "
            f"use a dataset with at least {4 * len(categories)} training examples"
        )
    if typicality is None:
        typicality = knn_label_consistency(data.x_train, data.y_train)
    typicality = np.asarray(typicality, dtype=np.float64)
    if typicality.shape != (n,):
        raise ValueError(f"typicality must have one score per training example ({n}), got "
                         f"shape {typicality.shape}")
    if not np.all(np.isfinite(typicality)):
        raise ValueError("typicality contains NaN or Inf; give every example a score")

    rng = np.random.default_rng(seed)
    code = {name: i for i, name in enumerate(categories)}
    suite = np.full(n, NOT_A_PROBE, dtype=np.int8)
    random_suites = [name for name in categories if name not in ("typical", "atypical")]
    drawn = rng.permutation(n)[: size * len(random_suites)]
    for i, name in enumerate(random_suites):
        suite[drawn[i * size : (i + 1) * size]] = code[name]
    rest = np.flatnonzero(suite == NOT_A_PROBE)
    ranked = rest[np.lexsort((rng.random(rest.size), typicality[rest]))]  # ascending
    suite[ranked[:size]] = code["atypical"]
    suite[ranked[-size:]] = code["typical"]

    x = data.x_train.copy()
    y = data.y_train.copy()
    low, high = float(data.x_train.min()), float(data.x_train.max())
    flipped = np.flatnonzero(suite == code["mislabeled"])
    y[flipped] = (y[flipped] + rng.integers(1, data.num_classes, size=size)) % data.num_classes
    noisy = np.flatnonzero(suite == code["corrupted"])
    noise = rng.standard_normal(x[noisy].shape).astype(x.dtype)
    x[noisy] = np.clip(x[noisy] + noise_sigma * noise, low, high)
    if random_inputs:
        replaced = np.flatnonzero(suite == code[RANDOM_INPUTS])
        x[replaced] = rng.uniform(low, high, size=x[replaced].shape).astype(x.dtype)
        y[replaced] = rng.integers(0, data.num_classes, size=size)

    index = np.flatnonzero(suite != NOT_A_PROBE)
    split = split_probe_suites(index, suite[index], seed=seed)
    reference = np.zeros(n, dtype=bool)
    reference[split.reference_index] = True
    suites = ProbeSuites(categories, suite, reference, data.y_train.astype(np.int64))
    return dataclasses.replace(data, x_train=x, y_train=y), suites


# --------------------------------------------------------------------- training with records

RECORD_FIELDS = ("loss", "prediction", "p_gold", "margin")


@torch.no_grad()
def example_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Per-example evaluation in eval mode: {"loss": cross-entropy float32, "prediction": top-1
    int32, "p_gold": softmax probability of the given label float32, "margin": its logit minus
    the largest other logit float32 (negative when another class wins)}, each [N]."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in RECORD_FIELDS}
    for lo in range(0, len(x), batch_size):
        logits = model(x[lo : lo + batch_size]).float()
        labels = y[lo : lo + batch_size]
        gold = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], -math.inf)
        parts["loss"].append(F.cross_entropy(logits, labels, reduction="none"))
        parts["prediction"].append(logits.argmax(1).to(torch.int32))
        parts["p_gold"].append(logits.softmax(1).gather(1, labels[:, None])[:, 0])
        parts["margin"].append(gold - others.max(1).values)
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def _no_progress(fraction: float, message: str) -> None:
    pass


def train_with_dynamics(
    model: nn.Module,
    data: ClassificationData,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    gmp: GmpSchedule | None = None,
    fixed_mask: bool | None = None,
    record: RecordFn | None = None,
    progress: ProgressFn | None = None,
    keep_records: bool = True,
) -> dict[str, Any]:
    """Train `model` in place as `train_classifier` does, recording every training example.

    Adam on cross-entropy, shuffling from a `torch.Generator` seeded with `seed` and any
    forward-pass randomness from a global RNG seeded inside `fork_rng`, so a run is
    reproducible and leaves the caller's RNG alone. After every epoch a separate no-grad pass
    in eval mode over the whole training set, with the labels as trained (flipped ones
    included), gives `example_records`; `record(epoch, records)` receives them (epochs count
    from 1), e.g. a `DynamicsWriter`.

    Pruning (prunable weights: linear/conv `weight`s): with `gmp`, after optimizer step t
    (t = 0 before the first) the live weights are globally magnitude-pruned whenever
    `gmp.sparsity(t)` changes, and `gmp.end` must fall within training. With `fixed_mask`,
    weights that are zero at the start stay zero (fine-tuning a pruned model). Either way
    masks only grow, gradients of pruned weights are zeroed and the weights re-zeroed after
    every step, so Adam's momentum cannot revive them. Sparsity is measured as the fraction of
    prunable weights equal to zero (`measured_sparsity`); GMP prunes exactly
    round(s × N) of the N prunable weights (more only if a live weight is exactly zero).

    Returns, for E epochs, N training and M test examples: "loss", "prediction", "p_gold",
    "margin" [E, N] (row e is epoch e + 1; dtypes as `example_records`; omitted when
    `keep_records` is False, for runs too large to hold), "train_loss" [E] (mean mini-batch
    loss), "test_accuracy" [E], "sparsity" [E] (measured after each epoch),
    "test_predictions" int64 [M] of the final model. Raises JobInputError if the loss
    diverges (NaN/Inf).
    """
    progress = progress or _no_progress
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    check_model_fits(model, data)
    if data.num_classes < 2:
        raise ValueError("a margin needs at least two classes; the dataset has one")
    x_train = torch.from_numpy(as_model_input(data.x_train, model.input_shape))
    y_train = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(as_model_input(data.x_test, model.input_shape))
    y_test = torch.from_numpy(data.y_test)
    n = len(x_train)
    total_steps = epochs * math.ceil(n / batch_size)
    if gmp is not None and gmp.end > total_steps:
        raise ValueError(
            f"the pruning schedule ends at step {gmp.end} but training takes {total_steps} "
            f"optimizer steps ({epochs} epochs × {math.ceil(n / batch_size)} batches); lower "
            "gmp.end or train for more epochs"
        )
    pruning = gmp is not None or bool(fixed_mask)
    masks = _WeightMasks(model, from_zeros=bool(fixed_mask)) if pruning else None
    target = 0.0

    def prune_on_schedule(step: int) -> None:
        nonlocal target
        if gmp is not None and gmp.sparsity(step) != target:
            target = gmp.sparsity(step)
            masks.prune_to(target)

    shuffle = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list] = {"train_loss": [], "test_accuracy": [], "sparsity": []}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in RECORD_FIELDS}
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if masks is not None:
            masks.apply()
            prune_on_schedule(step)
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum = 0.0
            for batch in torch.randperm(n, generator=shuffle).split(batch_size):
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if masks is not None:
                    masks.mask_gradients()
                optimizer.step()
                step += 1
                if masks is not None:
                    masks.apply()
                    prune_on_schedule(step)
                loss_sum += loss.item() * len(batch)
            train_loss = loss_sum / n
            if not math.isfinite(train_loss):
                raise JobInputError(
                    f"training diverged at epoch {epoch} (loss is {train_loss}); lower params.lr "
                    f"(it is {lr})"
                )
            records = example_records(model, x_train, y_train)
            if record is not None:
                record(epoch, records)
            if keep_records:
                for name in RECORD_FIELDS:
                    kept[name].append(records[name])
            test_accuracy = float((predict(model, x_test) == y_test).double().mean())
            history["train_loss"].append(train_loss)
            history["test_accuracy"].append(test_accuracy)
            history["sparsity"].append(measured_sparsity(model))
            progress(
                epoch / epochs,
                f"epoch {epoch}/{epochs}: loss {train_loss:.4f}, test accuracy {test_accuracy:.1%}",
            )
    model.eval()
    result: dict[str, Any] = {key: np.asarray(values) for key, values in history.items()}
    if keep_records:
        result.update({name: np.stack(values) for name, values in kept.items()})
    result["test_predictions"] = predict(model, x_test).numpy().astype(np.int64)
    return result


# ------------------------------------------------------------------------- Parquet records

_COLUMN_TYPES = {
    "example": "int64",
    "epoch": "int32",
    "loss": "float32",
    "prediction": "int32",
    "p_gold": "float32",
    "margin": "float32",
}
_REQUIRED_COLUMNS = ("example", "epoch", "loss")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in _COLUMN_TYPES.items()])


class DynamicsWriter:
    """Appends per-example records to a Parquet file, one row group per epoch.

    Columns: example (int64, the stable id: the training index unless `examples` gives ids),
    epoch (int32), loss (float32), prediction (int32), p_gold (float32), margin (float32).
    Only one epoch is in memory at a time. Call it as `record(epoch, records)` (it is a
    `train_with_dynamics` record callback) and close it (or use `with`): Parquet writes its
    footer on close, and a file never closed cannot be read.
    """

    def __init__(self, path: str | Path, num_examples: int,
                 examples: np.ndarray | None = None) -> None:
        import pyarrow.parquet as pq

        self.examples = (np.arange(num_examples, dtype=np.int64) if examples is None
                         else np.asarray(examples, dtype=np.int64))
        if self.examples.shape != (num_examples,):
            raise ValueError(f"examples must hold {num_examples} ids, got {self.examples.shape}")
        self._writer = pq.ParquetWriter(str(path), _schema())

    def __call__(self, epoch: int, records: Mapping[str, np.ndarray]) -> None:
        import pyarrow as pa

        missing = [name for name in RECORD_FIELDS if name not in records]
        if missing:
            raise ValueError(f"records lack {', '.join(missing)}")
        n = self.examples.size
        columns = {"example": self.examples, "epoch": np.full(n, epoch, dtype=np.int32)}
        for name in RECORD_FIELDS:
            values = np.asarray(records[name]).astype(_COLUMN_TYPES[name])
            if values.shape != (n,):
                raise ValueError(f"records[{name!r}] has shape {values.shape}, expected ({n},)")
            columns[name] = values
        table = pa.Table.from_pydict(columns, schema=_schema())
        self._writer.write_table(table, row_group_size=max(n, 1))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> DynamicsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dynamics(path: str | Path) -> dict[str, np.ndarray]:
    """Per-example records from a Parquet file as [E, N] arrays, sorted by epoch and example.

    Needs columns example, epoch and loss; prediction, p_gold and margin are read when
    present. Returns "epoch" [E] int32 and "example" [N] int64 (the distinct values, sorted)
    and one [E, N] array per record column, with `DynamicsWriter`'s dtypes. Raises ValueError
    when the file is not Parquet, a column is missing, null or not finite (loss, p_gold), or
    an epoch lacks an example or repeats one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(str(path))
        names = [name for name in _COLUMN_TYPES if name in schema.names]
        table = pq.read_table(str(path), columns=names)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{Path(path).name} cannot be read as a Parquet file ({exc})") from exc
    missing = [name for name in _REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ValueError(f"{Path(path).name} lacks the column(s) {', '.join(missing)}; "
                         "per-example records need example, epoch and loss")
    columns = {}
    for name in names:
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"column {name!r} has {column.null_count} empty values; fill them")
        try:
            columns[name] = column.to_numpy().astype(_COLUMN_TYPES[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} is not numeric ({exc})") from exc
    for name in ("loss", "p_gold"):
        if name in columns and not np.all(np.isfinite(columns[name])):
            raise ValueError(f"column {name!r} contains NaN or Inf")
    order = np.lexsort((columns["example"], columns["epoch"]))
    columns = {name: values[order] for name, values in columns.items()}
    epochs, per_epoch = np.unique(columns["epoch"], return_counts=True)
    examples = np.unique(columns["example"])
    if epochs.size == 0:
        raise ValueError(f"{Path(path).name} holds no records")
    shape = (epochs.size, examples.size)
    complete = (per_epoch == examples.size).all() and np.array_equal(
        columns["example"].reshape(shape), np.broadcast_to(examples, shape))
    if not complete:
        bad = epochs[per_epoch != examples.size]
        detail = (f"epoch(s) {', '.join(map(str, bad[:5]))} have the wrong number of rows"
                  if bad.size else "an epoch repeats one example and lacks another")
        raise ValueError(
            f"{Path(path).name} does not hold every example ({examples.size}) exactly once per "
            f"epoch ({epochs.size}): {detail}"
        )
    out = {"epoch": epochs.astype(np.int32), "example": examples}
    out.update({name: columns[name].reshape(shape) for name in names
                if name not in ("example", "epoch")})
    return out
