"""Dataset uploads through the API: every format, the active dataset in jobs, refused files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits

from prunescope.server.cli import main as cli_main
from prunescope.server.errors import TooLarge
from prunescope.server.main import create_app
from prunescope.server.schemas import JobCreate, ProjectCreate
from prunescope.server.services import datasets as dataset_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects as project_service
from prunescope.server.services import results as result_service
from prunescope.server.worker import run_worker
from prunescope.workers.datasets import load_builtin

DIGITS = load_digits()
X = (DIGITS.images / 16.0).astype(np.float32)[:, None]
Y = DIGITS.target.astype(np.int64)


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(create_app(settings, dashboard=False)) as c:
        c.params = {"wait": "true"}
        yield c


def _project(client, name="mlp-digits", architecture="mlp", **config) -> int:  # noqa: ANN001
    body = {"name": name, "architecture": architecture, "architecture_config": config}
    r = client.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(client, pid, content: bytes, filename: str, **form):  # noqa: ANN001, ANN202
    return client.post(
        f"/api/v1/projects/{pid}/datasets",
        files={"file": (filename, content, "application/octet-stream")},
        data={k: str(v) for k, v in form.items()},
    )


def _npz(**arrays) -> bytes:  # noqa: ANN003
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _digits_csv(rows) -> bytes:  # noqa: ANN001
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*(f"p{j}" for j in range(64)), "label"])
    for i in rows:
        writer.writerow([*X[i].ravel().tolist(), int(Y[i])])
    return buffer.getvalue().encode()


def _stored_files(settings) -> list[str]:
    root = settings.artifacts_dir / "sha256"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _leftovers(settings) -> list[str]:
    tmp = settings.artifacts_dir / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def test_every_format_uploads_with_a_preview(client, settings):
    pid = _project(client)
    cnn = _project(client, "cnn-digits", "cnn_small")
    # A project starts with its builtin, which is active and fully described on first read.
    listed = client.get(f"/api/v1/projects/{pid}/datasets").json()
    assert listed["count"] == 1
    builtin = listed["data"][0]
    assert builtin["active"] and builtin["kind"] == "image" and builtin["num_test"] == 450

    npz = _upload(client, pid, _npz(x=X, y=Y), "digits-copy.npz")
    assert npz.status_code == 201, npz.text
    body = npz.json()
    assert (body["format"], body["kind"], body["name"]) == ("npz", "image", "digits-copy")
    assert (body["num_train"], body["num_test"], body["num_classes"]) == (1347, 450, 10)
    assert not body["active"] and body["input_shape"] == [1, 8, 8]
    preview = body["preview"]
    assert len(preview["examples"]) == 24 and preview["split_rule"] == "stratified"
    assert all(e["image"].startswith("data:image/png;base64,") for e in preview["examples"])
    assert sum(preview["class_counts"]["train"]) == 1347

    members = {}
    for i in range(40):
        fmt = ("PNG", "JPEG")[i % 2]
        pixels = np.round(X[i, 0] * 255).astype(np.uint8)
        members[f"digits/{Y[i]}/{i}.{fmt.lower()}"] = _png(pixels, fmt)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    images = _upload(client, cnn, archive.getvalue(), "images.zip", name="scans")
    assert images.status_code == 201, images.text
    assert images.json()["format"] == "image_zip" and images.json()["input_shape"] == [1, 8, 8]

    table = _upload(client, pid, _digits_csv(range(0, 1797, 5)), "sample.csv")
    assert table.status_code == 201, table.text
    assert table.json()["kind"] == "tabular" and table.json()["input_shape"] == [64]
    assert table.json()["preview"]["examples"][0]["values"]

    jsonl = "".join(
        json.dumps({"a": float(i), "b": float(i % 7), "label": i % 4}) + "\n" for i in range(30)
    )
    tiny = _project(client, "tiny", "mlp", in_features=2, num_classes=4)
    assert _upload(client, tiny, jsonl.encode(), "rows.jsonl").status_code == 201
    parquet = io.BytesIO()
    pq.write_table(pa.table({"a": np.arange(30.0), "b": np.ones(30), "label": np.arange(30) % 3,
                             "split": ["train"] * 20 + ["test"] * 10}), parquet)
    stored = _upload(client, tiny, parquet.getvalue(), "cols.parquet", active="true")
    assert stored.status_code == 201, stored.text
    body = stored.json()
    # Three classes used, four model outputs: the dataset declares the model's four.
    assert body["active"] and body["num_classes"] == 4 and body["num_test"] == 10
    datasets = client.get(f"/api/v1/projects/{tiny}/datasets").json()["data"]
    assert [d["active"] for d in datasets] == [False, False, True]

    detail = client.get(f"/api/v1/datasets/{npz.json()['id']}").json()
    assert detail["preview"] == preview
    download = client.get(f"/api/v1/datasets/{npz.json()['id']}/download")
    with np.load(io.BytesIO(download.content), allow_pickle=False) as z:
        # The same split as the builtin, since the upload is digits in scikit-learn's order.
        np.testing.assert_array_equal(z["y_test"], load_builtin("digits").y_test)
        assert z["x_train"].shape == (1347, 1, 8, 8) and z["x_train"].dtype == np.float32
    assert client.get(f"/api/v1/datasets/{builtin['id']}/download").status_code == 404
    assert _leftovers(settings) == []


def _analyze(settings, pid: int) -> tuple[float, np.ndarray, np.ndarray]:  # noqa: ANN001
    job = job_service.submit_job(pid, JobCreate(kind="analyze"), settings)
    assert run_worker(settings, "test-worker", max_jobs=1) == 1
    assert job_service.get_job(job.id, settings).state == "succeeded", job_service.get_job(job.id)
    result = result_service.list_results(pid, settings)[-1]
    path, _ = result_service.result_file(result.id, settings)
    with np.load(path, allow_pickle=False) as z:
        return float(z["accuracy"][0]), z["predictions"][0], z["labels"]


@pytest.mark.slow  # trains a small MLP, then runs four analyses through a worker
def test_jobs_use_the_active_dataset_and_an_uploaded_copy_of_digits_scores_the_same(
    client, settings
):
    pid = _project(client)
    job_service.submit_job(pid, JobCreate(kind="train", params={"epochs": 3}), settings)
    assert run_worker(settings, "test-worker", max_jobs=1) == 1
    builtin_accuracy, builtin_predictions, builtin_labels = _analyze(settings, pid)
    assert builtin_accuracy > 0.7

    npz = _upload(client, pid, _npz(x=X, y=Y), "digits-copy.npz", active="true").json()
    assert dataset_service.active_dataset(pid, settings).id == npz["id"]
    accuracy, predictions, labels = _analyze(settings, pid)
    assert accuracy == builtin_accuracy
    np.testing.assert_array_equal(labels, builtin_labels)  # the same test examples, same order
    np.testing.assert_array_equal(predictions, builtin_predictions)

    # A second, independent path: the 64 pixels as CSV columns, read by the flat MLP.
    table = _upload(client, pid, _digits_csv(range(1797)), "pixels.csv").json()
    r = client.put(f"/api/v1/projects/{pid}/datasets/active", json={"dataset_id": table["id"]})
    assert r.status_code == 200 and r.json()["active"]
    accuracy, predictions, _ = _analyze(settings, pid)
    assert accuracy == builtin_accuracy
    np.testing.assert_array_equal(predictions, builtin_predictions)

    # And a subset: a different test set gives a different, still plausible, accuracy.
    sample = _upload(client, pid, _digits_csv(range(0, 1797, 3)), "third.csv", active="true")
    accuracy, _, labels = _analyze(settings, pid)
    assert sample.json()["num_test"] == len(labels) == 150 and 0.6 < accuracy <= 1.0


def test_builtins_names_and_the_active_choice(client, settings):
    pid = _project(client)
    other = _project(client, "other")
    sentences = client.post(f"/api/v1/projects/{pid}/datasets/builtin",
                            json={"builtin": "english_sentences"})
    assert sentences.status_code == 422 and "holds text" in sentences.json()["detail"]
    again = client.post(f"/api/v1/projects/{pid}/datasets/builtin", json={"builtin": "digits"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    copy = client.post(f"/api/v1/projects/{pid}/datasets/builtin",
                       json={"builtin": "digits", "name": "digits-2", "active": True})
    assert copy.status_code == 201 and copy.json()["active"]
    upload = _upload(client, pid, _npz(x=X[:40], y=Y[:40]), "digits-2.npz")
    assert upload.status_code == 409
    foreign = client.get(f"/api/v1/projects/{other}/datasets").json()["data"][0]["id"]
    r = client.put(f"/api/v1/projects/{pid}/datasets/active", json={"dataset_id": foreign})
    assert r.status_code == 404
    assert client.get("/api/v1/datasets/999").status_code == 404
    assert client.get("/api/v1/projects/999/datasets").status_code == 404
    assert _upload(client, 999, _npz(x=X[:9], y=Y[:9]), "x.npz").status_code == 404
    project = client.get(f"/api/v1/projects/{pid}").json()
    assert [d["active"] for d in project["datasets"]] == [False, True]


class _Payload:
    def __init__(self, marker) -> None:  # noqa: ANN001
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def _digit_members(count: int = 10) -> dict[str, bytes]:
    return {f"d/{Y[i]}/{i}.png": _png(np.round(X[i, 0] * 255).astype(np.uint8))
            for i in range(count)}


@pytest.mark.not_about_the_database
def test_refused_uploads_say_why_and_leave_nothing_behind(client, settings, tmp_path):
    pid = _project(client)
    marker = tmp_path / "pwned"
    evil = np.empty(3, dtype=object)
    evil[:] = [_Payload(marker)] * 3
    cases = [
        (_npz(x=evil, y=np.arange(3)), "evil.npz", "never unpickles"),
        (_npz(x=X[:10], y=Y[:9]), "ragged.npz", "x has 10 examples but y has 9 labels"),
        (_npz(x=X[:20], y=Y[:20] + 5), "labels.npz", r"labels from \d+ to 14.*num_classes=15"),
        (_npz(x=np.zeros((20, 5)), y=Y[:20]), "shape.npz", r"\(5,\) \(5 values\).*\(64 values\)"),
        (_npz(x=np.full((3, 64), np.nan), y=np.arange(3)), "nan.npz", "NaN"),
        (_zip({**_digit_members(), "../evil.png": _png(np.zeros((8, 8), np.uint8))}),
         "escape.zip", "points outside"),
        (_zip({**_digit_members(), "d/1/notes.txt": b"hello"}), "notes.zip", "not a PNG or JPEG"),
        (_npz(x=X[:30], y=Y[:30])[:500], "cut.npz", "corrupt or truncated"),
        (b"", "empty.csv", "empty"),
        (b"text,label\nhello there,0\nhi,1\n", "text.csv", "holds text"),
        (b"a,b\n1,2\n", "nolabel.csv", "no label column"),
    ]
    for content, filename, message in cases:
        r = _upload(client, pid, content, filename)
        assert r.status_code == 422, (filename, r.text)
        detail = r.json()["detail"]
        assert filename in detail and re.search(message, detail), detail
    assert not marker.exists()
    assert _stored_files(settings) == [] and _leftovers(settings) == []
    assert client.get(f"/api/v1/projects/{pid}/datasets").json()["count"] == 1


def test_a_zip_bomb_and_an_oversized_upload_are_refused(settings, monkeypatch, ingest_worker):
    monkeypatch.setenv("PRUNESCOPE_MAX_UPLOAD_BYTES", str(1024 * 1024))
    from prunescope.server.config import get_settings

    get_settings.cache_clear()
    small = get_settings()
    with TestClient(create_app(small, dashboard=False)) as client:
        client.params = {"wait": "true"}
        pid = _project(client, "cnn", "cnn_small")
        bomb = _zip({**_digit_members(), "d/2/bomb.png": b"\0" * (30 * 1024 * 1024)})
        assert len(bomb) < 100_000
        r = _upload(client, pid, bomb, "bomb.zip")
        assert r.status_code == 422 and "expands past the limit" in r.json()["detail"]
        r = _upload(client, pid, b"0" * (3 * 1024 * 1024), "huge.csv")
        assert r.status_code == 413
        too_big = small.artifacts_dir / "tmp" / "finished-upload.csv"
        too_big.parent.mkdir(parents=True, exist_ok=True)
        too_big.write_bytes(b"1" * (2 * 1024 * 1024))
        with pytest.raises(TooLarge):
            dataset_service.add_dataset_file(pid, too_big, filename="f.csv", settings=small)
        assert not too_big.exists()  # consumed even when refused
        assert _stored_files(small) == [] and _leftovers(small) == []


def test_add_dataset_file_consumes_a_finished_upload(client, settings):
    pid = _project(client)
    path = settings.artifacts_dir / "tmp" / "upload-1.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_npz(x=X[:100], y=Y[:100]))
    job = dataset_service.add_dataset_file(pid, path, filename="first100.npz", settings=settings)
    assert not path.exists()  # consumed at once: staged for its ingest job
    stored = dataset_service.ingested(job, settings)
    assert stored.name == "first100" and stored.num_train + stored.num_test == 100
    assert not path.exists()


def test_cli_dataset_add(settings, tmp_path, capsys):
    pid = project_service.create_project(ProjectCreate(name="cli", architecture="mlp"), settings).id
    path = tmp_path / "digits.npz"
    path.write_bytes(_npz(x=X, y=Y))
    assert cli_main(["dataset", "add", "cli", str(path), "--name", "copy", "--activate"]) == 0
    assert "stored dataset" in capsys.readouterr().out
    assert dataset_service.active_dataset(pid, settings).name == "copy"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli_main(["dataset", "add", str(pid), str(bad)]) == 1
    assert "no label column" in capsys.readouterr().err
