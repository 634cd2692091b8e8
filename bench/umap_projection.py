"""What a shared UMAP map of five checkpoints costs, against PCA on the same features.

`prunescope.workers.analyses.embeddings.project_features` on realistic penultimate-layer
features: a digits MLP with 384 hidden units (scikit-learn, trained on the 1,797 digits), its
hidden activations for N examples resampled from digits with pixel noise (σ = 0.1 on [0, 1]
pixels), and four pruned copies whose first layer is magnitude-pruned to 50 / 70 / 90 / 95 % (no
fine-tuning; the units stay the units of the dense model). Per size, medians over repeats
(../shared/BENCH.md), A and B alternating:

- baseline: PCA map of the five checkpoints (the dense model's two principal axes, float64);
- UMAP "reference": one seeded UMAP fit on the dense features, then `.transform` of the four
  pruned ones — the fit alone (target < 15 s warm at 10,000 × 384 on 2 cores) and the total;
- the same fit unseeded with n_jobs=-1 (umap's parallel mode), to see what determinism costs;
- UMAP "aligned": AlignedUMAP over the five checkpoints (timed once: minutes);
- a cache hit: `project_features` with a `ProjectionCache` that holds the map (hashing the
  five arrays plus reading the file).

The first UMAP map of the process is reported separately (import, then the first fit and first
transforms, which compile umap's and pynndescent's numba code). Faithfulness columns: mean
trustworthiness (k = 10, sklearn) of each checkpoint's 2-D map against its own features, on a
fixed subsample of 2,000 examples; and the Spearman rank correlation, over all examples and
the four pruned checkpoints (mean), between how far an example's features moved
(‖f_pruned − f_dense‖) and how far its point moved in the map.

Threads: seeded UMAP runs single-threaded by design, so BLAS is held to one thread too
(`--blas-threads 1`, the default) and the PCA baseline does the same work on the same
resources; with two BLAS threads on this shared 2-core machine, PCA's time varied 50× between
repeats whenever the other core was busy. The load average (other work on the machine) and the
thread counts are printed first, peak RSS of the process at the end.

    .venv/bin/python bench/umap_projection.py [--sizes 2500,10000] [--repeats 3] [--blas-threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.manifold import trustworthiness
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_info, threadpool_limits

from prunescope.workers.analyses import embeddings
from prunescope.workers.analyses.embeddings import ProjectionCache, project_features

SPARSITIES = (0.0, 0.5, 0.7, 0.9, 0.95)
HIDDEN_UNITS = 384
TRUST_SUBSAMPLE = 2000


def digits_mlp_checkpoints(n: int, seed: int = 0) -> list[np.ndarray]:
    """Hidden activations (n × 384, float32) of a digits MLP, dense then magnitude-pruned."""
    pixels, labels = load_digits(return_X_y=True)
    pixels = pixels / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), max_iter=200, random_state=seed)
        mlp.fit(pixels, labels)
    weights, bias = mlp.coefs_[0], mlp.intercepts_[0]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(pixels), size=n)
    inputs = np.clip(pixels[rows] + rng.normal(scale=0.1, size=(n, pixels.shape[1])), 0.0, 1.0)
    checkpoints = []
    for sparsity in SPARSITIES:
        threshold = np.quantile(np.abs(weights), sparsity) if sparsity > 0 else -np.inf
        kept = np.where(np.abs(weights) > threshold, weights, 0.0)
        checkpoints.append(np.maximum(inputs @ kept + bias, 0.0).astype(np.float32))
    return checkpoints


def timed_projection(features, **kwargs) -> tuple[np.ndarray, float, float]:
    """The map, its total seconds, and the seconds until the first transform (the fit)."""
    marks: list[float] = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith("placing") and not marks:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    out = project_features(features, progress=progress, **kwargs)
    end = time.perf_counter()
    return out, end - start, (marks[0] if marks else end) - start


def unseeded_parallel_fit(reference: np.ndarray) -> float:
    umap = embeddings._umap_module()
    start = time.perf_counter()
    umap.UMAP(n_neighbors=15, min_dist=0.1, n_jobs=-1, force_approximation_algorithm=True).fit(
        reference
    )
    return time.perf_counter() - start


def faithfulness(features: list[np.ndarray], coordinates: np.ndarray) -> tuple[float, float]:
    """Mean trustworthiness over checkpoints (subsample) and mean displacement rank correlation."""
    sample = np.random.default_rng(1).choice(
        len(features[0]), size=min(TRUST_SUBSAMPLE, len(features[0])), replace=False
    )
    trust = [
        trustworthiness(f[sample], c[sample], n_neighbors=10)
        for f, c in zip(features, coordinates, strict=True)
    ]
    moved = [
        spearmanr(
            np.linalg.norm(f - features[0], axis=1),
            np.linalg.norm(c - coordinates[0], axis=1),
        ).statistic
        for f, c in zip(features[1:], coordinates[1:], strict=True)
    ]
    return float(np.mean(trust)), float(np.mean(moved))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2500,10000", help="comma-separated example counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blas-threads", type=int, default=1, help="0: leave BLAS as it is")
    args = parser.parse_args()
    if args.blas_threads:
        threadpool_limits(args.blas_threads, user_api="blas")
    sizes = [int(s) for s in args.sizes.split(",")]

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    blas = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    print(f"load average {load} on {os.cpu_count()} cores; thread pools {blas}")

    data = {n: digits_mlp_checkpoints(n) for n in sizes}
    largest = data[max(sizes)]
    start = time.perf_counter()
    embeddings._umap_module()
    import_seconds = time.perf_counter() - start
    import numba

    print(f"numba threads {numba.get_num_threads()} (seeded UMAP uses 1)")
    _, cold_total, cold_fit = timed_projection(largest, method="umap")
    print(
        f"cold, first map of the process at {max(sizes)} × {HIDDEN_UNITS}, 5 checkpoints: "
        f"import umap {import_seconds:.1f} s, first fit {cold_fit:.1f} s, "
        f"first 4 transforms {cold_total - cold_fit:.1f} s"
    )
    start = time.perf_counter()
    embeddings.warm_up_umap(aligned=True)
    aligned_compile = time.perf_counter() - start
    parallel_compile = unseeded_parallel_fit(data[min(sizes)][0])
    print(
        f"compiling AlignedUMAP (warm_up_umap(aligned=True)) {aligned_compile:.1f} s; "
        f"first unseeded parallel fit {parallel_compile:.1f} s"
    )

    print(
        f"\n{'N':>6} {'method':<30} {'median s':>9} {'runs':>4} {'min–max s':>15} {'/ PCA':>8} "
        f"{'trust@10':>8} {'moved ρ':>8}"
    )
    headline = {}
    for n in sizes:
        features = data[n]
        times: dict[str, list[float]] = {
            "pca": [],
            "fit": [],
            "reference": [],
            "parallel fit": [],
            "cache hit": [],
        }
        maps: dict[str, np.ndarray] = {}
        with tempfile.TemporaryDirectory() as folder:
            cache = ProjectionCache(Path(folder))
            for r in range(args.repeats):
                steps = ["pca", "reference", "parallel fit"]
                for step in steps[r % 3 :] + steps[: r % 3]:
                    if step == "pca":
                        maps["pca"], seconds, _ = timed_projection(features, method="pca")
                        times["pca"].append(seconds)
                    elif step == "reference":
                        maps["reference"], seconds, fit = timed_projection(
                            features, method="umap", cache=None
                        )
                        times["reference"].append(seconds)
                        times["fit"].append(fit)
                    else:
                        times["parallel fit"].append(unseeded_parallel_fit(features[0]))
            cache.put(cache.key_for(features, method="umap"), maps["reference"])
            for _ in range(args.repeats):
                hit, seconds, _ = timed_projection(features, method="umap", cache=cache)
                assert np.array_equal(hit, maps["reference"])
                times["cache hit"].append(seconds)
        maps["aligned"], aligned_seconds, _ = timed_projection(
            features, method="umap", alignment="aligned"
        )
        times["aligned"] = [aligned_seconds]
        pca = statistics.median(times["pca"])
        rows = [
            ("pca", "PCA, 5 checkpoints (baseline)", "pca"),
            ("fit", "UMAP fit, dense (seeded)", None),
            ("parallel fit", "UMAP fit, unseeded n_jobs=-1", None),
            ("reference", "UMAP reference + 4 transforms", "reference"),
            ("aligned", "AlignedUMAP, 5 checkpoints", "aligned"),
            ("cache hit", "cache hit, 5 checkpoints", None),
        ]
        for key, label, quality in rows:
            seconds = statistics.median(times[key])
            trust, moved = faithfulness(features, maps[quality]) if quality else (None, None)
            quality_text = f"{trust:8.3f} {moved:8.2f}" if quality else f"{'':>8} {'':>8}"
            print(
                f"{n:>6} {label:<30} {seconds:9.3f} {len(times[key]):>4} "
                f"{min(times[key]):7.3f}–{max(times[key]):<7.3f} "
                f"{seconds / pca:8.0f} {quality_text}"
            )
        serial_vs_parallel = statistics.median(
            s / p for s, p in zip(times["fit"], times["parallel fit"], strict=True)
        )
        print(
            f"{n:>6} seeded fit / unseeded parallel fit, median of paired runs: "
            f"{serial_vs_parallel:.2f}"
        )
        headline[n] = (statistics.median(times["reference"]) / pca, statistics.median(times["fit"]))
    print(
        f"\npeak RSS {peak_rss_mib():.0f} MiB; load average now "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    n = max(sizes)
    ratio, fit = headline[n]
    growth = ", ".join(f"N={m}: {headline[m][0]:.0f}×" for m in sizes)
    print(
        f"headline: UMAP reference map of 5 checkpoints at {n} × {HIDDEN_UNITS} takes {ratio:.0f}× "
        f"the PCA map (baseline, same run) [{growth}]; warm seeded fit {fit:.1f} s "
        f"(target < 15 s)"
    )


if __name__ == "__main__":
    main()
