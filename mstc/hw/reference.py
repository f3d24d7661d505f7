"""Numpy reference of what the generated datapath computes, bit for bit."""

from __future__ import annotations

import numpy as np

from mstc.hw.spec import LayerSpec


def layer_sums(spec: LayerSpec, a: np.ndarray) -> np.ndarray:
    """Integer sums y = n - 2 * popcount(a XOR w_j) for input bits a (..., n) -> (..., Cout)."""
    a = np.asarray(a, dtype=np.uint8)
    x = a[..., None, :] ^ spec.bits
    return (spec.n - 2 * x.sum(axis=-1, dtype=np.int64)).astype(np.int64)


def layer_sums_tree(spec: LayerSpec, a: np.ndarray) -> np.ndarray:
    """The same sums through the forest: y_j = (+/-) y_p + 2 * sum_{k in diff_j} a_k w_jk."""
    a = np.asarray(a, dtype=np.uint8)
    pm = 2 * a.astype(np.int64) - 1
    w = 2 * spec.bits.astype(np.int64) - 1
    y = np.zeros(a.shape[:-1] + (spec.cout,), dtype=np.int64)
    for j in spec.order.tolist():
        d = spec.diff[j]
        part = (pm[..., d] * w[j, d]).sum(axis=-1)
        p = int(spec.parent[j])
        if p < 0:
            y[..., j] = part
        else:
            y[..., j] = (-y[..., p] if spec.negate[j] else y[..., p]) + 2 * part
    return y


def layer_bits(spec: LayerSpec, a: np.ndarray) -> np.ndarray:
    """Output bits of the layer: the thresholds applied to :func:`layer_sums`."""
    return spec.thresholds.apply(layer_sums(spec, a))


def chain_bits(specs: list[LayerSpec], a: np.ndarray) -> np.ndarray:
    """Bits after a chain of layers whose input is the previous layer's output (n_i = Cout_{i-1})."""
    x = np.asarray(a, dtype=np.uint8)
    for s in specs:
        x = layer_bits(s, x)
    return x
