"""XNOR-popcount convolution with the popcounts looked up in tables of the weights (AVX2 ``vpshufb``).

The dense kernel of :mod:`mstc.engine.packed` counts ``popcount(A XOR W)`` per 64-bit patch word.
x86 CPUs without AVX-512 VPOPCNTDQ have no vector popcount: LLVM emulates it with nibble lookups
(and, shift, and, two ``vpshufb``, add, ``vpsadbw``), ~8 vector instructions per 256 bits. Here
the XOR goes into the lookup table instead. For output channel j and one byte of its weights
(tap (ky, kx), input channels 8k .. 8k+7, a *tap-plane*), the mismatches with an activation byte
``a`` are

    popcount(a XOR w) = L_j[a & 15] + H_j[a >> 4],   L_j[i] = popcount(i XOR (w & 15)),
                                                      H_j[i] = popcount(i XOR (w >> 4)),

two 16-entry tables per tap-plane and channel. The activations are stored as *nibble planes*
(one byte, 0..15, per position), so a tap-plane costs two ``vpshufb`` and two byte adds per 32
positions, for 8 bits each: ~2x fewer instructions than the emulated popcount, and no tile gather.
Counts accumulate in uint8 lanes (at most 8 per tap-plane) and are widened to uint16 every
``FLUSH`` tap-planes; ``y = n - 2 * m`` in int16 lanes (m = mismatches, n = Cin*kh*kw <= 32767).

Layout. The input's packed words (:func:`mstc.engine.binarize.packed_input`, padding bit 0 = -1,
unused channel bits 0 in activations and weights) are split into nibble planes over the padded grid
(one long loop per plane), whose rows are then copied (64-byte moves) into planes whose positions
are the outputs' own (``X[plane, z]``, z over images, rows, output columns):

- stride 1: one copy per kernel column kx, image rows kept whole (``Hp`` rows of ``Wo``), so tap
  (ky, kx) of output z reads copy kx at z + ky*dh*Wo; each image's outputs are one run of Ho*Wo
  positions, computed in chunks of 64 (the last one partly past the image);
- other strides: one copy per tap (an im2col of nibbles), z = (b*Ho + ho)*Wo + wo, chunks of 64
  over every output of the batch.

A chunk of 64 positions runs 4 output channels at a time, their counts in registers; the counts
then go out as int32 sums, or through the Bi-Real epilogue
(:func:`mstc.engine.epilogue.xnor_epilogue_sums`) as float32, like the popcount kernel.
``benchmarks/lut.py`` times it against the popcount kernel.

Reference: :func:`lut_sums_ref` (numpy table lookups); both equal XNOR-popcount bit for bit
(``tests/test_lut.py``).
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm
import numpy as np
from numba import njit, prange

from mstc.engine.epilogue import xnor_epilogue_sums
from mstc.engine.simd import (
    badd,
    bload,
    blookup,
    bstore,
    bzero,
    hadd,
    hfill,
    hload,
    hstore,
    hstore_wide,
    hsub,
    uwiden,
)

#: tap-planes summed in uint8 lanes before widening (8 mismatches each: 31 * 8 <= 255)
FLUSH = 31
#: the largest n = Cin * kh * kw (sums in int16 lanes)
MAX_TAPS = 32767
#: popcount of 0..15
_POP4 = np.array([bin(i).count("1") for i in range(16)], np.uint8)


@functools.cache
def available() -> bool:
    """Whether this CPU runs the kernel (AVX2 ``vpshufb``)."""
    return bool(llvm.get_host_cpu_features().get("avx2", False))


def lut_tables(wT: np.ndarray, cin: int, kh: int, kw: int) -> np.ndarray:
    """The lookup tables of packed weights ``wT`` (``[words, Cout]``,
    :func:`mstc.engine.packed.packed_weights`: patch bits in (ky, kx, ci) order): uint8
    ``[ceil(Cout/4)*4, kh*kw*P8, 2, 16]`` (P8 = ceil(cin/8) bytes per tap), entry
    ``[j, t, h, i] = popcount(i XOR nibble h of weight byte t of channel j)``. Channels past
    Cout (to a multiple of 4) get all-zero weights; their counts are never written."""
    cout = wT.shape[1]
    n = cin * kh * kw
    if wT.shape[0] * 64 < n:
        raise ValueError(f"packed weights of {wT.shape[0]} words for {n} taps")
    p8 = -(-cin // 8)
    cout4 = -(-cout // 4) * 4
    words = np.ascontiguousarray(wT.T).view(np.uint8)
    bits = np.unpackbits(words, axis=1, bitorder="little")[:, :n]
    b = np.zeros((cout4, kh, kw, p8 * 8), np.uint8)
    b[:cout, :, :, :cin] = bits.reshape(cout, kh, kw, cin)
    wb = np.packbits(b.reshape(cout4, kh, kw, p8, 8), axis=-1, bitorder="little")
    wb = wb.reshape(cout4, kh * kw * p8, 1)
    i = np.arange(16, dtype=np.uint8)
    return np.stack([_POP4[i ^ (wb & 15)], _POP4[i ^ (wb >> 4)]], axis=2)


# ------------------------------------------------------------------------------------ kernels


@njit(cache=True)
def _padded_nibbles(xp, P8, Lq, NP):  # pragma: no cover - numba
    """NP[(k*2 + h)*Lq + q] = nibble h of byte k of the packed words at padded position q (over
    images, rows, columns): one long loop per plane."""
    N, Hp, Wp, CW = xp.shape
    Q = np.uint64(N * Hp * Wp)
    xf = xp.reshape(-1)
    f4 = np.uint64(15)
    cw = np.uint64(CW)
    for k in range(P8):
        s8 = np.uint64(8 * (k & 7))
        s4 = s8 + np.uint64(4)
        w = np.uint64(k >> 3)
        lo = np.uint64(2 * k * Lq)
        hi = lo + np.uint64(Lq)
        if CW == 1:
            for q in range(Q):
                NP[lo + q] = np.uint8((xf[q] >> s8) & f4)
            for q in range(Q):
                NP[hi + q] = np.uint8((xf[q] >> s4) & f4)
        else:
            for q in range(Q):
                NP[lo + q] = np.uint8((xf[q * cw + w] >> s8) & f4)
            for q in range(Q):
                NP[hi + q] = np.uint8((xf[q * cw + w] >> s4) & f4)


@njit(cache=True)
def _copy_rows(NP, Lq, X, Lp, NPL, N, Hp, Wp, dys, dxs, rowstep, sw, R, Wo):  # pragma: no cover
    """X[(j*NPL + pl)*Lp + (b*R + r)*Wo + wo] = NP[pl*Lq + (b*Hp + r*rowstep + dys[j])*Wp +
    dxs[j] + wo*sw] for every copy j and plane pl: rows moved 64 bytes at a time where sw = 1
    (a move may spill past its row: the next row, or the plane's slack, is written after it)."""
    Wu = np.uint64(Wo)
    swu = np.uint64(sw)
    for j in range(len(dys)):
        for pl in range(NPL):
            d = np.uint64((j * NPL + pl) * Lp)
            for b in range(N):
                for r in range(R):
                    src = np.uint64(pl * Lq + (b * Hp + r * rowstep + dys[j]) * Wp + dxs[j])
                    if sw == 1:
                        for o in range(0, Wo, 64):
                            ou = np.uint64(o)
                            bstore(X, d + ou, bload(NP, src + ou))
                    else:
                        for wo in range(Wu):
                            X[d + wo] = NP[src + wo * swu]
                    d += Wu


@njit(cache=True)
def _chunks(X, off, T, TP, cout, n, zc, rptr, runs, k0, k1, out, epi):  # pragma: no cover
    """Chunks [k0, k1): 64 positions from zc[k] of every tap-plane's nibble planes (offsets
    off[t, h]), 4 channels at a time; then each run (lane0, image, p0, length) of the chunk's
    outputs to out[image, c, p0 ...] (sums n - 2m, or the epilogue of them)."""
    W = np.zeros((4, 64), np.int16)  # counts m (uint16 values <= n <= 32767), then y = n - 2m
    Wf = W.reshape(-1)
    z0 = np.uint64(0)
    z1 = np.uint64(64)
    z2 = np.uint64(128)
    z3 = np.uint64(192)
    h16 = np.uint64(16)
    step = np.uint64(TP * 32)
    zero = hfill(0)
    nv = hfill(n)
    for k in range(k0, k1):
        z = np.uint64(zc[k])
        for c0 in range(0, cout, 4):
            t0 = np.uint64(c0) * step
            t1 = t0 + step
            t2 = t1 + step
            t3 = t2 + step
            a0 = bzero()
            a1 = bzero()
            a2 = bzero()
            a3 = bzero()
            if TP > FLUSH:
                hstore(Wf, z0, zero)
                hstore(Wf, z1, zero)
                hstore(Wf, z2, zero)
                hstore(Wf, z3, zero)
            f = 0
            for t in range(TP):
                xl = bload(X, off[t, 0] + z)
                xh = bload(X, off[t, 1] + z)
                o = np.uint64(t * 32)
                a0 = badd(a0, badd(blookup(T, t0 + o, xl), blookup(T, t0 + o + h16, xh)))
                a1 = badd(a1, badd(blookup(T, t1 + o, xl), blookup(T, t1 + o + h16, xh)))
                a2 = badd(a2, badd(blookup(T, t2 + o, xl), blookup(T, t2 + o + h16, xh)))
                a3 = badd(a3, badd(blookup(T, t3 + o, xl), blookup(T, t3 + o + h16, xh)))
                f += 1
                if f == FLUSH:
                    hstore(Wf, z0, hadd(hload(Wf, z0), uwiden(a0)))
                    hstore(Wf, z1, hadd(hload(Wf, z1), uwiden(a1)))
                    hstore(Wf, z2, hadd(hload(Wf, z2), uwiden(a2)))
                    hstore(Wf, z3, hadd(hload(Wf, z3), uwiden(a3)))
                    a0 = bzero()
                    a1 = bzero()
                    a2 = bzero()
                    a3 = bzero()
                    f = 0
            if TP > FLUSH:
                m0 = hadd(hload(Wf, z0), uwiden(a0))
                m1 = hadd(hload(Wf, z1), uwiden(a1))
                m2 = hadd(hload(Wf, z2), uwiden(a2))
                m3 = hadd(hload(Wf, z3), uwiden(a3))
            else:
                m0 = uwiden(a0)
                m1 = uwiden(a1)
                m2 = uwiden(a2)
                m3 = uwiden(a3)
            hstore(Wf, z0, hsub(nv, hadd(m0, m0)))  # y = n - 2m
            hstore(Wf, z1, hsub(nv, hadd(m1, m1)))
            hstore(Wf, z2, hsub(nv, hadd(m2, m2)))
            hstore(Wf, z3, hsub(nv, hadd(m3, m3)))
            for q in range(min(4, cout - c0)):
                c = c0 + q
                zq = np.uint64(64 * q)
                for r in range(rptr[k], rptr[k + 1]):
                    lane0 = np.uint64(runs[r, 0])
                    b = runs[r, 1]
                    p0 = np.uint64(runs[r, 2])
                    L = np.uint64(runs[r, 3])
                    dst = out[b, c]
                    if epi is not None:
                        xnor_epilogue_sums(W, q, lane0, epi, b, c, dst, p0, L)
                    elif L == 64:  # eight int16 -> int32 stores
                        hstore_wide(dst, p0, hload(Wf, zq))
                    else:
                        for p in range(L):
                            dst[p0 + p] = W[q, lane0 + p]


@njit(cache=True)
def _planes(xp, NP, X, geo, dys, dxs):  # pragma: no cover - numba
    """:func:`_padded_nibbles` then :func:`_copy_rows` with a plan's scalars ``geo``."""
    p8, grid, length, N, Hp, Wp, rowstep, sw, rows, Wo = (
        geo[0],
        geo[1],
        geo[2],
        geo[3],
        geo[4],
        geo[5],
        geo[6],
        geo[7],
        geo[8],
        geo[9],
    )
    _padded_nibbles(xp, p8, grid, NP)
    _copy_rows(NP, grid, X, length, 2 * p8, N, Hp, Wp, dys, dxs, rowstep, sw, rows, Wo)


@njit(cache=True)
def _run(xp, NP, X, geo, dys, dxs, off, T, zc, rptr, runs, cout, n, out, epi):  # pragma: no cover
    """One thread, one call: the planes, then every chunk."""
    _planes(xp, NP, X, geo, dys, dxs)
    _chunks(X, off, T, geo[10], cout, n, zc, rptr, runs, 0, len(zc), out, epi)


@njit(parallel=True, cache=True)
def _chunks_par(X, off, T, TP, cout, n, zc, rptr, runs, nparts, out, epi):  # pragma: no cover
    K = len(zc)
    for i in prange(nparts):
        _chunks(X, off, T, TP, cout, n, zc, rptr, runs, i * K // nparts, (i + 1) * K // nparts,
                out, epi)  # fmt: skip


# --------------------------------------------------------------------------------- the plan


class LutPlan:
    """The nibble-plane layout of one input geometry (shared by every layer of that geometry):
    the copies, each tap-plane's plane offsets, the chunks and their output runs, and the
    planes' buffers (reused call after call; not for concurrent calls). ``xshape`` = (N, Hp,
    Wp, CW) of the packed input words."""

    def __init__(
        self,
        xshape: tuple[int, int, int, int],
        cin: int,
        geometry: tuple[int, int, int, int, int, int],
        Ho: int,
        Wo: int,
    ) -> None:
        N, Hp, Wp, CW = xshape
        kh, kw, sh, sw, dh, dw = geometry
        if cin > 64 * CW:
            raise ValueError(f"{cin} channels in {CW} packed words")
        if (
            Ho < 1
            or Wo < 1
            or (Ho - 1) * sh + (kh - 1) * dh >= Hp
            or (Wo - 1) * sw + (kw - 1) * dw >= Wp
        ):
            raise ValueError(f"output {Ho}x{Wo} does not fit a {Hp}x{Wp} padded input")
        self.key = (tuple(xshape), cin, tuple(geometry), Ho, Wo)
        self.p8 = p8 = -(-cin // 8)
        self.taps = kh * kw * p8
        if sh == 1:  # a copy per kernel column, whole padded rows: tap ky is a shift
            self.dys = np.zeros(kw, np.int64)
            self.dxs = np.arange(kw, dtype=np.int64) * dw
            self.rowstep, rows = 1, Hp
            copy = np.repeat(np.tile(np.arange(kw), kh), p8)
            shift = np.repeat(np.repeat(np.arange(kh) * dh * Wo, kw), p8)
        else:  # a copy per tap (im2col)
            self.dys = np.repeat(np.arange(kh) * dh, kw).astype(np.int64)
            self.dxs = np.tile(np.arange(kw) * dw, kh).astype(np.int64)
            self.rowstep, rows = sh, Ho
            copy = np.repeat(np.arange(kh * kw), p8)
            shift = np.zeros(kh * kw * p8, np.int64)
        self.rows, self.sw, self.wo = rows, sw, Wo
        k = np.tile(np.arange(p8), kh * kw)
        self.length = N * rows * Wo + 64 + int(shift.max())  # a plane, with slack for chunk tails
        base = (copy * p8 + k) * 2 * self.length + shift
        self.off = np.stack([base, base + self.length], axis=1).astype(np.uint64)
        hw = Ho * Wo
        zc, rptr, runs = [], [0], []
        if sh == 1:  # each image's run in chunks
            for b in range(N):
                for p0 in range(0, hw, 64):
                    zc.append(b * rows * Wo + p0)
                    runs.append((0, b, p0, min(64, hw - p0)))
                    rptr.append(len(runs))
        else:  # chunks over the batch, runs split at images
            for z in range(0, N * hw, 64):
                zc.append(z)
                e = min(z + 64, N * hw)
                while z < e:
                    b, p0 = divmod(z, hw)
                    m = min(e - z, hw - p0)
                    runs.append((z - zc[-1], b, p0, m))
                    z += m
                rptr.append(len(runs))
        self.zc = np.asarray(zc, np.int64)
        self.rptr = np.asarray(rptr, np.int64)
        self.runs = np.asarray(runs, np.int64).reshape(-1, 4)
        self.useful = N * hw
        self.X = np.zeros(len(self.dys) * p8 * 2 * self.length, np.uint8)
        self.grid = N * Hp * Wp + 64  # the padded nibble planes, with slack for row moves
        self.NP = np.zeros(2 * p8 * self.grid, np.uint8)
        self.geo = np.array(
            [p8, self.grid, self.length, N, Hp, Wp, self.rowstep, sw, rows, Wo, self.taps], np.int64
        )

    @property
    def utilisation(self) -> float:
        """Outputs per computed lane (chunks of 64)."""
        return self.useful / max(1, 64 * len(self.zc))

    def planes(self, xp: np.ndarray) -> np.ndarray:
        """The nibble planes of packed input words ``xp`` (into the plan's buffer): nibbles
        over the padded grid, then the copies' rows."""
        self._check_words(xp)
        _planes(xp, self.NP, self.X, self.geo, self.dys, self.dxs)
        return self.X

    def _check_words(self, xp: np.ndarray) -> None:
        if xp.shape != self.key[0] or xp.dtype != np.uint64 or not xp.flags.c_contiguous:
            raise ValueError(f"packed input {xp.shape} {xp.dtype}, plan for {self.key[0]}")

    def run(
        self,
        xp: np.ndarray,
        tables: np.ndarray,
        n: int,
        out: np.ndarray,
        nthreads: int = 1,
        epilogue: tuple | None = None,
    ) -> None:
        """``out[b, j, p]`` (N, Cout, Ho*Wo) = the XNOR sums of packed words ``xp`` with the
        weights of ``tables`` (:func:`lut_tables`), or their Bi-Real epilogue (``epilogue`` as
        :func:`mstc.engine.packed.xnor_conv`)."""
        self._check_words(xp)
        cout = out.shape[1]
        if tables.shape[1:] != (self.taps, 2, 16) or tables.shape[0] < cout:
            raise ValueError(f"tables {tables.shape} for {self.taps} tap-planes, {cout} channels")
        if not 0 <= n <= MAX_TAPS:
            raise ValueError(f"n = {n} taps: the lookup kernel sums in int16")
        if out.shape != (self.key[0][0], cout, self.useful // self.key[0][0]):
            raise ValueError(f"output {out.shape} for this plan's {self.useful} positions")
        if epilogue is not None and epilogue[3].shape != out.shape:
            raise ValueError(f"shortcut of shape {epilogue[3].shape}, output {out.shape}")
        K = len(self.zc)
        if nthreads > 1 and K > 1:
            _planes(xp, self.NP, self.X, self.geo, self.dys, self.dxs)
            _chunks_par(self.X, self.off, tables.reshape(-1), self.taps, cout, n, self.zc,
                        self.rptr, self.runs, min(K, 4 * nthreads), out, epilogue)  # fmt: skip
        elif K:
            _run(xp, self.NP, self.X, self.geo, self.dys, self.dxs, self.off,
                 tables.reshape(-1), self.zc, self.rptr, self.runs, cout, n, out, epilogue)  # fmt: skip


def lut_sums_ref(
    xp: np.ndarray,
    tables: np.ndarray,
    cin: int,
    geometry: tuple[int, int, int, int, int, int],
    Ho: int,
    Wo: int,
    cout: int,
) -> np.ndarray:
    """Plain numpy reference: int32 (N, Cout, Ho, Wo) sums ``n - 2 * sum_t (L[a_t & 15] +
    H[a_t >> 4])`` over the activation bytes a_t of every tap-plane, read from ``xp`` directly."""
    kh, kw, sh, sw, dh, dw = geometry
    N = xp.shape[0]
    p8 = -(-cin // 8)
    by = xp.view(np.uint8)  # (N, Hp, Wp, CW*8): byte k of a position = channels 8k .. 8k+7
    m = np.zeros((N, cout, Ho, Wo), np.int64)
    t = 0
    for ky in range(kh):
        for kx in range(kw):
            rows = ky * dh + sh * np.arange(Ho)
            cols = kx * dw + sw * np.arange(Wo)
            for k in range(p8):
                a = by[:, rows][:, :, cols, k]  # (N, Ho, Wo)
                lo = tables[:cout, t, 0][:, a & 15]  # (Cout, N, Ho, Wo)
                hi = tables[:cout, t, 1][:, a >> 4]
                m += (lo.astype(np.int64) + hi).transpose(1, 0, 2, 3)
                t += 1
    return (cin * kh * kw - 2 * m).astype(np.int32)


@functools.cache
def has_vector_popcount() -> bool:
    """Whether the CPU counts bits in vectors (AVX-512 VPOPCNTDQ): the popcount kernel's case."""
    return bool(llvm.get_host_cpu_features().get("avx512vpopcntdq", False))
