"""Dataset uploads: every format read from real files, the canonical npz, previews, bad input."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from prunescope.models.registry import create_model
from prunescope.workers.dataset_formats import (
    ColumnNames,
    DatasetFormatError,
    DatasetLimits,
    detect_format,
    preview,
    read_dataset_file,
)
from prunescope.workers.datasets import (
    ModelInput,
    check_data_fits,
    english_sentences_table,
    load_builtin,
    load_canonical,
    model_input,
    save_canonical,
    with_num_classes,
)
from prunescope.workers.jobspec import JobInputError

DIGITS = load_digits()
X = (DIGITS.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), as the builtin
Y = DIGITS.target.astype(np.int64)


def _read(path: Path, **kwargs):  # noqa: ANN202
    return read_dataset_file(path, name="upload", filename=path.name, **kwargs)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def _digit_pixels(i: int) -> np.ndarray:
    return np.round(X[i, 0] * 255).astype(np.uint8)


def _digits_csv(path: Path, rows: range, *, extra: dict[str, list] | None = None) -> Path:
    extra = extra or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*(f"p{j}" for j in range(64)), "label", *extra])
        for k, i in enumerate(rows):
            writer.writerow([*X[i].ravel().tolist(), int(Y[i]), *(v[k] for v in extra.values())])
    return path


# ------------------------------------------------------------------------------ formats


def test_an_npz_copy_of_digits_gets_exactly_the_builtin_split(tmp_path):
    np.savez(tmp_path / "digits.npz", x=X, y=Y)
    loaded = _read(tmp_path / "digits.npz")
    builtin = load_builtin("digits")
    assert loaded.format == "npz" and loaded.split_rule == "stratified"
    data = loaded.data
    assert data.kind == "image" and data.input_shape == (1, 8, 8)
    for key in ("x_train", "x_test", "y_train", "y_test"):
        np.testing.assert_array_equal(getattr(data, key), getattr(builtin, key))
    assert data.class_names == builtin.class_names and data.num_classes == 10


def test_npz_optional_arrays_ids_groups_split_and_class_names(tmp_path):
    n = 40
    labels = np.array(["dog", "cat", "emu", "cat"] * 10)
    ids = np.array([f"ex-{i}" for i in range(n)])
    split = np.array(["train", "Test "] * 20)  # case and spaces are forgiven
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    np.savez(tmp_path / "d.npz", x=x, y=labels, ids=ids, group=np.arange(n) % 4, split=split)
    loaded = _read(tmp_path / "d.npz")
    data = loaded.data
    assert loaded.split_rule == "given" and data.kind == "tabular"
    assert data.class_names == ("cat", "dog", "emu")  # strings are numbered in sorted order
    assert data.num_train == data.num_test == 20
    # Examples keep their order within each split and their ids, groups and labels travel along.
    np.testing.assert_array_equal(data.ids_test, ids[1::2])
    np.testing.assert_array_equal(data.x_test[:, 0], x[1::2, 0])
    np.testing.assert_array_equal(data.groups_train, (np.arange(0, n, 2) % 4).astype(str))
    np.testing.assert_array_equal(
        np.array(data.class_names)[data.y_train], labels[0::2]
    )
    np.savez(tmp_path / "named.npz", x=x, y=np.arange(n) % 3, class_names=np.array(["a", "b", "c"]))
    assert _read(tmp_path / "named.npz").data.class_names == ("a", "b", "c")


def test_an_image_folder_zip_of_png_and_jpeg(tmp_path):
    members = {}
    for i in range(60):
        cls = ["zero", "one", "two"][Y[i] % 3]
        fmt, encode = (("png", _png), ("jpg", _jpeg))[i % 2]
        members[f"digits/{cls}/{i:03d}.{fmt}"] = encode(_digit_pixels(i))
    members["digits/.DS_Store"] = b"\0\0\0\1Bud1"  # archiver litter is skipped
    members["__MACOSX/digits/._000.png"] = b"\0\5\26\7"
    loaded = _read(_zip(tmp_path / "digits.zip", members))
    data = loaded.data
    assert loaded.format == "image_zip" and data.kind == "image"
    assert data.class_names == ("one", "two", "zero") and data.input_shape == (1, 8, 8)
    assert data.num_train + data.num_test == 60
    ids = np.concatenate([data.ids_train, data.ids_test])
    x = np.concatenate([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    for example_id, pixels, label in zip(ids, x, y, strict=True):
        cls, file = example_id.split("/")
        i = int(file[:3])
        assert data.class_names[label] == cls
        expected = _digit_pixels(i) / 255.0
        if file.endswith(".png"):  # lossless: exactly the pixels that were written
            np.testing.assert_array_equal(pixels[0], expected.astype(np.float32))
        else:  # JPEG is lossy; an 8×8 block at quality 95 stays close
            assert np.abs(pixels[0] - expected).mean() < 0.05
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0


def test_colour_images_become_rgb_and_train_test_folders_give_the_split(tmp_path):
    rng = np.random.default_rng(0)
    members = {}
    for split, count in (("train", 6), ("test", 2)):
        for cls in ("red", "blue"):
            for k in range(count):
                pixels = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
                members[f"{split}/{cls}/{k}.png"] = _png(pixels)
    members["train/red/grey.png"] = _png(np.full((5, 7), 200, dtype=np.uint8))
    loaded = _read(_zip(tmp_path / "colours.zip", members))
    data = loaded.data
    assert loaded.split_rule == "given" and (data.num_train, data.num_test) == (13, 4)
    assert data.input_shape == (3, 5, 7)  # one colour image makes all of them RGB
    grey = list(data.ids_train).index("train/red/grey.png")
    np.testing.assert_allclose(data.x_train[grey], 200 / 255, rtol=1e-6)


def test_csv_jsonl_and_parquet_of_the_same_table_agree(tmp_path):
    rows = range(0, 1797, 7)
    ids = [f"d{i}" for i in rows]
    by_csv = _read(_digits_csv(tmp_path / "t.csv", rows, extra={"id": ids})).data
    with open(tmp_path / "t.jsonl", "w") as f:
        for i in rows:
            record = {f"p{j}": float(v) for j, v in enumerate(X[i].ravel())}
            f.write(json.dumps({**record, "label": int(Y[i]), "id": f"d{i}"}) + "\n")
    by_jsonl = _read(tmp_path / "t.jsonl").data
    table = {f"p{j}": X[list(rows)].reshape(len(rows), 64)[:, j] for j in range(64)}
    pq.write_table(pa.table({**table, "label": Y[list(rows)], "id": ids}), tmp_path / "t.parquet")
    by_parquet = _read(tmp_path / "t.parquet").data
    for data in (by_csv, by_jsonl, by_parquet):
        assert data.kind == "tabular" and data.input_shape == (64,)
        assert data.feature_names == tuple(f"p{j}" for j in range(64))
        np.testing.assert_array_equal(data.x_test, by_csv.x_test)
        np.testing.assert_array_equal(data.ids_train, by_csv.ids_train)
    # Row i of the file is digit i: features and label travel together through the split.
    position = {f"d{i}": i for i in rows}
    for example_id, features, label in zip(by_csv.ids_test, by_csv.x_test, by_csv.y_test,
                                           strict=True):
        np.testing.assert_array_equal(features, X[position[example_id]].ravel())
        assert label == Y[position[example_id]]


def test_a_text_csv_keeps_quotes_commas_and_newlines(tmp_path):
    texts = ['He said "no", then left.', "Line one\nline two", "plain", "ünïcödé ✓"] * 5
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "group"])
        for k, text in enumerate(texts):
            writer.writerow([text, ["bad", "good"][k % 2], f"g{k % 3}"])
    data = _read(tmp_path / "reviews.csv").data
    assert data.kind == "text" and data.input_shape == (0,) and data.class_names == ("bad", "good")
    assert sorted(np.concatenate([data.texts_train, data.texts_test]).tolist()) == sorted(texts)
    assert data.texts_train.dtype.kind == "U" and data.x_train.shape == (data.num_train, 0)


def test_configured_column_names(tmp_path):
    rows = [f"{k},{k * 2},{k % 2},{'test' if k < 3 else 'train'}\n" for k in range(10)]
    (tmp_path / "t.csv").write_text("a,b,klasse,fold\n" + "".join(rows))
    columns = ColumnNames(label="klasse", split="fold")
    data = _read(tmp_path / "t.csv", columns=columns).data
    assert data.feature_names == ("a", "b") and data.num_test == 3
    np.testing.assert_array_equal(data.x_test[:, 0], [0, 1, 2])


def test_english_sentences_builtin():
    sentences, labels, topics = english_sentences_table()
    assert (sentences, labels, topics) == english_sentences_table()  # deterministic
    assert len(sentences) > 1000 and len(set(sentences)) == len(sentences)
    assert all(5 <= len(s.split()) <= 40 and s[0].isupper() and s[-1] in ".!?" for s in sentences)
    from pydoc_data.topics import topics as help_topics

    # Each label is the index of the help topic whose text holds the sentence.
    for sentence, label in list(zip(sentences, labels, strict=True))[::97]:
        assert sentence.split()[-1].rstrip(".!?") in help_topics[topics[label]]
        assert " ".join(sentence.split()[:3]) in " ".join(help_topics[topics[label]].split())
    data = load_builtin("english_sentences")
    assert data.kind == "text" and data.num_classes == len(topics)
    assert data.num_train + data.num_test == len(sentences)
    assert (np.bincount(data.y_test, minlength=data.num_classes) > 0).all()  # stratified
    np.testing.assert_array_equal(data.groups_test, np.array(topics)[data.y_test])


# ------------------------------------------------------------------ canonical npz, preview


@pytest.mark.parametrize("builtin", ["digits", "english_sentences"])
def test_the_canonical_npz_round_trips_without_object_arrays(tmp_path, builtin):
    data = load_builtin(builtin)
    save_canonical(data, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert all(z[k].dtype.kind in "iufU" for k in z.files)
    again = load_canonical(tmp_path / "c.npz", builtin)
    for field in ("x_train", "y_train", "x_test", "y_test", "texts_test", "ids_train",
                  "groups_test"):
        a, b = getattr(data, field), getattr(again, field)
        assert (a is None and b is None) or np.array_equal(a, b), field
    assert (again.kind, again.class_names, again.input_shape) == (
        data.kind, data.class_names, data.input_shape
    )


def test_a_corrupt_canonical_file_is_a_job_input_error(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros(3))
    with pytest.raises(JobInputError, match="upload the dataset again"):
        load_canonical(tmp_path / "c.npz", "mine")


def test_preview_thumbnails_decode_to_the_examples(tmp_path):
    np.savez(tmp_path / "digits.npz", x=X, y=Y)
    loaded = _read(tmp_path / "digits.npz")
    summary = json.loads(json.dumps(preview(loaded.data, loaded.split_rule)))  # JSON-able
    assert summary["num_train"] == 1347 and summary["num_test"] == 450
    assert sum(summary["class_counts"]["test"]) == 450
    assert summary["class_counts"]["train"] == np.bincount(loaded.data.y_train).tolist()
    examples = summary["examples"]
    assert len(examples) == 24 and {e["label"] for e in examples} == set(range(10))
    first = examples[0]
    png = base64.b64decode(first["image"].removeprefix("data:image/png;base64,"))
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    index = int(np.flatnonzero(loaded.data.y_train == first["label"])[0])
    np.testing.assert_array_equal(pixels, np.round(loaded.data.x_train[index, 0] * 255))


def test_preview_rows_for_tables_and_texts(tmp_path):
    data = _read(_digits_csv(tmp_path / "t.csv", range(50))).data
    summary = preview(data)
    assert len(summary["examples"]) == 10 and summary["num_features"] == 64
    assert summary["examples"][0]["values"] == pytest.approx(data.x_train[0, :16].tolist())
    text = preview(load_builtin("english_sentences"))
    assert text["examples"][0]["text"] and text["num_groups"] == text["num_classes"]


# ------------------------------------------------------------- fitting the architecture


def test_data_is_checked_against_the_model_it_will_feed(tmp_path):
    tabular = _read(_digits_csv(tmp_path / "t.csv", range(100))).data
    check_data_fits(tabular, model_input(create_model("mlp")))
    check_data_fits(tabular, model_input(create_model("cnn_small")))  # 64 values → 1×8×8
    with pytest.raises(JobInputError, match=r"\(64,\) \(64 values\).*\(32,\) \(32 values\)"):
        check_data_fits(tabular, model_input(create_model("mlp", in_features=32)))
    with pytest.raises(JobInputError, match="labels from 0 to 9.*6 outputs.*num_classes=10"):
        check_data_fits(tabular, model_input(create_model("mlp", num_classes=6)))
    text = load_builtin("english_sentences")
    with pytest.raises(JobInputError, match="holds text"):
        check_data_fits(text, model_input(create_model("mlp")))
    with pytest.raises(JobInputError, match="reads text"):
        check_data_fits(tabular, ModelInput("text", None, 10))
    check_data_fits(text, ModelInput("text", None, None))  # an encoder without a head
    # A dataset using fewer classes than the model has outputs declares the model's count.
    few = with_num_classes(_read(_digits_csv(tmp_path / "few.csv", range(0, 40))).data, 12)
    assert few.num_classes == 12 and few.class_names[-2:] == ("10", "11")
    check_data_fits(few, model_input(create_model("mlp", num_classes=12)))


# ---------------------------------------------------------------------------- bad input


class _Payload:
    """Pickles to a call of os.system: what a malicious object array carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_object_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[:] = [_Payload(marker), _Payload(marker)]
    np.savez(tmp_path / "evil.npz", x=evil, y=np.array([0, 1]))
    with pytest.raises(DatasetFormatError, match="never unpickles"):
        _read(tmp_path / "evil.npz")
    assert not marker.exists()
    # The payload is live: unpickling it, as allow_pickle=True would, runs the command.
    with np.load(tmp_path / "evil.npz", allow_pickle=True) as z:
        z["x"]
    assert marker.exists()


