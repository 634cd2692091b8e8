"""Pruning methods: what each one is and needs (torch-free), and the methods themselves.

`catalogue` names every method with a one-line description and the flags a caller checks
before running it (`needs_calibration`, `fixed_sparsity`, …); the web server reads only that.
`methods.PRUNING_METHODS` holds the callables under the same names, one module per method
beside it. Importing this package stays light: `PRUNING_METHODS` is imported, with torch, on
first use.
"""

from __future__ import annotations

from typing import Any

from prunescope.models.pruning.catalogue import (
    PRUNING_CATALOGUE,
    PruningMethodInfo,
    method_flag,
    sparsity_error,
)

__all__ = ["PRUNING_CATALOGUE", "PRUNING_METHODS", "PruningMethodInfo", "method_flag",
           "sparsity_error"]


def __getattr__(name: str) -> Any:
    if name == "PRUNING_METHODS":
        # torch only where a method runs; the server imports this package for the catalogue.
        from prunescope.models.pruning.methods import PRUNING_METHODS

        return PRUNING_METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
