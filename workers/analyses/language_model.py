"""Language-model quality of dense and pruned checkpoints: perplexity for decoders, masked-token
accuracy for encoders with their MLM head, on the same tokens for every checkpoint.

Which measure a model gets follows from its class (`lm_kind`). Both read the model's own
vocabulary logits, in length-bucketed batches (`text_batches`, workers/analyses/layers.py) padded
on the right, so padding never changes a text's numbers.

- Causal LMs: perplexity exp(Σ CE / Σ n) over every real token that has a preceding token,
  each text scored on its own (no concatenation across texts, so no token sees another text;
  the first token of a text is never a target). This is the token-weighted mean of the loss
  transformers' `labels=` computes per text.
- Masked LMs: in every text 15 % of the real, non-special tokens (at least one; [UNK] counts
  as special) are replaced by the mask token, all at once and always by the plain mask token
  (BERT's 80/10/10 replacement is a training device, not a test). Positions are drawn from a
  seeded key per (text, position), so every checkpoint is scored on the same tokens whatever
  the batching. Accuracy is the fraction of masked positions whose argmax is the original
  token; the masked-token perplexity exp(mean CE at masked positions) goes with it (all
  positions masked together, unlike Salazar et al.'s one-at-a-time pseudo-perplexity).

Texts longer than `max_length` tokens (or the model's position limit) are truncated.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunescope.workers.analyses.layers import text_batches

LM_MEASURES = {"causal": "perplexity", "masked": "masked_token_accuracy"}
MASK_FRACTION = 0.15


def _class_names(mapping: Any) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (tuple, list)) else [value])
    return names


def lm_kind(model: nn.Module) -> str | None:
    """"causal", "masked" or None: which language-model head the model carries.

    Decided by transformers' own registries of head classes (the Auto*ForCausalLM /
    AutoModelForMaskedLM mappings), matched on the model's class or the nearest transformers
    class it inherits from, so any model type transformers knows is covered without a list
    here; `config.is_decoder` is not used alone because older transformers set it False on
    every config, GPT-2's included. Rules:

    - a sequence-to-sequence class (BART's `ForConditionalGeneration`) → None: it needs
      decoder inputs, not one text;
    - a causal-LM class → "causal", except the causal heads of encoder families (model types
      that also have a masked-LM class, e.g. `BertLMHeadModel`): those attend to later tokens
      unless `config.is_decoder` is True, so they are causal only then;
    - a masked-LM class → "masked";
    - anything else (`BertModel`, classifiers, registry models) → None.
    """
    from transformers import PreTrainedModel
    from transformers.models.auto import modeling_auto as auto

    if not isinstance(model, PreTrainedModel):
        return None
    causal = _class_names(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    masked = _class_names(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    seq2seq = _class_names(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    known = causal | masked | seq2seq
    name = next((c.__name__ for c in type(model).__mro__ if c.__name__ in known), None)
    if name is None or name in seq2seq:
        return None
    model_type = getattr(model.config, "model_type", None)
    if name in causal:
        encoder_family = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
        if not encoder_family or getattr(model.config, "is_decoder", False):
            return "causal"
    return "masked" if name in masked else None


def next_token_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy (nats, float64) of every real next token: CE_t = −log softmax(z_{t−1})[x_t]
    for each position t ≥ 1 whose token and predecessor are real; flat over the batch.

    logits [B, T, V], input_ids and attention_mask [B, T]. The logits at t−1 predict x_t, as
    in transformers' `labels=` loss with padding labelled −100.
    """
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return F.cross_entropy(logits[:, :-1][valid].float(), input_ids[:, 1:][valid],
                           reduction="none").double()


def masking_keys(num_texts: int, max_length: int, seed: int = 0) -> np.ndarray:
    """Uniform random keys [num_texts, max_length] (float64) that choose the masked positions:
    `np.random.default_rng(seed).random((num_texts, max_length))`, row i for text i."""
    return np.random.default_rng(seed).random((num_texts, max_length))


def masked_positions(
    candidates: torch.Tensor, keys: torch.Tensor, fraction: float = MASK_FRACTION
) -> torch.Tensor:
    """Bool [B, T]: in each row the k = max(1, ⌊fraction·n + ½⌋) candidate positions with the
    smallest keys, n the row's candidates (none in a row without candidates).

    candidates bool [B, T] (real, non-special tokens); keys float [B, T]. Keys are distinct
    with probability 1, so the choice is a uniform draw without replacement per row.
    """
    n = candidates.sum(1, keepdim=True)
    k = torch.where(n > 0, torch.clamp(torch.floor(fraction * n + 0.5), min=1), 0)
    keyed = torch.where(candidates, keys.to(torch.float64), torch.inf)
    rank = keyed.argsort(1).argsort(1)
    return candidates & (rank < k)


def _scoring_tokenizer(tokenizer: Any) -> Any:
    """A copy padding on the right (padding then follows every real token, which is what
    keeps causal scores and mask positions independent of the batch) and with a pad token
    (GPT-style tokenizers have none; the attention mask hides it, so its id is immaterial)."""
    scoring = copy.deepcopy(tokenizer)
    scoring.padding_side = "right"
    if scoring.pad_token_id is None:
        fallback = scoring.eos_token or scoring.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no padding, end-of-text or unknown token to pad "
                             "batches with; add a pad token to its files")
        scoring.pad_token = fallback
    return scoring


