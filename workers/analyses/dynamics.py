"""The "dynamics" result: per-example training dynamics of runs, and what pruning forgets.

Input: several recorded training runs (`RunRecord`: a dense run, a gradual-magnitude-pruned
run or a prune-then-fine-tune run, each with the per-epoch evaluation pass over the training
set and its final test predictions) and the MAP-D probe suites planted in their shared
training set (`SuiteArrays`). `analyse_dynamics` returns npz-ready arrays:

- per run and training example: MAP-D suite probabilities (Siddiqui et al., ICLR 2023) with
  held-out probe validation, dataset-cartography statistics (Swayamdipta et al., EMNLP 2020),
  forgetting events (Toneva et al., ICLR 2019), learned epoch, mean loss, final prediction,
  and per-suite loss curves;
- per pruned population (the runs of one (mode, sparsity), compared with the dense
  population): pruning-identified exemplars (Hooker et al. 2019) on the test set and on the
  training set, accuracy on PIEs, per-class recall change with Welch p-values, and how the
  training-set PIEs fall into the dense runs' MAP-D categories.

The runs record [E, N] arrays (epochs × examples, as `read_dynamics` returns them); the
result stores the loss as [R, N, E] and everything per example in training-set order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunescope.workers.metrics.dynamics import (
    MAPD_NEIGHBOURS,
    ProbeSplit,
    cartography,
    forgetting_events,
    learned_epoch,
    map_d,
    mean_loss_score,
    probe_validation,
    suite_curves,
)
from prunescope.workers.metrics.pies import (
    as_predictions,
    cie_ranking,
    class_recall_change,
    group_impact,
    label_counts,
    pie_accuracy,
    pie_fraction,
    pruning_identified_exemplars,
)

ProgressFn = Callable[[float, str], None]

DENSE = "dense"
RUN_MODES = (DENSE, "gmp", "finetune")
NOT_A_PROBE = -1
PIE_SUBSETS = ("pie", "non_pie", "all")  # rows of `pie_accuracy`; columns (dense, pruned)
# Hooker et al.'s released code normalises each member's class recall by subtracting its
# population's mean accuracy, so a class's change is measured against the overall drop in
# accuracy (a uniform drop gives 0). The paper's text reads like a ratio; we follow the code
# because its numbers are the ones published.
RECALL_NORMALISATION = "population_difference"


def _no_progress(fraction: float, message: str) -> None:
    pass


# Arrays make dataclass equality ambiguous, so compare by identity (eq=False).
@dataclass(frozen=True, eq=False)
class RunRecord:
    """One training run: its per-epoch evaluation pass over the training set and final test run.

    loss float [E, N]: clean eval-pass cross-entropy of every training example after each
    epoch, examples in training-set order; prediction int [E, N]: top-1 label; p_gold float
    [E, N]: softmax probability of the label as trained (`SuiteArrays.train_labels`);
    test_predictions int [M]: the final model's top-1 labels on the test set; test_accuracy:
    its final test accuracy. mode is "dense", "gmp" or "finetune"; sparsity is the target
    sparsity in [0, 1) (0 for dense).
    """

    name: str
    mode: str
    sparsity: float
    seed: int
    loss: np.ndarray
    prediction: np.ndarray
    p_gold: np.ndarray
    test_predictions: np.ndarray
    test_accuracy: float


@dataclass(frozen=True, eq=False)
class SuiteArrays:
    """The MAP-D probe suites of the training set, shared by all runs.

    suite int8 [N]: index into `categories`, −1 for examples in no suite; reference bool [N]:
    True for each suite's kNN-reference half, False for held-out probes and non-probes;
    train_labels int64 [N]: labels as trained (mislabeled probes flipped); original_labels
    int64 [N]: labels before the flip.
    """

    categories: tuple[str, ...]
    suite: np.ndarray
    reference: np.ndarray
    train_labels: np.ndarray
    original_labels: np.ndarray

    @classmethod
    def from_probe_suites(cls, suites: Any, train_labels: Any) -> SuiteArrays:
        """From a `ProbeSuites` (workers/analyses/dynamics_training.py) and the trained labels."""
        return cls(
            categories=tuple(str(c) for c in suites.categories),
            suite=np.asarray(suites.suite),
            reference=np.asarray(suites.reference),
            train_labels=np.asarray(train_labels),
            original_labels=np.asarray(suites.original_labels),
        )


def _class_labels(
    values: Any, num_classes: int, name: str, length: int | None = None
) -> np.ndarray:
    """1-D int64 labels in [0, num_classes); ValueError naming `name` otherwise."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per example), got shape {a.shape}")
    if length is not None and a.size != length:
        raise ValueError(f"{name} has {a.size} entries, expected {length}")
    if a.size == 0:
        return a.astype(np.int64)
    # Integer (or integral float) labels in [0, num_classes), as for predictions.
    return as_predictions(a, num_classes, name)[0]


