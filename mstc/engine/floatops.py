"""Full-precision ops re-implemented with torch's exact CPU arithmetic, for speed.

The runtime runs float ops through ``torch.nn.functional`` so that every float a later layer
binarises is bit-identical to the PyTorch model's. An op belongs here only where torch's CPU
kernel has one fixed, simple order of float32 operations that a plain loop can repeat exactly,
and where that kernel is slow: :func:`avg_pool2d` (torch's NCHW kernel is scalar: 1.2 ms for a
32x16x32x32 input on one core here, the 2x2 loop below 0.2 ms; ``benchmarks/passes.py
--avg-pool``).

avg_pool2d, as in ``aten/src/ATen/native/cpu/AvgPoolKernel.cpp`` (``cpu_avg_pool``), for
``float32``: for each output, the window ``[oh*sH - pH, +kH) x [ow*sW - pW, +kW)`` clipped to the
padded input gives ``pool_size``; clipped to the input it gives the summed cells. The sum runs row
by row, left to right, in float32 (``opmath_type<float>`` is float) from 0, and the output is
``0 + sum / divisor`` (so -0 becomes +0) with ``divisor`` = ``divisor_override``, else ``pool_size`` if
``count_include_pad`` else the number of summed cells. An empty window gives 0.
``tests/test_floatops.py`` checks bit equality with torch over random shapes and options.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """torch's ``pooling_output_shape`` (dilation 1): floor or ceil of
    (size + 2 pad - kernel) / stride, plus 1; in ceil mode the last window must start inside
    the input or its left padding."""
    num = size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@njit(cache=True, inline="always")
def _cell(src, oh, ow, kh, kw, sh, sw, ph, pw, include_pad, divisor):  # pragma: no cover - numba
    """One output of torch's cpu_avg_pool (module doc)."""
    H, W = src.shape
    h0 = oh * sh - ph
    h1 = min(h0 + kh, H + ph)
    w0 = ow * sw - pw
    w1 = min(w0 + kw, W + pw)
    pool_size = (h1 - h0) * (w1 - w0)
    a0, b0 = max(h0, 0), max(w0, 0)
    a1, b1 = min(h1, H), min(w1, W)
    if a0 >= a1 or b0 >= b1:
        return np.float32(0.0)
    s = np.float32(0.0)
    for ih in range(a0, a1):
        for iw in range(b0, b1):
            s += src[ih, iw]
    if divisor > 0:
        d = divisor
    elif include_pad:
        d = pool_size
    else:
        d = (a1 - a0) * (b1 - b0)
    return np.float32(0.0) + s / np.float32(d)  # torch: out = 0; out += q (so -0 -> +0)


@njit(cache=True)
def _avg_pool(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, out):  # pragma: no cover - numba
    for p in range(x.shape[0]):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                out[p, oh, ow] = _cell(x[p], oh, ow, kh, kw, sh, sw, ph, pw, include_pad, divisor)


@njit(cache=True)
def _avg_pool_2x2(x, include_pad, divisor, out):  # pragma: no cover - numba
    """Kernel 2, stride 2, no padding (ResNet shortcuts): the whole windows with four fixed adds
    (vectorised, ~15x faster than the general loop), the partial ones of ceil mode by _cell."""
    P, H, W = x.shape
    _, Ho, Wo = out.shape
    d = np.float32(divisor if divisor > 0 else 4)
    zero = np.float32(0.0)
    for p in range(P):
        src = x[p]
        for oh in range(H // 2):
            r0 = src[2 * oh]
            r1 = src[2 * oh + 1]
            o = out[p, oh]
            for ow in range(W // 2):
                s = zero + r0[2 * ow]
                s += r0[2 * ow + 1]
                s += r1[2 * ow]
                s += r1[2 * ow + 1]
                o[ow] = zero + s / d
            for ow in range(W // 2, Wo):
                o[ow] = _cell(src, oh, ow, 2, 2, 2, 2, 0, 0, include_pad, divisor)
        for oh in range(H // 2, Ho):
            for ow in range(Wo):
                out[p, oh, ow] = _cell(src, oh, ow, 2, 2, 2, 2, 0, 0, include_pad, divisor)


def avg_pool2d(
    x: np.ndarray,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``torch.nn.functional.avg_pool2d`` of a float32 NCHW array, bit for bit (module doc)."""
    if x.dtype != np.float32 or x.ndim != 4:
        raise ValueError(f"avg_pool2d takes float32 NCHW, got {x.dtype} of shape {x.shape}")
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"avg_pool2d: bad kernel {kernel_size} stride {stride} pad {padding}")
    if divisor_override is not None and divisor_override <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got {divisor_override}")
    n, c, h, w = x.shape
    ho = pool_output_size(h, kh, sh, ph, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"avg_pool2d: input {h}x{w} too small for kernel {kernel_size}")
    shape = (n, c, ho, wo)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"avg_pool2d: out must be contiguous float32 {shape}")
    src = np.ascontiguousarray(x).reshape(n * c, h, w)
    dst = out.reshape(n * c, ho, wo)
    include, divisor = bool(count_include_pad), int(divisor_override or 0)
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        _avg_pool_2x2(src, include, divisor, dst)
    else:
        _avg_pool(src, kh, kw, sh, sw, ph, pw, include, divisor, dst)
    return out
