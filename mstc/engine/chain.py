"""Runs of Bi-Real blocks with identity shortcuts in one numba call (compiled passes, one thread).

In a Bi-Real ResNet (resnet20's stages) each block computes

    y_i = prelu(bn_i(conv_i(sign(y_{i-1}))) + y_{i-1})

so a stage after its first block is a chain: block i reads only block i-1's output, as its input
and as its shortcut. At batch 1 each block's kernels take 15-30 us and the Python around them
(the runtime step, the pool, the call) 7-9 us; a :class:`BiRealChain` runs every block of such a
run in one call of :func:`_run_chain`, with two ping-pong output buffers and no Python between
the blocks. The first block may read another input (binarised by a folded BatchNorm's rule) and
another shortcut (with its BatchNorm); the others read the previous output by sign().

Every block runs exactly as :class:`mstc.engine.packed.PreparedXnor` runs it alone (packing,
:func:`mstc.engine.packed._xnor_rows` with the Bi-Real epilogue), so the floats are the same bit
for bit (tests/test_engine_fast.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mstc.engine import packed
from mstc.engine.binarize import _pack_one
from mstc.engine.buffers import empty
from mstc.engine.packed import PreparedXnor, _xnor_rows


@njit(cache=True)
def _run_chain(
    x, sc, ints, w0, ws, mode0, t0, mode, t, coef, sbn, alpha, xp0, xp, A, B
):  # pragma: no cover - numba
    """Block 0 reads ``x`` (rule mode0/t0, weights w0, scratch xp0) and shortcut ``sc``; block
    i > 0 reads block i-1's output (sign rule mode/t, weights ws[i-1] of the tuple ws, scratch xp)
    as input and shortcut. Block i writes A (i even) or B (i odd). ``ints[i]`` = (ph, pw, n, kh, kw, sh, sw, dh,
    dw, Ho, Wo, R, units); coef / sbn / alpha [L, ...] the blocks' epilogue constants."""
    N = x.shape[0]
    cur = x
    short = sc
    for i in range(ints.shape[0]):
        ph, pw, n, kh, kw = ints[i, 0], ints[i, 1], ints[i, 2], ints[i, 3], ints[i, 4]
        sh, sw, dh, dw = ints[i, 5], ints[i, 6], ints[i, 7], ints[i, 8]
        Ho, Wo, R, units = ints[i, 9], ints[i, 10], ints[i, 11], ints[i, 12]
        out = A if i % 2 == 0 else B
        C = out.shape[1]
        o3 = out.reshape((N, C, Ho * Wo))
        epi = (coef[i], sbn[i], alpha[i], short.reshape((N, C, Ho * Wo)))
        if i == 0:
            _pack_one(cur, ph, pw, mode0, t0, xp0)
            _xnor_rows(xp0, w0, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, 0, units, o3, epi)
        else:
            _pack_one(cur, ph, pw, mode, t, xp)
            _xnor_rows(xp, ws[i - 1], n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, 0, units, o3, epi)
        cur = out
        short = out


class BiRealChain:
    """Blocks prepared as :class:`~mstc.engine.packed.PreparedXnor` (block 0 for the chain's
    input shape, the others for its output shape) with their epilogue kernels
    (:class:`~mstc.engine.epilogue.EpilogueKernel` that ``fuses_into_xnor``), run in one call.

    A call returns the last block's float32 output in an array lent by ``pool``, or None where
    the call must take the blocks one by one: ``XNOR_KERNEL`` changed since, or an input or
    shortcut that is not a C-contiguous float32 array of the prepared shape."""

    def __init__(self, blocks: list[PreparedXnor], kernels: list) -> None:
        if len(blocks) < 2 or len(blocks) != len(kernels):
            raise ValueError("a chain needs two or more blocks, one epilogue kernel each")
        first, rest = blocks[0], blocks[1:]
        out4 = first._out4
        if any(b.shape != out4 or b._out4 != out4 for b in rest):
            raise ValueError("chained blocks must read and write the first block's output shape")
        if any(b._xshape != rest[0]._xshape for b in rest):
            raise ValueError("chained blocks after the first must share one input geometry")
        if any(not k.fuses_into_xnor or k.C != out4[1] for k in kernels):
            raise ValueError("every block needs a Bi-Real epilogue of its output channels")
        if any(b._head[2].shape != (out4[1],) for b in rest):
            raise ValueError("chained blocks after the first read the previous block's channels")
        self.shape, self.kernel = first.shape, first.kernel
        self._out4, self._out3 = out4, first._out3
        self._xshape0, self._xshape = first._xshape, rest[0]._xshape
        self._ints = np.array([(*b._head[:2], *b._tail[1:]) for b in blocks], dtype=np.int64)
        # the blocks' own weight arrays (a tuple: no copy; numba compiles one _run_chain per
        # chain length)
        self._w0 = first._tail[0]
        # (one array type for the tuple: a read-only array, rare, is copied)
        self._ws = tuple(w if w.flags.writeable else w.copy() for w in (b._tail[0] for b in rest))
        if any(not w.flags.c_contiguous for w in (self._w0, *self._ws)):
            raise ValueError("chained blocks need C-contiguous packed weights")
        self._rule0 = first._head[2:]
        self._rule = rest[0]._head[2:]
        if any(
            not (
                np.array_equal(b._head[2], self._rule[0])
                and np.array_equal(b._head[3], self._rule[1])
            )
            for b in rest
        ):
            raise ValueError("chained blocks after the first must share one binarisation rule")
        self._coef = np.ascontiguousarray(np.stack([k.coef for k in kernels]))
        self._sbn = np.ascontiguousarray(np.stack([k.sbn for k in kernels]))
        self._alpha = np.ascontiguousarray(np.stack([k.alpha for k in kernels]))
        self.length = len(blocks)

    def __call__(self, x: np.ndarray, shortcut: np.ndarray, pool) -> np.ndarray | None:
        f32 = packed._FLOAT32
        if (
            packed.XNOR_KERNEL != self.kernel
            or x.shape != self.shape
            or x.dtype is not f32
            or not x.flags.c_contiguous
            or shortcut.shape != self._out4
            or shortcut.dtype is not f32
            or not shortcut.flags.c_contiguous
        ):
            return None
        A = empty(pool, self._out4, np.float32)
        B = empty(pool, self._out4, np.float32)
        xp0 = empty(pool, self._xshape0, np.uint64)
        xp = empty(pool, self._xshape, np.uint64)
        _run_chain(x, shortcut, self._ints, self._w0, self._ws, *self._rule0, *self._rule,
                   self._coef, self._sbn, self._alpha, xp0, xp, A, B)  # fmt: skip
        out, spare = (A, B) if self.length % 2 else (B, A)
        if pool is not None:
            pool.give(spare)
            pool.give(xp0)
            pool.give(xp)
        return out
