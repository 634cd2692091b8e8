"""Attention consistency figures from the analysis' arrays."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.dashboard.figures.attention import (
    NO_ATTENTION,
    NO_LM_HEAD,
    NO_MAPS,
    attention_checkpoints,
    attention_rows,
    attention_viewer,
    head_heatmap,
    layer_drift_lines,
    lm_quality_lines,
    method_small_multiples,
    methods_of,
    nearest,
    per_layer_lines,
    pruned_checkpoints,
    viewer_rows,
)
from prunescope.dashboard.views.attention import parse_view, sparsity_marks


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
    from prunescope.dashboard.figures.attention import NO_PROBES, probe_lines, probe_tasks

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


def _two_methods() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    names = ["dense", "m30", "m70", "w50", "n24"]
    js = rng.random((5, 3, 4)) * 0.3
    js[0] = 0.0
    return {
        "checkpoint_names": np.array(names),
        "checkpoint_roles": np.array(["dense"] + ["pruned"] * 4),
        "checkpoint_methods": np.array(["", "magnitude_global", "magnitude_global", "wanda",
                                        "wanda_2of4"]),
        "sparsity": np.array([0.0, 0.301, 0.699, 0.5, 0.5]),
        "layers": np.array(["embeddings", "block 1", "block 2"]),
        "attention_js": js,
        "attention_topk_overlap": 1.0 - js,
        "attention_entropy_change": js - 0.1,
        "cka": np.array([[1.0, 1.0, 1.0], [1.0, 0.9, 0.8], [1.0, 0.7, 0.5], [1.0, 0.8, 0.7],
                         [1.0, 0.75, 0.6]]),
    }


def test_method_and_sparsity_choose_the_nearest_checkpoint() -> None:
    ev = _two_methods()
    rows = pruned_checkpoints(ev)
    assert [(r.name, r.method, r.sparsity) for r in rows] == [
        ("m30", "magnitude_global", 30), ("m70", "magnitude_global", 70),
        ("w50", "wanda", 50), ("n24", "wanda_2of4", 50)]
    assert methods_of(rows) == ["magnitude_global", "wanda", "wanda_2of4"]
    assert nearest(rows, "magnitude_global", 45).name == "m30"
    assert nearest(rows, "magnitude_global", 50).name == "m70"  # a tie goes to the sparser
    assert nearest(rows, "magnitude_global", None).name == "m70"
    assert nearest(rows, "wanda", 90).name == "w50" and nearest(rows, "nope", 50) is None


def test_small_multiples_show_each_method_near_the_sparsity_on_one_scale() -> None:
    ev = _two_methods()
    fig = method_small_multiples(ev, 70, "js")
    assert [t.name for t in fig.data] == ["m70", "w50", "n24"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), ev["attention_js"][3])
    top = max(ev["attention_js"][[2, 3, 4]].max(), 0)
    assert all(t.zmax == pytest.approx(top) and t.zmin == 0.0 for t in fig.data)
    assert [a.text for a in fig.layout.annotations] == ["magnitude_global 70%", "wanda 50%",
                                                         "wanda_2of4 50%"]
    change = method_small_multiples(ev, 30, "entropy_change")
    assert change.data[0].zmin == -change.data[0].zmax  # centred on no change
    assert method_small_multiples(None, 50).layout.annotations[0].text == NO_ATTENTION


def _maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    raw = rng.random((2, 3, 4, 5, 5))
    attention = (raw / raw.sum(-1, keepdims=True)).astype(np.float16)
    return {"checkpoint_names": np.array(["dense", "m70"]), "tokens": np.array(
        ["[CLS]", "the", "cat", "the", "[SEP]"]), "text": np.array("the cat the"),
        "attention": attention, "head_js": rng.random((2, 3, 4)), "truncated": np.array(False)}


def test_the_viewer_draws_dense_pruned_and_their_difference_for_one_head() -> None:
    maps = _maps()
    fig = attention_viewer(maps, "m70", 1, 2)
    dense, pruned, diff = (np.asarray(t.z, dtype=float) for t in fig.data)
    np.testing.assert_array_equal(dense, maps["attention"][0, 1, 2].astype(float))
    np.testing.assert_array_equal(pruned, maps["attention"][1, 1, 2].astype(float))
    np.testing.assert_allclose(diff, pruned - dense)
    assert fig.data[2].zmin == -fig.data[2].zmax == -np.abs(diff).max()
    assert list(fig.data[0].x) == ["0:[CLS]", "1:the", "2:cat", "3:the", "4:[SEP]"]
    assert f"{maps['head_js'][1, 1, 2]:.3f}" in fig.layout.annotations[2].text
    assert attention_viewer(None, "m70", 0, 0).layout.annotations[0].text == NO_MAPS
    assert "out of range" in attention_viewer(maps, "m70", 3, 0).layout.annotations[0].text
    assert "not in these maps" in attention_viewer(maps, "w50", 0, 0).layout.annotations[0].text
    rows = viewer_rows(maps, "m70", 1, 2)
    assert len(rows) == 25 and rows[7] == {"query": "1:the", "key": "2:cat",
                                           "dense": float(maps["attention"][0, 1, 2, 1, 2]),
                                           "m70": float(maps["attention"][1, 1, 2, 1, 2])}


def test_layer_drift_and_language_model_quality_lines() -> None:
    ev = _two_methods()
    fig = layer_drift_lines(ev, "cka")
    assert [t.name for t in fig.data] == list(ev["checkpoint_names"])
    np.testing.assert_array_equal(fig.data[2].y, ev["cka"][2])
    assert fig.data[0].line.width == 4 and fig.data[2].opacity > fig.data[1].opacity
    assert "unknown drift measure" in layer_drift_lines(ev, "x").layout.annotations[0].text
    assert lm_quality_lines(ev).layout.annotations[0].text == NO_LM_HEAD
    ev = {**ev, "lm_measure": np.array("perplexity"),
          "lm_quality": np.array([20.0, 25.0, 60.0, 30.0, 90.0])}
    lines = {t.name: t for t in lm_quality_lines(ev).data}
    assert set(lines) == {"magnitude_global", "wanda", "wanda_2of4"}
    assert list(lines["magnitude_global"].y) == [20.0, 25.0, 60.0]
    assert list(lines["magnitude_global"].x) == pytest.approx([0.0, 30.1, 69.9])
    assert lm_quality_lines(ev).layout.yaxis.type == "log"


def test_attention_maps_are_found_per_sentence_and_requested_by_position(settings, tmp_path):
    from prunescope.server.db import session_scope
    from prunescope.server.errors import InvalidInput
    from prunescope.server.schemas import ProjectCreate
    from prunescope.server.services import analyses
    from prunescope.server.services import projects as project_service
    from prunescope.server.storage import artifact_store
    from prunescope.server.tables import AnalysisResult

    pid = project_service.create_project(ProjectCreate(name="p", architecture="huggingface"),
                                  settings).id
    store = artifact_store(settings)

    def add(sentence: int, value: float) -> int:
        path = tmp_path / f"maps-{sentence}-{value}.npz"
        np.savez(path, attention=np.full((1, 1, 1, 2, 2), value, dtype=np.float16))
        with session_scope(settings) as s:
            row = AnalysisResult(project_id=pid, kind="attention_maps",
                                 artifact_digest=store.put_file(path),
                                 summary={"sentence": sentence})
            s.add(row)
            s.flush()
            return row.id

    assert analyses.attention_maps(pid, 4, settings) == {"maps": None, "result_id": None}
    add(4, 0.25)
    newest = add(4, 0.5)
    add(7, 0.75)
    found = analyses.attention_maps(pid, 4, settings)
    assert found["result_id"] == newest and float(found["maps"]["attention"].max()) == 0.5
    assert not found["maps"]["attention"].flags.writeable
    job = analyses.request_attention_maps(pid, 12, settings)
    assert job.kind == "attention_maps" and job.params == {"sentence": 12}
    for bad in (-1, True, "3"):
        with pytest.raises(InvalidInput, match="non-negative integer"):
            analyses.request_attention_maps(pid, bad, settings)


def test_the_view_comes_from_the_url_with_bad_values_replaced() -> None:
    ev = _two_methods()
    view = parse_view({"method": "wanda", "sparsity": "55", "layer": "2",
                                   "head": "3", "sentence": "9", "measure": "overlap",
                                   "drift": "effective_rank", "task": "bigram_shift"}, ev, 20)
    assert view == {"measure": "overlap", "method": "wanda", "sparsity": 50, "layer": 2,
                    "head": 3, "sentence": 9, "task": "bigram_shift",
                    "drift": "effective_rank"}
    bad = parse_view({"method": "nope", "sparsity": "x", "layer": "7",
                                  "head": "-1", "sentence": "99", "measure": "?"}, ev, 20)
    assert (bad["method"], bad["sparsity"], bad["layer"], bad["head"], bad["sentence"],
            bad["measure"], bad["drift"]) == ("magnitude_global", 70, 0, 0, 19, "js", "cka")
    # An older link names the checkpoint itself.
    legacy = parse_view({"checkpoint": "m30"}, ev, 5)
    assert (legacy["method"], legacy["sparsity"]) == ("magnitude_global", 30)
    assert parse_view({}, None, 0)["method"] is None
    assert sparsity_marks(ev, "magnitude_global") == ({30: "30%", 70: "70%"}, 30, 70)
    assert sparsity_marks(ev, "nope") == ({0: "0%"}, 0, 100)