def _bad_npz(tmp_path: Path, **arrays) -> Path:  # noqa: ANN003
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (dict(x=np.zeros((5, 3)), y=np.zeros(4, int)), "x has 5 examples but y has 4 labels"),
        (dict(x=np.array([[1.0], [2.0, 3.0]], dtype=object), y=np.zeros(2, int)), "dtype object"),
        (dict(x=np.zeros((6, 3)), y=np.array([0, 1, 2, -1, 0, 1])), "found -1"),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, 1.5, 1.0, 0.0])), "whole numbers"),
        (dict(x=np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), y=np.array([0, 1, 0])),
         "example 1 holds NaN"),
        (dict(x=np.full((3, 2), 1e300), y=np.array([0, 1, 0])), "NaN or infinite"),
        (dict(x=np.zeros(5), y=np.zeros(5, int)), "x.reshape"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), X=np.zeros(3)), "accepted arrays"),
        (dict(x=np.zeros((3, 2))), "no array 'y'"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), ids=np.array(["a", "b", "a"])),
         "'a' appears 2 times"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), split=np.array(["train"] * 3)),
         "no example as 'test'"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), split=np.array(["train", "dev", "test"])),
         "'dev'"),
        (dict(x=np.zeros((1, 2)), y=np.zeros(1, int)), "at least 2"),
        (dict(x=np.zeros((3, 2), dtype=complex), y=np.zeros(3, int)), "complex"),
    ],
)
def test_bad_npz_files_are_refused_with_a_reason(tmp_path, arrays, message):
    with pytest.raises(DatasetFormatError, match=message):
        _read(_bad_npz(tmp_path, **arrays))


