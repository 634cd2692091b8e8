"""The job kind declarations agree with everything derived from them: the API's enum, the job
spec's names, the runner, the results handlers write and the Ray executor's GPU requests; and
they import without torch, because the web server reads them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import get_args

import pytest

from prunescope.models.pruning.catalogue import PRUNING_CATALOGUE
from prunescope.models.registry import default_config
from prunescope.server.config import Settings
from prunescope.server.ray_executor import task_gpus
from prunescope.server.schemas import JobCreate, JobKind
from prunescope.workers import jobspec
from prunescope.workers.jobs import (
    JOB_KINDS,
    SUBMITTABLE_KINDS,
    checkpoint_params,
    job_kind,
    lane_kinds,
    pruning_methods,
    reads,
    validate_params,
    writes,
)
from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobs.params import Param
from prunescope.workers.jobspec import JobInputError, JobOutput, NewResult
from prunescope.workers.runner import run_job
from tests.workers.test_runner import Recorder, _ref, _spec

HEAVY = ("torch", "transformers", "sklearn", "umap")


def test_importing_the_declarations_imports_no_torch():
    code = f"""
import json, sys
import prunescope.workers.jobs as jobs
jobs.validate_params("prune", {{"method": "wanda", "sparsity": 0.5}})
jobs.validate_params("analyze", {{"conv_pooling": "flatten"}})
methods = jobs.pruning_methods()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_kinds_are_the_modules_of_the_package_in_workflow_order():
    assert list(JOB_KINDS) == ["train", "prune", "analyze", "geometry", "probe",
                               "attention_maps", "train_dynamics", "dynamics",
                               "ingest_checkpoint", "ingest_dataset", "ingest_dynamics"]
    # The server queues upload validation itself, on the ingest lane; the API takes the rest.
    assert SUBMITTABLE_KINDS == tuple(JOB_KINDS)[:8]
    assert lane_kinds("ingest") == tuple(JOB_KINDS)[8:]
    assert all(JOB_KINDS[k].internal for k in lane_kinds("ingest"))
    for name, kind in JOB_KINDS.items():
        assert isinstance(kind, JobDeclaration) and kind.name == name
        assert sys.modules[kind.handler.__module__].KIND is kind  # declared where it runs
        assert callable(kind.handler)
        assert kind.params and all(isinstance(p, Param) for p in kind.params.values())
        assert set(kind.checkpoint_params) <= set(kind.params), name
        # An ingest job's product is the upload itself, adopted with its row.
        assert kind.writes or kind.makes_checkpoint or kind.lane == "ingest", name
        assert kind.gpus >= 0
    assert [k.position for k in JOB_KINDS.values()] == sorted(
        {k.position for k in JOB_KINDS.values()})


def test_the_api_enum_and_the_job_spec_names_are_the_declared_kinds(settings):
    from prunescope.server.main import create_app

    assert get_args(JobKind) == SUBMITTABLE_KINDS
    assert JobCreate.model_json_schema()["properties"]["kind"]["enum"] == list(SUBMITTABLE_KINDS)
    schema = create_app(settings, dashboard=False).openapi()["components"]["schemas"]
    assert schema["JobCreate"]["properties"]["kind"]["enum"] == list(SUBMITTABLE_KINDS)
    # The kinds live in the declarations only, not as copies beside the job spec.
    assert not hasattr(jobspec, "JOB_KINDS") and not hasattr(jobspec, "RESULT_INPUTS")
    # Every ingest kind has its commit in the server, and the worker lane serves exactly them.
    from prunescope.server.job_io import ADOPT_CHECKED, INGEST_KINDS

    assert set(ADOPT_CHECKED) == set(INGEST_KINDS) == set(lane_kinds("ingest"))


def test_every_result_a_kind_reads_is_written_by_another():
    written = {r for k in JOB_KINDS.values() for r in k.writes}
    for name, kind in JOB_KINDS.items():
        assert set(kind.reads) <= written - set(kind.writes), name
    assert reads("dynamics") == ("dynamics_run", "dynamics_meta")
    assert writes("train_dynamics") == ("dynamics_run", "dynamics_meta", "run_weights")


