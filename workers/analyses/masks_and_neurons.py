"""Which weights pruned checkpoints share, and what pruning does to the dense model's neurons.

Two analyses, each returning flat arrays ready for `np.savez` (no object arrays):

- `mask_analysis` compares the keep-masks of pruned checkpoints with each other (IoU of kept
  and of pruned sets, with the chance level of independent random masks) and with the dense
  model's largest weights (top-magnitude overlap); it needs only state_dicts.
- `wasserstein_analysis` runs the evaluation batches through the dense model and each pruned
  one, and per neuron of the chosen linear/conv layers reports the dense model's distance to a
  Gaussian (Sawmya et al. 2024, "Wasserstein neurons"), how much of its incoming weights each
  method removed, and how far pruning moved its output distribution.

Memory over passes: the dense model's per-neuron values are kept for the whole run and each
pruned model's only while it is compared, so two sets of samples are alive at once, at the
cost of one pass over `batches` per model (the batches must be re-iterable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.models.capture import capture_layer_outputs
from prunescope.models.sparsity import TRANSPOSED_CONV_TYPES, prunable_modules
from prunescope.workers.metrics.masks import mask_overlap, top_magnitude_overlap_layers
from prunescope.workers.metrics.wasserstein import (
    DEFAULT_CAPACITY,
    NeuronSample,
    neuron_rows,
    neuron_shift,
    pruned_fraction_per_neuron,
    wasserstein_neurons,
    wasserstein_pruning_correlation,
)

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


def _comparable_layers(
    dense_state: Mapping[str, Any],
    pruned_states: Mapping[str, Mapping[str, Any]],
    layers: Sequence[str],
    skip_shape_mismatch: bool,
) -> tuple[list[str], list[str]]:
    """Split `layers` into those with one shape in every checkpoint and the rest."""
    used, skipped = [], []
    states = {"dense": dense_state, **{repr(k): v for k, v in pruned_states.items()}}
    for layer in layers:
        missing = [name for name, state in states.items() if layer not in state]
        if missing:
            raise ValueError(
                f"layer {layer!r} is missing from {', '.join(missing)}; pass state-dict keys of "
                "prunable weights that every checkpoint has"
            )
        shapes = {name: tuple(state[layer].shape) for name, state in states.items()}
        if len(set(shapes.values())) == 1:
            used.append(layer)
        elif skip_shape_mismatch:
            skipped.append(layer)
        else:
            listed = ", ".join(f"{name}: {shape}" for name, shape in shapes.items())
            raise ValueError(
                f"layer {layer!r} changed shape ({listed}): it was structurally pruned and has "
                "no mask to compare; leave it out of `layers` or pass skip_shape_mismatch=True"
            )
    if not used:
        raise ValueError("no layer keeps its shape in every checkpoint; no masks to compare")
    return used, skipped


def mask_analysis(
    dense_state: Mapping[str, Any],
    pruned_states: Mapping[str, Mapping[str, Any]],
    layers: Sequence[str],
    *,
    skip_shape_mismatch: bool = False,
) -> dict[str, np.ndarray]:
    """Mask IoU between the pruned checkpoints and their top-magnitude overlap with the dense one.

    `pruned_states` maps checkpoint names (rows, in order) to state_dicts with pruned weights
    zero; `layers` are state-dict keys of prunable weights (`prunable_parameter_names`). A
    layer whose shape changed in any checkpoint raises ValueError, or is skipped with
    `skip_shape_mismatch=True`. Returns, for C checkpoints and L layers:

    - checkpoint_names str [C]; layers str [L]; skipped_layers str [S]; numel int64 [L]
    - kept_fraction float64 [C, L]: share of each layer's weights kept (non-zero)
    - iou_kept float64 [L, C, C] and iou_kept_overall [C, C]: IoU of kept sets, per layer and
      pooled over layers (`prunescope.workers.metrics.masks.MaskOverlap.iou_matrix`)
    - iou_kept_chance [L, C, C], iou_kept_chance_overall [C, C]: the same for independent
      random masks of the same per-layer counts (`independent_iou`)
    - iou_pruned, iou_pruned_overall, iou_pruned_chance, iou_pruned_chance_overall: the same
      four for the pruned sets
    - top_magnitude_overlap float64 [C, L]: share of the dense layer's k largest |w| kept
      (chance level: kept_fraction); top_magnitude_overlap_overall [C]: pooled per-layer
      counts; top_magnitude_overlap_global [C]: with one ranking across all layers
    """
    if not pruned_states:
        raise ValueError("no pruned checkpoints given; mask analysis compares at least one")
    used, skipped = _comparable_layers(dense_state, pruned_states, layers, skip_shape_mismatch)
    overlap = mask_overlap(pruned_states, used)
    result: dict[str, np.ndarray] = {
        "checkpoint_names": np.array(list(pruned_states), dtype=np.str_),
        "layers": np.array(used, dtype=np.str_),
        "skipped_layers": np.array(skipped, dtype=np.str_),
        "numel": overlap.numel,
        "kept_fraction": overlap.kept / np.maximum(overlap.numel, 1)[None, :],
    }
    for of in ("kept", "pruned"):
        iou = overlap.iou_matrix(of)
        result[f"iou_{of}"] = iou.per_layer
        result[f"iou_{of}_overall"] = iou.overall
        result[f"iou_{of}_chance"] = iou.chance_per_layer
        result[f"iou_{of}_chance_overall"] = iou.chance_overall
    tops = [top_magnitude_overlap_layers(dense_state, state, used)
            for state in pruned_states.values()]
    result["top_magnitude_overlap"] = np.stack([t.per_layer for t in tops])
    result["top_magnitude_overlap_overall"] = np.array([t.overall for t in tops])
    result["top_magnitude_overlap_global"] = np.array([t.overall_global for t in tops])
    return result


def _neuron_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    prunable = dict(prunable_modules(model))
    if layers is None:
        return prunable
    wrong = [name for name in layers if name not in prunable]
    if wrong:
        raise ValueError(
            f"{', '.join(map(repr, wrong))} is not a linear or convolution layer of "
            f"{type(model).__name__}; Wasserstein neurons are measured on those layers' "
            f"outputs (pre-activations). Choose from: {', '.join(prunable)}"
        )
    if not layers:
        raise ValueError("no layers given; pass linear/conv module names, or None for all")
    return {name: prunable[name] for name in layers}


def _unit_axis(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1  # convolutions: channels


def _sample_outputs(
    model: nn.Module,
    batches: Sequence[Any],
    modules: Mapping[str, nn.Module],
    capacity: int,
    seed: int,
    report: Callable[[int], None],
) -> dict[str, NeuronSample]:
    """One no-grad pass over `batches`, keeping each layer's per-neuron values."""
    samples = {name: NeuronSample(capacity, seed=seed) for name in modules}
    model.eval()
    with (
        capture_layer_outputs(model, list(modules), flatten=False) as outputs,
        torch.inference_mode(),
    ):
        for b, batch in enumerate(batches):
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            for name, module in modules.items():
                samples[name].update(neuron_rows(outputs[name], _unit_axis(module)))
            report(b + 1)
    if any(sample.num_seen == 0 for sample in samples.values()):
        raise ValueError("the evaluation batches are empty; Wasserstein neurons need outputs")
    return samples