def _check_suites(suites: SuiteArrays, num_classes: int) -> SuiteArrays:
    categories = tuple(str(c) for c in suites.categories)
    if not categories or len(set(categories)) != len(categories):
        raise ValueError(f"suite categories must be distinct and not empty, got {categories!r}")
    suite = np.asarray(suites.suite)
    if suite.ndim != 1 or suite.size == 0:
        raise ValueError(f"suites.suite must be 1-D over the training set, got shape {suite.shape}")
    if suite.dtype.kind not in "iu" or suite.min() < NOT_A_PROBE or suite.max() >= len(categories):
        raise ValueError(
            f"suites.suite must hold integer codes in [-1, {len(categories)}) (−1 = no suite)"
        )
    n = suite.size
    reference = np.asarray(suites.reference)
    if reference.shape != (n,) or reference.dtype != bool:
        raise ValueError(
            f"suites.reference must be bool [{n}], got {reference.dtype} {reference.shape}"
        )
    if np.any(reference & (suite == NOT_A_PROBE)):
        raise ValueError("suites.reference marks examples that are in no suite")
    if not reference.any():
        raise ValueError(
            "no probe is a kNN reference (suites.reference is all False); MAP-D needs the "
            "reference half of each suite — split the suites before training"
        )
    return SuiteArrays(
        categories=categories,
        suite=suite.astype(np.int8),
        reference=reference,
        train_labels=_class_labels(suites.train_labels, num_classes, "suites.train_labels", n),
        original_labels=_class_labels(
            suites.original_labels, num_classes, "suites.original_labels", n
        ),
    )


def _check_runs(runs: Sequence[RunRecord], n: int, m: int, num_classes: int) -> int:
    """Validate every run against the suites and the test set; return the epoch count E."""
    if not runs:
        raise ValueError("no runs given; record at least one dense run")
    names = [str(run.name) for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"run names must be unique; repeated: {', '.join(repeated)}")
    for run in runs:
        if run.mode not in RUN_MODES:
            raise ValueError(f"run {run.name!r} has mode {run.mode!r}; use one of {RUN_MODES}")
        sparsity = float(run.sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"run {run.name!r} has sparsity {sparsity}; use a value in [0, 1)")
        if run.mode == DENSE and sparsity != 0.0:
            raise ValueError(
                f"dense run {run.name!r} has sparsity {sparsity}; a dense run's sparsity is 0 "
                "(give pruned runs mode 'gmp' or 'finetune')"
            )
    if not any(run.mode == DENSE for run in runs):
        raise ValueError(
            "no dense run: PIEs and the MAP-D categories of the training set are defined "
            "against the dense population; add a dense run (mode 'dense')"
        )
    shapes = {}
    for run in runs:
        loss = np.asarray(run.loss)
        if loss.ndim != 2:
            raise ValueError(
                f"run {run.name!r}: loss must be [epochs, examples], got shape {loss.shape}"
            )
        for field in ("prediction", "p_gold"):
            shape = np.shape(getattr(run, field))
            if shape != loss.shape:
                raise ValueError(
                    f"run {run.name!r}: {field} has shape {shape}, loss has {loss.shape}; "
                    "record both for every epoch and example"
                )
        if loss.shape[1] != n:
            raise ValueError(
                f"run {run.name!r} records {loss.shape[1]} training examples, the probe suites "
                f"cover {n}; record every training example, in training-set order"
            )
        if loss.shape[0] == 0:
            raise ValueError(f"run {run.name!r} has no epochs; record at least one")
        shapes[run.name] = loss.shape
    epochs = {shape[0] for shape in shapes.values()}
    if len(epochs) > 1:
        groups = {
            e: ", ".join(name for name, shape in shapes.items() if shape[0] == e)
            for e in sorted(epochs, reverse=True)
        }
        detail = "; ".join(f"{e} epochs: {names}" for e, names in groups.items())
        raise ValueError(
            f"runs differ in their number of epochs ({detail}); the dynamics are compared "
            "epoch by epoch, so train every run for the same number of epochs"
        )
    for run in runs:
        if not np.all(np.isfinite(np.asarray(run.loss))):
            raise ValueError(f"run {run.name!r}: loss contains NaN or Inf")
        p_gold = np.asarray(run.p_gold, dtype=np.float64)
        if not np.all((p_gold >= 0) & (p_gold <= 1)):
            raise ValueError(f"run {run.name!r}: p_gold must be probabilities in [0, 1]")
        prediction = np.asarray(run.prediction)
        _class_labels(prediction.ravel(), num_classes, f"run {run.name!r}: prediction")
        _class_labels(run.test_predictions, num_classes, f"run {run.name!r}: test_predictions", m)
    return epochs.pop()