def _position_limit(models: Sequence[nn.Module], max_length: int) -> int:
    limits = [getattr(m.config, "max_position_embeddings", None) for m in models]
    return min([max_length, *[int(x) for x in limits if isinstance(x, int) and x > 0]])


def common_lm_kind(models: Sequence[nn.Module]) -> str:
    """The one `lm_kind` shared by all models; ValueError when none has a head or they differ."""
    if not models:
        raise ValueError("no models to score")
    kinds = [lm_kind(m) for m in models]
    if len(set(kinds)) > 1:
        found = ", ".join(f"{type(m).__name__}: {k}" for m, k in zip(models, kinds, strict=True))
        raise ValueError(f"the models carry different language-model heads ({found}); compare "
                         "checkpoints of one architecture")
    if kinds[0] is None:
        raise ValueError(
            f"{type(models[0]).__name__} has no language-model head to score; perplexity needs "
            "a causal LM (e.g. GPT2LMHeadModel) and masked-token accuracy a masked LM (e.g. "
            "BertForMaskedLM) in config.json's `architectures`"
        )
    return kinds[0]


def language_model_quality(
    models: Sequence[nn.Module],
    texts: Sequence[str],
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    mask_fraction: float = MASK_FRACTION,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Perplexity (causal LMs) or masked-token accuracy (masked LMs) of every model on `texts`.

    All models share `tokenizer` and one `lm_kind` (ValueError otherwise, or when they have no
    LM head). Texts are tokenized once, length-bucketed in batches of `batch_size` and run
    through every model in eval mode under `torch.inference_mode`, each on its own device.
    Returns npz-ready arrays, rows in model order (the module docstring defines the measures):

    - lm_measure str (0-d): "perplexity" or "masked_token_accuracy"
    - lm_quality float64 [C]: perplexity, or the fraction of masked tokens predicted exactly
    - lm_loss float64 [C]: mean cross-entropy per scored token, in nats
    - lm_perplexity float64 [C]: exp(lm_loss) (equals lm_quality for causal models; the
      masked-token perplexity for masked ones)
    - lm_tokens int64 (0-d): tokens scored, the same for every model
    """
    kind = common_lm_kind(models)
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no texts to score the language models on")
    tokenizer = _scoring_tokenizer(tokenizer)
    if kind == "masked" and tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token, which masked-token accuracy needs")
    max_length = _position_limit(models, max_length)
    batches = text_batches(texts, None, tokenizer, batch_size=batch_size, max_length=max_length)
    keys = torch.from_numpy(masking_keys(len(texts), max_length, seed))
    devices = [next(m.parameters()).device for m in models]
    loss_sum = np.zeros(len(models))
    correct = np.zeros(len(models), dtype=np.int64)
    tokens = 0
    for model in models:
        model.eval()
    with torch.inference_mode():
        for batch in batches:
            inputs = dict(batch.inputs)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            if kind == "masked":
                masked = masked_positions(mask.bool() & ~batch.special_tokens,
                                          keys[batch.index, : ids.shape[1]], mask_fraction)
                inputs["input_ids"] = ids.masked_fill(masked, tokenizer.mask_token_id)
                targets = ids[masked]
                tokens += int(masked.sum())
            else:
                tokens += int((mask[:, 1:].bool() & mask[:, :-1].bool()).sum())
            for i, (model, device) in enumerate(zip(models, devices, strict=True)):
                _check_vocabulary(model, ids)
                logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
                if kind == "causal":
                    loss_sum[i] += float(next_token_losses(logits, ids.to(device),
                                                           mask.to(device)).sum())
                    continue
                chosen = logits[masked.to(device)].float()
                target = targets.to(device)
                loss_sum[i] += float(F.cross_entropy(chosen, target, reduction="sum").double())
                correct[i] += int((chosen.argmax(-1) == target).sum())
    if tokens == 0:
        raise ValueError(
            "the texts hold no token to score: perplexity needs texts of at least two tokens, "
            "masked-token accuracy at least one non-special token"
        )
    loss = loss_sum / tokens
    quality = np.exp(loss) if kind == "causal" else correct / tokens
    return {
        "lm_measure": np.array(LM_MEASURES[kind], dtype=np.str_),
        "lm_quality": quality.astype(np.float64),
        "lm_loss": loss.astype(np.float64),
        "lm_perplexity": np.exp(loss).astype(np.float64),
        "lm_tokens": np.array(tokens, dtype=np.int64),
    }


def _check_vocabulary(model: nn.Module, input_ids: torch.Tensor) -> None:
    size = model.get_input_embeddings().num_embeddings
    if int(input_ids.max()) >= size:
        raise ValueError(
            f"the tokenizer produces token id {int(input_ids.max())} but {type(model).__name__} "
            f"has {size} embeddings; score the model with the tokenizer it was trained with"
        )
