"""Evaluate checkpoints: accuracy, predictions and every layer statistic, in one pass.

All checkpoints are loaded together and every evaluation batch goes through each of them
once (`compare_layers`, workers/analyses/layers.py): the logits give predictions and accuracy,
the pooled layer outputs fold into exact streaming moments against the dense model, from
which come per-layer CKA (the full layer × layer matrix and its diagonal), SVCCA, PWCCA,
Procrustes distance and representation complexity. Image and tabular datasets feed registry
models; text datasets feed Hugging Face models through their own tokenizer, in
length-bucketed batches. Hugging Face models with a language-model head are also scored as
language models on the test texts (workers/analyses/language_model.py): perplexity for causal
LMs, masked-token accuracy for masked LMs.

Keeping every checkpoint in memory at once is what makes one pass possible; at the sizes a
single worker compares (up to a few hundred million parameters in all) that is the cheaper
side of the trade.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.models import hf
from prunescope.models.checkpoints import CheckpointError, load_model
from prunescope.models.sparsity import checkpoint_stats, prunable_parameter_names
from prunescope.workers.analyses.language_model import language_model_quality, lm_kind
from prunescope.workers.analyses.layers import (
    Batch,
    compare_layers,
    is_token_model,
    layer_features,
    tensor_batches,
    text_batches,
)
from prunescope.workers.datasets import ClassificationData, as_model_input, check_model_fits
from prunescope.workers.device import (
    fill_device_batch_size,
    peak_memory_probe,
    pick_device,
    to_device,
)
from prunescope.workers.jobspec import CheckpointRef, JobInputError

ProgressFn = Callable[[float, str], None]
TEXT_BATCH_SIZE = 32


def _no_progress(fraction: float, message: str) -> None:
    pass


def load_checkpoint(architecture: str, config: Mapping[str, Any], ref: CheckpointRef) -> nn.Module:
    """A job's checkpoint as a model; an unusable file becomes a JobInputError naming it."""
    try:
        return load_model(architecture, config, ref.path, assets_path=ref.assets_path)
    except CheckpointError as exc:
        raise JobInputError(f"checkpoint {ref.name!r} (id {ref.id}) cannot be used: {exc}") from exc


def dense_checkpoint(checkpoints: Sequence[CheckpointRef]) -> CheckpointRef:
    """The one checkpoint with role "dense" (JobInputError otherwise; ids must not repeat)."""
    dense = [c for c in checkpoints if c.role == "dense"]
    if len(dense) != 1:
        found = ", ".join(repr(c.name) for c in dense) or "none"
        raise JobInputError(
            "evaluation compares every checkpoint with exactly one dense checkpoint; found "
            f"{len(dense)} ({found}). Upload or train one dense checkpoint for the project"
        )
    ids = [c.id for c in checkpoints]
    if len(set(ids)) != len(ids):
        raise JobInputError(f"checkpoint ids repeat in the evaluation request: {ids}")
    return dense[0]


def tokenizer_of(dense: CheckpointRef) -> Any:
    """The tokenizer stored with a Hugging Face checkpoint (its assets zip).

    Decoder tokenizers (GPT-2's) often have no padding token; batches need one, so it is set
    to the end-of-sequence token there. Padding is masked out everywhere it is read.
    """
    from transformers import AutoTokenizer

    if dense.assets_path is None:
        raise JobInputError(
            f"checkpoint {dense.name!r} has no tokenizer files; upload the dense model as a "
            "folder archive with its tokenizer"
        )
    with tempfile.TemporaryDirectory() as folder:
        hf.extract_assets(dense.assets_path, Path(folder))
        if not hf.has_tokenizer(Path(folder)):
            raise JobInputError(f"checkpoint {dense.name!r} was uploaded without tokenizer files")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def evaluation_batches(
    model: nn.Module,
    data: ClassificationData,
    dense: CheckpointRef,
    *,
    batch_size: int,
    max_length: int = 128,
    tokenizer: Any | None = None,
) -> list[Any]:
    """The test split as model batches: token batches for text models, tensors otherwise.

    Text models use `tokenizer`, else the one stored with `dense` (`tokenizer_of`).
    """
    if is_token_model(model):
        if data.texts_test is None:
            raise JobInputError(
                f"dataset {data.name!r} has no text; a Transformer project needs a text dataset "
                "(the builtin english_sentences, or an upload with a text column)"
            )
        # Length bucketing pays off with batches of tens of sentences: a batch of 256 mixes
        # lengths again and pads them to its longest.
        return text_batches(list(data.texts_test), data.y_test, tokenizer or tokenizer_of(dense),
                            batch_size=min(batch_size, TEXT_BATCH_SIZE), max_length=max_length)
    if data.texts_test is not None:
        raise JobInputError(
            f"dataset {data.name!r} holds text, which {type(model).__name__} cannot read; "
            "choose an image or tabular dataset for this project"
        )
    check_model_fits(model, data)
    return tensor_batches(as_model_input(data.x_test, model.input_shape), data.y_test,
                          batch_size)


def _device_filling_batch_size(models: Sequence[nn.Module], reference: int,
                               data: ClassificationData, batch_size: int) -> int:
    """On a GPU, the batch that fills it (`fill_device_batch_size`): one probe batch through
    the reference model with its layers captured, times the number of models that run on each
    batch; `batch_size` on the CPU or when the probe cannot run."""
    device = pick_device()
    if device.type != "cuda":
        return batch_size
    model = models[reference]
    x = as_model_input(data.x_test, model.input_shape)

    def run(n: int) -> None:
        (probe,) = tensor_batches(x[:n], None, n)
        with torch.inference_mode():
            layer_features(model, Batch(to_device(probe.inputs, device), probe.index))

    try:
        model.to(device)
        per_model = peak_memory_probe(device, run)
        size = fill_device_batch_size(device, batch_size,
                                      lambda n: per_model(n) * len(models))
    except (RuntimeError, ValueError):  # out of memory, or an input the probe cannot make
        size = batch_size
    finally:
        model.to("cpu")
    return size


