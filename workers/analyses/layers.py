"""Layer divergence and representation complexity of many checkpoints in one pass over the data.

Every batch goes through every model once (all models stay loaded; the reference's
activations are not recomputed per checkpoint). The chosen layers' outputs are pooled to one
vector per example and folded into exact float64 running sums on the worker's device
(`prunescope.workers.metrics.moments.MomentAccumulator`), so no analysis ever holds all examples'
activations. From the sums come, for every checkpoint:

- linear CKA, biased and debiased, for every (reference layer, checkpoint layer) pair — the
  full layer × layer matrix, whose diagonal is the per-layer drift;
- SVCCA, PWCCA and the orthogonal Procrustes distance per layer (diagonal pairs);
- representation complexity per layer: effective rank, participation ratio and the number
  of principal directions holding 99 % of the variance, from the layer's covariance; and the
  TwoNN intrinsic dimension on a fixed random subsample of at most `subsample` examples
  (the same examples for every model), the one statistic that needs the points themselves;
  NaN where TwoNN is undefined (every point's two nearest neighbours equidistant).

Pooling, chosen so wide layers stay comparable at a cost far below the forward pass:
- convolution maps (batch, C, H, W) are averaged over space to C channel features. Full
  flattening (Kornblith et al. compare flattened maps) costs (C·H·W)² per batch, 40× the
  forward pass of a small CNN and infeasible for ResNet stages; `conv_pooling="flatten"`
  keeps it for small networks;
- token sequences (batch, T, D) are averaged over the non-padding tokens, [CLS] and [SEP]
  included, as sentence-transformers' mean pooling does; Hugging Face models contribute
  their hidden states (the embedding output, then every block's output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.models.capture import capture_layer_outputs
from prunescope.workers.analyses.pooling import CONV_POOLINGS
from prunescope.workers.device import pick_device, place_models, to_device
from prunescope.workers.metrics.minibatch_cka import MinibatchCKAAccumulator
from prunescope.workers.metrics.moments import (
    MomentAccumulator,
    eigen_decomposition,
    linear_cka_from_scatter,
    procrustes_from_scatter,
    svcca_and_pwcca_from_scatter,
)

ProgressFn = Callable[[float, str], None]


@dataclass
class Batch:
    """Model inputs for a batch, with the examples' positions in the dataset and labels."""

    inputs: torch.Tensor | Mapping[str, torch.Tensor]
    index: torch.Tensor  # int64 positions of these examples in the evaluation set
    labels: torch.Tensor | None = None
    # Token batches: True at the tokenizer's special tokens ([CLS], [SEP], padding).
    special_tokens: torch.Tensor | None = None


def tensor_batches(
    x: np.ndarray, labels: np.ndarray | None, batch_size: int
) -> list[Batch]:
    """Consecutive batches of an array dataset (already shaped for the model)."""
    xs = torch.from_numpy(np.ascontiguousarray(x))
    ys = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    out = []
    for start in range(0, len(xs), batch_size):
        stop = min(start + batch_size, len(xs))
        out.append(Batch(xs[start:stop], torch.arange(start, stop),
                         None if ys is None else ys[start:stop]))
    return out


def text_batches(
    texts: Sequence[str],
    labels: np.ndarray | None,
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_length: int = 128,
) -> list[Batch]:
    """Length-bucketed token batches: sentences sorted by token count, then cut into batches.

    Padding each batch only to its own longest sentence instead of the set's longest is what
    makes a Transformer pass cheap (3.5× on MiniLM over 512 sentences here). `index` maps
    each row back to its sentence, so per-example results keep the dataset's order.
    """
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True,
                                              max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        special = torch.isin(enc["input_ids"], torch.tensor(sorted(tokenizer.all_special_ids)))
        out.append(Batch(dict(enc), torch.from_numpy(idx.astype(np.int64)),
                         None if labels is None else torch.from_numpy(labels[idx]), special))
    return out


def is_token_model(model: nn.Module) -> bool:
    """Hugging Face models take token ids and report hidden states themselves."""
    return hasattr(model, "config") and hasattr(model.config, "output_hidden_states")


def layer_names(model: nn.Module) -> list[str]:
    """The layers an analysis compares: registry `analysis_layers`, or for Hugging Face
    models "embeddings" followed by each block (the hidden states transformers returns)."""
    if is_token_model(model):
        return ["embeddings", *model.analysis_layers]
    return list(model.analysis_layers)


