"""Does `choose_form` pick the faster exact route to linear CKA, and what does float32 cost?

The forms measured are the data-based references in `tests/reference/cka.py` (the layers
analysis computes CKA from streamed moments instead; `bench/layer_divergence.py` times that).
For each shape, linear CKA of the same (x, y) is timed three ways through the public `cka`:
the feature form, the Gram form and form="auto" (`choose_form`'s pick), in rotating order
after a warm-up, taking medians (see ../shared/BENCH.md); calls shorter than 0.2 s are looped.
The headline is pick / faster-of-the-two, which should be ≈ 1.0. Context columns: the floor
(the multiply-adds the cheaper form cannot avoid, at this machine's float64 matmul rate
measured in the same run), peak traced memory of each form next to the p×p products an
unblocked feature form would hold, and how far a plain float32 run of each form (activations,
products and sums in float32) lands from the float64 value.

To stay near a minute on 2 cores, a form predicted to cost over 3× the other is timed once,
and one predicted over 10× the other and over 1e11 multiply-adds (the feature form at 16,384
features: ~30 s) is timed at a quarter of the width and scaled by its predicted cost ratio
(marked ~), its float32 run skipped.

Multi-threaded BLAS on a shared 2-core machine slows small products up to 100× when the other
core is busy (threads wait on each other); the load average is printed first, and
`--blas-threads 1` gives steadier figures there.

    .venv/bin/python bench/cka_forms.py [--repeats 3] [--blas-threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

# The linear CKA forms measured here are the references that live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reference.cka import _feature_form, _gram_form, choose_form, cka  # noqa: E402

SHAPES = [(2000, 64, 64), (2000, 4096, 4096), (500, 16384, 16384)]


def representations(n: int, p: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related layers: shared 32-dim latent structure, different nonlinearities, noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 32))
    x = np.tanh(z @ rng.normal(size=(32, p))) + 0.1 * rng.normal(size=(n, p))
    y = np.maximum(z @ rng.normal(size=(32, q)), 0.0) + 0.1 * rng.normal(size=(n, q))
    return x, y


def predicted_cost(form: str, n: int, p: int, q: int) -> float:
    """Multiply-adds of a form, as `choose_form` counts them (without its n² pass term)."""
    return n * (p + q) ** 2 / 2 if form == "feature" else n * n * (p + q) / 2


def matmul_rate(size: int = 1024, repeats: int = 3) -> float:
    """Multiply-adds per second of a float64 square matrix product on this machine."""
    a = np.random.default_rng(1).normal(size=(size, size))
    b = a[::-1].copy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return size**3 / statistics.median(times)


def timed(x: np.ndarray, y: np.ndarray, form: str) -> tuple[float, float, int]:
    """CKA by `form`, its wall time per call and its peak traced (numpy) memory."""
    tracemalloc.start()
    start = time.perf_counter()
    value = cka(x, y, form=form)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    loops = int(0.2 / seconds) if seconds < 0.2 else 0
    if loops:
        start = time.perf_counter()
        for _ in range(loops):
            cka(x, y, form=form)
        seconds = (time.perf_counter() - start) / loops
    return value, seconds, peak


def float32_deviation(form: str, x: np.ndarray, y: np.ndarray, reference: float) -> float:
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    xc, yc = x32 - x32.mean(0), y32 - y32.mean(0)
    value = (_feature_form if form == "feature" else _gram_form)(xc, yc, False)
    return abs(value - reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blas-threads", type=int, default=None, help="cap BLAS threads")
    args = parser.parse_args()
    limit = (
        threadpool_limits(args.blas_threads, user_api="blas")
        if args.blas_threads
        else contextlib.nullcontext()
    )
    with limit:
        run(args.repeats)


def run(repeats: int) -> None:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} cores")
    rate = matmul_rate()
    print(f"float64 matmul rate: {rate / 1e9:.1f} G multiply-adds/s")
    print(
        f"{'n':>5} {'p=q':>6} {'pick':>8} {'feature s':>10} {'gram s':>8} {'auto s':>8} "
        f"{'pick/best':>9} {'auto/floor':>10} {'feat MiB':>9} {'unblocked':>9} {'gram MiB':>9} "
        f"{'f32 dev feat':>12} {'f32 dev gram':>12}"
    )
    ratios = []
    for n, p, q in SHAPES:
        x, y = representations(n, p, q)
        pick = choose_form(n, p, q)
        costs = {form: predicted_cost(form, n, p, q) for form in ("feature", "gram")}
        run_once = {form for form in costs if costs[form] > 3 * min(costs.values())}
        scaled = {form for form in costs if costs[form] > max(10 * min(costs.values()), 1e11)}
        times: dict[str, list[float]] = {"feature": [], "gram": [], "auto": []}
        peaks: dict[str, int] = {}
        values = {}
        for form in scaled:
            part_x, part_y = x[:, : p // 4], y[:, : q // 4]
            values[form], seconds, peaks[form] = timed(part_x, part_y, form)
            times[form].append(seconds * costs[form] / predicted_cost(form, n, p // 4, q // 4))
        order = [form for form in ("feature", "gram", "auto") if form not in scaled]
        for form in order:
            if form not in run_once:
                cka(x, y, form=form)  # warm-up: first-touch page faults, BLAS thread start
        for r in range(repeats):
            for form in order[r % len(order) :] + order[: r % len(order)]:
                if r > 0 and form in run_once:
                    continue
                values[form], seconds, peak = timed(x, y, form)
                times[form].append(seconds)
                peaks[form] = max(peaks.get(form, 0), peak)
        median = {form: statistics.median(t) for form, t in times.items()}
        ratio = median["auto"] / min(median["feature"], median["gram"])
        ratios.append(ratio)
        floor = min(costs.values()) / rate
        unblocked = (p * p + q * q + p * q) * 8 / 2**20
        reference = values[pick]
        deviation = {
            form: "skipped" if form in scaled else f"{float32_deviation(form, x, y, reference):.1e}"
            for form in ("feature", "gram")
        }
        feature_s = f"{median['feature']:.3f}" + ("~" if "feature" in scaled else "")
        gram_s = f"{median['gram']:.3f}" + ("~" if "gram" in scaled else "")
        print(
            f"{n:>5} {p:>6} {pick:>8} {feature_s:>10} {gram_s:>8} "
            f"{median['auto']:>8.3f} {ratio:>9.2f} {median['auto'] / floor:>10.1f} "
            f"{peaks['feature'] / 2**20:>9.0f} {unblocked:>9.0f} {peaks['gram'] / 2**20:>9.0f} "
            f"{deviation['feature']:>12} {deviation['gram']:>12}"
        )
        if not scaled:
            assert abs(values["feature"] - values["gram"]) < 1e-10, "the forms disagree"
    print(
        f"choose_form's pick / faster form: median {statistics.median(ratios):.2f}, "
        f"worst {max(ratios):.2f} over {len(SHAPES)} shapes"
    )


if __name__ == "__main__":
    main()
