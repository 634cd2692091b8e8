"""Random and mutated bytes never crash a dataset loader: a dataset or a DatasetFormatError."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn import model_selection  # noqa: F401 - imported once here, not inside a timed example

from prunescope.workers.dataset_formats import DatasetFormatError, DatasetLimits, read_dataset_file
from prunescope.workers.datasets import ClassificationData

# Small limits keep every example cheap, so a mutation that inflates a size fails fast.
LIMITS = DatasetLimits(max_bytes=4 * 1024 * 1024, max_examples=5000, max_image_pixels=256 * 256)


def _png(value: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (4, 4), value if mode == "L" else (value, 0, 255 - value)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    npz = io.BytesIO()
    np.savez(npz, x=rng.random((12, 1, 2, 2)), y=np.arange(12) % 3,
             ids=np.array([f"e{i}" for i in range(12)]), group=np.arange(12) % 2)
    npz_compressed = io.BytesIO()
    np.savez_compressed(npz_compressed, x=np.array(["a b", "c", "d e f", "g"] * 3),
                        y=np.array(["p", "q"] * 6), split=np.array(["train", "test"] * 6))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(6):
            zf.writestr(f"set/c{k % 2}/{k}.png", _png(40 * k))
            zf.writestr(f"set/c{k % 2}/{k}.jpg", _jpeg(40 * k))
    parquet = io.BytesIO()
    pq.write_table(
        pa.table({"a": np.arange(10.0), "b": np.arange(10), "label": np.arange(10) % 2,
                  "id": [f"r{i}" for i in range(10)]}),
        parquet,
    )
    jsonl = "".join(
        json.dumps({"text": f"sentence {i}", "label": i % 2, "group": f"g{i % 3}"}) + "\n"
        for i in range(10)
    )
    csv = "a,b,label,split\n" + "".join(
        f"{i},{i * 0.5},{i % 3},{'test' if i % 4 == 0 else 'train'}\n" for i in range(12)
    )
    return {
        "seed.npz": npz.getvalue(),
        "text.npz": npz_compressed.getvalue(),
        "images.zip": archive.getvalue(),
        "table.parquet": parquet.getvalue(),
        "texts.jsonl": jsonl.encode(),
        "table.csv": csv.encode(),
    }


SEEDS = _seeds()


def _load(filename: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(content)
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        try:
            loaded = read_dataset_file(
                path, name="fuzz", filename=filename, limits=LIMITS, scratch_dir=scratch
            )
        except DatasetFormatError as exc:
            assert str(exc)  # a message a user can act on
            assert list(scratch.iterdir()) == []  # nothing unpacked is left behind
            return
        data = loaded.data
        assert isinstance(data, ClassificationData)
        assert data.num_train >= 1 and data.num_test >= 1
        assert data.y_train.dtype == np.int64 and data.x_train.dtype == np.float32
        labels = np.concatenate([data.y_train, data.y_test])
        assert labels.min() >= 0 and labels.max() < data.num_classes
        assert np.isfinite(data.x_train).all() and np.isfinite(data.x_test).all()


def test_the_seeds_are_valid_datasets():
    for filename, content in SEEDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(content)
            read_dataset_file(path, name="seed", filename=filename, limits=LIMITS)


FUZZ = settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
NAMES = st.sampled_from(sorted(SEEDS))


@FUZZ
@given(filename=NAMES, content=st.binary(max_size=2048))
def test_random_bytes(filename, content):
    _load(filename, content)


@FUZZ
@given(filename=NAMES, tail=st.binary(max_size=64))
def test_random_bytes_behind_real_magic_numbers(filename, tail):
    for magic in (b"PK\x03\x04", b"PAR1", b"\x93NUMPY\x01\x00", b"\x89PNG\r\n\x1a\n", b"{"):
        _load(filename, magic + tail)


@FUZZ
@given(filename=NAMES, data=st.data())
def test_mutated_valid_files(filename, data):
    content = bytearray(SEEDS[filename])
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(content) - 1, 0)))
        if op == "flip" and content:
            content[at] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del content[at:]
        elif op == "insert":
            content[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del content[at : at + data.draw(st.integers(1, 16))]
    _load(filename, bytes(content))
