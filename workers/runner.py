"""The job runner: turns a `JobSpec` into output files and a `JobOutput` by its kind's handler.

Each kind is declared once under `prunescope.workers.jobs` (parameters, handler, results). The
runner looks the kind up, checks that the project's architecture can be built and that the
parameters are valid — so a typo or an out-of-range value fails at once with a message naming
the parameter, before any work starts — calls the handler, and checks that it wrote only what
the kind declares.
"""

from __future__ import annotations

from prunescope.models.registry import build_config
from prunescope.workers.jobs import job_kind
from prunescope.workers.jobspec import JobInputError, JobOutput, JobSpec, ProgressFn


def run_job(spec: JobSpec, progress: ProgressFn) -> JobOutput:
    """Run one job; output files are written into spec.scratch_dir.

    Raises JobInputError for unusable inputs or parameters (the message says what to change)
    and lets JobCancelled from `progress` propagate.
    """
    kind = job_kind(spec.kind)
    try:
        # An upload's check reads the architecture itself: a Hugging Face project has no
        # configuration until its first folder arrives.
        if not kind.internal:
            build_config(spec.architecture, **spec.architecture_config)
    except (TypeError, ValueError) as exc:
        raise JobInputError(f"the project's architecture cannot be built: {exc}") from exc
    output = kind.handler(spec, kind.validate(spec.params), progress)
    kind.check_output(output)
    return output
