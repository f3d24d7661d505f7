"""Training-time binary layers: sign with straight-through estimators, BinaryConv2d, BinaryLinear."""

from mstc.nn.layers import (
    BINARY_LAYER_TYPES,
    BinaryConv2d,
    BinaryLinear,
    binary_weight_bits,
    is_binary_layer,
)
from mstc.nn.ste import approx_sign, get_ste, hard_sign, list_ste, register_ste, ste_sign

__all__ = [
    "BINARY_LAYER_TYPES",
    "BinaryConv2d",
    "BinaryLinear",
    "approx_sign",
    "binary_weight_bits",
    "get_ste",
    "hard_sign",
    "is_binary_layer",
    "list_ste",
    "register_ste",
    "ste_sign",
]
