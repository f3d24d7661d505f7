"""mstc: MST-compression for binary neural networks.

Build a BNN (``mstc.nn``, ``mstc.models``), plan its compression (``mstc.mst.plan``), compress it
(``mstc.compress``), save/load the packed file (``CompressedModel.save``, ``mstc.load``) and run it
bit-exactly (``mstc.engine.run``).
"""

from mstc import engine  # noqa: E402,I001  (mstc.engine.run)
from mstc.errors import FormatError, MSTCError, UnsupportedModelError
from mstc.format import BinaryLayerCode, CompressedModel, compress, load

__version__ = "0.1.0"

__all__ = [
    "BinaryLayerCode",
    "CompressedModel",
    "FormatError",
    "MSTCError",
    "UnsupportedModelError",
    "compress",
    "engine",
    "load",
]
