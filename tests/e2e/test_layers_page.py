"""End to end: the Layers page of the digits demo in a real Chromium, its view kept in the URL."""

from __future__ import annotations

import pytest

from tests.e2e.test_browser import (  # noqa: F401 - fixtures are used by name
    DECODED_Z,
    _new_browser,
    _plot_data,
    _project_id,
    _wait,
    assert_the_web_process_needs_no_torch,
    browser,
    demo_server,
    run_demo,
)

pytestmark = pytest.mark.e2e

Y_TITLE = (
    "var g = document.querySelector('#{id} .js-plotly-plot');"
    "return g && g.layout && g.layout.yaxis.title ? g.layout.yaxis.title.text : null;"
)


def _lines_by_panel(driver, graph_id: str) -> dict[str, dict[str, dict]]:  # noqa: ANN001
    panels: dict[str, dict[str, dict]] = {}
    for trace in _plot_data(driver, graph_id) or []:
        panels.setdefault(trace.get("xaxis", "x"), {})[trace["name"]] = trace
    return panels


def _choose(driver, dropdown_id: str, value: str) -> None:  # noqa: ANN001
    """Pick an option the way a person does: open the dropdown, click the entry."""
    driver.find_element("id", dropdown_id).click()
    option = _wait(
        driver,
        lambda d: d.find_elements(
            "xpath",
            f"//label[contains(@class, 'dash-dropdown-option')][.//input[@value='{value}']]",
        ),
        message=f"option {value} of {dropdown_id}",
    )
    option[0].click()


def _y_title(driver, graph_id: str) -> str:  # noqa: ANN001
    return driver.execute_script(Y_TITLE.format(id=graph_id)) or ""


def test_layers_page_draws_every_layer_and_a_copied_link_reopens_the_metric(
    demo_server, browser  # noqa: F811 - the imported fixtures
):
    base = demo_server["base"]
    pid = _project_id(base)
    browser.get(f"{base}/")  # Dash registers its assets on the first visit to "/"
    _wait(browser, lambda d: d.find_elements("link text", "digits-cnn"), message="home page")
    browser.get(f"{base}/projects/{pid}")
    _wait(browser, lambda d: d.find_elements("id", "layers-link"), message="link")[0].click()
    _wait(browser, lambda d: d.current_url.endswith(f"/projects/{pid}/layers"), message="page")

    panels = _wait(
        browser,
        lambda d: (p := _lines_by_panel(d, "metric-vs-sparsity")) and len(p) == 4 and p,
        message="4 layer panels",
    )
    for lines in panels.values():
        assert set(lines) == {"magnitude_global", "random"}
        for trace in lines.values():
            assert trace["x"] == [0, 50, 80, 95]  # the dense model, then the demo's sparsities
            assert abs(trace["y"][0] - 1.0) < 1e-6  # the dense model's CKA with itself
            assert all(-1e-9 <= y <= 1 + 1e-9 for y in trace["y"])
    assert _y_title(browser, "metric-vs-sparsity") == "linear CKA to dense"
    # Real behaviour: at 95 % sparsity magnitude pruning stays closer to the dense model.
    mean_at_95 = {m: sum(p[m]["y"][-1] for p in panels.values()) / 4 for m in panels["x"]}
    assert mean_at_95["magnitude_global"] > mean_at_95["random"]

    _wait(browser, lambda d: _plot_data(d, "layer-heatmap") and
          _plot_data(d, "layer-heatmap")[0].get("type") == "heatmap", message="heatmap")
    z = browser.execute_script(DECODED_Z.format(id="layer-heatmap"))
    assert len(z) == 4 and all(len(row) == 4 for row in z)
    assert all(0.0 <= v <= 1.0 + 1e-9 for row in z for v in row)
    assert len(browser.find_elements("xpath", "//button[text()='CSV']")) == 5

    _choose(browser, "layers-metric", "procrustes")
    _wait(browser, lambda d: "metric=procrustes" in d.current_url, message="URL updated")
    _wait(browser, lambda d: _y_title(d, "metric-vs-sparsity").startswith("Procrustes"),
          message="Procrustes drawn")
    shared = browser.current_url

    other = _new_browser()  # a collaborator's fresh browser
    try:
        other.get(shared)
        restored = _wait(
            other,
            lambda d: (_y_title(d, "metric-vs-sparsity").startswith("Procrustes")
                       and _lines_by_panel(d, "metric-vs-sparsity")),
            message="restored Procrustes view",
        )
        assert len(restored) == 4
        assert all(abs(t["y"][0]) < 1e-6 for p in restored.values() for t in p.values())
        assert "Procrustes" in other.find_element("id", "layers-metric").text
    finally:
        other.quit()

    # Two pruned checkpoints against each other: not in the evaluation, computed on request.
    # Pruned at 50 % and 95 % by the same method, some layers differ, each matches itself.
    _choose(browser, "layers-rows", "magnitude_global-50")
    _choose(browser, "layers-checkpoint", "magnitude_global-95")
    _wait(browser, lambda d: "rows=magnitude_global-50" in d.current_url, message="rows in URL")
    button = _wait(browser, lambda d: [b for b in d.find_elements("id", "layers-compute-pair")
                                       if b.is_displayed()], message="compute button")[0]
    browser.find_element("id", "layers-title").click()  # a click outside closes the open list
    button.click()
    _wait(browser, lambda d: "queued" in d.find_element("id", "layers-pair-message").text,
          message="job queued")
    _wait(browser, lambda d: _y_title(d, "layer-heatmap") == "layer of magnitude_global-50",
          timeout=180, message="the pair's heatmap")
    pair = browser.execute_script(DECODED_Z.format(id="layer-heatmap"))
    assert len(pair) == 4 and all(0.0 <= v <= 1.0 + 1e-9 for row in pair for v in row)
    assert not browser.find_element("id", "layers-compute-pair").is_displayed()