def test_an_npz_whose_arrays_expand_past_the_limit_is_refused_before_loading(tmp_path):
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=np.zeros((4096, 1024), np.float32), y=np.zeros(4096, int))
    assert path.stat().st_size < 100_000  # zeros compress: a small file, 16 MiB unpacked
    with pytest.raises(DatasetFormatError, match="past the limit of 1,000,000"):
        _read(path, limits=DatasetLimits(max_bytes=1_000_000))


def _digit_zip(tmp_path: Path, extra: dict[str, bytes], count: int = 8) -> Path:
    members = {f"set/{Y[i]}/{i}.png": _png(_digit_pixels(i)) for i in range(count)}
    return _zip(tmp_path / "images.zip", {**members, **extra})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"set/3/notes.txt": b"hello"}, "'set/3/notes.txt' is not a PNG or JPEG"),
        ({"set/readme.png": _png(np.zeros((8, 8), np.uint8))}, "lies outside a class folder"),
        ({"set/4/fake.png": b"GIF89a" + b"\0" * 40}, "not a readable PNG or JPEG"),
        ({"set/4/big.png": _png(np.zeros((9, 8), np.uint8))}, "same size"),
        ({"set/5/cut.png": _png(_digit_pixels(5))[:40]}, "set/5/cut.png"),
        ({"set/5/empty.png": b""}, "set/5/empty.png"),
    ],
)
def test_bad_image_folders_are_refused_with_the_file_named(tmp_path, extra, message):
    with pytest.raises(DatasetFormatError, match=message):
        _read(_digit_zip(tmp_path, extra))


