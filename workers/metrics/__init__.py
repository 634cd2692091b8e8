"""Pure representation metrics over arrays: CKA, CCA (SVCCA, PWCCA), Procrustes, complexity.

Modules: `cka` (linear/RBF CKA, streaming accumulators), `cca`, `procrustes`, `complexity`.
Nothing is re-exported here, so importing one metric does not pull in the others' libraries.
"""
