"""Cost of the evaluation job (loading, accuracy, every layer statistic) over its floor.

`prunescope.workers.analyses.evaluation.evaluate_checkpoints` loads every checkpoint, measures its
sparsity and runs `compare_layers`: one pass of all checkpoints over the test data, pooled
layer features folded into float64 moments, then CKA, SVCCA, PWCCA, Procrustes and complexity.
Floor: loading the same checkpoints and their bare forward passes over the same examples, same
batch size, no hooks, no sums — measured in the same run on the same inputs (see
../shared/BENCH.md). Runs A and B alternate in order; the median ratio is the headline.
`bench/layer_divergence.py` takes `compare_layers` itself apart (where the time goes, MiniLM,
torch_cka, memory); this script keeps the job-level figure (14.9-22x for the earlier
per-checkpoint implementation).

On a shared 2-core machine two threads with the other core busy slow small operations many
times over; `--threads 1` (the default) gives steadier figures, `--threads 2` the 2-core ones.

    .venv/bin/python bench/evaluation_overhead.py [--repeats 5] [--scales 1 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from prunescope.models.checkpoints import load_model, save_safetensors
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import default_config
from prunescope.workers.analyses.evaluation import evaluate_checkpoints
from prunescope.workers.datasets import as_model_input, load_dataset
from prunescope.workers.jobspec import CheckpointRef, DatasetRef
from prunescope.workers.training import init_model, train_classifier

ARCH = "cnn_small"


def build_checkpoints(folder: Path, data) -> tuple[dict, list[CheckpointRef]]:  # noqa: ANN001
    model = init_model(ARCH, {}, seed=0)
    train_classifier(model, data, epochs=10, seed=0)
    config = default_config(ARCH)
    refs = []
    save_safetensors(model.state_dict(), folder / "dense.safetensors")
    refs.append(
        CheckpointRef(0, "dense", "dense", "dense", None, str(folder / "dense.safetensors"))
    )
    for i, (method, sparsity) in enumerate(
        [("magnitude_global", 0.5), ("magnitude_global", 0.9), ("random", 0.5), ("random", 0.9)]
    ):
        pruned = load_model(ARCH, config, folder / "dense.safetensors")
        PRUNING_METHODS[method](pruned, sparsity, seed=0)
        path = folder / f"{method}-{sparsity}.safetensors"
        save_safetensors(pruned.state_dict(), path)
        refs.append(CheckpointRef(i + 1, path.stem, "pruned", method, sparsity, str(path)))
    return config, refs


def bare_forward_passes(config: dict, refs: list[CheckpointRef], data, batch_size: int) -> None:  # noqa: ANN001
    x = torch.from_numpy(as_model_input(data.x_test, tuple(data.input_shape)))
    with torch.inference_mode():
        for ref in refs:
            model = load_model(ARCH, config, ref.path)
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:

    base = load_dataset(DatasetRef(name="digits", source="builtin", builtin_name="digits"))
    everything = np.concatenate([base.x_train, base.x_test])
    labels = np.concatenate([base.y_train, base.y_test])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"load average {load} on {os.cpu_count()} cores")
    print(f"{'examples':>9} {'analysis s':>11} {'floor s':>9} {'ratio':>7}")
    headline = None
    with tempfile.TemporaryDirectory() as tmp:
        config, refs = build_checkpoints(Path(tmp), base)
        for scale in args.scales:
            data = dataclasses.replace(
                base, x_test=np.concatenate([everything] * scale), y_test=np.tile(labels, scale)
            )
            ratios, a_times, b_times = [], [], []
            analysis = functools.partial(evaluate_checkpoints, ARCH, config, refs, data,
                                         batch_size=args.batch_size)
            floor = functools.partial(bare_forward_passes, config, refs, data, args.batch_size)
            for r in range(args.repeats):
                # Alternate which runs first, so neither always gets the warmer caches.
                if r % 2:
                    b, a = timed(floor), timed(analysis)
                else:
                    a, b = timed(analysis), timed(floor)
                a_times.append(a)
                b_times.append(b)
                ratios.append(a / b)
            headline = statistics.median(ratios)
            print(
                f"{len(data.y_test):>9} {statistics.median(a_times):>11.3f} "
                f"{statistics.median(b_times):>9.3f} {headline:>6.2f}x"
            )
    print(f"evaluation / bare forward passes (median, largest size): {headline:.2f}x")


if __name__ == "__main__":
    main()
