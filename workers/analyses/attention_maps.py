"""One sentence's attention maps in every checkpoint, for the Attention page's viewer.

The analyze job reduces attention to per-head summaries and stores no maps (for 431 sentences
and 11 checkpoints they would be gigabytes). The viewer asks for one sentence at a time: this
runs that sentence through every checkpoint and keeps all layers and heads, float16 (maps are
probabilities; half precision keeps 3 significant digits, plenty for a picture).

The sentence is tokenised as the analysis tokenises it (the dense checkpoint's tokenizer, its
special tokens included) and cut at `max_tokens`: a 64 × 64 map is about as much as a heatmap
with readable token labels can show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.workers.metrics.attention import js_divergence

ProgressFn = Callable[[float, str], None]
MAX_TOKENS = 64


def sentence_attention(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[layers, heads, T, T] float32 attention of one tokenised sentence (batch of one)."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**{k: v.to(device) for k, v in inputs.items()}, output_attentions=True)
    attentions = getattr(out, "attentions", None)
    if not attentions:
        raise ValueError(f"{type(model).__name__} returns no attentions; load it with eager "
                         "attention (attn_implementation='eager')")
    return torch.stack([a[0] for a in attentions]).float().cpu()


def attention_maps(
    models: Sequence[nn.Module],
    names: Sequence[str],
    tokenizer: Any,
    text: str,
    *,
    reference: int = 0,
    max_tokens: int = MAX_TOKENS,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Every checkpoint's attention for one sentence, npz-ready.

    Returns checkpoint_names [C], text (0-d), tokens str [T], truncated (0-d bool: the
    sentence had more than `max_tokens` tokens), attention float16 [C, layers, heads, T, T]
    (rows are queries, columns keys; each row sums to 1 up to float16 rounding), and
    head_js float64 [C, layers, heads]: this sentence's Jensen–Shannon divergence (bits) from
    the reference checkpoint per head, averaged over query tokens other than the special ones
    (the analysis' own convention, `prunescope.workers.metrics.attention.query_mask`).
    """
    if not text or not text.strip():
        raise ValueError("the sentence is empty; choose another one")
    if max_tokens < 4:
        raise ValueError(f"max_tokens must be at least 4, got {max_tokens}")
    progress = progress or (lambda f, m: None)
    full = tokenizer(text, return_special_tokens_mask=True)["input_ids"]
    enc = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt",
                    return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask")[0].bool()
    inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                    "token_type_ids")}
    maps = []
    for c, model in enumerate(models):
        maps.append(sentence_attention(model.eval(), inputs))
        progress((c + 1) / len(models), f"attention of {names[c]}")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"the checkpoints' attentions differ in shape ({sorted(shapes)}); "
                         "they are not versions of one model")
    attention = torch.stack(maps)  # [C, L, H, T, T]
    queries = ~special
    if not queries.any():
        queries = torch.ones_like(special)
    js = js_divergence(attention[reference].expand_as(attention).double(), attention.double())
    head_js = js[..., queries].mean(dim=-1)
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    return {
        "checkpoint_names": np.array(list(names), dtype=np.str_),
        "text": np.array(text, dtype=np.str_),
        "tokens": np.array(tokens, dtype=np.str_),
        "truncated": np.array(len(full) > max_tokens),
        "attention": attention.numpy().astype(np.float16),
        "head_js": head_js.numpy().astype(np.float64),
    }
