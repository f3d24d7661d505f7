"""The tree walk in int16 vector lanes: a binary conv's sums 64 output positions at a time, for the
short grids where the bit-sliced kernel's per-node work dominates (vgg_small's 7x7 layers at
batch 1: two words of positions per plane).

Layout. The input bit planes (:mod:`mstc.engine.sliced`, the padded grid, position
q = (image * Hp + h) * Wp + w) are expanded once to int8 rows: row c holds a_c(q) = +-1 (bit 1 ->
+1, padding -1). Output position q of a stride-1 conv reads tap k = (ci, ky, kx) at q + s_k with
s_k = ky*dh*Wp + kx*dw, so for a chunk of 64 positions starting at q0 tap k is the 64 lanes of
row ci from q0 + s_k: one ``i8x64`` load (:mod:`mstc.engine.simd`; two AVX2 registers), and a
tap costs one vector add. A node's taps with w_k = +1 come first and are added, those with
w_k = -1 subtracted; up to 127 taps are summed in int8, then widened into the node's int16
lanes. Grids of two chunks or more take two chunks per node visit.

Walk (method.md section 2; y = XNOR sums in +-1, the reference backend's integers), in DFS
preorder with the last node of each depth kept:

- root j: y_j = sum_k w_jk a_k over all n taps;
- child j of p: y_j = y_p + 2 sum_{k in D_j} w_jk a_k;
- complement child (w_j = -w_p off D_j): y_j = -y_p + 2 sum_{k in D_j} w_jk a_k.

Exact in int16 for n <= 16383 (|y| <= n; partial sums of a node stay within 2n). Fused layers
emit bits u >= t (u = (y + n) / 2 agreeing taps; :mod:`mstc.engine.fold`) as y >= 2t - n, one
vector compare per node and chunk, into the same emitted-bits words as the bit-sliced kernel, so
the same emitters (:func:`mstc.engine.sliced.emit_any`) place them; chain ends store y in runs
of up to 8 outputs into int32 sums (:func:`output_segments`).

Reference: :func:`_walk_ref` (plain loops over positions); both are tested equal to
XNOR-popcount (the packed backend).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mstc.engine.buffers import BufferPool, empty
from mstc.engine.simd import (
    badd,
    bload,
    bsigns,
    bstore,
    bzero,
    hadd,
    hfill,
    hge,
    hload,
    hstore,
    hsub,
    widen,
    widen_store8,
)
from mstc.engine.sliced import (
    CONST0,
    CONST1,
    GE,
    LE,
    BitPlanes,
    PlaneGeometry,
    SlicedLayer,
    emit_any,
    emit_params,
    grid_words,
    output_hw,
)

#: largest n (taps per channel) the int16 walk is exact for: partial sums stay within 2n
MAX_TAPS = 16383


def fits(sched: SlicedLayer) -> bool:
    """Whether the int16 walk is exact for this layer."""
    return sched.layer.n <= MAX_TAPS


def chunks(sched: SlicedLayer, g: PlaneGeometry) -> int:
    """Chunks of 64 grid positions up to the last output's (the grid's last rows and columns
    are padding: at 7x7 on a 9x9 grid the outputs end at position 60, one chunk)."""
    ho, wo = output_hw(sched.layer, g)
    if ho <= 0 or wo <= 0:
        return 0
    return (((g.n - 1) * g.hp + ho - 1) * g.wp + wo - 1) // 64 + 1


def span(sched: SlicedLayer, g: PlaneGeometry) -> int:
    """Positions per node visit: 64, or 128 (two chunks: half the per-node work per position)
    on grids of two chunks or more."""
    return 128 if chunks(sched, g) >= 2 else 64


def _row_length(sched: SlicedLayer, g: PlaneGeometry) -> int:
    """Elements of one expanded row: every unit's positions (a last odd chunk computed as a
    pair too) plus the largest tap shift."""
    tw, tb = sched.tap_shifts(g.wp)
    smax = int((tw * 64 + tb).max()) if len(tw) else 0
    sp = span(sched, g)
    units = -(-chunks(sched, g) * 64 // sp)
    return units * sp + 64 * -(-smax // 64)


def signed_taps(
    sched: SlicedLayer, g: PlaneGeometry, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every node's taps as offsets ci * length + s_k in the expanded rows (uint64), those of
    w = +1 first: (offsets, ptr, mid) with node e's taps at ptr[e] .. ptr[e + 1] and its w = -1
    taps from mid[e]."""
    tw, tb = sched.tap_shifts(g.wp)
    k = sched.tap_idx.astype(np.int64)
    off = sched._tap_c[k].astype(np.int64) * length + tw[k] * 64 + tb[k]
    neg = sched.tap_flip != 0
    node = np.repeat(np.arange(len(sched.ptr) - 1), np.diff(sched.ptr))
    order = np.lexsort((neg, node))  # by node, then w = +1 before w = -1
    npos = np.bincount(node[~neg], minlength=len(sched.ptr) - 1)
    mid = sched.ptr[:-1] + npos
    return off[order].astype(np.uint64), sched.ptr.astype(np.int64), mid.astype(np.int64)


