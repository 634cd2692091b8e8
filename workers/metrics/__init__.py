"""Pure metrics over arrays, each one called by an analysis: what is here shows on a page.

Representations: `moments` (exact CKA, SVCCA/PWCCA, Procrustes from streamed scatter matrices),
`minibatch_cka`, `complexity`, `attention`, `geometry`; weights: `masks`, `wasserstein`;
examples: `dynamics` (MAP-D), `pies`; `activations` is their shared input rule. Independent
data-based formulations the tests check these against live in `tests/reference/`. Nothing is
re-exported here, so importing one metric does not pull in the others' libraries.
"""
