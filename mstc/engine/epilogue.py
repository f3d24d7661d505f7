"""The float epilogue of a binary layer in one pass: sums -> BatchNorm -> [+ shortcut] -> [PReLU].

After a binary conv the runtime applies the layer's scale and bias and a BatchNorm; in a Bi-Real
block it then adds the real-valued shortcut and applies PReLU (``mstc.models.blocks``). Run as
torch ops that is five passes over the activation (int -> float, scale, BN, add, PReLU). Here it is
one:

    out[b, c, p] = prelu_c(table[c, (y[b, c, p] + n) / 2] + shortcut[b, c, p])

In vgg-style networks the BatchNorm is followed by a 2x2 max pool instead, taken in the same
pass (torch's CPU rule: the first maximum in window order, NaN wins).

The first part depends only on the integer sum y = 2u - n (u = 0..n agreeing taps) and the channel,
so it is tabulated by evaluating the runtime's own torch calls on all n + 1 reachable sums, exactly
like :mod:`mstc.engine.fold` (exact by construction; the runtime also checks the table against a
direct evaluation on an activation-shaped tensor before it uses it). The rest is one IEEE float32
add and PReLU's ``v if v > 0 else a * v``, the formulas of torch's CPU kernels, so the pass is
bit-identical to the unfused ops (``tests/test_epilogue.py`` compares every value).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _rows(y, table, n, shortcut, alpha, mode, r0, r1, out):  # pragma: no cover - numba
    """Rows r = b*C + c in [r0, r1) of (N*C, P) views. mode bit 0: add shortcut, bit 1: PReLU."""
    C = table.shape[0]
    P = np.uint64(y.shape[1])  # unsigned loop index: no wrap-around checks, the loops vectorise
    add = (mode & 1) != 0
    prelu = (mode & 2) != 0
    for r in range(r0, r1):
        c = r % C
        row = table[c]
        a = alpha[c]
        yr = y[r]
        orow = out[r]
        if add:
            sr = shortcut[r]
            if prelu:
                for p in range(P):
                    v = row[(yr[p] + n) >> 1] + sr[p]
                    orow[p] = v if v > 0 else a * v
            else:
                for p in range(P):
                    orow[p] = row[(yr[p] + n) >> 1] + sr[p]
        elif prelu:
            for p in range(P):
                v = row[(yr[p] + n) >> 1]
                orow[p] = v if v > 0 else a * v
        else:
            for p in range(P):
                orow[p] = row[(yr[p] + n) >> 1]


@njit(cache=True)
def _rows_pool(y, table, n, H, W, r0, r1, out):  # pragma: no cover - numba
    """Rows r = b*C + c in [r0, r1): out[r, i, k] = max_pool 2x2 of table[c, (y + n) / 2] with
    torch's CPU rule (scan in window order, keep the first maximum, NaN wins)."""
    C = table.shape[0]
    Ho = H // 2
    Wo = np.uint64(W // 2)
    Wu = np.uint64(W)
    two = np.uint64(2)
    for r in range(r0, r1):
        row = table[r % C]
        yr = y[r]
        orow = out[r]
        for i in range(Ho):
            top = np.uint64(2 * i) * Wu
            for k in range(Wo):
                m = -np.inf
                for dy in range(two):
                    for dx in range(two):
                        v = row[(yr[top + dy * Wu + two * k + dx] + n) >> 1]
                        if v > m or np.isnan(v):
                            m = v
                orow[np.uint64(i) * Wo + k] = m


@njit(parallel=True, cache=True)
def _pool_par(y, table, n, H, W, nchunks, out):  # pragma: no cover - numba
    rows = y.shape[0]
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        _rows_pool(y, table, n, H, W, r0, (ch + 1) * rows // nchunks, out)


@njit(parallel=True, cache=True)
def _rows_par(y, table, n, shortcut, alpha, mode, nchunks, out):  # pragma: no cover - numba
    rows = y.shape[0]
    for ch in prange(nchunks):
        r0 = ch * rows // nchunks
        _rows(y, table, n, shortcut, alpha, mode, r0, (ch + 1) * rows // nchunks, out)


def epilogue(
    sums: np.ndarray,
    table: np.ndarray,
    n: int,
    shortcut: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    nthreads: int = 1,
    *,
    pool: bool = False,
) -> np.ndarray:
    """float32 ``prelu(table[c, (sums + n) // 2] + shortcut)`` with the shape of ``sums``, or with
    ``pool`` (no shortcut, no PReLU) ``max_pool2d(table[c, (sums + n) // 2], 2)``.

    ``sums``: int32 (N, C, ...) integer sums of a layer with n taps; ``table``: float32 (C, n+1);
    ``shortcut``: float32 of the same shape as ``sums`` or None; ``alpha``: PReLU weights (C,)
    or None (no PReLU)."""
    N, C = sums.shape[0], sums.shape[1]
    if table.shape != (C, n + 1):
        raise ValueError(f"table shape {table.shape} != ({C}, {n + 1})")
    y = np.ascontiguousarray(sums, dtype=np.int32).reshape(N * C, -1)
    t = np.ascontiguousarray(table, dtype=np.float32)
    if pool:
        if sums.ndim != 4 or shortcut is not None or alpha is not None:
            raise ValueError("pool: sums must be (N, C, H, W), without shortcut or PReLU")
        H, W = sums.shape[2], sums.shape[3]
        out = np.empty((N * C, (H // 2) * (W // 2)), np.float32)
        if nthreads > 1 and N * C > 1:
            _pool_par(y, t, n, H, W, min(N * C, 4 * nthreads), out)
        elif out.size:
            _rows_pool(y, t, n, H, W, 0, N * C, out)
        return out.reshape(N, C, H // 2, W // 2)
    mode = 0
    s = np.zeros((1, 1), np.float32)
    if shortcut is not None:
        if shortcut.shape != sums.shape:
            raise ValueError(f"shortcut shape {shortcut.shape} != sums shape {sums.shape}")
        s = np.ascontiguousarray(shortcut, dtype=np.float32).reshape(N * C, -1)
        mode |= 1
    a = np.zeros(C, np.float32)
    if alpha is not None:
        a = np.ascontiguousarray(np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1), (C,)))
        mode |= 2
    out = np.empty(y.shape, np.float32)
    if nthreads > 1 and N * C > 1:
        _rows_par(y, t, n, s, a, mode, min(N * C, 4 * nthreads), out)
    elif out.size:
        _rows(y, t, n, s, a, mode, 0, N * C, out)
    return out.reshape(sums.shape)
