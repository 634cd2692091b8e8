"""Attention consistency figures from the analysis' arrays."""

from __future__ import annotations

import numpy as np

from dashboard.figures.attention import (
    NO_ATTENTION,
    attention_checkpoints,
    attention_rows,
    head_heatmap,
    per_layer_lines,
)


def _evaluation() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    js = rng.random((3, 4, 5)) * 0.2
    js[0] = 0.0
    return {
        "checkpoint_names": np.array(["dense", "mag-50", "mag-90"]),
        "checkpoint_roles": np.array(["dense", "pruned", "pruned"]),
        "checkpoint_methods": np.array(["dense", "magnitude_global", "magnitude_global"]),
        "sparsity": np.array([0.0, 0.5, 0.9]),
        "attention_js": js,
        "attention_topk_overlap": 1.0 - js,
        "attention_entropy_change": js - 0.1,
    }


def test_the_head_heatmap_is_one_checkpoints_layers_by_heads() -> None:
    ev = _evaluation()
    fig = head_heatmap(ev, "mag-90", "js")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), ev["attention_js"][2])
    assert len(fig.data[0].x) == 5 and len(fig.data[0].y) == 4
    change = head_heatmap(ev, "mag-50", "entropy_change").data[0]
    assert change.zmid == 0.0 and change.colorscale is not None
    assert attention_checkpoints(ev) == ["mag-50", "mag-90"]


def test_per_layer_lines_average_heads_per_checkpoint() -> None:
    ev = _evaluation()
    fig = per_layer_lines(ev, "js")
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    assert set(by_name) == {"mag-50", "mag-90"}
    np.testing.assert_allclose(by_name["mag-90"].y, ev["attention_js"][2].mean(axis=1))
    assert by_name["mag-90"].opacity > by_name["mag-50"].opacity  # sparser is darker


def test_missing_attention_says_what_to_do_and_rows_export_every_head() -> None:
    assert head_heatmap(None, "x").layout.annotations[0].text == NO_ATTENTION
    assert per_layer_lines({"checkpoint_names": np.array(["a"])}).layout.annotations[0].text \
        == NO_ATTENTION
    assert "unknown attention measure" in head_heatmap(_evaluation(), "mag-50", "nope") \
        .layout.annotations[0].text
    assert "no checkpoint named" in head_heatmap(_evaluation(), "zzz").layout.annotations[0].text
    rows = attention_rows(_evaluation(), "overlap")
    assert len(rows) == 3 * 4 * 5
    assert rows[-1] == {"checkpoint": "mag-90", "layer": 3, "head": 4,
                        "attention_topk_overlap": float(1.0 - _evaluation()["attention_js"][2,
                                                                                            3, 4])}
    assert attention_rows(None) == []


def test_probe_lines_draw_each_checkpoint_and_the_majority_floor() -> None:
    from dashboard.figures.attention import NO_PROBES, probe_lines, probe_tasks

    rng = np.random.default_rng(1)
    probing = {
        "checkpoint_names": np.array(["dense", "mag-90"]),
        "tasks": np.array(["sentence_length", "bigram_shift"]),
        "layers": np.array(["embeddings", "block 1", "block 2"]),
        "accuracy": rng.random((2, 2, 3)),
        "majority": np.array([0.2, 0.5]),
        "examples": np.array([400, 380]),
    }
    fig = probe_lines(probing, "bigram_shift", {"mag-90": "magnitude_global"})
    lines = {t.name: t for t in fig.data}
    assert set(lines) == {"dense", "mag-90", "majority class"}
    np.testing.assert_allclose(lines["mag-90"].y, probing["accuracy"][1, 1])
    assert list(lines["majority class"].y) == [0.5] * 3
    assert "380 sentences" in fig.layout.title.text
    assert probe_tasks(probing) == ["sentence_length", "bigram_shift"]
    assert probe_lines(None, "x").layout.annotations[0].text == NO_PROBES
    assert "no probing task" in probe_lines(probing, "parsing").layout.annotations[0].text
