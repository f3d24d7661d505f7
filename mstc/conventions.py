"""The one place that fixes mstc's binary conventions (method.md section 1).

- Bit encoding: bit 1 = +1, bit 0 = -1.
- sign(0) = +1: a value binarises to +1 when it is >= 0, never to 0.
- Padding of a binary convolution is -1 (bit 0), in training and in every engine.
- Filters are flattened in PyTorch order: for a weight of shape (Cout, Cin, kh, kw) the tap index
  is k = (ci * kh + ky) * kw + kx, i.e. ``weight.reshape(Cout, -1)``.

XNOR-popcount identity: for a, w in {-1,+1}^n with bits A, B,
``sum_k a_k w_k = n - 2 * popcount(A XOR B)``.
"""

from __future__ import annotations

import numpy as np

#: value of the padding of a binary convolution, as a real number
PAD_VALUE: float = -1.0
#: the bit that encodes the padding value
PAD_BIT: int = 0
#: real value of bit 1 and bit 0
BIT_ONE_VALUE: float = 1.0
BIT_ZERO_VALUE: float = -1.0


def to_bits(x: np.ndarray) -> np.ndarray:
    """Binarise real values to bits with sign(0) = +1: bit = (x >= 0). NaN is rejected."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise ValueError("cannot binarise NaN values")
    return (x >= 0).astype(np.uint8)


def bits_to_pm1(bits: np.ndarray, dtype=np.int8) -> np.ndarray:
    """Map bits {0,1} to {-1,+1}: value = 2*bit - 1."""
    return (2 * np.asarray(bits).astype(np.int16) - 1).astype(dtype)


def xnor_popcount_dot(n: int, xor_popcount: np.ndarray | int) -> np.ndarray | int:
    """Dot product of two +-1 vectors of length n from the popcount of the XOR of their bits."""
    return n - 2 * xor_popcount
