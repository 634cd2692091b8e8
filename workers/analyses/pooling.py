"""The ways a layer analysis turns a convolution's (channels, h, w) map into one vector.

Torch-free, so the analyze job's declaration can check `conv_pooling` where the web server
validates a submission; `prunescope.workers.analyses.layers` does the pooling.
"""

from __future__ import annotations

# "mean": averaged over positions, C features per example (the default); "flatten": every
# position kept, C·H·W features, as Kornblith et al. compare maps (small networks only).
CONV_POOLINGS = ("mean", "flatten")
