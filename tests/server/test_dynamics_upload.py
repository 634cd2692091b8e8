"""Uploaded training runs ("bring your own dynamics") through the API, and the analysis of them."""

from __future__ import annotations

import csv
import io
import math
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from prunescope.server.config import get_settings
from prunescope.server.main import API_PREFIX, create_app
from prunescope.server.schemas import JobCreate
from prunescope.server.services import analyses
from prunescope.server.services import jobs as job_service
from prunescope.server.services import results as result_service
from prunescope.server.worker import run_worker
from prunescope.workers.analyses.dynamics_training import ProbeSuites, read_dynamics
from prunescope.workers.datasets import load_builtin
from tests.ingest_lane import running_ingest_lane

DIGITS = load_builtin("digits")
N, M, C, E = DIGITS.num_train, DIGITS.num_test, DIGITS.num_classes, 3
SUITES = ("typical", "atypical", "mislabeled", "corrupted")
PER_SUITE = 20
ROUTE = API_PREFIX + "/projects/{project_id}/dynamics"


def _app(settings):  # noqa: ANN001, ANN202
    return create_app(settings, dashboard=False)


@pytest.fixture
def client(settings, ingest_worker):
    # Uploads answer once a worker validated them (?wait=true): the ingest lane runs here.
    with TestClient(_app(settings)) as c:
        c.params = {"wait": "true"}
        yield c