def pool_output(output: torch.Tensor, mask: torch.Tensor | None, conv_pooling: str) -> torch.Tensor:
    """One vector per example: conv maps averaged (or flattened), tokens averaged over the
    attention mask, anything else flattened (the module docstring says why)."""
    if output.dim() == 4:
        return output.flatten(1) if conv_pooling == "flatten" else output.mean(dim=(2, 3))
    if output.dim() == 3:
        if mask is None:
            return output.mean(1)
        weights = mask.to(output.dtype).unsqueeze(-1)
        return (output * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return output.reshape(output.shape[0], -1)


def layer_features(
    model: nn.Module, batch: Batch, *, conv_pooling: str = "mean"
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(logits or None, pooled features per layer in `layer_names` order) for one batch."""
    if is_token_model(model):
        inputs = dict(batch.inputs)
        out = model(**inputs, output_hidden_states=True)
        mask = inputs.get("attention_mask")
        logits = getattr(out, "logits", None)
        return logits, [pool_output(h, mask, conv_pooling) for h in out.hidden_states]
    names = layer_names(model)
    with capture_layer_outputs(model, names, flatten=False) as captured:
        logits = model(batch.inputs)
    return logits, [pool_output(captured[name], None, conv_pooling) for name in names]


def _to(inputs: Any, device: torch.device) -> Any:
    return to_device(dict(inputs) if isinstance(inputs, Mapping) else inputs, device)


def _no_progress(fraction: float, message: str) -> None:
    pass


def _token_outputs(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple:
    """(logits or None, mean-pooled hidden states, attention probabilities per layer)."""
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    mask = inputs.get("attention_mask")
    pooled = [pool_output(h, mask, "mean") for h in out.hidden_states]
    return getattr(out, "logits", None), pooled, out.attentions


def _fold_attention(consistency: dict[int, Any], model: int, reference: Sequence[torch.Tensor],
                    attentions: Sequence[torch.Tensor], inputs: Mapping[str, torch.Tensor],
                    special: torch.Tensor | None, reference_terms: dict) -> None:
    from prunescope.workers.metrics.attention import AttentionConsistencyAccumulator

    if model not in consistency:
        consistency[model] = AttentionConsistencyAccumulator(len(reference),
                                                             int(reference[0].shape[1]))
    mask = inputs["attention_mask"]
    # The dense side's terms of this batch are computed once for every pruned model.
    consistency[model].update(reference, attentions, mask,
                              None if special is None else special.to(mask.device),
                              reference_terms=reference_terms)


def _attention_arrays(consistency: dict[int, Any], reference: int,
                      num_models: int) -> dict[str, np.ndarray]:
    """[C, A, H] arrays; the reference's row compares it with itself (JS 0, overlap 1)."""
    results = {i: acc.result() for i, acc in consistency.items()}
    first = next(iter(results.values()))
    shape = (num_models, *first["js_divergence"].shape)
    out = {key: np.zeros(shape) for key in ("attention_js", "attention_entropy",
                                            "attention_entropy_change",
                                            "attention_topk_overlap")}
    out["attention_entropy"][reference] = first["entropy_dense"]
    out["attention_topk_overlap"][reference] = 1.0
    for i, r in results.items():
        out["attention_js"][i] = r["js_divergence"]
        out["attention_entropy"][i] = r["entropy_pruned"]
        out["attention_entropy_change"][i] = r["entropy_change"]
        out["attention_topk_overlap"][i] = r["topk_overlap"]
    return out


def compare_layers(
    models: Sequence[nn.Module],
    batches: Sequence[Batch],
    num_examples: int,
    *,
    reference: int = 0,
    names: Sequence[str] | None = None,
    conv_pooling: str = "mean",
    subsample: int = 2000,
    minibatch_cka: bool = False,
    attention: bool = False,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    device_budget_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """One pass: every model on every batch, all layer statistics against `models[reference]`.

    The models sit on `device` whole when their weights fit there together (within
    `device_budget_bytes`, by default most of a GPU's free memory), else their weights stay in
    host memory and stream to the device block by block as each forward reaches them
    (`prunescope.workers.device.place_models`), so models larger than the device are still compared
    layer by layer, with the same results.

    Returns npz-ready arrays (C = len(models), L = layers of the reference, rows in model
    order; the reference row compares the model with itself):

    - layers str [L], widths int64 [C, L]
    - cka, cka_debiased float64 [C, L, L]: [c, i, j] = reference layer i vs layer j of c
    - cka_diag, cka_debiased_diag, svcca, pwcca, procrustes float64 [C, L]: same layer
    - effective_rank, participation_ratio, dims_99, twonn float64 [C, L]
    - predictions int64 [C, N] (−1 where a model has no logits), labels int64 [N] (−1 if none)
    - with `minibatch_cka`: cka_minibatch float64 [C, L, L], Nguyen et al.'s minibatch
      estimate over the given batches (`minibatch_cka.MinibatchCKAAccumulator`), labelled as
      such beside the exact values, for comparison with tools that report it
    - with `attention` (Hugging Face models): attention consistency of every checkpoint with
      the reference per (layer, head), float64 [C, A, H] (A attention layers, H heads), from
      the same forward passes: attention_js (Jensen–Shannon divergence, bits),
      attention_entropy (the checkpoint's), attention_entropy_change (checkpoint −
      reference), attention_topk_overlap (top-3 attended keys shared), token-weighted over
      every real, non-special query token (`prunescope.workers.metrics.attention`); never stored per
      example
    All models must expose the same layer names (one architecture).
    """
    from prunescope.workers.metrics.complexity import (
        complexity_from_covariance,
        subsample_indices,
        twonn_intrinsic_dimension,
    )

    if conv_pooling not in CONV_POOLINGS:
        raise ValueError(f"conv_pooling must be one of {CONV_POOLINGS}, got {conv_pooling!r}")
    progress = progress or _no_progress
    device = pick_device(device)
    names = list(names or [f"model {i}" for i in range(len(models))])
    layers = layer_names(models[reference])
    for i, model in enumerate(models):
        if layer_names(model) != layers:
            raise ValueError(f"{names[i]} has layers {layer_names(model)}, expected {layers}")
        model.eval()
    streams = place_models(models, device, device_budget_bytes)
    order = [reference, *[i for i in range(len(models)) if i != reference]]

    predictions = np.full((len(models), num_examples), -1, dtype=np.int64)
    labels = np.full(num_examples, -1, dtype=np.int64)
    widths = np.zeros((len(models), len(layers)), dtype=np.int64)
    samples: list[list[list[torch.Tensor]]] = [[[] for _ in layers] for _ in models]
    in_sample = np.zeros(num_examples, dtype=bool)
    in_sample[subsample_indices(num_examples, subsample)] = True
    accumulator: MomentAccumulator | None = None
    minibatch = MinibatchCKAAccumulator(len(layers), [len(layers)] * len(models))
    attention = attention and is_token_model(models[reference])
    consistency: dict[int, Any] = {}
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            inputs = _to(batch.inputs, device)
            rows = torch.from_numpy(in_sample[batch.index.numpy()]).to(device)
            feats, per_model = [], []
            reference_attention, reference_terms = None, {}
            for i in order:
                if attention:
                    logits, per_layer, attentions = _token_outputs(models[i], inputs)
                    if i == reference:
                        reference_attention = attentions
                    else:
                        _fold_attention(consistency, i, reference_attention, attentions,
                                        inputs, batch.special_tokens, reference_terms)
                    del attentions
                else:
                    logits, per_layer = layer_features(
                        models[i], Batch(inputs, batch.index), conv_pooling=conv_pooling
                    )
                if logits is not None:
                    predictions[i, batch.index.numpy()] = logits.argmax(-1).cpu().numpy()
                widths[i] = [f.shape[1] for f in per_layer]
                feats.append(torch.cat(per_layer, 1))
                per_model.append(per_layer)
                for j, f in enumerate(per_layer):
                    samples[i][j].append(f[rows].double().cpu())
            if batch.labels is not None:
                labels[batch.index.numpy()] = batch.labels.numpy()
            if accumulator is None:
                accumulator = MomentAccumulator(
                    widths[reference].tolist(), [widths[i].tolist() for i in order[1:]], device
                )
            accumulator.update(feats[0], feats[1:])
            if minibatch_cka:
                minibatch.update(per_model[0], [per_model[order.index(i)]
                                                for i in range(len(models))])
            progress((b + 1) / len(batches), f"batch {b + 1}/{len(batches)} through "
                     f"{len(models)} models")
    for stream in streams:
        stream.remove()
    if accumulator is None:
        raise ValueError("the evaluation set is empty")
    accumulator.finish()

    c, n_layers = len(models), len(layers)
    out = {key: np.zeros((c, n_layers, n_layers)) for key in ("cka", "cka_debiased")}
    diag_keys = ("svcca", "pwcca", "procrustes", "effective_rank", "participation_ratio",
                 "dims_99", "twonn")
    out.update({key: np.zeros((c, n_layers)) for key in diag_keys})
    n = accumulator.n
    # One eigen-decomposition per (model, layer) feeds its complexity, SVCCA and PWCCA.
    ref_scatter = [accumulator.scatter(0, j) for j in range(n_layers)]
    ref_eig = [eigen_decomposition(s) for s in ref_scatter]
    for slot, i in enumerate(order):
        scatters = ref_scatter if slot == 0 else [accumulator.scatter(slot, j)
                                                  for j in range(n_layers)]
        eigs = ref_eig if slot == 0 else [eigen_decomposition(s) for s in scatters]
        for j in range(n_layers):
            stats = complexity_from_covariance(scatters[j] / n, n, eigenvalues=eigs[j][0] / n)
            out["effective_rank"][i, j] = stats.effective_rank
            out["participation_ratio"][i, j] = stats.participation_ratio
            out["dims_99"][i, j] = stats.variance_directions
            try:
                out["twonn"][i, j] = twonn_intrinsic_dimension(
                    torch.cat(samples[i][j]).numpy(), max_points=subsample
                )
            except ValueError:
                out["twonn"][i, j] = np.nan
        for ref_layer in range(n_layers):
            sxx = ref_scatter[ref_layer]
            for j in range(n_layers):
                if slot == 0:
                    sxy = accumulator.self_cross_scatter(ref_layer, j)
                    debiased = accumulator.self_debiased_cka(ref_layer, j)
                else:
                    sxy = accumulator.cross_scatter(slot, ref_layer, j)
                    debiased = accumulator.debiased_cka(slot, ref_layer, j)
                out["cka"][i, ref_layer, j] = linear_cka_from_scatter(sxy, sxx, scatters[j])
                out["cka_debiased"][i, ref_layer, j] = debiased
                if ref_layer != j:
                    continue
                if slot == 0:
                    # The reference against itself: identical representations, by definition.
                    # SVCCA, PWCCA = 1 and Procrustes = 0 where the layer varies at all
                    # (a layer without variance gets 0 and 2, as the metrics define).
                    varies = float(np.trace(sxx)) > 0
                    out["svcca"][i, j] = out["pwcca"][i, j] = 1.0 if varies else 0.0
                    out["procrustes"][i, j] = 0.0 if varies else 2.0
                    continue
                out["svcca"][i, j], out["pwcca"][i, j] = svcca_and_pwcca_from_scatter(
                    sxy, sxx, scatters[j], eig_x=ref_eig[j], eig_y=eigs[j]
                )
                out["procrustes"][i, j] = procrustes_from_scatter(sxy, sxx, scatters[j])
    out["cka_diag"] = np.einsum("cii->ci", out["cka"]).copy()
    out["cka_debiased_diag"] = np.einsum("cii->ci", out["cka_debiased"]).copy()
    if minibatch_cka:
        out["cka_minibatch"] = np.stack(minibatch.values())
    if attention and consistency:
        out.update(_attention_arrays(consistency, reference, len(models)))
    out.update(layers=np.array(layers, dtype=np.str_), widths=widths,
               predictions=predictions, labels=labels)
    return out


def minibatch_layer_cka(
    models: Sequence[nn.Module],
    batches: Sequence[Batch],
    *,
    reference: int = 0,
    conv_pooling: str = "mean",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Only the minibatch CKA matrices [C, L, L] of `compare_layers(minibatch_cka=True)`: every
    model on every batch, each batch's Grams folded at once (the cost a minibatch-CKA tool
    pays, measured like for like in bench/layer_divergence.py)."""
    if conv_pooling not in CONV_POOLINGS:
        raise ValueError(f"conv_pooling must be one of {CONV_POOLINGS}, got {conv_pooling!r}")
    device = pick_device(device)
    layers = layer_names(models[reference])
    for model in models:
        model.eval()
    streams = place_models(models, device)
    minibatch = MinibatchCKAAccumulator(len(layers), [len(layers)] * len(models))
    with torch.inference_mode():
        for batch in batches:
            inputs = _to(batch.inputs, device)
            per_model = [layer_features(m, Batch(inputs, batch.index),
                                        conv_pooling=conv_pooling)[1] for m in models]
            minibatch.update(per_model[reference], per_model)
    for stream in streams:
        stream.remove()
    return np.stack(minibatch.values())