def run_dynamics(
    run: RunRecord, suites: SuiteArrays, *, k: int = MAPD_NEIGHBOURS
) -> dict[str, np.ndarray]:
    """Per-example dynamics of one (validated) run, keyed as in the result without the R axis.

    MAP-D is fitted on the reference probes' loss trajectories (suite ≥ 0 and reference) and
    validated on the held-out probes; with no held-out probe, probe_accuracy is NaN and the
    confusion all zeros. "Correct" means the prediction equals the label as trained, the
    label p_gold refers to. A suite with no example has NaN curves.
    """
    suite = suites.suite.astype(np.int64)
    categories = len(suites.categories)
    codes = tuple(range(categories))  # MAP-D categories by index into suites.categories
    losses = np.asarray(run.loss, dtype=np.float32).T  # [N, E]
    correct = (np.asarray(run.prediction) == suites.train_labels).T
    is_probe = suite != NOT_A_PROBE
    reference = np.flatnonzero(is_probe & suites.reference)
    held_out = np.flatnonzero(is_probe & ~suites.reference)
    mapd = map_d(losses, reference, suite[reference], codes, k=k)
    if held_out.size:
        split = ProbeSplit(reference, suite[reference], held_out, suite[held_out])
        validation = probe_validation(losses, split, codes, k=k)
        accuracy, confusion = validation.accuracy, validation.confusion
    else:
        accuracy, confusion = float("nan"), np.zeros((categories, categories), dtype=np.int64)
    statistics = cartography(np.asarray(run.p_gold).T, correct)
    curves = suite_curves(losses, suite, codes)
    return {
        "loss": losses,
        "mapd_probabilities": mapd.probabilities.astype(np.float32),
        "mapd_top": mapd.top_category.astype(np.int8),
        "probe_accuracy": np.float64(accuracy),
        "probe_confusion": confusion.astype(np.int64),
        **{name: value.astype(np.float32) for name, value in statistics.items()},
        "forgetting": forgetting_events(correct).astype(np.int32),
        "learned_epoch": learned_epoch(correct).astype(np.int32),
        "final_prediction": np.asarray(run.prediction)[-1].astype(np.int64),
        "mean_loss": mean_loss_score(losses).astype(np.float32),
        "suite_mean": curves.mean.astype(np.float32),
        "suite_q25": curves.q25.astype(np.float32),
        "suite_q75": curves.q75.astype(np.float32),
    }


def modal_category(top_category: Any, num_categories: int) -> np.ndarray:
    """Most frequent category per example over runs: top_category [R, N] → int8 [N].

    Ties go to the lowest category index (the first in `categories`), the same rule as
    MAP-D's own argmax over suite probabilities.
    """
    counts = label_counts(top_category, num_categories)  # [N, K]
    return np.argmax(counts, axis=1).astype(np.int8)