def _padded(rows: Sequence[np.ndarray], width: int, fill: Any) -> np.ndarray:
    dtype = np.bool_ if isinstance(fill, bool) else np.float64
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : row.size] = row
    return out


def wasserstein_analysis(
    dense_model: nn.Module,
    pruned_models: Mapping[str, nn.Module],
    batches: Sequence[Any],
    layers: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    *,
    capacity: int = DEFAULT_CAPACITY,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per neuron of each layer: dense W1 to a Gaussian, pruned share, and shift per checkpoint.

    `layers` are names of linear/conv modules (`prunable_modules`, models/sparsity.py; None: all);
    a neuron is an output unit, a conv channel pooling examples and positions, and its value
    is the layer's output before any nonlinearity (workers/metrics/wasserstein.py). `batches`
    is a re-iterable sequence of model inputs (or (inputs, labels) pairs), passed once per
    model; models are put in eval mode. Up to `capacity` values per neuron are kept exactly,
    beyond that a reservoir sample with `seed`, the same rows for every model.

    Arrays are padded to U = the widest layer (NaN, or False for flags); num_units says how
    many entries of a row are real. For C pruned checkpoints and L layers:

    - checkpoint_names str [C]; layers str [L]; num_units int64 [L]
    - num_values int64 [L]: values per neuron used; num_values_seen int64 [L]: values seen
      (examples × positions); they differ when the reservoir sampled
    - dense_w1, dense_w1_scaled, dense_mean, dense_std float64 [L, U]; dense_constant bool
      [L, U] (`wasserstein_neurons` of the dense model)
    - pruned_w1, pruned_w1_scaled float64 [C, L, U]; pruned_constant bool [C, L, U]: the same
      for each pruned model
    - pruned_fraction float64 [C, L, U]: share of each neuron's incoming weights that are zero
    - shift_w1, shift_mean, shift_std float64 [C, L, U]: `neuron_shift` dense → pruned
    - rho_w1, pvalue_w1, rho_w1_scaled, pvalue_w1_scaled float64 [C, L]: Spearman correlation
      between dense W1 (raw or scaled) and pruned_fraction over non-constant neurons; NaN when
      undefined (e.g. a layer the method left dense)
    """
    progress = progress or _no_progress
    modules = _neuron_layers(dense_model, layers)
    names = list(modules)
    total = (len(pruned_models) + 1) * max(len(batches), 1)

    def reporter(model_index: int, label: str) -> Callable[[int], None]:
        def report(batch: int) -> None:
            step = model_index * len(batches) + batch
            progress(step / total, f"Wasserstein neurons: {label} (batch {batch}/{len(batches)})")

        return report

    dense_samples = _sample_outputs(
        dense_model, batches, modules, capacity, seed, reporter(0, "dense model")
    )
    dense_values = {name: dense_samples[name].values() for name in names}
    dense_stats = {name: wasserstein_neurons(dense_values[name]) for name in names}
    units = [dense_values[name].shape[1] for name in names]
    width = max(units)

    per_checkpoint: dict[str, list[np.ndarray]] = {
        key: [] for key in ("pruned_w1", "pruned_w1_scaled", "pruned_constant",
                            "pruned_fraction", "shift_w1", "shift_mean", "shift_std")
    }
    correlations: dict[str, list[list[float]]] = {
        key: [] for key in ("rho_w1", "pvalue_w1", "rho_w1_scaled", "pvalue_w1_scaled")
    }
    for c, (checkpoint, model) in enumerate(pruned_models.items(), start=1):
        pruned_modules = _neuron_layers(model, names)
        samples = _sample_outputs(
            model, batches, pruned_modules, capacity, seed, reporter(c, repr(checkpoint))
        )
        rows: dict[str, list[np.ndarray]] = {key: [] for key in per_checkpoint}
        rho: dict[str, list[float]] = {key: [] for key in correlations}
        for name in names:
            values = samples[name].values()
            if values.shape[1] != dense_values[name].shape[1]:
                raise ValueError(
                    f"layer {name!r} has {values.shape[1]} units in checkpoint {checkpoint!r} "
                    f"and {dense_values[name].shape[1]} in the dense model: it was structurally "
                    "pruned, so its neurons cannot be compared one to one; leave it out of layers"
                )
            own = wasserstein_neurons(values)
            shift = neuron_shift(dense_values[name], values)
            module = pruned_modules[name]
            out_axis = 1 if isinstance(module, TRANSPOSED_CONV_TYPES) else 0
            fraction = pruned_fraction_per_neuron(module.weight, out_axis=out_axis)
            dense = dense_stats[name]
            for key, value in (
                ("pruned_w1", own["w1"]), ("pruned_w1_scaled", own["w1_scaled"]),
                ("pruned_constant", own["constant"]), ("pruned_fraction", fraction),
                ("shift_w1", shift["w1"]), ("shift_mean", shift["mean_change"]),
                ("shift_std", shift["std_change"]),
            ):
                rows[key].append(value)
            for suffix, w1 in (("w1", dense["w1"]), ("w1_scaled", dense["w1_scaled"])):
                r, p = wasserstein_pruning_correlation(w1, fraction, exclude=dense["constant"])
                rho[f"rho_{suffix}"].append(r)
                rho[f"pvalue_{suffix}"].append(p)
        for key, layer_rows in rows.items():
            fill = False if key == "pruned_constant" else np.nan
            per_checkpoint[key].append(_padded(layer_rows, width, fill))
        for key, values_ in rho.items():
            correlations[key].append(values_)
        del samples  # the next model's values replace these

    result: dict[str, np.ndarray] = {
        "checkpoint_names": np.array(list(pruned_models), dtype=np.str_),
        "layers": np.array(names, dtype=np.str_),
        "num_units": np.array(units, dtype=np.int64),
        "num_values": np.array([dense_values[n].shape[0] for n in names], dtype=np.int64),
        "num_values_seen": np.array([dense_samples[n].num_seen for n in names], dtype=np.int64),
        "dense_constant": _padded([dense_stats[n]["constant"] for n in names], width, False),
    }
    for key in ("w1", "w1_scaled", "mean", "std"):
        result[f"dense_{key}"] = _padded([dense_stats[n][key] for n in names], width, np.nan)
    num_layers = len(names)
    for key, stacked in per_checkpoint.items():
        dtype = np.bool_ if key == "pruned_constant" else np.float64
        result[key] = (np.stack(stacked).astype(dtype) if stacked
                       else np.zeros((0, num_layers, width), dtype=dtype))
    for key, values_ in correlations.items():
        result[key] = np.array(values_, dtype=np.float64).reshape(len(pruned_models), num_layers)
    progress(1.0, "Wasserstein neurons: done")
    return result
