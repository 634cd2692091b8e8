"""Independent reference formulations that the production metrics are checked against.

Nothing in PruneScope calls these: each is a direct, data-based transcription of a published
definition, written for clarity and cross-checking rather than speed or memory, and the tests
hold the production path (`prunescope.workers.metrics`, which computes the same quantities
from streamed sums) to them. Changing a reference changes no page; changing production code
that disagrees with a reference fails a test.

- `cka`: linear CKA (Kornblith, Norouzi, Lee & Hinton, ICML 2019),
  CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) = HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) on
  column-centred X, Y with K = XXᵀ, L = YYᵀ, in feature and Gram form; debiased CKA with the
  unbiased HSIC₁ of Song et al. (2012),
  HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)) (zeroed diagonals);
  RBF CKA with σ = 0.5 × median distance. They reproduce the published demo values
  (np.random.seed(1337), X = randn(100, 10), Y = randn(100, 10) + X): linear 0.55761,
  debiased 0.51346, RBF 0.65483.
- `cka_streaming`: the same linear and RBF CKA folded batch by batch (p × p sums, or n × n
  Grams for layers wider than the number of examples).
- `cca`: canonical correlations as cosines of principal angles between the centred column
  spaces (Björck & Golub 1973); SVCCA, the mean correlation after keeping 99 % of each side's
  variance (Raghu, Gilmer, Yosinski & Sohl-Dickstein, NeurIPS 2017); PWCCA, correlations
  weighted by αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩| (Morcos, Raghu & Bengio, NeurIPS 2018).
- `procrustes`: orthogonal Procrustes distance d = 2 − 2‖XᵀY‖_* on centred, unit-Frobenius
  X, Y (Ding, Denain & Steinhardt, NeurIPS 2021).
- `complexity`: the covariance spectrum from an SVD of the data and from the n × n Gram, for
  RankMe effective rank (Garrido et al., ICML 2023), participation ratio (Σλ)²/Σλ² (Gao et
  al. 2017) and the directions for 99 % of the variance.
"""