@pytest.fixture(scope="module")
def minilm_server(tmp_path_factory):
    # Ten MiniLM checkpoints, their probes and one sentence's maps: a few minutes of jobs.
    yield from run_demo(tmp_path_factory, "minilm-sentences", timeout_s=1200)


MINILM_METHODS = {"magnitude_global", "wanda", "magnitude_2of4", "wanda_2of4"}


def test_the_real_minilm_drifts_most_in_its_top_layer(minilm_server, browser):  # noqa: F811
    """Movva & Zhao's first claim, on the real all-MiniLM-L6-v2 pruned by global magnitude."""
    base = minilm_server["base"]
    pid = _project_id(base, "minilm-sentences")
    browser.get(f"{base}/")
    browser.get(f"{base}/projects/{pid}/layers")
    panels = _wait(
        browser,
        lambda d: (p := _lines_by_panel(d, "metric-vs-sparsity")) and len(p) == 7 and p,
        message="7 layer panels (embeddings and 6 blocks)",
    )
    order = sorted(panels, key=lambda axis: int(axis[1:] or 1))  # x, x2, …, x7: layer order
    for axis in order:
        assert set(panels[axis]) == MINILM_METHODS
        assert [round(x) for x in panels[axis]["magnitude_global"]["x"]] == [0, 30, 50, 70, 90]
        assert [round(x) for x in panels[axis]["wanda_2of4"]["x"]] == [0, 50]
    at_90 = [panels[axis]["magnitude_global"]["y"][-1] for axis in order]
    assert at_90[0] > 0.999  # embeddings are not pruned (only linear layers are)
    blocks = at_90[1:]
    assert blocks[-1] == min(blocks), f"CKA to dense per block at 90 %: {blocks}"


def _heatmaps(driver, graph_id: str) -> list[dict]:  # noqa: ANN001
    return [t for t in _plot_data(driver, graph_id) or [] if t.get("type") == "heatmap"]


