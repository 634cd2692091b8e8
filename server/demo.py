"""The demo projects: created once, completed on every run (only what is missing is queued)."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

from server import services
from server.config import Settings
from server.schemas import DatasetChoice, JobCreate, JobPublic, ProjectCreate
from workers.jobspec import default_pruned_name


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


DIGITS = DemoProject(
    name="digits-cnn",
    description="A small CNN on scikit-learn's handwritten digits (1,797 real 8×8 images), "
    "pruned by global magnitude and at random.",
    architecture="cnn_small",
    dataset="digits",
    train_params={"epochs": 30, "seed": 0, "name": "dense"},
    methods=("magnitude_global", "random"),
    sparsities=(0.5, 0.8, 0.95),
)

DEMO_PROJECTS = (DIGITS,)


def ensure_demo_project(demo: DemoProject, settings: Settings) -> tuple[int, list[JobPublic]]:
    """Create the project if needed and queue the jobs whose output is missing.

    Returns the project id and the jobs queued now. Jobs still queued or running from an
    earlier run are reused, so running the demo twice never duplicates work.
    """
    project = services.find_project(demo.name, settings)
    if project is None:
        project = services.create_project(
            ProjectCreate(
                name=demo.name,
                description=demo.description,
                architecture=demo.architecture,
                architecture_config=demo.architecture_config,
                dataset=DatasetChoice(builtin=demo.dataset),
            ),
            settings,
        )
    checkpoints = {c.name: c for c in services.list_checkpoints(project.id, settings)}
    jobs = services.list_jobs(project.id, settings)
    active = [j for j in jobs if j.state in ("queued", "running")]
    queued: list[JobPublic] = []

    def active_job(kind: str, **match: object) -> JobPublic | None:
        for j in active:
            if j.kind == kind and all(j.params.get(k) == v for k, v in match.items()):
                return j
        return None

    train = active_job("train")
    if not any(c.role == "dense" for c in checkpoints.values()) and train is None:
        train = services.submit_job(
            project.id, JobCreate(kind="train", params=demo.train_params), settings
        )
        queued.append(train)
    upstream = [train.id] if train is not None else []

    prune_jobs = []
    for method in demo.methods:
        for sparsity in demo.sparsities:
            if default_pruned_name(method, sparsity) in checkpoints:
                continue
            job = active_job("prune", method=method, sparsity=sparsity)
            if job is None:
                job = services.submit_job(
                    project.id,
                    JobCreate(
                        kind="prune",
                        params={"method": method, "sparsity": sparsity, "seed": 0},
                        depends_on=upstream,
                    ),
                    settings,
                )
                queued.append(job)
            prune_jobs.append(job.id)

    results = [r for r in services.list_results(project.id, settings) if r.kind == "evaluation"]
    evaluated = results and set(map(int, results[-1].summary.get("accuracy", {}))) >= {
        c.id for c in checkpoints.values()
    }
    if (queued or not evaluated) and active_job("analyze") is None:
        queued.append(
            services.submit_job(
                project.id,
                JobCreate(kind="analyze", depends_on=upstream + prune_jobs),
                settings,
            )
        )
    return project.id, queued


def ensure_demo_projects(settings: Settings) -> list[int]:
    return [ensure_demo_project(d, settings)[0] for d in DEMO_PROJECTS]


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
                jobs = [j for p in self.project_ids for j in services.list_jobs(p, self.settings)]
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
                        else ""
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
