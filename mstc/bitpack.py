"""Bit-packing of {0,1} arrays along their last axis.

Bit k of a row lives in word k // 64 (or byte k // 8) at bit position k % 64 (k % 8): little-endian
bit order, so ``word >> (k % 64) & 1`` reads bit k back. Unused high bits are zero.
"""

from __future__ import annotations

import numpy as np


def _check_bits(bits: np.ndarray) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.dtype == np.bool_:
        return bits.astype(np.uint8)
    if not np.issubdtype(bits.dtype, np.integer):
        raise TypeError(f"bits must be an integer or bool array, got {bits.dtype}")
    if bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ValueError("bits must contain only 0 and 1")
    return bits.astype(np.uint8, copy=False)


def pack_bytes(bits: np.ndarray) -> np.ndarray:
    """Pack the last axis of a {0,1} array into uint8, little-endian bit order."""
    return np.packbits(_check_bits(bits), axis=-1, bitorder="little")


def unpack_bytes(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bytes`: the first ``n`` bits of the last axis as uint8 {0,1}."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=n, bitorder="little")


def pack_words(bits: np.ndarray) -> np.ndarray:
    """Pack the last axis of a {0,1} array into uint64 words (64 bits per word, little-endian)."""
    packed = pack_bytes(bits)
    nbytes = packed.shape[-1]
    pad = (-nbytes) % 8
    if pad:
        widths = [(0, 0)] * (packed.ndim - 1) + [(0, pad)]
        packed = np.pad(packed, widths)
    packed = np.ascontiguousarray(packed)
    return packed.view("<u8").astype(np.uint64, copy=False)


def unpack_words(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_words`."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64))
    return unpack_bytes(words.view(np.uint8), n)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each element of an unsigned integer array."""
    return np.bitwise_count(x)
