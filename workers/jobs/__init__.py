"""The job kinds, each declared once in its own module here; adding a kind is adding a module.

A kind module defines `KIND`, a `JobDeclaration`: its parameters and their checks, its handler,
the results it reads and writes, the checkpoints its parameters name and the GPU share it asks
for. `JOB_KINDS` collects them by name, in the order of their `position`. Everything here
imports without torch (handlers import their heavy modules when they run), because the web
server reads the declarations to validate submissions; `common`, `declaration` and `params`
support the kinds.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from prunescope.models.pruning.catalogue import PRUNING_CATALOGUE
from prunescope.workers.jobs.declaration import JobDeclaration
from prunescope.workers.jobspec import JobInputError

_SUPPORT_MODULES = frozenset({"common", "declaration", "params"})


def _discover() -> dict[str, JobDeclaration]:
    kinds: dict[str, JobDeclaration] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name in _SUPPORT_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        kind = getattr(module, "KIND", None)
        if not isinstance(kind, JobDeclaration) or kind.name != module_info.name:
            raise TypeError(f"{module.__name__} must declare KIND = JobDeclaration(name="
                            f"{module_info.name!r}, …)")
        kinds[kind.name] = kind
    return dict(sorted(kinds.items(), key=lambda item: item[1].position))


JOB_KINDS: dict[str, JobDeclaration] = _discover()
# What the API accepts: every kind but those the server queues itself (upload validation).
SUBMITTABLE_KINDS: tuple[str, ...] = tuple(k for k, d in JOB_KINDS.items() if not d.internal)


def lane_kinds(lane: str) -> tuple[str, ...]:
    """The kinds that workers of a lane serve (e.g. "ingest": upload validation)."""
    return tuple(k for k, d in JOB_KINDS.items() if d.lane == lane)


def job_kind(kind: str) -> JobDeclaration:
    """The declaration of job kind `kind`; JobInputError naming the known kinds if none."""
    try:
        return JOB_KINDS[kind]
    except KeyError:
        raise JobInputError(
            f"unknown job kind {kind!r}; choose one of {', '.join(JOB_KINDS)}"
        ) from None


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A `kind` job's parameters, checked, with defaults filled in; JobInputError says which
    parameter is wrong and what it must be. Only the parameters: whether the project can run
    the job (its checkpoints, dataset, architecture) is for the server and the handler."""
    return job_kind(kind).validate(params)


def checkpoint_params(kind: str) -> tuple[str, ...]:
    """The parameters of a `kind` job that name checkpoints of its project."""
    return job_kind(kind).checkpoint_params


def reads(kind: str) -> tuple[str, ...]:
    """The result kinds of the project that a `kind` job reads (handed over as spec.results)."""
    return job_kind(kind).reads


def writes(kind: str) -> tuple[str, ...]:
    """The result kinds a `kind` job may write."""
    return job_kind(kind).writes


def pruning_methods() -> dict[str, str]:
    """Pruning method name → its one-line description (scoring rule and paper), by name."""
    return {name: info.description for name, info in sorted(PRUNING_CATALOGUE.items())}


__all__ = ["JOB_KINDS", "SUBMITTABLE_KINDS", "JobDeclaration", "checkpoint_params", "job_kind",
           "lane_kinds", "pruning_methods", "reads", "validate_params", "writes"]
