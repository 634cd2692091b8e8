"""`JobDeclaration`: everything about one job kind, stated once in its module under workers/jobs.

The API's kind enum, the server's submission checks, the results a job is handed, the runner's
dispatch and the Ray executor's GPU request all read these declarations, so a new kind is one
new module. A declaration must stay importable without torch: the web server imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.workers.jobs.params import Param, read_params
from prunescope.workers.jobspec import JobOutput, JobSpec, ProgressFn

# handler(spec, params, progress): params are the validated ones, defaults filled in.
Handler = Callable[[JobSpec, dict[str, Any], ProgressFn], JobOutput]
# check(params, given): rules across parameters, on the validated values and the raw ones the
# job was given; raises JobInputError. Only the parameters: no project, dataset or torch.
Check = Callable[[dict[str, Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class JobDeclaration:
    """One job kind: what it accepts, what it runs, what it reads and writes, what it needs."""

    name: str
    # Where the kind is listed (the API's enum, messages): the order of a project's work,
    # train before prune before analyze; gaps leave room for new kinds.
    position: int
    params: Mapping[str, Param]
    handler: Handler
    # Result kinds the job may write (NewResult.kind), and the role of the checkpoint it
    # makes, if it makes one ("dense" or "pruned").
    writes: tuple[str, ...] = ()
    makes_checkpoint: str | None = None
    # Result kinds of the project the job reads: the server hands them over as spec.results.
    reads: tuple[str, ...] = ()
    # Parameters naming checkpoints: the server checks they belong to the job's project.
    checkpoint_params: tuple[str, ...] = ()
    # GPUs (a fraction shares one) a Ray task of this kind asks for on a cluster that has
    # GPUs, unless PRUNESCOPE_RAY_NUM_GPUS says otherwise; 0: the job runs on CPUs.
    gpus: float = 0.0
    check: Check | None = None
    # A kind the server queues itself, never submitted through the API (upload validation).
    internal: bool = False
    # Workers that serve only some kinds take these: "ingest" (an upload a person waits for).
    lane: str | None = None

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The job's parameters, checked, with defaults filled in; JobInputError says what to
        change."""
        values = read_params(self.name, params, self.params)
        if self.check is not None:
            self.check(values, params)
        return values

    def check_output(self, output: JobOutput) -> None:
        """RuntimeError when the handler wrote what this declaration does not state, so what
        the declarations say a kind writes (and another kind `reads`) stays true."""
        undeclared = sorted({r.kind for r in output.results} - set(self.writes))
        roles = sorted({c.role for c in output.checkpoints} - {self.makes_checkpoint})
        wrong = [*(f"result kind {k!r}, not in writes={self.writes}" for k in undeclared),
                 *(f"a {r!r} checkpoint, but makes_checkpoint={self.makes_checkpoint!r}"
                   for r in roles)]
        if wrong:
            raise RuntimeError(f"the {self.name} job wrote what workers/jobs/{self.name}.py "
                               f"does not declare: {'; '.join(wrong)}")
