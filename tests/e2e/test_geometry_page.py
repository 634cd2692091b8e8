"""End to end: the Geometry page of the 27,000-example digits demo in a real Chromium.

A lasso in the dense map selects the same examples in the pruned map and fills the gallery;
the selection lands in the URL, and a collaborator's fresh browser opening that URL sees the
same selection.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from prunescope.dashboard.state import decode_selection, parse_query
from tests.e2e.test_browser import (  # noqa: F401 - fixtures are used by name
    _get_json,
    _new_browser,
    _project_id,
    _wait,
    browser,
    run_demo,
)

pytestmark = pytest.mark.e2e

POINTS = """var g = document.querySelector('#{id} .js-plotly-plot');
if (!g || !g._fullData || !g._fullData.length || !g._fullData[0].x) return null;
return g._fullData[0].x.length;"""
SELECTED = """var g = document.querySelector('#{id} .js-plotly-plot');
if (!g || !g.data || !g.data.length) return null;
var s = g.data[0].selectedpoints;
return s === undefined || s === null ? null : Array.from(s);"""
PLOT_BOX = """var g = document.querySelector('#{id} .js-plotly-plot .nsewdrag');
var r = g.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];"""


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    yield from run_demo(tmp_path_factory, "digits-augmented", timeout_s=900)


def _points(driver, graph_id: str):  # noqa: ANN001, ANN202
    return driver.execute_script(POINTS.format(id=graph_id))


def _selected(driver, graph_id: str):  # noqa: ANN001, ANN202
    return driver.execute_script(SELECTED.format(id=graph_id))


def _url_selection(base: str, url: str, n: int) -> list[int]:
    """The selection a page URL holds; a long one is a short id the server resolves."""
    code = parse_query(urlsplit(url).query).get("sel")
    if code and code.startswith("v"):
        code = _get_json(f"{base}/api/v1/views/{code[1:]}")["text"]
    return decode_selection(code, n)


def _lasso(driver, graph_id: str) -> None:  # noqa: ANN001
    """Drag a lasso over the middle of a map the way a person does."""
    from selenium.webdriver.common.action_chains import ActionChains

    drag = driver.find_element("css selector", f"#{graph_id} .nsewdrag")
    left, top, width, height = driver.execute_script(PLOT_BOX.format(id=graph_id))
    path = [(0.30, 0.30), (0.70, 0.30), (0.70, 0.70), (0.30, 0.70), (0.30, 0.32)]
    # Offsets are from the element's centre.
    offsets = [(int((fx - 0.5) * width), int((fy - 0.5) * height)) for fx, fy in path]
    chain = ActionChains(driver).move_to_element_with_offset(drag, *offsets[0]).click_and_hold()
    previous = offsets[0]
    for x, y in offsets[1:]:
        chain = chain.move_by_offset(x - previous[0], y - previous[1]).pause(0.05)
        previous = (x, y)
    chain.release().perform()


def test_a_lasso_selects_in_every_view_and_a_shared_link_restores_it(big_demo, browser):  # noqa: F811
    base = big_demo["base"]
    pid = _project_id(base, "digits-augmented")
    summary = [r for r in _get_json(f"{base}/api/v1/projects/{pid}/results")["data"]
               if r["kind"] == "geometry"][-1]["summary"]
    assert summary["num_examples"] == 27_000 and summary["embedding_method"].startswith("umap")
    browser.get(f"{base}/")  # Dash registers its assets on the first visit to "/"
    browser.get(f"{base}/projects/{pid}")
    _wait(browser, lambda d: d.find_elements("id", "geometry-link"), message="link")[0].click()
    _wait(browser, lambda d: _points(d, "geometry-dense") == 27_000, timeout=60,
          message="27,000 points in the dense map")
    _wait(browser, lambda d: _points(d, "geometry-pruned") == 27_000, message="pruned map")

    _lasso(browser, "geometry-dense")
    chosen = _wait(browser, lambda d: _selected(d, "geometry-pruned"), timeout=30,
                   message="the selection reaching the pruned map")
    assert 0 < len(chosen) < 27_000
    _wait(browser, lambda d: "sel=" in d.current_url, message="selection in the URL")
    stored = _url_selection(base, browser.current_url, 27_000)
    assert chosen == stored
    # The lassoed map keeps its outline, from which Plotly derives its highlighted points
    # again on each redraw; points on the outline itself may fall either way.
    lassoed = set(_selected(browser, "geometry-dense"))
    assert len(lassoed ^ set(stored)) <= max(3, 0.005 * len(stored))
    rows = _wait(browser, lambda d: d.find_elements("css selector", ".gallery-row"),
                 message="gallery rows")
    assert len(rows) == min(48, len(chosen))
    assert browser.find_elements("css selector", "#geometry-gallery-table img")
    assert f"{len(chosen)} selected" in browser.find_element("id", "geometry-selection-count").text
    shared = browser.current_url

    other = _new_browser()  # a collaborator's fresh browser
    try:
        other.get(f"{base}/")
        other.get(shared)
        _wait(other, lambda d: _points(d, "geometry-pruned") == 27_000, timeout=60,
              message="restored maps")
        restored = _wait(other, lambda d: _selected(d, "geometry-pruned"),
                         message="restored selection")
        assert restored == chosen
        assert len(other.find_elements("css selector", ".gallery-row")) == len(rows)
    finally:
        other.quit()

    # A lasso in the pruned map replaces the selection, the dense map's included (exactly:
    # the old outline goes).
    _lasso(browser, "geometry-pruned")

    def replaced(d):  # noqa: ANN001, ANN202
        new = _url_selection(base, d.current_url, 27_000)
        return new and new != stored and _selected(d, "geometry-dense") == new

    _wait(browser, replaced, message="the new selection in the dense map")

    # Real behaviour at 80 %: magnitude pruning keeps far more examples right than random.
    accuracy = summary["accuracy"]
    names = {c["id"]: c["name"] for c in
             _get_json(f"{base}/api/v1/projects/{pid}/checkpoints")["data"]}
    by_name = {names[int(i)]: a for i, a in accuracy.items()}
    assert by_name["magnitude_global-80"] > by_name["random-80"] + 0.3
