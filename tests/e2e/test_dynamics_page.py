"""End to end: the Dynamics page of the digits-dynamics demo in a real Chromium.

Twelve recorded training runs (dense and gradual magnitude pruning to 50/80/95 %, three seeds
each) and their dynamics analysis; the page draws the probe suites' loss curves, the data map,
PIEs against sparsity and the galleries, and a lasso on the data map lands in the URL that a
collaborator's browser restores.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from prunescope.dashboard.state import decode_selection, parse_query
from tests.e2e.test_browser import (  # noqa: F401 - fixtures are used by name
    _get_json,
    _new_browser,
    _plot_data,
    _project_id,
    _wait,
    browser,
    run_demo,
)
from tests.e2e.test_geometry_page import _lasso

pytestmark = pytest.mark.e2e

TRACE_POINTS = """var g = document.querySelector('#{id} .js-plotly-plot');
if (!g || !g._fullData) return null;
return g._fullData.map(function (t) {{ return t.x ? t.x.length : 0; }});"""


@pytest.fixture(scope="module")
def dynamics_demo(tmp_path_factory):
    yield from run_demo(tmp_path_factory, "digits-dynamics", timeout_s=900)


def test_the_dynamics_page_draws_the_runs_and_a_lasso_is_shared_by_url(dynamics_demo, browser):  # noqa: F811
    base = dynamics_demo["base"]
    pid = _project_id(base, "digits-dynamics")
    runs = [r for r in _get_json(f"{base}/api/v1/projects/{pid}/results")["data"]
            if r["kind"] == "dynamics_run"]
    assert len(runs) == 12
    browser.get(f"{base}/")
    browser.get(f"{base}/projects/{pid}")
    _wait(browser, lambda d: d.find_elements("id", "dynamics-link"), message="link")[0].click()
    _wait(browser, lambda d: d.current_url.endswith(f"/projects/{pid}/dynamics"), message="page")

    # PIE fraction against sparsity: one gmp line through 50/80/95 %.
    lines = _wait(browser, lambda d: _plot_data(d, "dynamics-pie-fraction"),
                  message="PIE fraction figure")
    gmp = next(t for t in lines if "gmp" in t["name"])
    assert [round(x) for x in gmp["x"]] == [50, 80, 95]
    assert all(0.0 <= y <= 100.0 for y in gmp["y"])  # percent of the test examples
    # The data map holds every training example once (one trace per MAP-D category).
    counts = _wait(browser, lambda d: d.execute_script(TRACE_POINTS.format(id="dynamics-map")),
                   message="data map")
    dynamics = next(r for r in _get_json(f"{base}/api/v1/projects/{pid}/results")["data"]
                    if r["kind"] == "dynamics")
    assert dynamics["summary"]["runs"] == sorted(r["summary"]["run"] for r in runs)
    assert sum(counts) == 1347  # the digits training split
    suites = _wait(browser, lambda d: _plot_data(d, "dynamics-suites"), message="suite curves")
    means = {(t["meta"]["side"], t["meta"]["category"]): t["y"] for t in suites
             if (t.get("meta") or {}).get("stat") == "mean"}
    # Real behaviour: the dense runs never fit the flipped labels as they fit typical ones.
    assert means[("dense", "mislabeled")][-1] > 5 * means[("dense", "typical")][-1]

    _lasso(browser, "dynamics-map")
    _wait(browser, lambda d: "sel=" in d.current_url, timeout=30, message="selection in URL")
    chosen = decode_selection(parse_query(urlsplit(browser.current_url).query)["sel"], 1347)
    assert chosen
    rows = _wait(browser, lambda d: d.find_elements("css selector",
                                                    "#dynamics-gallery-table tbody tr"),
                 message="gallery rows")
    assert len(rows) == min(len(chosen), 48)
    assert browser.find_elements("css selector", "#dynamics-gallery-table img")
    shared = browser.current_url

    other = _new_browser()
    try:
        other.get(shared)
        restored = _wait(other, lambda d: d.find_elements(
            "css selector", "#dynamics-gallery-table tbody tr"), message="restored gallery")
        assert len(restored) == len(rows)
        assert f"{len(chosen)} selected" in other.find_element(
            "id", "dynamics-selection-count").text
    finally:
        other.quit()