@pytest.fixture
def pid(client) -> int:
    r = client.post("/api/v1/projects", json={"name": "mlp-digits", "architecture": "mlp"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ------------------------------------------------------------------------ synthetic runs


def _probes() -> dict[str, np.ndarray]:
    """Four suites of PER_SUITE examples; the mislabeled ones trained on the next class."""
    chosen = np.random.default_rng(7).permutation(N)[: len(SUITES) * PER_SUITE]
    suite = np.repeat(np.asarray(SUITES), PER_SUITE)
    label = np.where(suite == "mislabeled", (DIGITS.y_train[chosen] + 1) % C, -1)
    reference = np.tile(np.arange(PER_SUITE) % 3 == 0, len(SUITES))  # a third, not a half
    return {"example": chosen, "suite": suite, "label": label, "reference": reference}


def _trained_labels() -> np.ndarray:
    probes = _probes()
    labels = DIGITS.y_train.copy()
    flipped = probes["label"] >= 0
    labels[probes["example"][flipped]] = probes["label"][flipped]
    return labels


def _run(seed: int) -> dict[str, np.ndarray]:
    """A plain synthetic run: a loss matrix [E, N] and what follows from it."""
    rng = np.random.default_rng(seed)
    loss = rng.gamma(2.0, 0.5, size=(E, N)).astype(np.float32)
    p_gold = np.exp(-loss).astype(np.float32)
    labels = _trained_labels()
    prediction = np.where(p_gold > 0.4, labels, (labels + 1) % C)
    wrong = rng.random(M) < 0.2
    test = np.where(wrong, (DIGITS.y_test + rng.integers(1, C, M)) % C, DIGITS.y_test)
    return {"loss": loss, "p_gold": p_gold, "prediction": prediction,
            "margin": rng.normal(size=(E, N)).astype(np.float32), "test": test}


def _trajectory_rows(run: dict, *, first_epoch: int = 1, margin: bool = False,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Long format, one row per (epoch, example), rows shuffled."""
    epoch, example = np.meshgrid(np.arange(E), np.arange(N), indexing="ij")
    order = np.random.default_rng(seed).permutation(E * N)
    rows = {"example": example.ravel(), "epoch": epoch.ravel() + first_epoch}
    names = ("loss", "prediction", "p_gold") + (("margin",) if margin else ())
    rows.update({name: run[name].ravel() for name in names})
    return {name: values[order] for name, values in rows.items()}


def _csv(columns: dict[str, np.ndarray]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in zip(*(values.tolist() for values in columns.values()), strict=True):
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return buffer.getvalue().encode()


def _parquet(columns: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def _files(run: dict, *, fmt: str = "csv", probe_columns=("example", "suite", "label"),
           **rows) -> dict:  # noqa: ANN001, ANN003
    write = _csv if fmt == "csv" else _parquet
    probes = {name: values for name, values in _probes().items() if name in probe_columns}
    if "label" in probes and fmt == "parquet":
        probes["label"] = pa.array(probes["label"], mask=probes["label"] < 0)
    elif "label" in probes:  # an empty cell: the dataset's label
        probes["label"] = np.where(probes["label"] < 0, np.nan, probes["label"])
    return {
        "trajectories": (f"run.{fmt}", write(_trajectory_rows(run, **rows))),
        "probes": (f"probes.{fmt}", write(probes) if fmt == "csv" else _parquet(probes)),
        "test_predictions": (f"test.{fmt}",
                             write({"example": np.arange(M), "prediction": run["test"]})),
    }


def _post(client, pid, files, **form):  # noqa: ANN001, ANN003, ANN202
    fields = {"run": "dense-s0", "mode": "dense", "sparsity": 0, "seed": 0, **form}
    return client.post(f"/api/v1/projects/{pid}/dynamics",
                       files={key: (name, content, "application/octet-stream")
                              for key, (name, content) in files.items()},
                       data={key: str(value) for key, value in fields.items()})


def _stored(settings, pid: int) -> tuple[int, list[str], list[str]]:  # noqa: ANN001
    """(result rows, files in the store, leftovers in its staging folder)."""
    root, tmp = settings.artifacts_dir / "sha256", settings.artifacts_dir / "tmp"
    files = sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []
    leftovers = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
    return len(result_service.list_results(pid, settings)), files, leftovers


def _artifacts(settings, body: dict) -> tuple[dict, dict]:  # noqa: ANN001
    by_kind = {r["kind"]: r["id"] for r in body["results"]}
    trajectories = read_dynamics(result_service.result_file(by_kind["dynamics_run"], settings)[0])
    with np.load(result_service.result_file(by_kind["dynamics_meta"], settings)[0],
                 allow_pickle=False) as npz:
        meta = {key: npz[key] for key in npz.files}
    return trajectories, meta


# ------------------------------------------------------------------------ accepted uploads


def test_a_csv_run_is_stored_as_the_canonical_run_and_meta(client, settings, pid):
    run = _run(0)
    r = _post(client, pid, _files(run))
    assert r.status_code == 201, r.text
    body = r.json()
    accuracy = sum(int(a == b) for a, b in zip(run["test"], DIGITS.y_test, strict=True)) / M
    assert body["summary"] == {"run": "dense-s0", "mode": "dense", "sparsity": 0.0, "seed": 0,
                               "epochs": E, "test_accuracy": pytest.approx(accuracy),
                               "source": "upload"}
    assert [res["kind"] for res in body["results"]] == ["dynamics_run", "dynamics_meta"]
    assert all(res["summary"] == body["summary"] and res["job_id"] is None
               for res in body["results"])

    trajectories, meta = _artifacts(settings, body)
    assert trajectories["epoch"].tolist() == [1, 2, 3]
    assert trajectories["example"].tolist() == list(range(N))
    for name in ("loss", "p_gold", "prediction"):
        np.testing.assert_array_equal(trajectories[name], run[name])
    assert np.isnan(trajectories["margin"]).all()  # not uploaded
    path = result_service.result_file(body["results"][0]["id"], settings)[0]
    assert pq.ParquetFile(path).num_row_groups == E

    suites = ProbeSuites.from_arrays(meta)
    assert suites.categories == SUITES
    probes = _probes()
    expected_suite = np.full(N, -1)
    for example, name in zip(probes["example"], probes["suite"], strict=True):
        expected_suite[example] = SUITES.index(name)
    np.testing.assert_array_equal(suites.suite, expected_suite)
    # Without a reference column every suite is split in halves (within the suite).
    assert not suites.reference[expected_suite < 0].any()
    assert [int(suites.reference[expected_suite == i].sum()) for i in range(4)] == [10] * 4
    np.testing.assert_array_equal(meta["train_labels"], _trained_labels())
    np.testing.assert_array_equal(meta["probe_original_labels"], DIGITS.y_train)
    np.testing.assert_array_equal(meta["test_predictions"], run["test"])
    np.testing.assert_array_equal(meta["test_labels"], DIGITS.y_test)
    assert meta["test_accuracy"][-1] == pytest.approx(accuracy)
    assert np.isnan(meta["test_accuracy"][:-1]).all() and np.isnan(meta["train_loss"]).all()
    assert meta["sparsity"][-1] == 0.0
    assert _stored(settings, pid)[2] == []


def test_a_parquet_run_keeps_its_references_margins_and_epoch_numbers(client, settings, pid):
    run = _run(1)
    files = _files(run, fmt="parquet", probe_columns=("example", "suite", "reference"),
                   first_epoch=0, margin=True, seed=3)
    r = _post(client, pid, files, run="mine", mode="gmp", sparsity=0.5, seed=4)
    assert r.status_code == 201, r.text
    assert r.json()["summary"]["sparsity"] == 0.5 and r.json()["summary"]["seed"] == 4
    trajectories, meta = _artifacts(settings, r.json())
    assert trajectories["epoch"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(trajectories["margin"], run["margin"])
    np.testing.assert_array_equal(trajectories["loss"], run["loss"])
    probes = _probes()
    expected = np.zeros(N, dtype=bool)
    expected[probes["example"]] = probes["reference"]
    np.testing.assert_array_equal(meta["probe_reference"], expected)
    # No label column: the run trained on the dataset's labels.
    np.testing.assert_array_equal(meta["train_labels"], DIGITS.y_train)
    assert meta["sparsity"][-1] == 0.5


def test_the_same_probes_in_any_row_order_and_format_give_the_same_suites(client, settings,
                                                                           pid):
    run = _run(2)
    files = _files(run)
    shuffled = {name: values[::-1] for name, values in _probes().items()
                if name in ("example", "suite")}
    first = _post(client, pid, files).json()
    second = _post(client, pid, {**_files(run, fmt="parquet"),
                                 "probes": ("probes.parquet", _parquet(shuffled))},
                   run="other").json()
    # An all-empty label column: every probe trained on the dataset's label.
    unlabelled = {**shuffled, "label": np.full(len(shuffled["example"]), np.nan)}
    third = _post(client, pid, {**files, "probes": ("probes.csv", _csv(unlabelled))},
                  run="third").json()
    _, a = _artifacts(settings, first)
    for other in (second, third):
        _, b = _artifacts(settings, other)
        for key in ("probe_categories", "probe_suite", "probe_reference"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(b["train_labels"], DIGITS.y_train)


def test_the_dynamics_job_analyses_two_uploaded_runs(client, settings, pid):
    dense, gmp = _run(10), _run(11)
    assert _post(client, pid, _files(dense)).status_code == 201
    r = _post(client, pid, _files(gmp, fmt="parquet"), run="gmp50-s0", mode="gmp",
              sparsity=0.5)
    assert r.status_code == 201, r.text
    job = analyses.request_dynamics(pid, settings)
    assert run_worker(settings, "test-worker", max_jobs=1) == 1
    finished = job_service.get_job(job.id, settings)
    assert finished.state == "succeeded", finished.error
    assert finished.result_summary["runs"] == ["dense-s0", "gmp50-s0"]
    result = analyses.dynamics_analysis(pid, settings)["dynamics"]
    assert result["population_names"].tolist() == ["gmp 50%"]
    np.testing.assert_allclose(result["loss"][0], dense["loss"].T)
    np.testing.assert_allclose(result["loss"][1], gmp["loss"].T)
    # One run per population: its modal prediction is its own, so a PIE is a disagreement.
    np.testing.assert_array_equal(result["pie"][0], dense["test"] != gmp["test"])


# ------------------------------------------------------------------------ refused uploads


def _without(columns: dict, name: str) -> dict:
    return {key: values for key, values in columns.items() if key != name}


def _refusals() -> list[tuple[str, dict, dict, int, str]]:
    """(case, files, form fields, status, words the message must hold)."""
    run = _run(5)
    good = _files(run)
    rows = _trajectory_rows(run)
    test = {"example": np.arange(M), "prediction": run["test"]}
    probes = {name: _probes()[name] for name in ("example", "suite")}
    nan_loss = {**rows, "loss": np.where(np.arange(E * N) == 7, np.nan, rows["loss"])}
    lacking = {name: values[1:] for name, values in rows.items()}  # one (epoch, example) gone
    return [
        ("missing column", {"trajectories": ("run.csv", _csv(_without(rows, "loss")))}, {},
         422, "lacks the column(s) loss"),
        ("missing p_gold", {"trajectories": ("run.parquet", _parquet(_without(rows, "p_gold")))},
         {}, 422, "p_gold"),
        ("an epoch lacks an example", {"trajectories": ("run.csv", _csv(lacking))}, {}, 422,
         f"epoch {rows['epoch'][0]} of the trajectories lacks 1 example(s) "
         f"({rows['example'][0]})"),
        ("an epoch repeats an example", {"trajectories": ("run.csv", _csv(
            {k: np.concatenate([v[1:], v[2:3]]) for k, v in rows.items()}))}, {}, 422,
         "exactly once per epoch"),
        ("NaN loss in CSV", {"trajectories": ("run.csv", _csv(nan_loss))}, {}, 422,
         "'loss' of the trajectories file has 1 empty or NaN value(s), the first in data row 8"),
        ("NaN loss in Parquet", {"trajectories": ("run.parquet", _parquet(nan_loss))}, {}, 422,
         "'loss' of the trajectories file contains NaN or Inf, the first in data row 8"),
        ("p_gold above 1", {"trajectories": ("run.csv", _csv({**rows, "p_gold": rows["p_gold"]
                                                             + 1}))}, {}, 422, "[0, 1]"),
        ("unknown trajectory example", {"trajectories": ("run.csv", _csv(
            {**rows, "example": np.where(np.arange(E * N) == 0, N, rows["example"])}))}, {}, 422,
         f"outside 0…{N - 1} ({N})"),
        ("unknown probe example", {"probes": ("probes.csv", _csv(
            {**probes, "example": probes["example"] + N}))}, {}, 422,
         f"positions in the training split of the project's active dataset 'digits', which "
         f"has {N} examples"),
        ("a probe in two suites", {"probes": ("probes.csv", _csv(
            {k: np.concatenate([v, v[:1]]) for k, v in probes.items()}))}, {}, 422,
         "more than one row"),
        ("a suite without references", {"probes": ("probes.csv", _csv(
            {**probes, "reference": probes["suite"] != "corrupted"}))}, {}, 422,
         "suite(s) corrupted have no reference probe"),
        ("label outside the classes", {"probes": ("probes.csv", _csv(
            {**probes, "label": np.full(len(probes["example"]), C)}))}, {}, 422,
         f"classes outside 0…{C - 1}"),
        ("too few test predictions", {"test_predictions": ("test.csv", _csv(
            {k: v[:-1] for k, v in test.items()}))}, {}, 422,
         f"has {M - 1} rows, the test split of the project's active dataset 'digits' has {M}"),
        ("a repeated test prediction", {"test_predictions": ("test.csv", _csv(
            {**test, "example": np.where(np.arange(M) == 1, 0, np.arange(M))}))}, {}, 422,
         "repeats example(s) 0 and lacks 1"),
        ("a pickle named .parquet", {"trajectories": ("run.parquet", pickle.dumps(rows))}, {},
         422, "is named .parquet but is not Parquet"),
        ("a pickle named .csv", {"probes": ("probes.csv", pickle.dumps(probes))}, {}, 422,
         "neither Parquet nor CSV"),
        ("a truncated Parquet file", {"trajectories": (
            "run.parquet", _parquet(rows)[: len(_parquet(rows)) // 2])}, {}, 422, "cut short"),
        ("an empty file", {"test_predictions": ("test.csv", b"")}, {}, 422, "is empty"),
        ("text in a number column", {"test_predictions": ("test.csv", _csv(
            {**test, "prediction": np.full(M, "cat")}))}, {}, 422,
         "'prediction' of the test predictions file must hold int64 values"),
        ("unknown mode", good, {"mode": "pruned"}, 422, "mode must be one of"),
        ("dense with a sparsity", good, {"sparsity": 0.5}, 422, "a dense run has sparsity 0"),
        ("gmp without a sparsity", good, {"mode": "gmp"}, 422, "needs its final sparsity"),
        ("sparsity 1", good, {"mode": "gmp", "sparsity": 1.0}, 422, "in [0, 1)"),
        ("NaN sparsity", good, {"mode": "gmp", "sparsity": "nan"}, 422, "in [0, 1)"),
        ("an empty run name", good, {"run": "  "}, 422, "non-empty name"),
    ]


@pytest.mark.not_about_the_database
def test_refused_uploads_say_what_to_fix_and_leave_nothing_behind(client, settings, pid):
    good = _files(_run(5))
    for case, files, form, status, words in _refusals():
        r = _post(client, pid, {**good, **files}, **form)
        assert r.status_code == status, (case, r.text)
        assert words in r.json()["detail"], (case, r.json()["detail"])
        assert _stored(settings, pid) == (0, [], []), case
    assert _post(client, 999, good).status_code == 404
    assert client.post(f"/api/v1/projects/{pid}/dynamics", files={
        key: (name, content) for key, (name, content) in good.items()}).status_code == 422
    assert _stored(settings, pid) == (0, [], [])


def test_a_run_name_is_taken_once_and_not_by_a_queued_run(client, settings, pid):
    assert _post(client, pid, _files(_run(0))).status_code == 201
    before = _stored(settings, pid)
    again = _post(client, pid, _files(_run(1)))
    assert again.status_code == 409 and "'dense-s0' is already recorded" in again.json()["detail"]
    job_service.submit_job(pid, JobCreate(kind="train_dynamics", params={
        "mode": "gmp", "sparsity": 0.8}), settings)
    queued = _post(client, pid, _files(_run(1)), run="gmp80-s0", mode="gmp", sparsity=0.8)
    assert queued.status_code == 409 and "will record a run named" in queued.json()["detail"]
    assert _stored(settings, pid) == before


def test_files_past_the_upload_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PRUNESCOPE_MAX_UPLOAD_BYTES", "20000")
    get_settings.cache_clear()
    settings = get_settings()
    try:
        with running_ingest_lane(settings), TestClient(_app(settings)) as client:
            client.params = {"wait": "true"}
            pid = client.post("/api/v1/projects", json={"name": "p", "architecture": "mlp"}
                              ).json()["id"]
            run = _run(0)
            files = _files(run)
            assert len(files["trajectories"][1]) > 20000
            r = _post(client, pid, files)
            assert r.status_code == 413 and "the trajectories file" in r.json()["detail"]
            # A small Parquet file that decodes past the limit (constant columns compress).
            constant = {name: np.zeros_like(values) if name != "example" else values
                        for name, values in _trajectory_rows(run).items()}
            small = _parquet(constant)
            assert len(small) < 20000
            r = _post(client, pid, {**files, "trajectories": ("run.parquet", small)})
            assert r.status_code == 413 and "once read" in r.json()["detail"]
            assert _stored(settings, pid) == (0, [], [])
    finally:
        get_settings.cache_clear()


def test_the_openapi_description_documents_the_columns(client):
    operation = client.get("/openapi.json").json()["paths"][ROUTE]["post"]
    for words in ("trajectories", "p_gold", "suite", "reference", "test_predictions",
                  "DynamicsWriter"):
        assert words in operation["description"]
    assert operation["responses"]["201"]
