"""Binarise and bit-pack activations: a float NCHW input (sign, or a per-channel rule of
:mod:`mstc.engine.fold`) -> uint64 words ``[N, H+2ph, W+2pw, ceil(C/64)]``, 64 input channels per
word, padding bit 0 (= -1), unused high bits 0. The one float -> bits pass of the engines (the
XNOR kernels of :mod:`mstc.engine.packed` and :mod:`mstc.engine.lut`, the bit planes of
:mod:`mstc.engine.sliced`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mstc.engine.buffers import empty
from mstc.engine.fold import CONST1, GE, LE, PackedBits, RuledInput


@njit(cache=True)
def _pack_rows(x, ph, pw, r0, r1, mode, t, out):  # pragma: no cover - numba
    """Fused binarise + pack of rows [r0, r1) of the flattened (batch, H) index:
    out[n, h+ph, w+pw, c//64] bit c%64 = rule_c(x[n, c, h, w]) (sign: GE with t = 0, i.e.
    x >= 0). The border of ``out`` stays 0.

    The rows of one image form a contiguous run of every channel plane, so the compare loops
    run over (rows x W) positions at once, branch-free (long vector loops even for 8x8 maps)."""
    N, C, H, W = x.shape
    CW = out.shape[3]
    Wp = out.shape[2]
    Wu = np.uint64(W)
    m = min(r1 - r0, H) * W
    lo = np.empty(m, np.uint32)  # channel bits 0-31 and 32-63 of the word: 32-bit lanes
    hi = np.empty(m, np.uint32)
    r = r0
    while r < r1:
        n = r // H
        h0 = r - n * H
        h1 = min(H, h0 + r1 - r)
        L = np.uint64((h1 - h0) * W)
        xn = x[n].reshape(C, H * W)
        for cw in range(CW):
            c0 = cw * 64
            cn = min(64, C - c0)
            for p in range(L):
                lo[p] = 0
                hi[p] = 0
            for c in range(cn):
                xr = xn[c0 + c, h0 * W :]
                sh = np.uint32(c & 31)
                dst = lo if c < 32 else hi
                md = mode[c0 + c]
                tc = t[c0 + c]
                if md == GE:
                    for p in range(L):
                        dst[p] |= np.uint32(xr[p] >= tc) << sh
                elif md == LE:
                    for p in range(L):
                        dst[p] |= np.uint32(xr[p] <= tc) << sh
                elif md == CONST1:
                    for p in range(L):
                        dst[p] |= np.uint32(xr[p] == xr[p]) << sh
            of = out[n].reshape(-1)
            for h in range(h1 - h0):
                base = np.uint64(((h0 + h + ph) * Wp + pw) * CW + cw)
                src = np.uint64(h * W)
                if CW == 1:
                    for w in range(Wu):
                        of[base + w] = np.uint64(lo[src + w]) | (np.uint64(hi[src + w]) << 32)
                else:
                    for w in range(Wu):
                        of[base + w * np.uint64(CW)] = np.uint64(lo[src + w]) | (
                            np.uint64(hi[src + w]) << 32
                        )
        r += h1 - h0


@njit(parallel=True, cache=True)
def _pack_par(x, ph, pw, nchunks, mode, t, out):  # pragma: no cover - numba
    total = x.shape[0] * x.shape[2]
    for ch in prange(nchunks):
        _pack_rows(x, ph, pw, ch * total // nchunks, (ch + 1) * total // nchunks, mode, t, out)


@njit(cache=True)
def _zero_border(out, ph, pw, h, w):  # pragma: no cover - numba
    """Zero the padding of ``out`` [N, h+2ph, w+2pw, CW] (rows above/below, columns left/right):
    one call instead of four numpy slice assignments."""
    N, Hp, Wp, CW = out.shape
    for n in range(N):
        for r in range(Hp):
            if r < ph or r >= h + ph:
                for c in range(Wp):
                    for k in range(CW):
                        out[n, r, c, k] = 0
            else:
                for c in range(pw):
                    for k in range(CW):
                        out[n, r, c, k] = 0
                for c in range(w + pw, Wp):
                    for k in range(CW):
                        out[n, r, c, k] = 0


_SIGN_RULES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def sign_rule(c: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule of plain sign() (bit = x >= 0) for c channels, as (mode, t) (read-only arrays,
    made once per c)."""
    rule = _SIGN_RULES.get(c)
    if rule is None:
        mode, t = np.full(c, GE, np.int8), np.zeros(c, np.float32)
        mode.flags.writeable = t.flags.writeable = False
        rule = _SIGN_RULES[c] = (mode, t)
    return rule


def packed_input(
    x: np.ndarray,
    padding: tuple[int, int],
    nthreads: int = 1,
    rule=None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``[N, H+2ph, W+2pw, ceil(C/64)]`` uint64 bits of a float NCHW input (pad bit 0): sign, or
    the per-channel float ``rule`` (mode, t) of :mod:`mstc.engine.fold`. ``out``: an array of that
    shape and dtype to fill (any content: every word is written)."""
    n, c, h, w = x.shape
    ph, pw = padding
    mode, t = sign_rule(c) if rule is None else rule
    mode = np.ascontiguousarray(mode, dtype=np.int8)
    t = np.ascontiguousarray(t, dtype=np.float32)
    shape = (n, h + 2 * ph, w + 2 * pw, (c + 63) // 64)
    if out is None:
        out = np.zeros(shape, dtype=np.uint64)
    elif out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint64 {shape}, got {out.dtype} {out.shape}")
    return _pack_into(x, ph, pw, nthreads, mode, t, out)


def _pack_into(x, ph, pw, nthreads, mode, t, out) -> np.ndarray:
    """:func:`packed_input` after its checks: ``out`` of the right shape, any content."""
    n, h = x.shape[0], x.shape[2]
    if x.size == 0:
        out[...] = 0
    elif nthreads > 1 and n * h > 1:
        _zero_border(out, ph, pw, h, x.shape[3])
        _pack_par(x, ph, pw, min(2 * nthreads, n * h), mode, t, out)
    else:
        _pack_one(x, ph, pw, mode, t, out)
    return out


@njit(cache=True)
def _pack_one(x, ph, pw, mode, t, out):  # pragma: no cover - numba
    """One thread: the border zeroed, then every row packed (one numba call at batch 1)."""
    _zero_border(out, ph, pw, x.shape[2], x.shape[3])
    _pack_rows(x, ph, pw, 0, x.shape[0] * x.shape[2], mode, t, out)


def pack_binary_input(x, padding: tuple[int, int], nthreads: int = 1, pool=None) -> np.ndarray:
    """:func:`packed_input` of a binary conv's input -- float NCHW (sign) or a
    :class:`~mstc.engine.fold.RuledInput` (its rule) -- into an array lent by ``pool``
    (:class:`~mstc.engine.buffers.BufferPool`; None: a fresh one). A
    :class:`~mstc.engine.fold.PackedBits` is returned as it is (its words, not the pool's)."""
    if isinstance(x, PackedBits):  # already packed (with the padding check_input checked)
        return x.words
    if isinstance(x, RuledInput):
        xf = x.x
        mode = np.ascontiguousarray(x.mode, dtype=np.int8)
        t = np.ascontiguousarray(x.t, dtype=np.float32)
    else:
        xf, (mode, t) = x, sign_rule(x.shape[1])
    n, c, h, w = xf.shape
    ph, pw = padding
    words = empty(pool, (n, h + 2 * ph, w + 2 * pw, (c + 63) // 64), np.uint64)
    return _pack_into(xf, ph, pw, nthreads, mode, t, words)
