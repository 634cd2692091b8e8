"""Shared 2-D projections: PCA against an SVD, UMAP's reference map and alignment, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.workers.analyses import embeddings
from prunescope.workers.analyses.embeddings import (
    ProjectionCache,
    principal_axes,
    project_features,
    projection_key,
)


def _clustered(n: int = 90, d: int = 7, seed: int = 0) -> np.ndarray:
    """Three anisotropic clusters, so the principal axes are well separated."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, d))
    x = centres[np.arange(n) % 3] + rng.normal(size=(n, d)) * np.linspace(2.0, 0.2, d)
    return x.astype(np.float32)


def _svd_axes(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-two right singular vectors of the centred reference, in float64."""
    x = reference.astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2].T


def _match_signs(coordinates: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`expected` with each axis flipped to agree with `coordinates` (PCA is exact up to sign)."""
    signs = np.sign(np.sum(coordinates * expected, axis=tuple(range(expected.ndim - 1))))
    return expected * signs


# ---------------------------------------------------------------- PCA


@pytest.mark.parametrize(("n", "d"), [(90, 7), (6, 40)])  # scatter route, then Gram route
@pytest.mark.parametrize("reference", [0, 2])
def test_pca_matches_svd_of_reference(n, d, reference):
    features = [_clustered(n, d, seed) for seed in range(3)]
    out = project_features(features, method="pca", reference=reference)
    assert out.shape == (3, n, 2) and out.dtype == np.float32
    mean, axes = _svd_axes(features[reference])
    expected = np.stack([(f.astype(np.float64) - mean) @ axes for f in features])
    np.testing.assert_allclose(out, _match_signs(out, expected), rtol=1e-5, atol=1e-4)


def test_reference_coordinates_are_the_pca_scores():
    reference = _clustered()
    out = project_features([reference, _clustered(seed=5)], method="pca")
    x = reference.astype(np.float64)
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    scores = u[:, :2] * s[:2]
    np.testing.assert_allclose(out[0], _match_signs(out[0], scores), rtol=1e-5, atol=1e-4)
    # Scores are uncorrelated with variances equal to the top squared singular values / n.
    np.testing.assert_allclose(
        np.cov(out[0].T, bias=True), np.diag(s[:2] ** 2) / len(x), rtol=1e-4, atol=1e-3
    )


def test_axis_signs_make_the_largest_loading_positive():
    reference = _clustered()
    mean, axes = principal_axes(reference)
    _, svd = _svd_axes(reference)
    for k in range(2):
        flip = np.sign(svd[np.argmax(np.abs(svd[:, k])), k])
        np.testing.assert_allclose(axes[:, k], flip * svd[:, k], atol=1e-10)
        assert axes[np.argmax(np.abs(axes[:, k])), k] > 0
    np.testing.assert_allclose(mean, reference.astype(np.float64).mean(axis=0))


def test_identical_checkpoints_get_identical_coordinates():
    reference = _clustered()
    out = project_features([reference, reference.copy(), reference], method="pca")
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


def test_shifted_copy_moves_by_the_projected_shift():
    rng = np.random.default_rng(3)
    reference = _clustered()
    constant_shift = rng.normal(size=reference.shape[1]).astype(np.float32)
    example_shifts = rng.normal(size=reference.shape).astype(np.float32)
    out = project_features(
        [reference, reference + constant_shift, reference + example_shifts], method="pca"
    )
    _, axes = principal_axes(reference)
    np.testing.assert_allclose(
        out[1] - out[0], np.tile(constant_shift @ axes, (len(reference), 1)), atol=1e-4
    )
    np.testing.assert_allclose(out[2] - out[0], example_shifts @ axes, atol=1e-4)


def test_pca_degenerate_references_give_zero_axes_not_nan():
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=20), rng.normal(size=5)).astype(np.float32)  # rank 1
    out = project_features([line, rng.normal(size=(20, 5))], method="pca")
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, :, 1], 0.0)
    assert np.ptp(out[0, :, 0]) > 0
    one_feature = rng.normal(size=(10, 1))
    out = project_features([one_feature, one_feature + 1.0], method="pca")
    np.testing.assert_allclose(
        np.abs(out[0, :, 0]), np.abs(one_feature[:, 0] - one_feature.mean()), rtol=1e-5
    )
    np.testing.assert_allclose(out[1, :, 0] - out[0, :, 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[:, :, 1], 0.0)
    constant = np.full((8, 4), 3.0)
    out = project_features([constant, rng.normal(size=(8, 4))], method="pca")
    np.testing.assert_array_equal(out, 0.0)


def test_pca_ignores_umap_only_parameters():
    features = [_clustered(), _clustered(seed=1)]
    expected = project_features(features, method="pca")
    np.testing.assert_array_equal(
        project_features(
            features, method="pca", alignment="aligned", seed=9, n_neighbors=50, min_dist=0.9
        ),
        expected,
    )


def test_accepts_a_stacked_array_and_integers():
    stacked = np.stack([_clustered(), _clustered(seed=1)])
    np.testing.assert_array_equal(
        project_features(stacked, method="pca"), project_features(list(stacked), method="pca")
    )
    counts = np.random.default_rng(0).integers(0, 9, size=(30, 4))
    assert np.all(np.isfinite(project_features([counts, counts], method="pca")))


def test_progress_reaches_one():
    calls = []
    project_features([_clustered()], method="pca", progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize(
    ("features", "kwargs", "message"),
    [
        ([], {}, "no features"),
        ([np.zeros(5)], {}, "one \\(examples × features\\) matrix"),
        ([np.zeros((4, 3)), np.zeros((4, 2))], {}, "same examples with the same units"),
        ([np.zeros((4, 3)), np.zeros((5, 3))], {}, "same examples"),
        ([np.zeros((0, 3))], {"method": "pca"}, "empty"),
        ([np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]])], {"method": "pca"}, "NaN or Inf"),
        ([np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]])], {"method": "pca"}, "NaN or Inf"),
        ([np.array([["a", "b"]])], {}, "real numbers"),
        ([np.ones((2, 3))], {"method": "pca"}, "at least 3 examples"),
        ([np.ones((5, 3))], {"method": "tsne"}, "method must be one of"),
        ([np.ones((5, 3))], {"alignment": "joint"}, "alignment must be one of"),
        ([np.ones((5, 3))], {"method": "pca", "reference": 1}, "reference=1 is not a checkpoint"),
        ([np.ones((5, 3))], {"method": "pca", "reference": -1}, "is not a checkpoint"),
        ([np.ones((5, 3))], {"method": "pca", "reference": 0.0}, "checkpoint index"),
        ([np.ones((15, 3))], {"n_neighbors": 15}, "at least 16 examples"),
        ([np.ones((50, 3))], {"n_neighbors": 1}, "at least 2"),
        ([np.ones((50, 3))], {"n_neighbors": 5.5}, "must be an integer"),
        ([np.ones((50, 3))], {"min_dist": 1.5}, "min_dist"),
        ([np.ones((50, 3))], {"min_dist": -0.1}, "min_dist"),
        ([np.ones((50, 3))], {"seed": -1}, "seed must be between"),
        ([np.ones((50, 3))], {"seed": None}, "seed must be an integer"),
        ([np.ones((50, 3))], {}, "same for every example"),
        (
            [np.random.default_rng(0).normal(size=(50, 3)), np.ones((50, 3))],
            {"alignment": "aligned"},
            "checkpoint 1's features are the same for every example.*alignment='reference'",
        ),
    ],
)
def test_invalid_input_raises_a_clear_error(features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        project_features(features, **kwargs)


def test_validation_happens_before_umap_is_imported(monkeypatch):
    def fail():
        raise AssertionError("umap imported for input that is rejected anyway")

    monkeypatch.setattr(embeddings, "_umap_module", fail)
    with pytest.raises(ValueError):
        project_features([np.ones((50, 3))])


# ---------------------------------------------------------------- cache


@pytest.fixture
def counted_pca(monkeypatch):
    calls = []
    original = embeddings._project_pca

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(embeddings, "_project_pca", counting)
    return calls


def test_cache_hit_returns_the_stored_array_without_projecting(tmp_path, counted_pca):
    cache = ProjectionCache(tmp_path / "projections")
    features = [_clustered(), _clustered(seed=1)]
    first = project_features(features, method="pca", cache=cache)
    assert len(counted_pca) == 1
    messages = []
    second = project_features(
        [f.copy() for f in features],
        method="pca",
        cache=cache,
        progress=lambda f, m: messages.append(m),
    )
    assert len(counted_pca) == 1 and messages == ["loaded from cache"]
    np.testing.assert_array_equal(second, first)
    assert second.dtype == np.float32
    key = projection_key(features, method="pca")
    assert [p.name for p in (tmp_path / "projections").iterdir()] == [f"{key}.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "projections" / f"{key}.npy"), first)


def _valid_file(path, shape=(2, 90, 2)):
    np.save(path, np.zeros(shape, dtype=np.float32))


def _huge_header(path):
    """A well-formed header claiming 2·10¹² floats over a few bytes: must not be allocated."""
    with path.open("wb") as file:
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1, 2)}
        np.lib.format.write_array_header_1_0(file, header)
        file.write(b"\0" * 64)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"not an npy file at all"),
        lambda p: (_valid_file(p), p.write_bytes(p.read_bytes()[:-7])),  # truncated
        lambda p: (_valid_file(p), p.write_bytes(p.read_bytes() + b"\0" * 8)),  # too long
        lambda p: np.save(p, np.zeros((2, 90, 2), dtype=np.float64)),  # wrong dtype
        lambda p: np.save(p, np.zeros((2, 90, 3), dtype=np.float32)),  # not 2-D points
        lambda p: _valid_file(p, shape=(2, 89, 2)),  # another projection's shape
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        lambda p: _huge_header(p),
    ],
)
def test_corrupt_cache_file_is_recomputed_and_replaced(tmp_path, counted_pca, corrupt):
    cache = ProjectionCache(tmp_path)
    features = [_clustered(), _clustered(seed=1)]
    key = cache.key_for(features, method="pca")
    corrupt(cache.path_for(key))
    out = project_features(features, method="pca", cache=cache)
    assert len(counted_pca) == 1
    np.testing.assert_array_equal(out, project_features(features, method="pca"))
    np.testing.assert_array_equal(cache.get(key), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.npy"]  # no temporary left


def test_cache_get_of_a_missing_key_is_none_and_keys_are_checked(tmp_path):
    cache = ProjectionCache(tmp_path)
    assert cache.get("0" * 64) is None
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.get("../outside")
    with pytest.raises(ValueError, match="float32"):
        cache.put("0" * 64, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="float32"):
        cache.put("0" * 64, np.zeros((3, 2), dtype=np.float32))


def test_key_depends_on_every_input_and_only_on_used_parameters():
    features = [_clustered(), _clustered(seed=1)]
    base = projection_key(features)
    assert projection_key([f.copy() for f in features]) == base
    assert len(base) == 64 and int(base, 16) >= 0
    changed = [f.copy() for f in features]
    changed[1][5, 3] += 1e-3
    variants = [
        [changed],
        [features[::-1]],
        [features[:1]],
        [[features[0], features[1].astype(np.float64)]],
        [[features[0], features[1].view(np.int32)]],  # same bytes, another dtype
        [[features[0], features[1].reshape(-1, 1)]],  # same bytes, another shape
    ]
    keys = {projection_key(*v) for v in variants}
    for name, value in [
        ("method", "pca"),
        ("alignment", "aligned"),
        ("reference", 1),
        ("seed", 1),
        ("n_neighbors", 10),
        ("min_dist", 0.2),
    ]:
        keys.add(projection_key(features, **{name: value}))
    assert base not in keys and len(keys) == len(variants) + 6
    # PCA uses neither the seed nor UMAP's settings, so they do not split its cache.
    pca = projection_key(features, method="pca")
    assert projection_key(features, method="pca", seed=7, n_neighbors=3, min_dist=0.5) == pca
    assert projection_key(features, method="pca", reference=1) != pca


# ---------------------------------------------------------------- UMAP (numba JIT: slow once)


@pytest.fixture(scope="module")
def digits_checkpoints() -> list[np.ndarray]:
    """Digits pixels as the dense features, a noisy copy, and the dense features again."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float32)
    noisy = pixels + np.random.default_rng(0).normal(scale=0.5, size=pixels.shape).astype(
        np.float32
    )
    return [noisy, pixels, pixels.copy()]


@pytest.fixture(scope="module")
def umap_reference_map(digits_checkpoints):
    return project_features(digits_checkpoints, method="umap", reference=1, seed=3)


@pytest.mark.slow  # the first UMAP fit in a process compiles umap's numba code (~1 min)
def test_umap_reference_map_is_umaps_fit_and_transform(digits_checkpoints, umap_reference_map):
    import umap
    from sklearn.manifold import trustworthiness

    noisy, pixels, _ = digits_checkpoints
    out = umap_reference_map
    assert out.shape == (3, len(pixels), 2) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    mapper = umap.UMAP(
        n_neighbors=15,
        min_dist=0.1,
        random_state=3,
        transform_seed=3,
        n_jobs=1,
        force_approximation_algorithm=True,
        init="pca",
    ).fit(pixels)
    np.testing.assert_array_equal(out[1], mapper.embedding_)
    np.testing.assert_array_equal(out[2], out[1])  # an unchanged checkpoint does not move
    np.testing.assert_array_equal(out[0], mapper.transform(noisy))
    assert trustworthiness(pixels, out[1], n_neighbors=10) > 0.9
    assert trustworthiness(noisy, out[0], n_neighbors=10) > 0.9


@pytest.mark.slow
def test_umap_is_deterministic_for_a_seed(digits_checkpoints, umap_reference_map):
    import numba

    threads = numba.get_num_threads()
    again = project_features(digits_checkpoints, method="umap", reference=1, seed=3)
    np.testing.assert_array_equal(again, umap_reference_map)
    assert numba.get_num_threads() == threads
    other_seed = project_features(digits_checkpoints[:2], method="umap", reference=1, seed=4)
    assert not np.array_equal(other_seed[1], umap_reference_map[1])


@pytest.mark.slow
def test_aligned_umap_follows_the_reference_order(digits_checkpoints):
    pixels = digits_checkpoints[1][:150]
    pruned = pixels * (np.arange(pixels.shape[1]) % 4 != 0)  # a quarter of the units masked
    forward = project_features(
        [pruned, pixels], method="umap", alignment="aligned", reference=1, n_neighbors=10
    )
    swapped = project_features(
        [pixels, pruned], method="umap", alignment="aligned", reference=0, n_neighbors=10
    )
    assert forward.shape == (2, 150, 2) and np.all(np.isfinite(forward))
    np.testing.assert_array_equal(forward[::-1], swapped)
    assert not np.array_equal(forward[0], forward[1])


@pytest.mark.slow
def test_umap_cache_hit_skips_the_fit(
    tmp_path, digits_checkpoints, umap_reference_map, monkeypatch
):
    cache = ProjectionCache(tmp_path)
    key = cache.key_for(digits_checkpoints, method="umap", reference=1, seed=3)
    cache.put(key, umap_reference_map)

    def fail(*args, **kwargs):
        raise AssertionError("projected although the cache holds the map")

    monkeypatch.setattr(embeddings, "_project_umap", fail)
    out = project_features(digits_checkpoints, method="umap", reference=1, seed=3, cache=cache)
    np.testing.assert_array_equal(out, umap_reference_map)


@pytest.mark.slow
def test_warm_up_umap_runs_both_alignments():
    embeddings.warm_up_umap(aligned=True)