def category_enrichment(
    flag: Any, category: Any, num_categories: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flagged examples per category and their enrichment, for several flags at once.

    flag bool [P, N], category int [N] in [0, K) → (count int64 [P, K], enrichment float64
    [P, K]) with enrichment[p, c] = P(category c | flagged by p) / P(category c)
    = (count[p, c] / flagged_p) / (n_c / N). NaN for a flag that marks nothing or a category
    with no example; 1 means the flag picks the category at its base rate.
    """
    flag = np.asarray(flag, dtype=bool)
    one_hot = np.eye(num_categories, dtype=np.int64)[np.asarray(category, dtype=np.int64)]
    count = flag.astype(np.int64) @ one_hot
    flagged = flag.sum(axis=1, keepdims=True)
    base_rate = one_hot.sum(axis=0) / max(flag.shape[1], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        enrichment = count / flagged / base_rate
    enrichment[~np.isfinite(enrichment)] = np.nan
    return count, enrichment


def _populations(runs: Sequence[RunRecord]) -> list[tuple[str, float, np.ndarray]]:
    """(mode, sparsity, member run indices) per pruned population, sorted by (mode, sparsity)."""
    keys = [(run.mode, float(run.sparsity)) for run in runs]
    return [
        (mode, sparsity, np.flatnonzero([key == (mode, sparsity) for key in keys]))
        for mode, sparsity in sorted({key for key in keys if key[0] != DENSE})
    ]


def analyse_dynamics(
    runs: Sequence[RunRecord],
    suites: SuiteArrays,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    *,
    k: int = MAPD_NEIGHBOURS,
    test_groups: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """The "dynamics" result of several runs (see the array contract of the Dynamics page).

    Per run (`run_dynamics`): MAP-D with k nearest reference probes, held-out probe
    accuracy and confusion, cartography, forgetting, learned epoch, mean loss, final
    training-set predictions and per-suite loss curves. Non-dense runs form populations by
    (mode, sparsity), sorted, named f"{mode} {round(100·sparsity)}%"; each is compared with
    the dense population: test-set PIEs (modal labels, ties to the highest class), accuracy on
    PIEs / non-PIEs / all as the mean member accuracy (dense, pruned), per-class recall change
    normalised by subtracting each population's mean accuracy (RECALL_NORMALISATION, as in
    Hooker et al.'s code) with Welch p-values (NaN unless both populations have ≥ 2 members),
    training-set PIEs by the same rule on final-epoch predictions, and their count and
    enrichment per dense MAP-D category (`dense_mapd_top`: modal top category over the dense
    runs, ties to the lowest index; enrichment NaN for a population without training PIEs).
    Also per population: `cie_distance` [P, M], the taxicab distance between the dense and
    the pruned population's label distributions per test example (Hooker, Moorosi et al.
    2020; rank by it for CIEs), and `category_transitions` [P, K, K], training examples by
    their dense MAP-D category (rows) and the pruned population's (columns). With
    `test_groups` (a metadata value per test example): `group_names` [G], `group_count` [G],
    `group_pie_fraction` and `group_accuracy_change` [P, G] (pruned − dense mean member
    accuracy on the group).

    Raises ValueError when no run is dense, runs differ in epochs or examples, or shapes and
    labels disagree with the suites, test labels or class names.
    """
    progress = progress or _no_progress
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("class_names is empty; name every class of the dataset")
    suites = _check_suites(suites, num_classes)
    test_labels = _class_labels(test_labels, num_classes, "test_labels")
    if test_labels.size == 0:
        raise ValueError("test_labels is empty; PIEs are found on the test set")
    runs = list(runs)
    n_epochs = _check_runs(runs, suites.suite.size, test_labels.size, num_classes)
    n_categories = len(suites.categories)

    per_run = []
    for i, run in enumerate(runs):
        progress(0.9 * i / len(runs), f"dynamics of run {run.name}")
        per_run.append(run_dynamics(run, suites, k=k))
    result = {key: np.stack([arrays[key] for arrays in per_run]) for key in per_run[0]}
    del per_run

    progress(0.9, "comparing pruned populations with the dense one")
    dense = np.flatnonzero([run.mode == DENSE for run in runs])
    test_predictions = np.stack([np.asarray(run.test_predictions) for run in runs]).astype(np.int64)
    final = result["final_prediction"]
    dense_top = modal_category(result["mapd_top"][dense], n_categories)
    populations = _populations(runs)
    n_pop, n_test, n_train = len(populations), test_labels.size, suites.suite.size
    pie = np.zeros((n_pop, n_test), dtype=bool)
    train_pie = np.zeros((n_pop, n_train), dtype=bool)
    fraction = np.full(n_pop, np.nan)
    accuracy = np.full((n_pop, len(PIE_SUBSETS), 2), np.nan)
    recall_change = np.full((n_pop, num_classes), np.nan)
    recall_p = np.full((n_pop, num_classes), np.nan)
    cie = np.zeros((n_pop, n_test))
    transitions = np.zeros((n_pop, n_categories, n_categories), dtype=np.int64)
    groups = None if test_groups is None else np.asarray(test_groups).astype(np.str_)
    if groups is not None and groups.shape != test_labels.shape:
        raise ValueError(f"test_groups must have one value per test example ({n_test})")
    group_names = np.unique(groups) if groups is not None else np.array([], dtype=np.str_)
    group_fraction = np.full((n_pop, group_names.size), np.nan)
    group_change = np.full((n_pop, group_names.size), np.nan)
    for p, (_, _, members) in enumerate(populations):
        dense_test, pruned_test = test_predictions[dense], test_predictions[members]
        pie[p] = pruning_identified_exemplars(dense_test, pruned_test, num_classes)
        fraction[p] = pie_fraction(pie[p])
        subsets = pie_accuracy(dense_test, pruned_test, test_labels, num_classes, is_pie=pie[p])
        accuracy[p] = [[subsets[s]["dense"], subsets[s]["pruned"]] for s in PIE_SUBSETS]
        change = class_recall_change(
            dense_test, pruned_test, test_labels, num_classes, normalisation=RECALL_NORMALISATION
        )
        recall_change[p], recall_p[p] = change.difference, change.p_value
        train_pie[p] = pruning_identified_exemplars(final[dense], final[members], num_classes)
        cie[p] = cie_ranking(dense_test, pruned_test, num_classes).distance
        pruned_top = modal_category(result["mapd_top"][members], n_categories)
        np.add.at(transitions[p], (dense_top.astype(np.int64), pruned_top.astype(np.int64)), 1)
        if groups is not None:
            impact = group_impact(groups, dense_test, pruned_test, test_labels, num_classes,
                                  flag=pie[p])
            group_fraction[p], group_change[p] = impact.flagged_fraction, impact.accuracy_change
    pie_count, pie_enrichment = category_enrichment(train_pie, dense_top, n_categories)

    result.update(
        run_names=np.asarray([str(run.name) for run in runs], dtype=np.str_),
        run_modes=np.asarray([run.mode for run in runs], dtype=np.str_),
        run_sparsity=np.asarray([float(run.sparsity) for run in runs], dtype=np.float64),
        run_seeds=np.asarray([int(run.seed) for run in runs], dtype=np.int64),
        run_test_accuracy=np.asarray([float(run.test_accuracy) for run in runs], dtype=np.float64),
        epochs=np.arange(1, n_epochs + 1, dtype=np.int64),
        categories=np.asarray(suites.categories, dtype=np.str_),
        suite=suites.suite,
        reference=suites.reference,
        train_labels=suites.train_labels,
        original_labels=suites.original_labels,
        population_names=np.asarray(
            [f"{mode} {round(100 * sparsity)}%" for mode, sparsity, _ in populations],
            dtype=np.str_,
        ),
        population_modes=np.asarray([mode for mode, _, _ in populations], dtype=np.str_),
        population_sparsity=np.asarray([s for _, s, _ in populations], dtype=np.float64),
        population_size=np.asarray([m.size for _, _, m in populations], dtype=np.int64),
        dense_population_size=np.asarray(dense.size, dtype=np.int64),
        test_labels=test_labels,
        test_predictions=test_predictions,
        pie=pie,
        pie_fraction=fraction,
        pie_accuracy=accuracy,
        class_recall_change=recall_change,
        class_recall_p=recall_p,
        train_pie=train_pie,
        train_pie_category_count=pie_count,
        train_pie_category_enrichment=pie_enrichment,
        dense_mapd_top=dense_top,
        class_names=np.asarray(class_names, dtype=np.str_),
        cie_distance=cie,
        category_transitions=transitions,
        group_names=group_names.astype(np.str_),
        group_count=np.array([(groups == g).sum() for g in group_names], dtype=np.int64),
        group_pie_fraction=group_fraction,
        group_accuracy_change=group_change,
    )
    progress(1.0, "dynamics done")
    return result
