"""Selections in the URL: short, exact, and harmless when hand-edited."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.dashboard.state import decode_selection, encode_selection


@pytest.mark.parametrize("seed", range(5))
def test_any_selection_survives_the_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30_000))
    chosen = sorted(set(rng.integers(0, n, size=int(rng.integers(1, n + 1))).tolist()))
    text = encode_selection(chosen, n)
    assert decode_selection(text, n) == chosen
    assert all(ch.isalnum() or ch in "-._" for ch in text)  # no escaping needed in a query


def test_short_runs_read_as_ranges_and_lassos_stay_small() -> None:
    assert encode_selection([7, 3, 4, 5, 10, 5], 100) == "3-5.7.10"
    assert encode_selection([], 10) == "" and encode_selection(None, 10) == ""
    assert encode_selection([50, -1], 10) == ""
    # A lasso over a third of 27,000 scattered points: far below a URL's practical limit.
    rng = np.random.default_rng(0)
    lasso = np.flatnonzero(rng.random(27_000) < 0.33).tolist()
    text = encode_selection(lasso, 27_000)
    assert text.startswith("z") and len(text) < 27_000 / 8 * 1.4
    assert decode_selection(text, 27_000) == lasso


def test_hand_edited_selections_shrink_instead_of_failing() -> None:
    assert decode_selection("3-5.x.8-2.9-400", 12) == [3, 4, 5, 9, 10, 11]
    assert decode_selection("z!!!", 100) == []
    assert decode_selection("zAAAA", 0) == []
    assert decode_selection(None, 5) == []
