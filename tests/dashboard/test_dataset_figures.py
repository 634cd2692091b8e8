"""Dataset figures from a stored preview: class counts per split, and the rows table."""

from __future__ import annotations

import numpy as np

from prunescope.dashboard.figures.datasets import class_counts_figure, preview_rows
from prunescope.workers.dataset_formats import preview
from prunescope.workers.datasets import from_arrays, load_builtin


def test_class_counts_stack_train_and_test_per_class():
    data = load_builtin("digits")
    summary = preview(data)
    fig = class_counts_figure(summary["class_names"], summary["class_counts"])
    train, test = fig.data
    assert (train.name, test.name) == ("train", "test") and fig.layout.barmode == "stack"
    assert list(train.x) == list("0123456789")
    assert list(train.y) == np.bincount(data.y_train).tolist()
    assert list(test.y) == np.bincount(data.y_test).tolist()
    assert sum(train.y) + sum(test.y) == 1797


def test_preview_rows_for_a_table_and_for_texts():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = from_arrays(
        "t", kind="tabular", x=x, y=np.array([0, 1, 0, 1, 0, 1]), class_names=("no", "yes"),
        ids=np.array(list("abcdef")), split=(np.arange(4), np.arange(4, 6)),
        feature_names=("height", "weight"),
    )
    columns, rows = preview_rows(preview(data))
    assert [c["name"] for c in columns] == ["id", "class", "height", "weight"]
    assert rows[1] == {"id": "b", "class_name": "yes", "group": None, "f0": 2.0, "f1": 3.0}
    text = preview(load_builtin("english_sentences"))
    columns, rows = preview_rows(text)
    assert [c["id"] for c in columns] == ["id", "class_name", "group", "text"]
    assert rows[0]["text"] == text["examples"][0]["text"] and len(rows) == 10
