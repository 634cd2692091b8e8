"""Runs the `prunescope` CLI with torch refused in this process: the web server never needs it.

Usage: python torchless_server.py REPORT_FILE ARGS... (ARGS as for `prunescope`).

Every attempt to import torch or transformers in this process is appended to REPORT_FILE with
the importing stack, and fails with ModuleNotFoundError. The local worker processes that `serve`
spawns start afresh (the spawn start method) and import torch as usual, which is where it
belongs. Everything sits under the `__main__` guard because those spawned workers import this
file again as `__mp_main__`.
"""

from __future__ import annotations

import sys
import traceback

REFUSED = ("torch", "transformers")


class RefuseHeavyImports:
    """A meta-path finder that records and refuses the REFUSED packages."""

    def __init__(self, report: str) -> None:
        self.report = report

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.partition(".")[0] not in REFUSED:
            return None
        with open(self.report, "a") as f:
            f.write(f"import {name}\n{''.join(traceback.format_stack()[:-1])}\n")
        raise ModuleNotFoundError(f"{name} is refused in the web process", name=name)


if __name__ == "__main__":
    report, *args = sys.argv[1:]
    sys.meta_path.insert(0, RefuseHeavyImports(report))
    from prunescope.server.cli import main

    sys.exit(main(args))