def test_validation_fills_defaults_and_names_the_bad_parameter():
    assert validate_params("train", {"epochs": 2})["batch_size"] == 64
    assert validate_params("prune", {"method": "random", "sparsity": 1e-3})["seed"] == 0
    cases = [
        ("prune", {"method": "random", "sparsity": 1}, "sparsity must be a number in (0, 1)"),
        ("prune", {"method": "astrology", "sparsity": 0.5}, "magnitude_layerwise, random"),
        ("prune", {"sparsity": 0.5}, "params.method is required for a prune job"),
        ("prune", {"method": "magnitude_2of4", "sparsity": 0.8}, "use sparsity 0.5"),
        ("prune", {"method": "random", "sparsity": 0.5, "iterations": 3}, "do not apply"),
        ("prune", {"method": "imp_rewind", "sparsity": 0.5, "rewind_epoch": 2},
         "must be below params.epochs_per_round"),
        ("train_dynamics", {"mode": "gmp"}, "needs params.sparsity"),
        ("train_dynamics", {"gmp_start": 0.5, "gmp_end": 0.4}, "gmp_end must come after"),
        ("analyze", {"conv_pooling": "max"}, "one of mean, flatten"),
        ("train", {"epochs": -1}, "params.epochs must be an integer from 1 to 10,000"),
        # No number without a ceiling: these would hold a worker for ever or fail it late.
        ("train", {"epochs": 10**29}, "params.epochs must be an integer from 1 to 10,000"),
        ("train", {"lr": 1.2e29}, "params.lr must be a positive number of at most 1e+06"),
        ("geometry", {"seed": 2**32}, "params.seed must be an integer from 0 to 2**32 - 1"),
        ("probe", {"max_examples": 10**12}, "from 20 to 1,000,000"),
        ("dynamics", {"k": 10**9}, "params.k must be an integer from 1 to 1,000,000"),
        ("explode", {}, "unknown job kind 'explode'; choose one of train, prune, analyze"),
    ]
    for kind, params, message in cases:
        with pytest.raises(JobInputError, match=re.escape(message)):
            validate_params(kind, params)


def test_checkpoint_parameters_are_declared_per_kind():
    assert checkpoint_params("analyze") == ("checkpoint_ids", "reference_checkpoint_id")
    assert checkpoint_params("prune") == ("dense_checkpoint_id",)
    assert checkpoint_params("train") == () == checkpoint_params("dynamics")
    for name in ("geometry", "probe", "attention_maps", "train_dynamics"):
        assert checkpoint_params(name) == ("checkpoint_ids",)


def test_pruning_methods_for_the_prune_form_come_from_the_catalogue():
    methods = pruning_methods()
    assert list(methods) == sorted(PRUNING_CATALOGUE)
    assert methods["magnitude_global"].startswith("One-shot global magnitude pruning")
    assert all(text.endswith((".", ")")) for text in methods.values())  # whole sentences


def test_the_ray_executor_asks_for_the_declared_share_unless_the_environment_names_one():
    no_gpu, one_gpu = (lambda: 0.0), (lambda: 1.0)
    unset = Settings(ray_num_gpus={})
    assert Settings().ray_num_gpus == {}  # the declarations are the default
    for name, kind in JOB_KINDS.items():
        assert task_gpus(unset, name, one_gpu) == kind.gpus
        assert task_gpus(unset, name, no_gpu) == 0.0  # a CPU cluster runs it rather than waits
    assert {n for n, k in JOB_KINDS.items() if k.gpus} == {"analyze", "prune", "attention_maps"}
    named = Settings(ray_num_gpus={"analyze": 1.0, "default": 0.0})
    assert task_gpus(named, "analyze", no_gpu) == 1.0  # waits for a GPU, as asked
    assert task_gpus(named, "prune", one_gpu) == 0.0  # "default" covers the kinds not named
    only = Settings(ray_num_gpus={"train": 0.5})
    assert task_gpus(only, "train", no_gpu) == 0.5
    assert task_gpus(only, "analyze", one_gpu) == JOB_KINDS["analyze"].gpus
    asked = []
    task_gpus(unset, "train", lambda: asked.append(1) or 1.0)
    assert not asked  # a kind that needs no GPU does not query the cluster


def test_handlers_write_what_their_kinds_declare(tmp_path):
    mlp = {"architecture": "mlp", "architecture_config": default_config("mlp")}
    trained = run_job(_spec(tmp_path, "train", {"epochs": 1}, **mlp), Recorder())
    dense = _ref(1, trained)
    pruned = run_job(_spec(tmp_path, "prune", {"method": "random", "sparsity": 0.5}, [dense],
                           **mlp), Recorder())
    analyzed = run_job(_spec(tmp_path, "analyze", {}, [dense, _ref(2, pruned)], **mlp),
                       Recorder())
    assert [c.role for c in trained.checkpoints] == [job_kind("train").makes_checkpoint]
    assert [c.role for c in pruned.checkpoints] == [job_kind("prune").makes_checkpoint]
    assert {r.kind for r in analyzed.results} == {"evaluation", "masks", "neurons"}
    assert {r.kind for r in analyzed.results} <= set(writes("analyze"))


def test_the_runner_refuses_a_result_its_kind_does_not_declare(tmp_path, monkeypatch):
    def rogue(spec, params, progress):  # noqa: ANN001, ANN202
        return JobOutput(results=[NewResult(kind="horoscope", path="x")])

    kind = JOB_KINDS["dynamics"]
    monkeypatch.setitem(JOB_KINDS, "dynamics", JobDeclaration(
        name=kind.name, position=kind.position, params=kind.params, handler=rogue,
        writes=kind.writes, reads=kind.reads))
    with pytest.raises(RuntimeError, match="result kind 'horoscope', not in writes"):
        run_job(_spec(tmp_path, "dynamics", {}), Recorder())
