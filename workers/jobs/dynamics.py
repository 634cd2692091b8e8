"""The dynamics job: reads the project's recorded training runs and finds how each example is
learned and which examples pruning forgets (PIEs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import Param
from prunescope.workers.jobspec import JobInputError, JobOutput, JobSpec, NewResult, ProgressFn

PARAMS: dict[str, Param] = {
    "k": Param(int, 20, "an integer from 1 to 1,000,000", lambda v: 1 <= v <= 1_000_000),
}


def run_dynamics(spec: JobSpec, params: dict[str, Any], progress: ProgressFn) -> JobOutput:
    # torch only in worker processes; the server imports this declaration.
    from prunescope.workers.analyses.dynamics import RunRecord, SuiteArrays, analyse_dynamics
    from prunescope.workers.analyses.dynamics_training import ProbeSuites, read_dynamics
    from prunescope.workers.analyses.geometry import thumbnails
    from prunescope.workers.jobs.common import finite_or_none, project_dataset, scaled

    # The newest recording of each run (a rerun under the same name replaces the older one).
    runs: dict[str, dict[str, Any]] = {}
    for ref in spec.results:
        name = str(ref.summary.get("run"))
        runs.setdefault(name, {})[ref.kind] = ref
    complete = {n: r for n, r in runs.items() if {"dynamics_run", "dynamics_meta"} <= set(r)}
    if not complete:
        raise JobInputError("this project has no recorded training runs; queue train_dynamics "
                            "jobs (a dense population and pruned ones) first")
    data = project_dataset(spec)
    records, suites, keys = [], None, {}
    for i, (name, refs) in enumerate(sorted(complete.items())):
        progress(0.4 * i / len(complete), f"reading run {name}")
        summary = refs["dynamics_run"].summary
        try:
            trajectories = read_dynamics(refs["dynamics_run"].path)
        except ValueError as exc:
            raise JobInputError(f"run {name!r}: its recorded dynamics are unusable: {exc}") \
                from exc
        with np.load(refs["dynamics_meta"].path, allow_pickle=False) as meta:
            run_suites = ProbeSuites.from_arrays(meta)
            train_labels = meta["train_labels"]
            test_predictions = meta["test_predictions"]
            test_accuracy = float(meta["test_accuracy"][-1])
        key = (tuple(run_suites.categories), run_suites.suite.tobytes(),
               run_suites.reference.tobytes())
        keys.setdefault(key, []).append(name)
        suites = suites or run_suites
        records.append(RunRecord(
            name=name, mode=str(summary.get("mode")), sparsity=float(summary.get("sparsity", 0)),
            seed=int(summary.get("seed", 0)), loss=trajectories["loss"],
            prediction=trajectories["prediction"], p_gold=trajectories["p_gold"],
            test_predictions=test_predictions, test_accuracy=test_accuracy))
    if len(keys) > 1:
        raise JobInputError("the runs were trained with different probe suites (" + "; ".join(
            ", ".join(names) for names in keys.values()) + "); train every run with the same "
            "probe_seed, probe_size and noise_sigma")
    assert suites is not None
    try:
        arrays = analyse_dynamics(
            records,
            SuiteArrays(categories=tuple(suites.categories), suite=suites.suite,
                        reference=suites.reference, train_labels=train_labels,
                        original_labels=suites.original_labels),
            np.asarray(data.y_test, dtype=np.int64), list(data.class_names), k=params["k"],
            test_groups=data.groups_test, progress=scaled(progress, 0.4, 0.95))
    except ValueError as exc:
        raise JobInputError(f"the dynamics cannot be analysed: {exc}") from exc
    if (images := thumbnails(data)) is not None:
        arrays["test_thumbnails"] = images
        arrays["train_thumbnails"] = thumbnails(data, "train")
    path = Path(spec.scratch_dir) / "dynamics.npz"
    np.savez(path, **arrays)
    summary = {"runs": sorted(complete), "dataset": data.name,
               "pie_fraction": dict(zip(arrays["population_names"].tolist(),
                                        finite_or_none(arrays["pie_fraction"]), strict=True))}
    progress(1.0, "dynamics analysed")
    return JobOutput(results=[NewResult(kind="dynamics", path=str(path), summary=summary)],
                     summary=summary)


KIND = JobDeclaration(
    name="dynamics",
    position=80,
    params=PARAMS,
    handler=run_dynamics,
    writes=("dynamics",),
    reads=("dynamics_run", "dynamics_meta"),
)
