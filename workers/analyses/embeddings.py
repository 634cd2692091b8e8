"""Shared 2-D maps of several checkpoints' features, to draw how pruning moves each example.

The input is, for C checkpoints of one network (a dense model and pruned copies), the
penultimate-layer features of the same N examples: C arrays (N × d) with the same d and the
same units (pruning masks weights, so unit k of a pruned model is unit k of the dense one).
`project_features` returns float32 coordinates [C, N, 2] on axes shared by every checkpoint, so
a line from an example's dense position to its pruned position shows how pruning moved it.

Methods:

- "pca": principal axes of the reference checkpoint (centred by its mean, float64), every
  checkpoint projected onto those two axes: yᵢ = Vᵀ(fᵢ − μ_ref). Exact and linear, so a
  shift δ of a pruned example's features moves it by exactly Vᵀδ. The axes are the top two
  eigenvectors of the reference's scatter matrix (d × d), or of its Gram matrix (N × N) when
  that is smaller; each axis' sign is fixed by making its largest-|loading| entry positive.
  An axis along which the reference has no variance (eigenvalue below 1e-12 of the largest,
  i.e. rounding, or a reference whose centred sum of squares is below 1e-20 of its raw one)
  is set to zero, so e.g. d = 1, or a constant reference, gives zero coordinates there.
  PCA ignores `alignment` (its axes are shared by construction), `seed` and UMAP's settings.
- "umap" with alignment "reference" (the default): `umap.UMAP` fitted on the reference
  checkpoint, every other checkpoint placed into that map with `.transform`. A pruned
  example's position says where its features land among the dense model's examples; a
  checkpoint whose features equal the reference's byte for byte gets exactly the fitted
  `embedding_` (umap recognises its training data), so lines show only what pruning changed.
- "umap" with alignment "aligned": `umap.AlignedUMAP` over [reference, the others in the given
  order], identity relations (the same examples), each checkpoint's own map returned. Each
  panel then keeps its own checkpoint's neighbourhoods, and the maps are only pulled towards
  each other (alignment_regularisation 0.01, window 3 neighbouring checkpoints). With a single
  checkpoint there is nothing to align, and the map is the "reference" one.

Why "reference" is the default. Measured on 2 cores with the 64 hidden units of a digits MLP
(scikit-learn, 1,797 examples; pruned copies by magnitude-pruning its first layer, no
fine-tuning), UMAP warm; trustworthiness (k = 10) of each checkpoint's map against its own
features, and the Spearman correlation between how far an example's features moved
(‖f_pruned − f_dense‖) and how far its point moved:

                        time     trustworthiness               Spearman(feature, map move)
    sparsity                     dense  50 %  80 %  90 %  95 %  50 %   80 %   90 %   95 %
    reference+transform  3.2 s   .990  .988  .970  .890  .756  −.04    .40    .33    .23
    aligned             40 s     .990  .990  .989  .989  .985   .02   −.06   −.08   −.01
    PCA (for scale)      0.004 s .872  .869  .874  .875  .845   .19    .25    .32    .47

Aligned maps are more faithful per panel (each keeps its own checkpoint's neighbourhoods), but
the lines between panels say nothing about how far an example's features moved (correlation
≈ 0: the joint optimisation lays every checkpoint out afresh and only pulls the maps together),
an unchanged checkpoint still moves by 1.3 % of the map's scale, and it costs 10–12× the time
(AlignedUMAP fits a full UMAP per checkpoint, discards those layouts, then optimises all of
them jointly; 203 s against 17.7 s for five checkpoints of 10,000 × 384). The reference map
shows each pruned checkpoint in the dense model's terms — what "where did pruning move this
example" asks — so a heavily pruned checkpoint's own neighbourhoods are kept less well
(trustworthiness .76 at 95 %), and displacement ranks with the feature change. An unchanged
checkpoint lands exactly on the dense positions; a checkpoint changed by rounding-level noise
(1e-4 of the features' spread) moves by a median 1 % (90th percentile 2 %) of the map's scale,
the noise floor of `.transform` (30–100 epochs of re-optimisation per point), which is also
why the 50 % column shows no correlation: its median move, 1.2 %, is at that floor. PCA's
moves are exact projections of the feature change (hence its correlations), on a map that
keeps neighbourhoods less well.

UMAP settings and why:
- `init="pca"`: umap's default spectral initialisation spends ~3 s of a 10,000-example fit in
  ARPACK; PCA initialisation (recommended for global structure by Kobak & Linderman,
  "Initialization is critical for preserving global data structure in both t-SNE and UMAP",
  Nature Biotechnology 2021) is near-free and kept trustworthiness (0.896 against 0.891) on
  10,000 × 384 MLP features. Epochs stay umap's defaults (500 up to 10,000 examples, then
  200); 200 epochs halve the fit but lowered the displacement correlation (0.25 → 0.23).
- `force_approximation_algorithm=True`: below 4,096 examples umap computes exact neighbours
  through scikit-learn with its numba distance as a Python callable (one call per pair), ~3 s
  for 1,797 examples on every fit and every transform, several times the rest of the work;
  NN-descent (pynndescent), which umap uses above 4,096 anyway, makes one code path and one JIT
  warm-up for every size (trustworthiness within 1e-3).
- Deterministic for a seed: `random_state=seed`, `transform_seed=seed`, which makes umap run
  single-threaded. On 2 cores an unseeded parallel fit of 10,000 × 384 took 4.9 s against
  6.6 s on a quiet machine (1.3×; 1.9× at 2,500), but 2.5× longer than the seeded one while
  other work loaded the machine (threads waiting on each other), and its maps differ run to
  run, which a cache keyed by seed must not store. So every map is seeded; the fit is 6.6 s of
  a five-checkpoint map's 17.7 s, the rest the four transforms. Maps are reproducible on one
  machine with the same BLAS thread count (PCA initialisation's rounding depends on it).
  umap sets numba's thread count as a side effect; it is restored afterwards.
- umap is imported on first use (1–15 s, depending on the disk cache) and its and pynndescent's
  numba code compiles on the first fit and first transform (~30–60 s at 10,000 examples); both
  persist in a long-lived worker, and `warm_up_umap()` pays them at start-up.

Results may be cached (`ProjectionCache`): the key is a sha256 over every array's dtype, shape
and bytes, the parameters that matter for the method (PCA ignores seed, n_neighbors, min_dist)
and a version string that includes umap-learn's version for UMAP maps.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from scipy.linalg import eigh

ProgressFn = Callable[[float, str], None]
METHODS = ("pca", "umap")
ALIGNMENTS = ("reference", "aligned")
# Bump when a change here changes the coordinates produced for the same inputs.
PROJECTION_VERSION = "1"
_CONSTANT_RTOL = 1e-20
_SPECTRUM_RTOL = 1e-12
_MAX_SEED = 2**32 - 1
_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


def _no_progress(fraction: float, message: str) -> None:
    pass


@functools.cache
def _umap_module() -> ModuleType:
    """umap, imported once per process (1–15 s), and only when a UMAP map is asked for."""
    import umap

    return umap


def _has_variance(x: np.ndarray) -> bool:
    """Whether the rows of x differ by more than rounding (the 1e-20 rule of the CKA reference)."""
    x = x.astype(np.float64, copy=False)
    centred = x - x.mean(axis=0)
    return float(np.vdot(centred, centred)) > _CONSTANT_RTOL * float(np.vdot(x, x))


def _as_feature_arrays(features: Sequence[Any]) -> list[np.ndarray]:
    """The checkpoints' features as 2-D real arrays of one shape; ValueError saying what's wrong."""
    if isinstance(features, np.ndarray) and features.ndim == 3:
        features = list(features)
    if len(features) == 0:
        raise ValueError("no features given: pass one (N × d) array per checkpoint")
    arrays = [np.asarray(f) for f in features]
    for c, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(
                f"checkpoint {c}'s features have shape {a.shape}; each checkpoint needs one "
                "(examples × features) matrix"
            )
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"checkpoint {c}'s features have dtype {a.dtype}; pass real numbers")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"checkpoint {c}'s features are empty (shape {a.shape})")
        if a.shape != arrays[0].shape:
            raise ValueError(
                f"checkpoint {c}'s features have shape {a.shape} but checkpoint 0's have "
                f"{arrays[0].shape}: every checkpoint must describe the same examples with the "
                "same units (structurally pruned layers that lost units cannot share a map)"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"checkpoint {c}'s features contain NaN or Inf; there is no map of them"
            )
    return arrays


def _check_parameters(
    n_checkpoints: int,
    n_examples: int,
    method: str,
    alignment: str,
    reference: int,
    seed: int,
    n_neighbors: int,
    min_dist: float,
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)):
        raise ValueError(f"reference must be a checkpoint index, got {reference!r}")
    if not 0 <= reference < n_checkpoints:
        raise ValueError(
            f"reference={reference} is not a checkpoint: there are {n_checkpoints} "
            f"(indices 0 to {n_checkpoints - 1})"
        )
    if method == "pca":
        if n_examples < 3:
            raise ValueError(f"a PCA map needs at least 3 examples, got {n_examples}")
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be between 0 and {_MAX_SEED}, got {seed}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)):
        raise ValueError(f"n_neighbors must be an integer, got {n_neighbors!r}")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")
    if n_examples < n_neighbors + 1:
        raise ValueError(
            f"a UMAP map with n_neighbors={n_neighbors} needs at least {n_neighbors + 1} "
            f"examples, got {n_examples}; lower n_neighbors or use method='pca'"
        )
    if isinstance(min_dist, bool) or not (
        isinstance(min_dist, (int, float, np.integer, np.floating)) and 0.0 <= min_dist <= 1.0
    ):
        raise ValueError(f"min_dist must be between 0 and 1 (umap's spread), got {min_dist!r}")


def projection_key(
    features: Sequence[np.ndarray],
    *,
    method: str = "umap",
    alignment: str = "reference",
    reference: int = 0,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> str:
    """sha256 (hex) naming one projection: every array's dtype, shape and bytes, and parameters.

    Parameters a method does not use (seed, n_neighbors, min_dist and alignment for PCA) are
    left out, so changing them does not miss the cache. UMAP keys include umap-learn's
    version (read from package metadata, without importing umap).
    """
    if method == "umap":
        version = f"{PROJECTION_VERSION}/umap-learn {metadata.version('umap-learn')}"
        parameters = {
            "method": method,
            "alignment": alignment,
            "reference": int(reference),
            "seed": int(seed),
            "n_neighbors": int(n_neighbors),
            "min_dist": float(min_dist),
        }
    else:
        version = PROJECTION_VERSION
        parameters = {"method": method, "reference": int(reference)}
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": version, **parameters}, sort_keys=True).encode())
    for a in features:
        a = np.ascontiguousarray(a)
        digest.update(json.dumps({"dtype": a.dtype.str, "shape": a.shape}).encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


class ProjectionCache:
    """Projections stored as `<key>.npy` in one folder, keyed by `projection_key`.

    Files are written to a temporary name and moved into place with `os.replace`, so a reader
    never sees half a file; a file that is unreadable, truncated or not a float32 [C, N, 2]
    array counts as a miss, and the next `put` replaces it.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def key_for(self, features: Sequence[np.ndarray], **parameters: Any) -> str:
        """The key of `features` under `project_features`' keyword parameters."""
        return projection_key(features, **parameters)

    def path_for(self, key: str) -> Path:
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"cache keys are 64 lowercase hex digits (sha256), got {key!r}")
        return self.folder / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored projection, or None when it is missing or its file is not a valid one."""
        path = self.path_for(key)
        try:
            return _read_projection(path)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, key: str, projection: np.ndarray) -> None:
        """Store a float32 [C, N, 2] projection under `key`, atomically."""
        path = self.path_for(key)
        projection = np.asarray(projection)
        if projection.dtype != np.float32 or projection.ndim != 3 or projection.shape[2] != 2:
            raise ValueError(
                f"a projection is a float32 [checkpoints, examples, 2] array, got "
                f"{projection.dtype} {projection.shape}"
            )
        descriptor, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".tmp")
        try:
            # No fsync: a file cut short by a crash reads as a miss and is recomputed.
            with os.fdopen(descriptor, "wb") as file:
                np.lib.format.write_array(
                    file, np.ascontiguousarray(projection), allow_pickle=False
                )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _read_projection(path: Path) -> np.ndarray | None:
    """A float32 [C, N, 2] array from an .npy file; ValueError unless the file is exactly that.

    The header is checked against the file size before any data is read, so a corrupt header
    cannot ask for an arbitrarily large allocation.
    """
    if not path.is_file():
        return None
    with path.open("rb") as file:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype != np.float32 or fortran_order or len(shape) != 3 or shape[2] != 2:
            raise ValueError(f"not a projection: {dtype} {shape}")
        count = math.prod(shape)
        if file.tell() + count * dtype.itemsize != path.stat().st_size:
            raise ValueError("file size does not match its header")
        return np.fromfile(file, dtype=dtype, count=count).reshape(shape)


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean (d) and top two principal directions (d × 2, unit columns) of the rows of x.

    Eigenvectors of the centred scatter matrix XᵀX (d × d), or, when N < d, of the Gram matrix
    XXᵀ (N × N) mapped back by Xᵀu/√λ; both in float64. Each column's largest-|loading| entry
    is positive. A direction without variance (λ ≤ 1e-12·λ₁, or every row of x equal) is zero.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    n, d = x.shape
    axes = np.zeros((d, 2))
    if not float(np.vdot(centred, centred)) > _CONSTANT_RTOL * float(np.vdot(x, x)):
        return mean, axes
    size = min(n, d)
    keep = min(2, size)
    gram_route = n < d
    product = centred @ centred.T if gram_route else centred.T @ centred
    values, vectors = eigh(product, subset_by_index=[size - keep, size - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    used = values > _SPECTRUM_RTOL * values[0]
    values, vectors = values[used], vectors[:, used]
    if gram_route:
        vectors = centred.T @ vectors / np.sqrt(values)
    largest = np.argmax(np.abs(vectors), axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(vectors.shape[1])])
    axes[:, : vectors.shape[1]] = vectors
    return mean, axes


def _project_pca(
    features: Sequence[np.ndarray], reference: int, progress: ProgressFn
) -> np.ndarray:
    progress(0.0, "PCA of the reference checkpoint")
    mean, axes = principal_axes(features[reference])
    coordinates = np.empty((len(features), features[0].shape[0], 2), dtype=np.float32)
    for c, f in enumerate(features):
        coordinates[c] = (f.astype(np.float64) - mean) @ axes
    return coordinates


def _umap_settings(seed: int, n_neighbors: int, min_dist: float) -> dict[str, Any]:
    return {
        "n_neighbors": int(n_neighbors),
        "min_dist": float(min_dist),
        "random_state": int(seed),
        "transform_seed": int(seed),
        "force_approximation_algorithm": True,
        "init": "pca",
    }


def _project_umap(
    features: Sequence[np.ndarray],
    alignment: str,
    reference: int,
    seed: int,
    n_neighbors: int,
    min_dist: float,
    progress: ProgressFn,
) -> np.ndarray:
    progress(0.0, "loading umap")
    umap = _umap_module()
    import numba

    threads = numba.get_num_threads()
    features = [np.ascontiguousarray(f, dtype=np.float32) for f in features]
    settings = _umap_settings(seed, n_neighbors, min_dist)
    coordinates = np.empty((len(features), features[0].shape[0], 2), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            # AlignedUMAP builds seeded UMAPs with the default n_jobs=-1, and each says so.
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            if alignment == "aligned" and len(features) > 1:
                order = [reference] + [c for c in range(len(features)) if c != reference]
                identity = {i: i for i in range(features[0].shape[0])}
                progress(0.05, f"fitting aligned UMAP over {len(features)} checkpoints")
                aligned = umap.AlignedUMAP(**settings).fit(
                    [features[c] for c in order], relations=[identity] * (len(order) - 1)
                )
                for c, embedding in zip(order, aligned.embeddings_, strict=True):
                    coordinates[c] = embedding
            else:
                progress(0.05, f"fitting UMAP on checkpoint {reference}")
                mapper = umap.UMAP(n_jobs=1, **settings).fit(features[reference])
                coordinates[reference] = mapper.embedding_
                others = [c for c in range(len(features)) if c != reference]
                for done, c in enumerate(others):
                    progress(0.5 + 0.5 * done / len(others), f"placing checkpoint {c}")
                    coordinates[c] = mapper.transform(features[c])
    finally:
        numba.set_num_threads(threads)
    return coordinates


def project_features(
    features: Sequence[np.ndarray],
    *,
    method: str = "umap",
    alignment: str = "reference",
    reference: int = 0,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    cache: ProjectionCache | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """float32 [C, N, 2]: every checkpoint's N examples on axes shared by all C checkpoints.

    `features[c]` is checkpoint c's (N × d) features of the same examples; `reference` the
    checkpoint whose geometry defines the map (the dense model). See the module docstring for
    the methods. UMAP coordinates are deterministic for a given seed on one machine (and BLAS
    thread count); PCA's are exact. umap marks an example disconnected from its neighbour
    graph with NaN coordinates (not seen with Euclidean features; they stay NaN here).
    PCA ignores alignment, seed, n_neighbors and min_dist (its axes are always the reference's).
    Raises ValueError for mismatched shapes, NaN/Inf, too few examples (3 for PCA,
    n_neighbors + 1 for UMAP), and a UMAP of features that are the same for every example
    (its layout of them would be noise).
    """
    progress = progress or _no_progress
    arrays = _as_feature_arrays(features)
    n_checkpoints, n_examples = len(arrays), arrays[0].shape[0]
    _check_parameters(
        n_checkpoints, n_examples, method, alignment, reference, seed, n_neighbors, min_dist
    )
    if method == "umap":
        fitted = range(n_checkpoints) if alignment == "aligned" else [reference]
        for c in fitted:
            if not _has_variance(arrays[c]):
                hint = " (use alignment='reference' to place it in the reference's map)"
                raise ValueError(
                    f"checkpoint {c}'s features are the same for every example (a dead layer?); "
                    "a UMAP of them has no structure"
                    + (hint if c != reference else "; choose another layer or reference")
                )
    key = None
    if cache is not None:
        key = projection_key(
            arrays,
            method=method,
            alignment=alignment,
            reference=reference,
            seed=seed,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
        )
        stored = cache.get(key)
        if stored is not None and stored.shape == (n_checkpoints, n_examples, 2):
            progress(1.0, "loaded from cache")
            return stored
    if method == "pca":
        coordinates = _project_pca(arrays, reference, progress)
    else:
        coordinates = _project_umap(
            arrays, alignment, reference, seed, n_neighbors, min_dist, progress
        )
    if cache is not None:
        cache.put(key, coordinates)
    progress(1.0, "done")
    return coordinates


def warm_up_umap(aligned: bool = False) -> None:
    """Import umap and compile its numba code on a tiny map (~1 min once per process).

    A long-lived worker can call this at start-up so the first geometry job does not pay it;
    `aligned=True` also compiles AlignedUMAP's joint optimisation.
    """
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8)).astype(np.float32)
    shifted = features + np.float32(0.1)
    project_features([features, shifted], method="umap", n_neighbors=5)
    if aligned:
        project_features([features, shifted], method="umap", alignment="aligned", n_neighbors=5)
