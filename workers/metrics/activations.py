"""The input rule of the data-based metrics: activations as a float64 (examples × features)."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_activation_matrix(a: Any, name: str = "x") -> np.ndarray:
    """Activations as a float64 (n × features) matrix; 1-D is one feature, >2-D is flattened.

    Raises ValueError naming `name` if any value is NaN or Inf.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; the similarity is undefined for it")
    return a

