"""Engines that run a CompressedModel: one ``run(compressed, x, backend=...)``, many backends.

Backends: "reference" (numpy, walks each tree), "dense" (numpy, every channel XNOR-popcount);
optimised ones register themselves in the same registry.
"""

import mstc.engine.mst_kernel  # noqa: F401  (registers "packed" and "mst")
from mstc.engine import reference  # noqa: F401  (registers "reference" and "dense")
from mstc.engine.backend import Backend, backends, get_backend, register_backend
from mstc.engine.runtime import Runtime, run

__all__ = ["Backend", "Runtime", "backends", "get_backend", "register_backend", "run"]
