"""PruneScope: what pruning and compression change inside a neural network.

This package is light on purpose: importing it loads neither torch nor Dash. The layers install
beneath it — ``prunescope.dashboard`` → ``prunescope.server`` → ``prunescope.workers`` →
``prunescope.models`` — and the public Python API (client, launcher, training recorder) is
reached from here as later releases add it.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("prunescope")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
