"""Readable numpy reference backends: "dense" (every channel by XNOR-popcount) and "reference"
(walks each MST: roots dense, child = parent corrected on its differing taps).

For channel j with parent p and difference set D_j (method.md section 2):

    y_j = y_p + 2 * sum_{k in D_j} a_k w_jk              (plain edge)
    y_j = -y_p + 2 * sum_{k in D_j} a_k w_jk             (complement edge: w_j ~ NOT w_p)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mstc.bitpack import pack_words, popcount
from mstc.conventions import PAD_BIT, bits_to_pm1, to_bits
from mstc.engine.backend import Backend, register_backend
from mstc.format import BinaryLayerCode


def im2col_bits(x_bits: np.ndarray, layer: BinaryLayerCode) -> tuple[np.ndarray, int, int]:
    """Patches of a {0,1} NCHW input: (N, Ho*Wo, n) uint8, taps in PyTorch order, pad bit 0."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
    )
    n_, c, h, w = x_bits.shape
    if c != layer.cin:
        raise ValueError(f"layer {layer.name}: expected {layer.cin} input channels, got {c}")
    xp = np.pad(x_bits, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=PAD_BIT)
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if xp.shape[2] < ext_h or xp.shape[3] < ext_w:
        raise ValueError(f"layer {layer.name}: input {h}x{w} smaller than the kernel")
    win = sliding_window_view(xp, (ext_h, ext_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    ho, wo = win.shape[2], win.shape[3]
    # (N, C, Ho, Wo, kh, kw) -> (N, Ho, Wo, C, kh, kw) -> (N, P, n)
    patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(n_, ho * wo, c * kh * kw)
    return np.ascontiguousarray(patches), ho, wo


class _NumpyBackend(Backend):
    def channel_sums(self, layer: BinaryLayerCode, patches: np.ndarray) -> np.ndarray:
        """int32 (M, Cout) sums of M patches (M, n) in {0,1}."""
        raise NotImplementedError

    def conv2d(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        patches, ho, wo = im2col_bits(to_bits(x), layer)
        n_ = patches.shape[0]
        sums = self.channel_sums(layer, patches.reshape(-1, layer.n))
        return np.ascontiguousarray(sums.reshape(n_, ho, wo, layer.cout).transpose(0, 3, 1, 2))

    def linear(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != layer.n:
            raise ValueError(f"layer {layer.name}: expected input (N, {layer.n}), got {x.shape}")
        return self.channel_sums(layer, to_bits(x))


@register_backend("dense")
class DenseBackend(_NumpyBackend):
    """Every output channel by XNOR-popcount: y_j = n - 2 * popcount(A XOR W_j)."""

    name = "dense"

    def channel_sums(self, layer, patches):
        a_words = pack_words(patches)
        w_words = pack_words(layer.weight_bits())
        out = np.empty((patches.shape[0], layer.cout), dtype=np.int32)
        for j in range(layer.cout):
            mismatches = popcount(a_words ^ w_words[j]).sum(axis=1, dtype=np.int64)
            out[:, j] = layer.n - 2 * mismatches
        return out


@register_backend("reference")
class TreeBackend(_NumpyBackend):
    """Walks each tree parents-first: roots by XNOR-popcount, children by delta correction."""

    name = "reference"

    def channel_sums(self, layer, patches):
        w_bits = layer.weight_bits()
        a_words = pack_words(patches)
        a_pm1 = bits_to_pm1(patches, np.int32)
        out = np.empty((patches.shape[0], layer.cout), dtype=np.int32)
        for j in layer.order:
            p = layer.parent[j]
            if p < 0:
                w_words = pack_words(w_bits[j])
                out[:, j] = layer.n - 2 * popcount(a_words ^ w_words).sum(axis=1, dtype=np.int64)
                continue
            d = layer.diffs(j)
            base = -out[:, p] if layer.negate[j] else out[:, p]
            correction = a_pm1[:, d] @ (2 * bits_to_pm1(w_bits[j, d], np.int32))
            out[:, j] = base + correction
        return out