def test_a_zip_with_a_path_escaping_its_folder_writes_nothing_outside(tmp_path):
    inside = tmp_path / "scratch"
    inside.mkdir()
    path = _digit_zip(tmp_path, {"../../escaped.png": _png(_digit_pixels(0))})
    with pytest.raises(DatasetFormatError, match="points outside"):
        _read(path, scratch_dir=inside)
    assert not list(tmp_path.rglob("escaped.png"))
    assert list(inside.iterdir()) == []  # the unpacking folder is gone too


def test_a_zip_bomb_stops_at_the_byte_limit(tmp_path):
    path = _digit_zip(tmp_path, {"set/1/bomb.png": b"\0" * (20 * 1024 * 1024)})
    assert path.stat().st_size < 100_000
    with pytest.raises(DatasetFormatError, match="expands past the limit"):
        _read(path, limits=DatasetLimits(max_bytes=2 * 1024 * 1024))


def test_an_image_with_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = _zip(tmp_path / "huge.zip", {
        "a/1.png": _png(np.zeros((300, 300), np.uint8)),
        "b/2.png": _png(np.zeros((300, 300), np.uint8)),
    })
    with pytest.raises(DatasetFormatError, match="300×300 pixels, more than the limit"):
        _read(path, limits=DatasetLimits(max_image_pixels=256 * 256))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("p0,p1\n1,2\n", "no label column 'label'"),
        ("label\n1\n0\n", "no feature columns"),
        ("a,b,label\n1,x,0\n2,y,1\n", "feature column 'b' holds string"),
        ("a,label\n1,0\n,1\n3,0\n", "column 'a' has a missing value in row 2"),
        ("a,label\n1,0\nNaN,1\n", "column 'a' has a missing value in row 2"),
        ("a,label\n1,0\ninf,1\n", "'a' holds NaN or an infinite value in row 2"),
        ("a,label\n1,0\n2,1\n3", "not valid CSV"),  # a truncated last row
        ("a,label\n", "no rows"),
        ("a,a,label\n1,2,0\n3,4,1\n", "appears twice"),
        ("text,label\nhi,0\n,1\n", "'text' is empty in row 2"),
    ],
)
def test_bad_tables_are_refused_with_the_column_named(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        _read(path)


def test_jsonl_with_nested_values_or_broken_lines_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": {"b": 1}, "label": 0}\n{"a": {"b": 2}, "label": 1}\n')
    with pytest.raises(DatasetFormatError, match="feature column 'a' holds struct"):
        _read(path)
    path.write_text('{"a": 1, "label": 0}\n{"a": 2, "lab')
    with pytest.raises(DatasetFormatError, match="not valid JSON Lines"):
        _read(path)


@pytest.mark.parametrize("suffix", [".npz", ".zip", ".csv", ".jsonl", ".parquet", ""])
def test_empty_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="empty"):
        _read(path)