def transformer_body(model: nn.Module) -> nn.Module:
    """A language model's Transformer without its vocabulary head, for `compare_layers`.

    The body returns the same hidden states and attentions as the whole model (transformers'
    LM classes take them from `base_model`) but no per-token vocabulary logits: those are no
    class predictions, and computing them a second time for every batch would cost a
    [batch, tokens, vocabulary] tensor per model. The body keeps the model's layer names.
    """
    body = model.base_model
    body.analysis_layers = model.analysis_layers
    return body


def evaluate_checkpoints(
    architecture: str,
    config: Mapping[str, Any],
    checkpoints: Sequence[CheckpointRef],
    data: ClassificationData,
    *,
    batch_size: int = 256,
    conv_pooling: str = "mean",
    reference_id: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Accuracy, predictions and the layer statistics of every checkpoint against a reference.

    The reference is the checkpoint with id `reference_id` when given (layer × layer matrices
    between any two checkpoints), else the one checkpoint with role "dense" (JobInputError
    if there is not exactly one).
    Returns arrays ready for `np.savez` (no object arrays), rows in the order of `checkpoints`:

    - checkpoint_ids int64 [C], checkpoint_names, checkpoint_roles, checkpoint_methods str [C]
    - reference_id int64 (0-d): the id of the checkpoint the layer statistics compare with
    - sparsity float64 [C]: measured sparsity over the prunable weights
    - accuracy float64 [C]: top-1 test accuracy (NaN for models without a classifier head)
    - predictions int64 [C, N] (−1 without logits); labels int64 [N]
    - layers str [L]; cka float64 [C, L]: linear CKA with the dense model, same layer
    - Hugging Face models with a language-model head (`language_model.lm_kind`), scored on the
      test texts (`language_model.language_model_quality`): lm_measure str (0-d, "perplexity"
      or "masked_token_accuracy"), lm_quality, lm_loss (mean cross-entropy, nats),
      lm_perplexity float64 [C], lm_tokens int64 (0-d); absent for models without one. Their
      layers are compared through the Transformer body (`transformer_body`), so predictions
      are −1 and accuracy NaN: vocabulary logits are no class predictions
    - everything `compare_layers` returns, under its names (cka_layers is its full
      [C, L, L] matrix, stored under "cka_layers" since "cka" keeps the diagonal)
    """
    progress = progress or _no_progress
    if reference_id is None:
        dense_ref = dense_checkpoint(checkpoints)
    else:
        found = [c for c in checkpoints if c.id == reference_id]
        if not found:
            raise JobInputError(
                f"reference checkpoint {reference_id} is not among the checkpoints analysed "
                f"({[c.id for c in checkpoints]}); include it in checkpoint_ids"
            )
        dense_ref = found[0]
    models = []
    for i, ref in enumerate(checkpoints):
        progress(0.05 * i / len(checkpoints), f"loading {ref.name!r}")
        models.append(load_checkpoint(architecture, config, ref))
    reference = checkpoints.index(dense_ref)
    token_model = is_token_model(models[reference])
    tokenizer = tokenizer_of(dense_ref) if token_model and data.texts_test is not None else None
    if not token_model:  # text batches stay small: length bucketing needs them so
        batch_size = _device_filling_batch_size(models, reference, data, batch_size)
    batches = evaluation_batches(models[reference], data, dense_ref, batch_size=batch_size,
                                 tokenizer=tokenizer)
    sparsity = np.array([
        checkpoint_stats(m.state_dict(), prunable_parameter_names(m))["sparsity"] for m in models
    ])
    language_model: dict[str, np.ndarray] = {}
    if token_model and lm_kind(models[reference]) is not None:
        progress(0.05, "scoring the checkpoints as language models")
        device = pick_device()
        try:
            language_model = language_model_quality(
                [m.to(device) for m in models], list(data.texts_test), tokenizer,
                batch_size=min(batch_size, TEXT_BATCH_SIZE),
            )
        except ValueError as exc:
            raise JobInputError(f"the checkpoints cannot be scored as language models: {exc}"
                                ) from exc
        models = [transformer_body(m) for m in models]
    try:
        out = compare_layers(
            models, batches, data.num_test, reference=reference,
            names=[c.name for c in checkpoints], conv_pooling=conv_pooling,
            attention=is_token_model(models[reference]),
            progress=lambda f, msg: progress(0.05 + 0.95 * f, msg),
        )
    except ValueError as exc:
        raise JobInputError(f"the checkpoints cannot be compared layer by layer: {exc}") from exc
    finally:
        del models
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    has_logits = (out["predictions"] >= 0).all(axis=1)
    accuracy = np.where(has_logits, (out["predictions"] == out["labels"][None, :]).mean(1), np.nan)
    out["cka_layers"] = out.pop("cka")
    return {
        "checkpoint_ids": np.array([c.id for c in checkpoints], dtype=np.int64),
        "reference_id": np.array(dense_ref.id, dtype=np.int64),
        "checkpoint_names": np.array([c.name for c in checkpoints], dtype=np.str_),
        "checkpoint_roles": np.array([c.role for c in checkpoints], dtype=np.str_),
        "checkpoint_methods": np.array([c.method or "" for c in checkpoints], dtype=np.str_),
        "sparsity": sparsity.astype(np.float64),
        "accuracy": accuracy.astype(np.float64),
        "cka": out["cka_diag"],
        **out,
        **language_model,
    }
