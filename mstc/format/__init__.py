"""The compressed format: CompressedModel, its binary layer codes, save/load with validation."""

from mstc.format.file import FORMAT_VERSION, load, save_compressed
from mstc.format.graph import Node, trace_model
from mstc.format.layer import BinaryLayerCode
from mstc.format.model import CompressedModel, compress, default_input_shape
from mstc.format.torch_model import to_torch

__all__ = [
    "FORMAT_VERSION",
    "BinaryLayerCode",
    "CompressedModel",
    "Node",
    "compress",
    "default_input_shape",
    "load",
    "save_compressed",
    "to_torch",
    "trace_model",
]