def _valid_files(tmp_path: Path) -> dict[str, Path]:
    np.savez(tmp_path / "v.npz", x=X[:50], y=Y[:50])
    pq.write_table(pa.table({"a": np.arange(50.0), "label": np.arange(50) % 2}),
                   tmp_path / "v.parquet")
    return {
        "npz": tmp_path / "v.npz",
        "image_zip": _digit_zip(tmp_path, {}),
        "parquet": tmp_path / "v.parquet",
    }


@pytest.mark.parametrize("fmt", ["npz", "image_zip", "parquet"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_binary_files_are_refused(tmp_path, fmt, keep):
    source = _valid_files(tmp_path)[fmt]
    content = source.read_bytes()
    cut = tmp_path / f"cut{source.suffix}"
    cut.write_bytes(content[: int(len(content) * keep)])
    with pytest.raises(DatasetFormatError):
        _read(cut)


def test_formats_are_recognised_by_content_and_mislabelled_files_refused(tmp_path):
    files = _valid_files(tmp_path)
    for fmt, path in files.items():
        renamed = tmp_path / f"renamed-{fmt}.bin"
        renamed.write_bytes(path.read_bytes())
        assert detect_format(renamed) == fmt
    (tmp_path / "fake.parquet").write_text("a,label\n1,0\n")
    with pytest.raises(DatasetFormatError, match="not a Parquet file"):
        _read(tmp_path / "fake.parquet")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DatasetFormatError, match="not a dataset PruneScope reads"):
        _read(tmp_path / "blob")


def test_limits_on_examples_and_columns(tmp_path):
    path = _digits_csv(tmp_path / "t.csv", range(30))
    with pytest.raises(DatasetFormatError, match="30 examples, more than the limit of 20"):
        _read(path, limits=DatasetLimits(max_examples=20))
    with pytest.raises(DatasetFormatError, match="65 columns, more than the limit of 10"):
        _read(path, limits=DatasetLimits(max_columns=10))
    with pytest.raises(DatasetFormatError, match="texts|characters"):
        (tmp_path / "long.csv").write_text("text,label\n" + "x" * 50 + ",0\nshort,1\n")
        _read(tmp_path / "long.csv", limits=DatasetLimits(max_text_chars=20))