def test_the_attention_page_compares_heads_methods_and_one_sentence_from_the_url(
    minilm_server, browser  # noqa: F811
):
    base = minilm_server["base"]
    pid = _project_id(base, "minilm-sentences")
    browser.get(f"{base}/")
    browser.get(f"{base}/projects/{pid}/attention?measure=js&method=magnitude_global"
                f"&sparsity=90&layer=5&head=7&sentence=0")
    lines = _wait(browser, lambda d: (data := _plot_data(d, "attention-lines")) and len(data) == 9
                  and data, message="9 attention lines (one per pruned checkpoint)")
    mean_js = {t["name"].split(" ")[0]: sum(t["y"]) / len(t["y"]) for t in lines}
    assert all(0.0 < v < 1.0 for v in mean_js.values())
    assert mean_js["magnitude_global-90"] > mean_js["magnitude_global-30"]
    _wait(browser, lambda d: _heatmaps(d, "attention-heads"), message="head heatmap")
    z = browser.execute_script(DECODED_Z.format(id="attention-heads"))
    assert len(z) == 6 and all(len(row) == 12 for row in z)
    assert "magnitude_global-90" in browser.find_element("id", "attention-checkpoint").text
    # Small multiples: every method at its checkpoint nearest 90 %.
    panels = _wait(browser, lambda d: len(h := _heatmaps(d, "attention-methods")) == 4 and h,
                   message="one heatmap per method")
    assert {t["name"] for t in panels} == {"magnitude_global-90", "wanda-90",
                                           "magnitude_2of4-50", "wanda_2of4-50"}
    # The demo computed sentence 0's maps: dense, pruned and their difference for head 5/7.
    viewer = _wait(browser, lambda d: len(h := _heatmaps(d, "attention-viewer")) == 3 and h,
                   message="the sentence viewer")
    tokens = viewer[0]["x"]
    assert tokens[0] == "0:[CLS]" and tokens[-1].endswith(":[SEP]")
    assert not browser.find_element("id", "attention-show").is_displayed()

    # Another method and sentence: the slider follows the method; the maps are computed on
    # request and the view is kept in the URL.
    _choose(browser, "attention-method", "wanda_2of4")
    _wait(browser, lambda d: "method=wanda_2of4" in d.current_url and "sparsity=50" in
          d.current_url, message="method and sparsity in the URL")
    _choose(browser, "attention-sentence", "2")
    _wait(browser, lambda d: "sentence=2" in d.current_url, message="sentence in the URL")
    button = _wait(browser, lambda d: [b for b in d.find_elements("id", "attention-show")
                                       if b.is_displayed()], message="show button")[0]
    browser.find_element("id", "attention-title").click()
    button.click()
    _wait(browser, lambda d: "#" in d.find_element("id", "attention-maps-message").text,
          message="maps job queued")
    _wait(browser, lambda d: len(_heatmaps(d, "attention-viewer")) == 3
          and not d.find_element("id", "attention-show").is_displayed(), timeout=180,
          message="sentence 2's maps")
    dense = browser.execute_script(DECODED_Z.format(id="attention-viewer"))
    assert all(abs(sum(row) - 1.0) < 0.02 for row in dense)  # rows are distributions
    shared = browser.current_url
    assert all(f"{k}=" in shared for k in ("method", "sparsity", "layer", "head", "sentence"))

    other = _new_browser()
    try:
        other.get(shared)
        restored = _wait(other, lambda d: len(h := _heatmaps(d, "attention-viewer")) == 3 and h,
                         message="restored viewer")
        assert restored[0]["x"] == browser.execute_script(
            "return document.querySelector('#attention-viewer .js-plotly-plot')"
            "._fullData[0].x;")
        assert "layer 5, head 7" in other.execute_script(
            "return document.querySelector('#attention-viewer .js-plotly-plot')"
            ".layout.title.text;")
    finally:
        other.quit()

    # The demo ran the probes: one line per checkpoint and the majority-class floor.
    probes = _wait(browser, lambda d: (data := _plot_data(d, "attention-probes"))
                   and len(data) == 11 and data, message="probe lines")
    assert probes[-1]["name"] == "majority class"


def test_the_web_process_serves_every_minilm_page_and_read_without_torch(
    minilm_server, browser  # noqa: F811 - the imported fixtures
):
    # The Attention page lists the sentences from stored results, never from the dataset.
    assert_the_web_process_needs_no_torch(minilm_server, browser, ["minilm-sentences"])
