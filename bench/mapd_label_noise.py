"""Does MAP-D find planted label noise, and do pruning's forgotten examples over-index on it?

Validation of the dynamics analysis (issue 7), on scikit-learn's real digits: 10 % of the
training labels are replaced by a different random class before anything else happens; the
planted flags are known to this script only. Then, exactly as the train_dynamics and dynamics
jobs do: MAP-D probe suites are planted in the (noisy) training set, a dense population and
gradual-magnitude-pruned populations are trained with every example's loss recorded per
epoch, and `analyse_dynamics` runs over all of them.

Reported:
- AUROC of MAP-D's P(mislabeled) for the planted flags (per dense run, mean), beside the two
  baselines REFERENCES.md asks for: the mean loss over epochs and the count of forgetting
  events (Toneva et al. 2019). On small, easy data a mean-loss ranking already separates
  planted noise almost perfectly, so this shows correctness, not MAP-D's advantage.
- For each pruned population: the fraction of training examples that are PIEs (the pruned
  population's modal label differs from the dense population's; Hooker et al. 2019) and
  the enrichment of planted-noise examples among them, P(noise | PIE) / P(noise).
- The same for the test-set PIEs' accuracy: dense accuracy on PIEs versus on all examples.

Planted-noise examples that the probe suites happen to draw are left out of the AUROC
(their label was changed twice or they are probes), as are the probes themselves.

    .venv/bin/python bench/mapd_label_noise.py [--seeds 3] [--epochs 30] [--noise 0.1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunescope.workers.analyses.dynamics import RunRecord, SuiteArrays, analyse_dynamics  # noqa: E402
from prunescope.workers.analyses.dynamics_training import (  # noqa: E402
    GmpSchedule,
    build_probe_suites,
    train_with_dynamics,
)
from prunescope.workers.datasets import load_builtin  # noqa: E402
from prunescope.workers.jobs.train_dynamics import default_probe_size  # noqa: E402
from prunescope.workers.jobspec import run_name  # noqa: E402
from prunescope.workers.metrics.dynamics import auroc, enrichment  # noqa: E402
from prunescope.workers.training import init_model  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.95)


def planted_noise(labels: np.ndarray, classes: int, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, planted flags): `fraction` of the labels moved to another class."""
    rng = np.random.default_rng(seed)
    flags = np.zeros(labels.size, dtype=bool)
    flags[rng.choice(labels.size, size=round(fraction * labels.size), replace=False)] = True
    noisy = labels.copy()
    noisy[flags] = (labels[flags] + rng.integers(1, classes, size=flags.sum())) % classes
    return noisy, flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_builtin("digits")
    noisy_labels, planted = planted_noise(digits.y_train, digits.num_classes, args.noise, 1234)
    noisy = dataclasses.replace(digits, y_train=noisy_labels)
    trained_on, suites = build_probe_suites(noisy, size=default_probe_size(len(noisy_labels)),
                                            seed=0)
    steps = args.epochs * int(np.ceil(len(noisy_labels) / 64))
    runs = []
    started = time.perf_counter()
    for mode, sparsity in [("dense", 0.0), *[("gmp", s) for s in SPARSITIES]]:
        for seed in range(args.seeds):
            model = init_model("cnn_small", {}, seed)
            gmp = GmpSchedule(final=sparsity, start=int(0.1 * steps), end=int(0.7 * steps),
                              frequency=10) if mode == "gmp" else None
            out = train_with_dynamics(model, trained_on, epochs=args.epochs, seed=seed, gmp=gmp)
            name = run_name({"mode": mode, "sparsity": sparsity, "seed": seed})
            runs.append(RunRecord(name=name, mode=mode, sparsity=sparsity, seed=seed,
                                  loss=out["loss"], prediction=out["prediction"],
                                  p_gold=out["p_gold"],
                                  test_predictions=out["test_predictions"],
                                  test_accuracy=float(out["test_accuracy"][-1])))
            print(f"{name:>10s}: test accuracy {out['test_accuracy'][-1]:.3f}", flush=True)
    trained_seconds = time.perf_counter() - started
    result = analyse_dynamics(
        runs, SuiteArrays(categories=tuple(suites.categories), suite=suites.suite,
                          reference=suites.reference, train_labels=trained_on.y_train,
                          original_labels=suites.original_labels),
        digits.y_test, list(digits.class_names))
    categories = result["categories"].tolist()
    ordinary = suites.suite < 0  # probes are left out: their labels were changed on purpose
    print(f"\n{len(runs)} runs of {args.epochs} epochs in {trained_seconds:.0f} s; "
          f"{planted.sum()} planted wrong labels ({args.noise:.0%}), {ordinary.sum()} "
          f"non-probe training examples of which {(planted & ordinary).sum()} planted")
    dense = [i for i, m in enumerate(result["run_modes"].tolist()) if m == "dense"]
    mislabeled = categories.index("mislabeled")
    scores = {
        "MAP-D P(mislabeled)": result["mapd_probabilities"][dense][:, :, mislabeled],
        "mean loss over epochs": result["mean_loss"][dense],
        "forgetting events": result["forgetting"][dense].astype(float),
    }
    print("\nDetection of the planted labels (AUROC over non-probe examples, dense runs):")
    for label, per_run in scores.items():
        values = [auroc(s[ordinary], planted[ordinary]) for s in per_run]
        print(f"  {label:<24s} mean {np.mean(values):.3f}  runs "
              + ", ".join(f"{v:.3f}" for v in values))
    print(f"  held-out probe accuracy of MAP-D (dense runs): "
          f"{np.mean(result['probe_accuracy'][dense]):.3f}")
    print("\nPIEs per population (training set: planted-noise enrichment; test set):")
    base = planted[ordinary].mean()
    for p, name in enumerate(result["population_names"].tolist()):
        train_pie = result["train_pie"][p]
        rich = enrichment(train_pie[ordinary], planted[ordinary])
        share = planted[ordinary & train_pie].mean() if (ordinary & train_pie).any() else np.nan
        acc = result["pie_accuracy"][p]
        print(f"  {name:<9s} train PIEs {train_pie[ordinary].mean():6.1%}  planted among them "
              f"{share:6.1%} (base rate {base:.1%}) → enrichment {rich:5.2f}x;  test PIEs "
              f"{result['pie_fraction'][p]:6.1%}, dense accuracy on them {acc[0, 0]:.3f} vs "
              f"{acc[2, 0]:.3f} on all, pruned {acc[0, 1]:.3f} vs {acc[2, 1]:.3f}")


if __name__ == "__main__":
    main()
