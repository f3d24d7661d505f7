"""Engines that run a CompressedModel: one ``run(compressed, x, backend=...)``, many backends.

Backends: "reference" (numpy, walks each tree), "dense" (numpy, every channel XNOR-popcount),
"packed" (numba XNOR-popcount), "mst" (numba: int16 tree deltas, and the fused bit-sliced kernel
on binary conv -> BN -> [max pool] -> binary conv chains), "sliced-dense" (the fused bit-sliced
kernel without the tree: an ablation).
"""

import os

import numba

# numba's OpenMP threading layer shares libgomp with torch: each parallel kernel launch sets the
# process's OpenMP thread count, which changes torch's (and with it the order of torch's float
# sums). The other layers keep their own pools (workqueue is always built). An explicit
# NUMBA_THREADING_LAYER(_PRIORITY) is respected.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]

import mstc.engine.mst_kernel  # noqa: F401  (registers "packed", "mst", "sliced-dense")
from mstc.engine import reference  # noqa: F401  (registers "reference" and "dense")
from mstc.engine.backend import Backend, backends, get_backend, register_backend
from mstc.engine.runtime import Runtime, run

__all__ = ["Backend", "Runtime", "backends", "get_backend", "register_backend", "run"]