def emit_thresholds(
    sched: SlicedLayer, rule: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per node (preorder): the int16 threshold T and uint64 flip F of its emitted bits
    ``(y >= T) XOR F`` for the rule on u: u >= t <=> y >= 2t - n; u <= t <=> NOT y >= 2t - n + 1
    (clamped to [-n - 1, n + 1]); constant 0 / 1 as T = 2^15 - 1 / -2^15 (|y| <= n < 2^14)."""
    n = sched.layer.n
    mode_u = np.asarray(rule[0])[sched.order].astype(np.int8)
    t_u = np.asarray(rule[1])[sched.order].astype(np.int64)
    thr = np.clip(2 * t_u - n + (mode_u != GE), -n - 1, n + 1)
    thr = np.where(mode_u == CONST0, 2**15 - 1, np.where(mode_u == CONST1, -(2**15), thr))
    flip = np.where(mode_u == LE, ~np.uint64(0), np.uint64(0)).astype(np.uint64)
    return thr.astype(np.int16), flip


# ------------------------------------------------------------------------------------ kernels


@njit(cache=True)
def _expand(bits, C, words, length, A):  # pragma: no cover - numba
    """A[c * length + q] = +1 where bit q of plane c is set, else -1 (int8)."""
    for c in range(C):
        row = np.uint64(c * length)
        for w in range(words):
            bstore(A, row + np.uint64(64 * w), bsigns(bits[c, w], np.uint64(0)))


@njit(cache=True, inline="always")
def _tap_sum(A, toff, t, t1, q0, acc, add):  # pragma: no cover - numba
    """acc +- the taps t .. t1 - 1 at chunk q0: int8 partial sums of up to 127 taps (|sum| <=
    127), each widened and added to (``add``) or subtracted from the int16 ``acc``."""
    while t < t1:
        tb = min(t + np.uint64(127), t1)
        a8 = bzero()
        for u in range(t, tb):
            a8 = badd(a8, bload(A, toff[u] + q0))
        acc = hadd(acc, widen(a8)) if add else hsub(acc, widen(a8))
        t = tb
    return acc


@njit(cache=True, inline="always")
def _store_sums(SO, base, Y, yb, slane, sdst, slen, k0, k1):  # pragma: no cover - numba
    """A node's sums from its lanes at Y[yb ..] into SO[base + ..] by the output runs k0 .. k1
    (:func:`output_segments`): 8 lanes stored where the extra ones are rewritten later by this
    node, else one by one."""
    for k in range(k0, k1):
        dst = sdst[k] + base
        src = yb + slane[k]
        ln = slen[k]
        if ln > 8:
            widen_store8(SO, dst, Y, src)
        else:
            for i in range(ln):
                SO[dst + i] = Y[src + i]


@njit(cache=True)
def _walk(
    A, toff, order, depth, kind, ptr, mid, ethr, eflip, c0, c1, OB, SO, slane, sdst, slen, kt,
    HW, Y,
):  # fmt: skip  # pragma: no cover - numba
    """Chunks [c0, c1) of 64 positions: every node's y in preorder (module doc) from its taps
    of w = +1 (ptr[e] .. mid[e]) and of w = -1 (mid[e] .. ptr[e + 1]); emitted bits into
    OB[j, chunk] if OB has rows; sums into SO if it has elements, by the output segments
    kt[chunk] .. kt[chunk + 1] (up to 8 outputs of one row: lanes slane.., flat index sdst +
    j * HW.., slen of them, or slen - 8 stored as 8 where that is safe: :func:`output_segments`). Y: scratch of 64 lanes per depth (+ 8 read past the last)."""
    cout = order.shape[0]
    want_bits = OB.shape[0] > 0
    want_sums = SO.shape[0] > 0
    zero = hfill(0)
    s64 = np.uint64(64)
    for ci in range(c0, c1):
        q0 = np.uint64(64 * ci)
        for e in range(cout):
            t0 = np.uint64(ptr[e])
            tm = np.uint64(mid[e])
            acc = _tap_sum(A, toff, t0, tm, q0, zero, True)
            acc = _tap_sum(A, toff, tm, np.uint64(ptr[e + 1]), q0, acc, False)
            d = np.uint64(depth[e])
            kd = kind[e]
            if kd == 0:
                y = acc
            elif kd == 1:
                y = hadd(hload(Y, (d - np.uint64(1)) * s64), hadd(acc, acc))
            else:
                y = hsub(hadd(acc, acc), hload(Y, (d - np.uint64(1)) * s64))
            yb = d * s64
            hstore(Y, yb, y)
            j = order[e]
            if want_bits:
                OB[j, ci] = hge(y, hfill(ethr[e])) ^ eflip[e]
            if want_sums:
                _store_sums(SO, np.uint64(j * HW), Y, yb, slane, sdst, slen, kt[ci], kt[ci + 1])


@njit(cache=True, inline="always")
def _tap_sum2(A, toff, t, t1, q0, acc, acd, add):  # pragma: no cover - numba
    """:func:`_tap_sum` on two chunks at once (q0 and q0 + 64): two accumulators per tap."""
    s64 = np.uint64(64)
    while t < t1:
        tb = min(t + np.uint64(127), t1)
        a8 = bzero()
        b8 = bzero()
        for u in range(t, tb):
            o = toff[u] + q0
            a8 = badd(a8, bload(A, o))
            b8 = badd(b8, bload(A, o + s64))
        if add:
            acc = hadd(acc, widen(a8))
            acd = hadd(acd, widen(b8))
        else:
            acc = hsub(acc, widen(a8))
            acd = hsub(acd, widen(b8))
        t = tb
    return acc, acd


@njit(cache=True)
def _walk2(
    A, toff, order, depth, kind, ptr, mid, ethr, eflip, c0, c1, OB, SO, slane, sdst, slen, kt,
    HW, Y,
):  # fmt: skip  # pragma: no cover - numba
    """:func:`_walk` over units [c0, c1) of two chunks (128 positions): per node visit both
    chunks' sums (OB words 2c and 2c + 1; segment lanes 0..127 of the unit). Y: 128 lanes per
    depth (+ 8)."""
    cout = order.shape[0]
    want_bits = OB.shape[0] > 0
    want_sums = SO.shape[0] > 0
    zero = hfill(0)
    s64 = np.uint64(64)
    s128 = np.uint64(128)
    for ci in range(c0, c1):
        q0 = s128 * np.uint64(ci)
        for e in range(cout):
            t0 = np.uint64(ptr[e])
            tm = np.uint64(mid[e])
            acc, acd = _tap_sum2(A, toff, t0, tm, q0, zero, zero, True)
            acc, acd = _tap_sum2(A, toff, tm, np.uint64(ptr[e + 1]), q0, acc, acd, False)
            d = np.uint64(depth[e])
            kd = kind[e]
            yb = d * s128
            if kd == 0:
                y0, y1 = acc, acd
            else:
                pb = yb - s128
                p0 = hload(Y, pb)
                p1 = hload(Y, pb + s64)
                if kd == 1:
                    y0 = hadd(p0, hadd(acc, acc))
                    y1 = hadd(p1, hadd(acd, acd))
                else:
                    y0 = hsub(hadd(acc, acc), p0)
                    y1 = hsub(hadd(acd, acd), p1)
            hstore(Y, yb, y0)
            hstore(Y, yb + s64, y1)
            j = order[e]
            if want_bits:
                th = hfill(ethr[e])
                OB[j, 2 * ci] = hge(y0, th) ^ eflip[e]
                OB[j, 2 * ci + 1] = hge(y1, th) ^ eflip[e]
            if want_sums:
                _store_sums(SO, np.uint64(j * HW), Y, yb, slane, sdst, slen, kt[ci], kt[ci + 1])


#: header of the int64 ``meta`` array of :func:`_run`: input channels, expanded words per row,
#: row length, Cout, Ho * Wo, units (chunks or pairs), schedule taps, output segments, span;
#: then order, depth, kind, ptr (Cout + 1), mid (Cout) and kt (units + 1). ``u64``: tap
#: offsets, emit flips, and the segments' lanes, flat indices and lengths.
_HEAD = 9


@njit(cache=True, inline="always")
def _unpack(meta, u64):  # pragma: no cover - numba
    cout = meta[3]
    nchunks = meta[5]
    T = meta[6]
    S = meta[7]
    o = _HEAD
    order = meta[o : o + cout]
    depth = meta[o + cout : o + 2 * cout]
    kind = meta[o + 2 * cout : o + 3 * cout]
    ptr = meta[o + 3 * cout : o + 4 * cout + 1]
    mid = meta[o + 4 * cout + 1 : o + 5 * cout + 1]
    kt = meta[o + 5 * cout + 1 : o + 5 * cout + 2 + nchunks]
    toff = u64[:T]
    eflip = u64[T : T + cout]
    o = T + cout
    return (
        order,
        depth,
        kind,
        ptr,
        mid,
        kt,
        toff,
        eflip,
        u64[o : o + S],
        u64[o + S : o + 2 * S],
        u64[o + 2 * S : o + 3 * S],
    )


@njit(cache=True, inline="always")
def _walk_units(A, meta, u64, ethr, OB, SO, c0, c1, Y):  # pragma: no cover - numba
    """Units [c0, c1) by :func:`_walk2` (span 128) or :func:`_walk` (64), Y their scratch."""
    order, depth, kind, ptr, mid, kt, toff, eflip, slane, sdst, slen = _unpack(meta, u64)
    if meta[8] == 128:
        _walk2(A, toff, order, depth, kind, ptr, mid, ethr, eflip, c0, c1, OB, SO, slane, sdst,
               slen, kt, meta[4], Y)  # fmt: skip
    else:
        _walk(A, toff, order, depth, kind, ptr, mid, ethr, eflip, c0, c1, OB, SO, slane, sdst,
              slen, kt, meta[4], Y)  # fmt: skip


@njit(cache=True)
def _run(bits, A, Y, meta, u64, ethr, OB, SO):  # pragma: no cover - numba
    """Expand the planes, then walk every unit (one call: numba's per-argument unboxing is
    ~0.1 us, a tenth of a small layer's walk)."""
    _expand(bits, meta[0], meta[1], meta[2], A)
    _walk_units(A, meta, u64, ethr, OB, SO, 0, meta[5], Y[0])


@njit(cache=True)
def _run_emit(bits, A, Y, meta, u64, ethr, OB, SO, ekind, P, valid, half, out):  # pragma: no cover
    """:func:`_run`, then the emitted bits placed in the next conv's planes ``out``, zeroed
    first (:func:`mstc.engine.sliced.emit_any`): a fused layer in one call."""
    _run(bits, A, Y, meta, u64, ethr, OB, SO)
    out[:] = 0
    emit_any(OB, ekind, P, valid, half, out)


@njit(cache=True)
def _run_emit_par(
    bits, A, Y, meta, u64, ethr, OB, SO, ekind, P, valid, half, out
):  # pragma: no cover
    """:func:`_run_emit` with the walk over ``Y.shape[0]`` workers."""
    _run_par(bits, A, Y, meta, u64, ethr, OB, SO)
    out[:] = 0
    emit_any(OB, ekind, P, valid, half, out)


@njit(parallel=True, cache=True)
def _run_par(bits, A, Y, meta, u64, ethr, OB, SO):  # pragma: no cover - numba
    """:func:`_run` with the units split over ``Y.shape[0]`` workers."""
    _expand(bits, meta[0], meta[1], meta[2], A)
    units = meta[5]
    nparts = Y.shape[0]
    for p in prange(nparts):
        _walk_units(A, meta, u64, ethr, OB, SO, p * units // nparts, (p + 1) * units // nparts,
                    Y[p])  # fmt: skip


@njit(cache=True)
def _walk_ref(
    a, tap_c, shift, order, depth, kind, ptr, tidx, tflip, positions, y_out,
):  # fmt: skip  # pragma: no cover - numba
    """The plain walk: a (C, Q) int64 +-1, y_out[j, q] for q < positions, scalar loops."""
    cout = order.shape[0]
    nlev = depth.max() + 1 if cout else 0
    Y = np.zeros((nlev, positions), np.int64)
    for e in range(cout):
        d = depth[e]
        for q in range(positions):
            acc = 0
            for t in range(ptr[e], ptr[e + 1]):
                k = tidx[t]
                w = -1 if tflip[t] != 0 else 1
                acc += w * a[tap_c[k], q + shift[k]]
            if kind[e] == 0:
                Y[d, q] = acc
            elif kind[e] == 1:
                Y[d, q] = Y[d - 1, q] + 2 * acc
            else:
                Y[d, q] = -Y[d - 1, q] + 2 * acc
            y_out[order[e], q] = Y[d, q]


# ------------------------------------------------------------------------------------ layer


def output_segments(
    g: PlaneGeometry, ho: int, wo: int, cout: int, nunits: int, sp: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The outputs as runs of up to 8 of one row within one unit of ``sp`` positions: (first
    lane, flat index in the (N, Cout, Ho, Wo) sums of channel 0, length) of each, and kt[unit]
    the first run of each unit. A run of n < 8 may be stored as 8 outputs (length n + 8) where
    the extra ones are later outputs of the same image and channel in the same unit: the walk
    writes them again, in order, in the same node and worker."""
    sh = sp.bit_length() - 1
    img, h, w0 = np.meshgrid(np.arange(g.n), np.arange(ho), np.arange(0, wo, 8), indexing="ij")
    img, h, w0 = img.reshape(-1), h.reshape(-1), w0.reshape(-1)
    q0 = (img * g.hp + h) * g.wp + w0
    ln = np.minimum(8, wo - w0)
    cut = sp - (q0 & (sp - 1))  # a run crossing into the next unit is split there
    parts = [(q0, w0, np.minimum(ln, cut)), (q0 + cut, w0 + cut, ln - cut)]
    q, w, n = (np.concatenate(v) for v in zip(*parts, strict=True))
    img, h = np.concatenate([img, img]), np.concatenate([h, h])
    keep = n > 0
    q, w, n, img, h = q[keep], w[keep], n[keep], img[keep], h[keep]
    order = np.argsort(q, kind="stable")
    q, w, n, img, h = q[order], w[order], n[order], img[order], h[order]
    k7 = h * wo + w + 7  # the 8th output from the run's first, within the image and channel
    q7 = (img * g.hp + k7 // wo) * g.wp + k7 % wo
    wide = (k7 < ho * wo) & ((q7 >> sh) == (q >> sh))
    dst = img * cout * ho * wo + h * wo + w
    kt = np.searchsorted(q >> sh, np.arange(nunits + 1)).astype(np.int64)
    u = np.uint64
    return (q & (sp - 1)).astype(u), dst.astype(u), (n + 8 * wide).astype(u), kt


class Walk16:
    """One layer at one input geometry, prepared: tap offsets, output index maps, scratch.

    ``__call__(planes, OB, sums=...)`` runs the walk: the emitted bits of the rule the walk was
    prepared with into ``OB`` (Cout, >= ``columns``; words past the last output's chunk, other
    than a last odd chunk's pair, are not written), and, with ``sums``, returns the int32 sums
    (N, Cout, Ho, Wo)."""

    def __init__(
        self,
        sched: SlicedLayer,
        g: PlaneGeometry,
        rule: tuple[np.ndarray, np.ndarray] | None = None,
        nthreads: int = 1,
    ) -> None:
        if not fits(sched):
            raise ValueError(f"layer {sched.layer.name}: n = {sched.layer.n} > {MAX_TAPS} taps")
        layer = sched.layer
        cout = layer.cout
        self.sched = sched
        self.geometry = g
        self.ho, self.wo = output_hw(layer, g)
        length = _row_length(sched, g)
        self.nchunks = chunks(sched, g)
        if rule is None:
            ethr, eflip = np.zeros(cout, np.int16), np.zeros(cout, np.uint64)
        else:
            ethr, eflip = emit_thresholds(sched, rule)
        self.ethr = ethr
        sp = span(sched, g)
        units = -(-self.nchunks * 64 // sp)
        self.columns = units * sp // 64  # OB words written (a last odd chunk's pair too)
        slane, sdst, slen, kt = output_segments(g, self.ho, self.wo, cout, units, sp)
        toff, ptr, mid = signed_taps(sched, g, length)
        head = [g.c, length // 64, length, cout, self.ho * self.wo, units, len(toff)]
        head += [len(slane), sp]
        self.meta = np.concatenate(
            [np.asarray(head, np.int64), sched.order, sched.depth, sched.kind, ptr, mid, kt]
        ).astype(np.int64)  # fmt: skip
        self.u64 = np.concatenate([toff, eflip, slane, sdst, slen]).astype(np.uint64)
        nparts = max(1, min(nthreads, units))
        self._kernel = _run_par if nparts > 1 else _run
        nlev = int(sched.depth.max()) + 1 if cout else 1
        self.Y = np.zeros((nparts, sp * nlev + 8), np.int16)  # + 8: widen_store8 reads
        self.A = np.zeros(g.c * length, np.int8)
        self._no_bits = np.zeros((0, 1), np.uint64)
        self._no_sums = np.zeros(0, np.int32)

    def __call__(
        self, planes: BitPlanes, OB: np.ndarray | None = None, *, sums: bool = False,
        pool: BufferPool | None = None,
    ) -> np.ndarray | None:  # fmt: skip
        g = self.geometry
        if planes.geometry is not g and planes.geometry != g:
            raise ValueError(f"planes {planes.geometry} are not this walk's {g}")
        cout = self.sched.layer.cout
        if OB is None:
            OB = self._no_bits
        elif OB.shape[0] != cout or OB.shape[1] < self.columns or OB.dtype != np.uint64:
            raise ValueError(f"emitted bits {OB.shape} {OB.dtype}: need uint64 ({cout}, >= "
                             f"{self.columns})")  # fmt: skip
        out = empty(pool, (g.n, cout, self.ho, self.wo), np.int32) if sums else None
        if self.nchunks and cout:
            SO = out.reshape(-1) if sums else self._no_sums
            self._kernel(planes.bits, self.A, self.Y, self.meta, self.u64, self.ethr, OB, SO)
        return out


class FusedWalk:
    """A fused layer by the int16 walk at one input geometry (as
    :class:`mstc.engine.sliced.FusedStep` for the bit-sliced kernel): the walk emits the
    rule's bits, then they are placed in the next conv's planes (optionally 2x2 max-pooled).

    A call returns the same :class:`BitPlanes` each time, rewritten: valid until the step is
    called again (in a pass, the next conv reads them before that). At batch 1 a fresh array
    and a frozen dataclass cost ~1.4 us of a ~9 us layer."""

    def __init__(
        self,
        sched: SlicedLayer,
        geometry: PlaneGeometry,
        rule: tuple[np.ndarray, np.ndarray],
        pool: bool,
        nxt: PlaneGeometry,
        nthreads: int = 1,
    ) -> None:
        self.geometry = geometry
        self.next_geometry = nxt
        walk = self._walk = Walk16(sched, geometry, rule, nthreads)
        self._emit = emit_params(sched, geometry, pool, nxt)
        ow = grid_words(geometry.n, geometry.hp, geometry.wp)
        self._OB = np.zeros((sched.layer.cout, ow + 1), dtype=np.uint64)  # unwritten words 0
        self._out_shape = (nxt.c, nxt.words)
        self._kernel = _run_emit_par if walk._kernel is _run_par else _run_emit
        self._out = BitPlanes(np.zeros(self._out_shape, dtype=np.uint64), nxt)
        self._args = (walk.A, walk.Y, walk.meta, walk.u64, walk.ethr, self._OB)
        self._tail = (walk._no_sums, *self._emit, self._out.bits)

    def __call__(self, planes: BitPlanes) -> BitPlanes:
        """The next conv's planes (walk and emission in one call), rewritten in place."""
        g = self.geometry
        if planes.geometry is not g and planes.geometry != g:
            raise ValueError(f"planes {planes.geometry} are not this step's {g}")
        if self._walk.nchunks:
            self._kernel(planes.bits, *self._args, *self._tail)
        return self._out

    def with_sums(
        self, planes: BitPlanes, pool: BufferPool | None = None
    ) -> tuple[BitPlanes, np.ndarray]:
        """(the next conv's planes, the int32 sums (N, Cout, Ho, Wo), lent by ``pool``)."""
        sums = self._walk(planes, self._OB, sums=True, pool=pool)
        out = np.zeros(self._out_shape, dtype=np.uint64)
        emit_any(self._OB, *self._emit, out)
        return BitPlanes(out, self.next_geometry), sums


def walk_sums_ref(sched: SlicedLayer, planes: BitPlanes) -> np.ndarray:
    """int32 sums (N, Cout, Ho, Wo) by :func:`_walk_ref`: the plain reference of the walk."""
    g = planes.geometry
    ho, wo = output_hw(sched.layer, g)
    length = _row_length(sched, g)
    bits = np.unpackbits(planes.bits.view(np.uint8), axis=1, bitorder="little")
    a = bits[:, :length].astype(np.int64) * 2 - 1
    tw, tb = sched.tap_shifts(g.wp)
    q_all = chunks(sched, g) * 64  # positions up to the last output's chunk: q + s_k < length
    y = np.zeros((sched.layer.cout, q_all), np.int64)
    _walk_ref(
        a, sched._tap_c.astype(np.int64), tw * 64 + tb, sched.order, sched.depth, sched.kind,
        sched.ptr, sched.tap_idx.astype(np.int64), sched.tap_flip, q_all, y,
    )  # fmt: skip
    img, h, w = np.meshgrid(np.arange(g.n), np.arange(ho), np.arange(wo), indexing="ij")
    q = (img * g.hp + h) * g.wp + w
    return y[:, q].transpose(1, 0, 2, 3).astype(np.int32)
