"""Reference CCA (SVCCA, PWCCA) and Procrustes: hand cases, second routes, invariances, edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes, subspace_angles

from tests.reference.cca import canonical_correlations, pwcca, svcca
from tests.reference.procrustes import procrustes_distance

# Three centred, mutually orthogonal vectors over four examples: a hand-checkable geometry.
A = np.array([1.0, 1.0, -1.0, -1.0])
B = np.array([1.0, -1.0, 1.0, -1.0])
C = np.array([1.0, -1.0, -1.0, 1.0])


def _pair(n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x, y


def _rotation(size: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(size, size)))
    return q


# --- CCA -----------------------------------------------------------------------------------


def test_hand_cases():
    np.testing.assert_allclose(
        canonical_correlations(np.c_[A, B], np.c_[A, C]), [1.0, 0.0], atol=1e-12
    )
    # b + c is at 45° to b once a is matched: the second correlation is cos 45°.
    np.testing.assert_allclose(
        canonical_correlations(np.c_[A, B], np.c_[A, B + C]), [1.0, 1 / np.sqrt(2)], atol=1e-12
    )
    x = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 9.0])
    assert canonical_correlations(x, -y)[0] == pytest.approx(abs(np.corrcoef(x, y)[0, 1]))
    # PWCCA weights each direction by how much of x it carries: a gets 2, 3b gets 6.
    assert pwcca(np.c_[A, B], np.c_[A, C]) == pytest.approx(0.5, abs=1e-12)
    assert pwcca(np.c_[A, 3 * B], np.c_[A, C]) == pytest.approx(0.25, abs=1e-12)
    assert svcca(np.c_[A, B], np.c_[A, C]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("n", "p", "q"), [(200, 6, 9), (120, 15, 4)])
def test_qr_whitening_and_principal_angle_routes_agree(n, p, q):
    x, y = _pair(n, p, q, seed=p)
    rho = canonical_correlations(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    # QR route: singular values of QxᵀQy.
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
    np.testing.assert_allclose(rho, np.linalg.svd(qx.T @ qy, compute_uv=False), atol=1e-10)
    # Whitening route: ρ² are the eigenvalues of Σxx⁻¹ Σxy Σyy⁻¹ Σyx.
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    eig = np.linalg.eigvals(np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T))
    whitened = np.sqrt(np.clip(np.sort(eig.real)[::-1][: min(p, q)], 0, None))
    np.testing.assert_allclose(rho, whitened, atol=1e-8)
    # scipy's principal angles between the column spaces.
    np.testing.assert_allclose(rho, np.sort(np.cos(subspace_angles(xc, yc)))[::-1], atol=1e-10)


def test_invariant_to_invertible_linear_maps():
    x, y = _pair(300, 6, 5, seed=1)
    rng = np.random.default_rng(2)
    ill_conditioned = rng.normal(size=(6, 6)) @ np.diag(np.logspace(-3, 3, 6))
    np.testing.assert_allclose(canonical_correlations(x, x @ ill_conditioned), 1.0, atol=1e-8)
    np.testing.assert_allclose(
        canonical_correlations(x @ ill_conditioned + 5.0, y),
        canonical_correlations(x, y),
        atol=1e-8,
    )
    # SVCCA keeps 99 % of each side's variance; a mild map keeps every direction above 1 %.
    mild = _rotation(6, 3) @ np.diag(np.linspace(1.0, 2.0, 6)) @ _rotation(6, 4)
    assert svcca(x, x @ mild) == pytest.approx(1.0, abs=1e-12)
    assert pwcca(x, x @ mild) == pytest.approx(1.0, abs=1e-12)
    assert pwcca(x, 3.0 * x @ ill_conditioned) == pytest.approx(1.0, abs=1e-8)


def test_svcca_drops_low_variance_directions_that_plain_cca_would_match():
    rng = np.random.default_rng(5)
    signal = rng.normal(size=(500, 3))
    noise_x, noise_y = 1e-3 * rng.normal(size=(500, 4)), 1e-3 * rng.normal(size=(500, 4))
    x, y = np.hstack([signal, noise_x]), np.hstack([signal @ _rotation(3, 6), noise_y])
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-6)  # only the shared signal survives
    assert np.mean(canonical_correlations(x, y)) < 0.7  # CCA counts the noise pairs equally
    assert pwcca(x, y) > 0.99  # …while PWCCA weighs them by how little of x they carry


def test_svcca_and_pwcca_are_between_zero_and_one_and_fall_with_noise():
    x, _ = _pair(400, 8, 8, seed=7)
    rng = np.random.default_rng(8)
    values = [svcca(x, x + s * rng.normal(size=x.shape)) for s in (0.1, 1.0, 10.0)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    values = [pwcca(x, x + s * rng.normal(size=x.shape)) for s in (0.1, 1.0, 10.0)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_cca_degenerate_inputs():
    x, y = _pair(50, 4, 3, seed=9)
    # Constant columns are not directions; with a large value their centring dust is not either.
    padded = np.hstack([x, np.full((50, 2), 1e6 + 0.1)])
    np.testing.assert_allclose(
        canonical_correlations(padded, y), canonical_correlations(x, y), atol=1e-12
    )
    # Rank deficiency: duplicated columns add nothing.
    np.testing.assert_allclose(
        canonical_correlations(np.hstack([x, x[:, :2] * 3.0]), y),
        canonical_correlations(x, y),
        atol=1e-10,
    )
    dead = np.full((50, 5), 0.1)
    assert canonical_correlations(dead, y).size == 0
    assert svcca(dead, y) == 0.0 and pwcca(y, dead) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        svcca(np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="same examples"):
        pwcca(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        canonical_correlations(np.array([[np.nan, 1.0], [1.0, 2.0]]), np.eye(2))


# --- Procrustes ----------------------------------------------------------------------------


def test_procrustes_is_zero_for_rotated_and_scaled_copies_and_symmetric():
    x, y = _pair(80, 7, 5, seed=10)
    rotation = _rotation(7, 11)
    assert procrustes_distance(x, x @ rotation) == pytest.approx(0.0, abs=1e-12)
    assert procrustes_distance(x, 4.2 * x @ rotation + 3.0) == pytest.approx(0.0, abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(procrustes_distance(y, x), abs=1e-14)
    assert 0.0 < procrustes_distance(x, y) < 2.0
    # Not invariant to unequal feature scaling, unlike CCA.
    assert procrustes_distance(x, x @ np.diag(np.linspace(0.2, 5.0, 7))) > 0.1


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    return a / np.linalg.norm(a)


@pytest.mark.parametrize(("n", "p", "q"), [(60, 6, 6), (60, 9, 4), (20, 50, 35)])
def test_procrustes_matches_the_fitted_rotation_of_scipy(n, p, q):
    x, y = _pair(n, p, q, seed=n + p + q)
    xn, yn = _unit(x), _unit(y)
    width = max(p, q)  # Ding et al. zero-pad the narrower representation
    xp, yp = np.pad(xn, ((0, 0), (0, width - p))), np.pad(yn, ((0, 0), (0, width - q)))
    rotation, _ = orthogonal_procrustes(xp, yp)
    residual = float(np.sum((xp @ rotation - yp) ** 2))
    assert procrustes_distance(x, y) == pytest.approx(residual, abs=1e-10)
    # …and the nuclear-norm formula itself, computed without the p > n reduction.
    nuclear = np.linalg.svd(xn.T @ yn, compute_uv=False).sum()
    assert procrustes_distance(x, y) == pytest.approx(2 - 2 * nuclear, abs=1e-10)


def test_procrustes_degenerate_inputs():
    x, _ = _pair(30, 4, 3, seed=12)
    assert procrustes_distance(x, np.full((30, 3), 0.1)) == 2.0
    assert procrustes_distance(np.zeros((30, 2)), np.zeros((30, 2))) == 2.0
    # Constant columns and repeated columns are harmless.
    assert procrustes_distance(np.hstack([x, np.ones((30, 2))]), x) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        procrustes_distance(np.full((3, 2), np.inf), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        procrustes_distance(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="same examples"):
        procrustes_distance(np.ones((3, 2)), np.ones((4, 2)))
