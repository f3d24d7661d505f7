"""Bit-sliced MST kernel: vertical popcounts over positions, BN + sign fused into a bit-sliced compare.

Layout (engine-notes.md section 4). A binary activation with C channels is kept as *bit planes*:
row c of a uint64 array holds one bit per position of the padded grid of the consuming conv, the
batch stacked along the height: bit ``(n*Hp + h + ph) * Wp + w + pw`` is 1 iff x[n, c, h, w] >= 0
(padding is bit 0 = -1). For a stride-1 conv, the output at grid index q = (n*Hp + h)*Wp + w reads
tap (c, ky, kx) at bit ``q + ky*dh*Wp + kx*dw``: every tap is the channel's plane shifted by a
constant, so the "im2col" of a tile of 64*TW positions is K shifted word runs.

Arithmetic, per tile and per output channel j, all 64*TW positions at once:

- u_j = (y_j + n) / 2 is the number of taps where x agrees with w_j (y = 2u - n).
- A root: u = sum_k match_k, a vertical popcount of the K match vectors (x_k XNOR w_jk),
  accumulated as a bit-sliced binary counter (Harley-Seal carry-save blocks of 16, then 4, then 1).
- A child of p over its difference list D_j (d taps), with m = matches over D_j:
  y_j = y_p + 2*(2m - d)  =>  u_j = u_p + 2m - d; for a complement edge u_j = n - u_p + 2m - d.
  Each channel keeps v_j = u_j - c_j in B bit planes with a per-channel constant c_j, so that the
  update is an add of 2m only: v_j = v_p + 2m, or (complement) v_j = (2^b - 1 - v_p) + 2m, the
  complement taken over the b planes v_p can occupy; c_j and B follow from interval bounds.
- Emit: the next layer's input bit is a threshold on u (mstc.engine.fold) -- u >= t or u <= t --
  i.e. a compare of v against the constant T = t - c_j, done bit-sliced LSB first as the planes
  come out of the adder: G_b = v_b AND G_(b-1) where bit b of T is 1, else v_b OR G_(b-1)
  (G_-1 = 1; G_(B-1) = [v >= T]). Or the integer sums y = 2(v + c) - n are unpacked by 16 x 16
  bit-matrix transposes (a chain's last layer, and verification).

Channels are visited in depth-first preorder, so the parent of a node at depth t is the last node
seen at depth t - 1: scratch planes are needed for one node per tree level only.

Oracle: the reference backend (tree walk) and the packed backend (XNOR-popcount), tested equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from mstc.engine.buffers import BufferPool, empty
from mstc.engine.simd import vand, vany, vfill, vlane, vload, vor, vstore, vxor
from mstc.format import BinaryLayerCode

#: words (of 64 positions) per tile: long enough for the word loops to vectorise (AVX2/AVX-512),
#: short enough for the tile's tap runs (K x TW words) to stay in L2
TW = 64
#: grids of at most this many words run :func:`_vwords` / :func:`_vsum_words` (four words per
#: vector register, node by node) instead of the tile kernels, whose vector loops are mostly
#: loop overhead on a few words: vgg_small's layers at batch 1 (2-15 words) and up to batch ~8;
#: at 41 words both took the same time (benchmarks/sliced_small.py, benchmarks/chain_end.py)
VECTOR_WORDS = 32

#: emit modes of a channel: constant 0, constant 1, v >= T, v <= T (as NOT v >= T+1)
CONST0, CONST1, GE, LE = 0, 1, 2, 3


def bitlen(x: int) -> int:
    return max(1, int(x).bit_length())


# ------------------------------------------------------------------------------------- planes


@dataclass(frozen=True)
class PlaneGeometry:
    """The padded grid of a binary conv's input: N images of H x W, padding (ph, pw)."""

    n: int
    c: int
    h: int
    w: int
    ph: int
    pw: int
    words: int  # allocated words per channel (grid + slack for shifted reads)

    @property
    def hp(self) -> int:
        return self.h + 2 * self.ph

    @property
    def wp(self) -> int:
        return self.w + 2 * self.pw


@dataclass(frozen=True)
class BitPlanes:
    """A binary activation in the bit-plane layout of the conv that consumes it (see module doc)."""

    bits: np.ndarray  # uint64 (C, words)
    geometry: PlaneGeometry

    @property
    def shape(self) -> tuple[int, int, int, int]:
        g = self.geometry
        return (g.n, g.c, g.h, g.w)


def grid_words(n: int, hp: int, wp: int) -> int:
    """Words of 64 positions covering a grid of n images of hp x wp."""
    return (n * hp * wp + 63) // 64


def sliceable(layer: BinaryLayerCode) -> bool:
    """Whether the bit-plane layout applies: a stride-1 conv (taps are shifted plane runs)."""
    return layer.kind == "conv2d" and tuple(layer.stride) == (1, 1)


def output_hw(layer: BinaryLayerCode, g: PlaneGeometry) -> tuple[int, int]:
    """(Ho, Wo) of a stride-1 conv on the padded grid of ``g``."""
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
    return g.hp - dh * (kh - 1), g.wp - dw * (kw - 1)


def plane_geometry(layer: BinaryLayerCode, n: int, h: int, w: int) -> PlaneGeometry:
    """Geometry (with slack) of the input planes of ``layer`` for an (n, cin, h, w) input."""
    (kh, kw), (ph, pw), (dh, dw) = layer.kernel_size, layer.padding, layer.dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    smax = (kh - 1) * dh * wp + (kw - 1) * dw
    return PlaneGeometry(n, layer.cin, h, w, ph, pw, grid_words(n, hp, wp) + smax // 64 + 2)


@njit(cache=True, inline="always")
def _extract(row, pos, length):  # pragma: no cover - numba
    """``length`` (1..64) bits of ``row`` from bit ``pos``, as the low bits of a uint64.
    Branch-free (a data-dependent branch here cost 9x); reads ``row[pos // 64 + 1]``."""
    p = np.uint64(pos)
    a = p >> np.uint64(6)
    b = p & np.uint64(63)
    hi = (row[a + np.uint64(1)] << np.uint64(1)) << (np.uint64(63) - b)  # 0 when b == 0
    return ((row[a] >> b) | hi) & (~np.uint64(0) >> np.uint64(64 - length))


@njit(cache=True, inline="always")
def _place(row, pos, v, length):  # pragma: no cover - numba
    """OR ``v`` (its low ``length`` bits, the rest 0) into ``row`` at bit ``pos``; branch-free,
    touches ``row[pos // 64 + 1]``."""
    p = np.uint64(pos)
    a = p >> np.uint64(6)
    b = p & np.uint64(63)
    row[a] |= v << b
    row[a + np.uint64(1)] |= (v >> np.uint64(1)) >> (np.uint64(63) - b)


def float_rule_bits(x: np.ndarray, mode: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The bits (bool, shape of x) of a float rule on an (N, C, ...) array, as one broadcast
    compare ``s_c * x >= t'_c``: LE is x <= t <=> -x >= -t (negation is exact), CONST1 is
    x >= -inf and CONST0 is x >= NaN (never); NaN x gives 0 in every mode."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mode = np.asarray(mode)
    t = np.asarray(t, dtype=np.float32)
    tt = np.where(
        mode == GE, t, np.where(mode == LE, -t, np.where(mode == CONST1, -np.inf, np.nan))
    )
    tt = tt.astype(np.float32).reshape(shape)
    if not (mode == LE).any():
        return x >= tt
    s = np.where(mode == LE, -1, 1).astype(np.float32).reshape(shape)
    return x * s >= tt


def pack_planes(x: np.ndarray, geometry: PlaneGeometry, rule=None) -> BitPlanes:
    """Fused sign + pack of a float32 NCHW input into bit planes of ``geometry``; with ``rule``
    (mode, t) the bits of :func:`float_rule_bits` instead of sign.

    The channel-packed words of :func:`mstc.engine.binarize.packed_input` (one vectorised compare
    pass, padding included) are bit-transposed into planes, 64 positions x 64 channels at a time.
    """
    from mstc.engine.binarize import packed_input  # the engines' one float -> bits pass

    g = geometry
    if x.shape != (g.n, g.c, g.h, g.w):
        raise ValueError(f"input of shape {x.shape}, planes expect {(g.n, g.c, g.h, g.w)}")
    if not x.size:
        return BitPlanes(np.zeros((g.c, g.words), dtype=np.uint64), g)
    xp = packed_input(np.ascontiguousarray(x, dtype=np.float32), (g.ph, g.pw), 1, rule)
    return words_to_planes(xp, g)


def words_to_planes(words: np.ndarray, geometry: PlaneGeometry) -> BitPlanes:
    """Channel-packed words of :func:`mstc.engine.binarize.packed_input` (padding included) ->
    bit planes of ``geometry`` (a bit transpose, 64 positions x 64 channels at a time)."""
    g = geometry
    if words.shape != (g.n, g.hp, g.wp, (g.c + 63) // 64):
        raise ValueError(f"packed words of shape {words.shape} for planes {g}")
    out = np.zeros((g.c, g.words), dtype=np.uint64)
    _packed_to_planes(words.reshape(-1, words.shape[3]), g.c, out)
    return BitPlanes(out, g)


@njit(cache=True)
def _packed_to_planes(xp, C, out):  # pragma: no cover - numba
    """out[c, a] bit t = xp[64*a + t, c // 64] bit c % 64 (64x64 transposes): channel-packed
    words of the padded grid positions -> one bit row per channel."""
    Q, CW = xp.shape
    blk = np.empty(64, np.uint64)
    for a in range((Q + 63) // 64):
        m = min(64, Q - 64 * a)
        for cw in range(CW):
            for t in range(m):
                blk[t] = xp[64 * a + t, cw]
            for t in range(m, 64):
                blk[t] = 0
            _transpose64(blk)
            for j in range(min(64, C - 64 * cw)):
                out[64 * cw + j, a] = blk[j]


@njit(cache=True)
def _unpack_planes(bits, N, H, W, ph, pw, out):  # pragma: no cover - numba
    C = bits.shape[0]
    Hp = H + 2 * ph
    Wp = W + 2 * pw
    for c in range(C):
        for n in range(N):
            for h in range(H):
                base = (n * Hp + h + ph) * Wp + pw
                for w in range(W):
                    q = base + w
                    out[n, c, h, w] = (bits[c, q >> 6] >> np.uint64(q & 63)) & np.uint64(1)


def unpack_planes(planes: BitPlanes) -> np.ndarray:
    """The {0,1} uint8 (N, C, H, W) bits of a BitPlanes (1 = +1); for tests and debugging."""
    g = planes.geometry
    out = np.zeros((g.n, g.c, g.h, g.w), dtype=np.uint8)
    _unpack_planes(planes.bits, g.n, g.h, g.w, g.ph, g.pw, out)
    return out


@njit(cache=True, inline="always")
def _transpose64(a):  # pragma: no cover - numba
    """In place: bit j of a[i] <-> bit i of a[j] (64x64 bit matrix, LSB first), by swapping the
    off-diagonal s x s blocks for s = 32, 16, ..., 1 (Hacker's Delight 7-3)."""
    s = 32
    m = np.uint64(0x00000000FFFFFFFF)
    while s > 0:
        su = np.uint64(s)
        for k in range(64):
            if k & s == 0:
                t = ((a[k] >> su) ^ a[k + s]) & m
                a[k] ^= t << su
                a[k + s] ^= t
        s >>= 1
        m ^= m << np.uint64(s) if s > 0 else np.uint64(0)


@njit(cache=True)
def _planes_to_packed(bits, Q, out):  # pragma: no cover - numba
    """out[q, cw] bit j = bits[64*cw + j] bit q for the grid positions q < Q (64x64 transposes)."""
    C = bits.shape[0]
    CW = out.shape[1]
    blk = np.empty(64, np.uint64)
    for a in range((Q + 63) // 64):
        for cw in range(CW):
            for j in range(64):
                c = 64 * cw + j
                blk[j] = bits[c, a] if c < C else np.uint64(0)
            _transpose64(blk)
            for t in range(min(64, Q - 64 * a)):
                out[64 * a + t, cw] = blk[t]


def planes_to_packed(planes: BitPlanes) -> np.ndarray:
    """The channel-packed layout of :func:`mstc.engine.binarize.packed_input`,
    ``[N, Hp, Wp, ceil(C/64)]`` uint64 (padding bit 0), from bit planes over the same padded grid:
    a bit transpose, no float round trip."""
    g = planes.geometry
    q = g.n * g.hp * g.wp
    out = np.zeros((q, (g.c + 63) // 64), dtype=np.uint64)
    if q and g.c:
        _planes_to_packed(planes.bits, q, out)
    return out.reshape(g.n, g.hp, g.wp, -1)


@njit(cache=True)
def _planes_to_signed(bits, Q, S):  # pragma: no cover - numba
    C = bits.shape[0]
    Qu = np.uint64(Q)
    for c in range(C):
        row = bits[c]
        sp = S[c]
        sn = S[C + c]
        for q in range(Qu):
            v = np.int8(4) * np.int8((row[q >> np.uint64(6)] >> (q & np.uint64(63))) & np.uint64(1))
            sp[q] = v - np.int8(2)
            sn[q] = np.int8(2) - v


def planes_to_signed(planes: BitPlanes, tail: int) -> np.ndarray:
    """The int8 +-2 planes of :func:`mstc.engine.mst_kernel.signed_planes` ``[2C, N*Hp*Wp +
    tail]`` (row c: 2a, row C + c: -2a; padding and tail -2 / +2) from bit planes."""
    g = planes.geometry
    q = g.n * g.hp * g.wp
    S = np.empty((2 * g.c, q + tail), dtype=np.int8)
    S[: g.c, q:] = -2
    S[g.c :, q:] = 2
    if q and g.c:
        _planes_to_signed(planes.bits, q, S)
    return S


@njit(cache=True)
def _rule_rows(s, n_taps, mode, t, pool, ph, pw, Hp, Wp, out):  # pragma: no cover - numba
    """out[c] bit (b*Hp + h + ph)*Wp + w + pw = rule_c(u) at u = (s + n) / 2, OR over the 2x2
    window when ``pool`` (sign(max) = OR of signs). On the sums directly: u >= t <=> s >= 2t - n
    (s + n is even), u <= t <=> -s >= n - 2t, so with sg = +-1 a bit is max(sg * s) >= sg * thr,
    branch-free; rows of up to 64 bits placed at once."""
    N, C, H, W = s.shape
    Ho = H // 2 if pool else H
    Wo = W // 2 if pool else W
    for c in range(C):
        md = mode[c]
        if md == CONST0:
            continue
        if md == CONST1:  # every valid position 1
            sg, thr = 1, -(1 << 40)
        elif md == GE:
            sg, thr = 1, 2 * t[c] - n_taps
        else:
            sg, thr = -1, n_taps - 2 * t[c]
        row = out[c]
        for b in range(N):
            sb = s[b, c]
            for h in range(Ho):
                base = (b * Hp + h + ph) * Wp + pw
                for w0 in range(0, Wo, 64):
                    ln = min(64, Wo - w0)
                    word = np.uint64(0)
                    if pool:
                        r0 = sb[2 * h]
                        r1 = sb[2 * h + 1]
                        for k in range(ln):
                            w = 2 * (w0 + k)
                            m = max(
                                max(sg * r0[w], sg * r0[w + 1]), max(sg * r1[w], sg * r1[w + 1])
                            )
                            word |= np.uint64(m >= thr) << np.uint64(k)
                    else:
                        r0 = sb[h]
                        for k in range(ln):
                            word |= np.uint64(sg * r0[w0 + k] >= thr) << np.uint64(k)
                    _place(row, base + w0, word, ln)


def rule_planes(
    sums: np.ndarray, n: int, rule: tuple[np.ndarray, np.ndarray], pool: bool, nxt: PlaneGeometry
) -> BitPlanes:
    """The next conv's input planes from a layer's int32 sums (N, C, Ho, Wo) and the folded
    BN + sign rule of :mod:`mstc.engine.fold` (2x2 max-pooled if ``pool``)."""
    N, C, H, W = sums.shape
    expect = (H // 2, W // 2) if pool else (H, W)
    if (nxt.h, nxt.w) != expect or nxt.n != N or nxt.c != C:
        raise ValueError(f"next planes {nxt} do not match the output {expect}")
    out = np.zeros((C, nxt.words), dtype=np.uint64)
    mode = np.ascontiguousarray(rule[0], dtype=np.int8)
    t = np.ascontiguousarray(rule[1], dtype=np.int64)
    s = np.ascontiguousarray(sums, dtype=np.int32)
    _rule_rows(s, n, mode, t, pool, nxt.ph, nxt.pw, nxt.hp, nxt.wp, out)
    return BitPlanes(out, nxt)


# ------------------------------------------------------------------------------------ schedule


def dfs_preorder(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, depth): the forest's nodes in depth-first preorder and each one's depth."""
    cout = len(parent)
    children: list[list[int]] = [[] for _ in range(cout)]
    roots = []
    for j in range(cout):
        p = int(parent[j])
        (roots if p < 0 else children[p]).append(j)
    order, depth = [], []
    stack = [(r, 0) for r in reversed(roots)]
    while stack:
        j, t = stack.pop()
        order.append(j)
        depth.append(t)
        stack.extend((c, t + 1) for c in reversed(children[j]))
    if len(order) != cout:
        raise ValueError("parent array is not a forest")
    return np.asarray(order, dtype=np.int32), np.asarray(depth, dtype=np.int32)


class SlicedLayer:
    """The bit-sliced schedule of one binary conv (stride 1, groups 1): preorder, difference lists
    with their match masks, per-node counter width, offsets c_j and plane count B.

    ``tree=False`` computes every channel as a root (dense bit-sliced; the ablation baseline)."""

    def __init__(self, layer: BinaryLayerCode, *, tree: bool = True) -> None:
        if not sliceable(layer):
            raise ValueError(f"layer {layer.name}: the bit-sliced kernel needs a stride-1 conv")
        self.layer = layer
        n = layer.n
        kh, kw = layer.kernel_size
        dh, dw = layer.dilation
        bits = layer.weight_bits()
        parent = layer.parent.astype(np.int64) if tree else np.full(layer.cout, -1)
        negate = layer.negate.astype(bool) & (parent >= 0)
        order, depth = dfs_preorder(parent)
        cout = layer.cout
        ptr = np.zeros(cout + 1, dtype=np.int64)
        idx_rows, flip_rows = [], []
        kind = np.zeros(cout, dtype=np.int8)  # 0 root, 1 child, 2 complement child
        ncomp = np.zeros(cout, dtype=np.int32)
        nbits = np.zeros(cout, dtype=np.int32)
        c = np.zeros(cout, dtype=np.int64)  # by channel
        lo = np.zeros(cout, dtype=np.int64)
        hi = np.zeros(cout, dtype=np.int64)
        for e, j in enumerate(order):
            p = parent[j]
            if p < 0:
                taps = np.arange(n)
                c[j], lo[j], hi[j] = 0, 0, n
            else:
                taps = layer.diffs(j)
                d = len(taps)
                if negate[j]:
                    kind[e] = 2
                    b = bitlen(hi[p])
                    ncomp[e] = b
                    mp = (1 << b) - 1
                    c[j] = n - c[p] - d - mp
                    lo[j], hi[j] = mp - hi[p], mp - lo[p] + 2 * d
                else:
                    kind[e] = 1
                    c[j] = c[p] - d
                    lo[j], hi[j] = lo[p], hi[p] + 2 * d
                lo[j] = max(lo[j], -c[j])
                hi[j] = min(hi[j], n - c[j])
            idx_rows.append(taps.astype(np.int32))
            # match vector of tap k: x_k if w_jk = +1 else NOT x_k
            flip_rows.append(np.where(bits[j, taps] == 1, 0, ~np.uint64(0)).astype(np.uint64))
            nbits[e] = bitlen(len(taps))
            ptr[e + 1] = ptr[e] + len(taps)
        self.order = order
        self.depth = depth
        self.kind = kind
        self.ncomp = ncomp
        self.ptr = ptr
        self.tap_idx = np.concatenate(idx_rows) if idx_rows else np.zeros(0, np.int32)
        self.tap_flip = np.concatenate(flip_rows) if flip_rows else np.zeros(0, np.uint64)
        self.nbits = nbits
        self.c = c  # v_j = u_j - c_j, by channel
        self.vmax = hi
        self.planes = bitlen(int(hi.max()) if cout else 1)
        # tap k = ci*kh*kw + ky*kw + kx reads channel ci at a constant bit shift
        k = np.arange(n)
        self._tap_c = (k // (kh * kw)).astype(np.int32)
        self._tap_ky = ((k // kw) % kh).astype(np.int64)
        self._tap_kx = (k % kw).astype(np.int64)
        self._dhw = (dh, dw)
        self._shifts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: output index maps of layer_sums / unpack_sums, per grid (key: kind and geometry)
        self._indices: dict[tuple, object] = {}

    def tap_shifts(self, wp: int) -> tuple[np.ndarray, np.ndarray]:
        """(word, bit) shift of every tap on a grid of row width ``wp`` (cached per width)."""
        hit = self._shifts.get(wp)
        if hit is None:
            s = self._tap_ky * self._dhw[0] * wp + self._tap_kx * self._dhw[1]
            hit = self._shifts[wp] = ((s >> 6).astype(np.int64), (s & 63).astype(np.int64))
        return hit

    def emit_rule(self, mode_u: np.ndarray, t_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-node (preorder) emit mode and uint64 threshold on v from a rule on u per channel:
        mode_u GE: bit = u >= t; LE: bit = u <= t; CONST0 / CONST1."""
        mode = np.empty(len(self.order), dtype=np.int8)
        tv = np.zeros(len(self.order), dtype=np.uint64)
        for e, j in enumerate(self.order):
            m = int(mode_u[j])
            if m in (CONST0, CONST1):
                mode[e] = m
                continue
            t = int(t_u[j]) - int(self.c[j])  # u >= t  <=>  v >= t - c
            if m == LE:
                t += 1  # u <= t  <=>  NOT v >= t - c + 1
            if t <= 0:
                mode[e] = CONST1 if m == GE else CONST0
            elif t > self.vmax[j]:
                mode[e] = CONST0 if m == GE else CONST1
            else:
                mode[e] = m
                tv[e] = t
        return mode, tv


# ------------------------------------------------------------------------------------- kernel


@njit(cache=True, inline="always")
def _csa(h, a, b):  # pragma: no cover - numba
    """Carry-save adder of three bit vectors: (carry, sum) = (majority, parity)."""
    u = h ^ a
    return (h & a) | (u & b), u ^ b


@njit(cache=True, inline="always")
def _add4(o1, o2, XT, i, k, f):  # pragma: no cover - numba
    """Add the match words ``XT[k[t], i] ^ f[t]`` of four taps to the ones/twos planes o1, o2:
    returns (fours carry, o1, o2). Taps come as tuples loaded before the word loop."""
    tA, o1 = _csa(o1, XT[k[0], i] ^ f[0], XT[k[1], i] ^ f[1])
    tB, o1 = _csa(o1, XT[k[2], i] ^ f[2], XT[k[3], i] ^ f[3])
    c4, o2 = _csa(o2, tA, tB)
    return c4, o1, o2


@njit(cache=True, inline="always")
def _taps4(tidx, tflip, q):  # pragma: no cover - numba
    """Tap indices and match masks of taps q..q+3, as tuples."""
    return (
        (tidx[q], tidx[q + 1], tidx[q + 2], tidx[q + 3]),
        (tflip[q], tflip[q + 1], tflip[q + 2], tflip[q + 3]),
    )


@njit(cache=True, inline="always")
def _ripple(M, C, l0, L, tw):  # pragma: no cover - numba
    """Add the carry words C at plane l0 of the binary counter M[:L] (ripple carry)."""
    for l in range(l0, L):
        for i in range(tw):
            x = M[l, i]
            M[l, i] = x ^ C[i]
            C[i] = x & C[i]


@njit(cache=True, inline="always")
def _levels(depth, nbits):  # pragma: no cover - numba
    """(tree levels, widest counter of m) of a schedule: the scratch the kernels need."""
    nlev = 1
    lmax = 1
    for e in range(depth.shape[0]):
        nlev = max(nlev, depth[e] + 1)
        lmax = max(lmax, nbits[e])
    return nlev, lmax


@njit(cache=True, inline="always")
def _swap_bits(x, y, s, m):  # pragma: no cover - numba
    """Delta swap: the bits of x under ``m << s`` trade places with the bits of y under m."""
    t = ((x >> s) ^ y) & m
    return x ^ (t << s), y ^ t


@njit(cache=True, inline="always")
def _transpose16(P, n, T):  # pragma: no cover - numba
    """Bit-matrix transposes of words 0..n-1 of the 16 plane rows ``P`` (v's planes, rows >= B
    zero) into ``T`` (n, 16): the 16 words of 64 positions form four 16 x 16 bit blocks, one per
    16-bit lane; four rounds of delta swaps (Hacker's Delight 7-3) transpose all four at once,
    so that lane L of ``T[i, r]`` holds v at position 64 i + 16 L + r as a uint16 (192 word ops
    per 64 positions instead of a bit loop per plane)."""
    m8 = np.uint64(0x00FF00FF00FF00FF)
    m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
    m2 = np.uint64(0x3333333333333333)
    m1 = np.uint64(0x5555555555555555)
    s8, s4, s2, s1 = np.uint64(8), np.uint64(4), np.uint64(2), np.uint64(1)
    for i in range(n):
        r0 = P[0, i]
        r1 = P[1, i]
        r2 = P[2, i]
        r3 = P[3, i]
        r4 = P[4, i]
        r5 = P[5, i]
        r6 = P[6, i]
        r7 = P[7, i]
        r8 = P[8, i]
        r9 = P[9, i]
        r10 = P[10, i]
        r11 = P[11, i]
        r12 = P[12, i]
        r13 = P[13, i]
        r14 = P[14, i]
        r15 = P[15, i]
        r0, r8 = _swap_bits(r0, r8, s8, m8)
        r1, r9 = _swap_bits(r1, r9, s8, m8)
        r2, r10 = _swap_bits(r2, r10, s8, m8)
        r3, r11 = _swap_bits(r3, r11, s8, m8)
        r4, r12 = _swap_bits(r4, r12, s8, m8)
        r5, r13 = _swap_bits(r5, r13, s8, m8)
        r6, r14 = _swap_bits(r6, r14, s8, m8)
        r7, r15 = _swap_bits(r7, r15, s8, m8)
        r0, r4 = _swap_bits(r0, r4, s4, m4)
        r1, r5 = _swap_bits(r1, r5, s4, m4)
        r2, r6 = _swap_bits(r2, r6, s4, m4)
        r3, r7 = _swap_bits(r3, r7, s4, m4)
        r8, r12 = _swap_bits(r8, r12, s4, m4)
        r9, r13 = _swap_bits(r9, r13, s4, m4)
        r10, r14 = _swap_bits(r10, r14, s4, m4)
        r11, r15 = _swap_bits(r11, r15, s4, m4)
        r0, r2 = _swap_bits(r0, r2, s2, m2)
        r1, r3 = _swap_bits(r1, r3, s2, m2)
        r4, r6 = _swap_bits(r4, r6, s2, m2)
        r5, r7 = _swap_bits(r5, r7, s2, m2)
        r8, r10 = _swap_bits(r8, r10, s2, m2)
        r9, r11 = _swap_bits(r9, r11, s2, m2)
        r12, r14 = _swap_bits(r12, r14, s2, m2)
        r13, r15 = _swap_bits(r13, r15, s2, m2)
        r0, r1 = _swap_bits(r0, r1, s1, m1)
        r2, r3 = _swap_bits(r2, r3, s1, m1)
        r4, r5 = _swap_bits(r4, r5, s1, m1)
        r6, r7 = _swap_bits(r6, r7, s1, m1)
        r8, r9 = _swap_bits(r8, r9, s1, m1)
        r10, r11 = _swap_bits(r10, r11, s1, m1)
        r12, r13 = _swap_bits(r12, r13, s1, m1)
        r14, r15 = _swap_bits(r14, r15, s1, m1)
        T[i, 0] = r0
        T[i, 1] = r1
        T[i, 2] = r2
        T[i, 3] = r3
        T[i, 4] = r4
        T[i, 5] = r5
        T[i, 6] = r6
        T[i, 7] = r7
        T[i, 8] = r8
        T[i, 9] = r9
        T[i, 10] = r10
        T[i, 11] = r11
        T[i, 12] = r12
        T[i, 13] = r13
        T[i, 14] = r14
        T[i, 15] = r15


@njit(cache=True, inline="always")
def _compare_plane(G, p, up, tu):  # pragma: no cover - numba
    """One plane (bit b) of an LSB-first compare v >= T: with G_b = (v mod 2^(b+1) >= T mod
    2^(b+1)) and G_-1 = 1, G_b = v_b AND G_(b-1) where T_b = 1 (``up``), else v_b OR G_(b-1)."""
    if up:
        for i in range(tu):
            G[i] &= p[i]
    else:
        for i in range(tu):
            G[i] |= p[i]


@njit(cache=True, inline="always")
def _tap_runs(X, tap_c, tap_w, tap_b, t0, tu, XT):  # pragma: no cover - numba
    """XT[k, :tu] = the input plane of tap k shifted by its offset, words t0.. of the tile."""
    for k in range(tap_c.shape[0]):
        row = X[tap_c[k]]
        wa = np.uint64(t0 + tap_w[k])
        bs = tap_b[k]
        if bs == 0:
            for i in range(tu):
                XT[k, i] = row[wa + i]
        else:
            sb = np.uint64(bs)
            cb = np.uint64(64 - bs)
            for i in range(tu):
                XT[k, i] = (row[wa + i] >> sb) | (row[wa + i + np.uint64(1)] << cb)


@njit(cache=True, inline="always")
def _padded(tu, width):  # pragma: no cover - numba
    """The words tp >= tu a tile's arithmetic runs over: tu rounded up to a multiple of 16, at
    most ``width`` (the scratch's). The vector loops work in blocks of 16 words and take the
    rest word by word: features.0 at batch 1 (15 words) took 1.25x as long as with 16. Words
    >= tu hold stale scratch; what is computed from them is never stored."""
    return min((tu + np.uint64(15)) & ~np.uint64(15), np.uint64(width))


@njit(cache=True, inline="always")
def _count_taps(M, C4, XT, tidx, tflip, q, q1, L, tu):  # pragma: no cover - numba
    """M[:L, :tu] = the bit-sliced count of matches over taps q..q1-1 of the schedule
    (match word XT[tidx] ^ tflip), by Harley-Seal blocks of 16, then 4, then single taps."""
    for l in range(L):
        for i in range(tu):
            M[l, i] = 0
    while q + 16 <= q1:  # Harley-Seal block: ones/twos/fours/eights, ripple the 16s
        ka, fa = _taps4(tidx, tflip, q)
        kb, fb = _taps4(tidx, tflip, q + 4)
        kc, fc = _taps4(tidx, tflip, q + 8)
        kd, fd = _taps4(tidx, tflip, q + 12)
        for i in range(tu):
            fA, o1, o2 = _add4(M[0, i], M[1, i], XT, i, ka, fa)
            fB, o1, o2 = _add4(o1, o2, XT, i, kb, fb)
            eA, o4 = _csa(M[2, i], fA, fB)
            fA, o1, o2 = _add4(o1, o2, XT, i, kc, fc)
            fB, o1, o2 = _add4(o1, o2, XT, i, kd, fd)
            eB, o4 = _csa(o4, fA, fB)
            C4[i], M[3, i] = _csa(M[3, i], eA, eB)
            M[0, i] = o1
            M[1, i] = o2
            M[2, i] = o4
        _ripple(M, C4, 4, L, tu)
        q += 16
    while q + 4 <= q1:  # blocks of 4: two CSAs into ones/twos, ripple the fours
        ka, fa = _taps4(tidx, tflip, q)
        for i in range(tu):
            C4[i], M[0, i], M[1, i] = _add4(M[0, i], M[1, i], XT, i, ka, fa)
        _ripple(M, C4, 2, L, tu)
        q += 4
    while q < q1:  # single taps: ripple from the ones
        k0 = tidx[q]
        f0 = tflip[q]
        for i in range(tu):
            C4[i] = XT[k0, i] ^ f0
        _ripple(M, C4, 0, L, tu)
        q += 1


@njit(cache=True, inline="always")
def _transpose8(M, b0, L, n, TR):  # pragma: no cover - numba
    """Bit-matrix transposes of words 0..n-1 of the counter planes M[b0 .. b0 + 7] (planes >= L
    read as 0) into ``TR`` (n, 8): eight 8 x 8 bit blocks, one per byte lane, three rounds of
    delta swaps, so that byte L' of ``TR[i, r]`` holds bits b0..b0+7 of the count at position
    64 i + 8 L' + r (72 word ops per 64 positions)."""
    m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
    m2 = np.uint64(0x3333333333333333)
    m1 = np.uint64(0x5555555555555555)
    s4, s2, s1 = np.uint64(4), np.uint64(2), np.uint64(1)
    z = np.uint64(0)
    for i in range(n):
        r0 = M[b0 + 0, i] if b0 + 0 < L else z
        r1 = M[b0 + 1, i] if b0 + 1 < L else z
        r2 = M[b0 + 2, i] if b0 + 2 < L else z
        r3 = M[b0 + 3, i] if b0 + 3 < L else z
        r4 = M[b0 + 4, i] if b0 + 4 < L else z
        r5 = M[b0 + 5, i] if b0 + 5 < L else z
        r6 = M[b0 + 6, i] if b0 + 6 < L else z
        r7 = M[b0 + 7, i] if b0 + 7 < L else z
        r0, r4 = _swap_bits(r0, r4, s4, m4)
        r1, r5 = _swap_bits(r1, r5, s4, m4)
        r2, r6 = _swap_bits(r2, r6, s4, m4)
        r3, r7 = _swap_bits(r3, r7, s4, m4)
        r0, r2 = _swap_bits(r0, r2, s2, m2)
        r1, r3 = _swap_bits(r1, r3, s2, m2)
        r4, r6 = _swap_bits(r4, r6, s2, m2)
        r5, r7 = _swap_bits(r5, r7, s2, m2)
        r0, r1 = _swap_bits(r0, r1, s1, m1)
        r2, r3 = _swap_bits(r2, r3, s1, m1)
        r4, r5 = _swap_bits(r4, r5, s1, m1)
        r6, r7 = _swap_bits(r6, r7, s1, m1)
        TR[i, 0] = r0
        TR[i, 1] = r1
        TR[i, 2] = r2
        TR[i, 3] = r3
        TR[i, 4] = r4
        TR[i, 5] = r5
        TR[i, 6] = r6
        TR[i, 7] = r7


@njit(cache=True, inline="always")
def _tree_step(y, yp, lo, hi, npos, sign, f, c, wide):  # pragma: no cover - numba
    """y[p] = sign * yp[p] + f * m_p + c over the first npos positions, m_p = lo[p] (+ 256
    hi[p] if ``wide``): int16 rows, exact while |y| <= n < 2^15 (the arithmetic wraps mod
    2^16 in between)."""
    s16 = np.int16(sign)
    f16 = np.int16(f)
    c16 = np.int16(c)
    if wide:
        for p in range(npos):
            y[p] = s16 * yp[p] + f16 * (np.int16(lo[p]) + np.int16(256) * np.int16(hi[p])) + c16
    else:
        for p in range(npos):
            y[p] = s16 * yp[p] + f16 * np.int16(lo[p]) + c16


@njit(cache=True, inline="always")
def _walk_node(
    M, L, nw, TR, TRH, Y, dj, kd, d, n_taps, SO, kq, kdst, k0, k1, base, joff,
):  # fmt: skip  # pragma: no cover - numba
    """One node of the integer tree walk, its count m in the planes M[:L, :nw]: transposed to
    bytes (:func:`_transpose8`, twice for counts over 255), then y = 2m - n (root) or
    +-y_parent + 4m - 2d (child / complement child over d taps) in the int16 row of its level
    (Y[dj]), then outputs k0..k1-1 gathered from it into SO (channel offset ``joff``)."""
    lo = TR.view(np.uint8).reshape(-1)
    hi = TRH.view(np.uint8).reshape(-1)
    npos = nw * np.uint64(64)
    _transpose8(M, 0, L, nw, TR)
    if L > 8:
        _transpose8(M, 8, L, nw, TRH)
    y = Y[dj]
    if kd == 0:  # y = 2m - n
        _tree_step(y, y, lo, hi, npos, 0, 2, -n_taps, L > 8)
    else:  # y = +-y_parent + 4m - 2d
        sign = -1 if kd == 2 else 1
        _tree_step(y, Y[dj - 1], lo, hi, npos, sign, 4, -2 * d, L > 8)
    for k in range(k0, k1):
        SO[kdst[k] + joff] = np.int32(y[kq[k] - base])


@njit(cache=True)
def _sum_tiles(
    X, tap_c, tap_w, tap_b, order, depth, kind, ptr, tidx, tflip, nbits, n_taps,
    ow, t_begin, t_end, SO, kq, kdst, kt, HW,
):  # fmt: skip  # pragma: no cover - numba
    """Integer sums of tiles [t_begin, t_end) of TW words, the tree walked in integers: a
    node's count m over its taps (bit-sliced, :func:`_count_taps`) is transposed to bytes
    (:func:`_transpose8`, twice for counts over 255), then per position y = 2m - n for a root,
    y_parent + 4m - 2d for a child over d differing taps, -y_parent + 4m - 2d for a complement
    child, in int16 rows per tree level; the tile's outputs k in [kt[t], kt[t + 1]) are then
    copied to SO[kdst[k] + j * HW] from position kq[k] - 64 t0 of the level's row (positions in
    the transposed order 64 i + 8 r + L' of :func:`sums_index`). No v planes at all: the
    chain's last layer, whose sums the float ops after it read."""
    cout = order.shape[0]
    nlev, lmax = _levels(depth, nbits)
    XT = np.empty((tap_c.shape[0], TW), np.uint64)
    M = np.zeros((lmax + 1, TW), np.uint64)
    C4 = np.empty(TW, np.uint64)
    TR = np.empty((TW, 8), np.uint64)
    TRH = np.zeros((TW, 8), np.uint64)
    Y = np.empty((nlev, TW * 64), np.int16)
    for t in range(t_begin, t_end):
        t0 = t * TW
        tw = min(TW, ow - t0)
        tu = np.uint64(tw)
        _tap_runs(X, tap_c, tap_w, tap_b, t0, tu, XT)
        base = np.uint64(t0) * np.uint64(64)
        for e in range(cout):
            j = order[e]
            dj = depth[e]
            L = nbits[e]
            q0 = ptr[e]
            q1 = ptr[e + 1]
            _count_taps(M, C4, XT, tidx, tflip, q0, q1, L, tu)
            k0, k1 = np.uint64(kt[t]), np.uint64(kt[t + 1])
            _walk_node(M, L, tu, TR, TRH, Y, dj, kind[e], q1 - q0, n_taps, SO, kq, kdst, k0, k1,
                       base, np.uint64(j * HW))  # fmt: skip


@njit(parallel=True, cache=True)
def _sum_tiles_par(
    X, tap_c, tap_w, tap_b, order, depth, kind, ptr, tidx, tflip, nbits, n_taps,
    ow, ntiles, nchunks, SO, kq, kdst, kt, HW,
):  # fmt: skip  # pragma: no cover - numba
    for ch in prange(nchunks):
        _sum_tiles(
            X, tap_c, tap_w, tap_b, order, depth, kind, ptr, tidx, tflip, nbits, n_taps,
            ow, ch * ntiles // nchunks, (ch + 1) * ntiles // nchunks, SO, kq, kdst, kt, HW,
        )  # fmt: skip


@njit(cache=True)
def _tiles(
    X, tap_c, tap_w, tap_b, order, depth, kind, ncomp, ptr, tidx, tflip, nbits, B,
    emode, etv, ow, t_begin, t_end, OB, VS,
):  # fmt: skip  # pragma: no cover - numba
    """Tiles [t_begin, t_end) of TW words (of ``ow`` words in all): OB[j, word] = emitted bits (if OB.shape[0]),
    VS[j, b, word] = planes of v_j (if VS.shape[0])."""
    K = tap_c.shape[0]
    cout = order.shape[0]
    nlev, lmax = _levels(depth, nbits)
    XT = np.empty((K, TW), np.uint64)
    V = np.zeros((nlev, B, TW), np.uint64)
    M = np.zeros((lmax + 1, TW), np.uint64)
    C4 = np.empty(TW, np.uint64)
    G = np.empty(TW, np.uint64)
    W = np.empty(TW, np.uint64)
    ones = ~np.uint64(0)
    want_bits = OB.shape[0] > 0
    want_planes = VS.shape[0] > 0
    for t in range(t_begin, t_end):
        t0 = t * TW
        tw = min(TW, ow - t0)
        tu = np.uint64(tw)  # unsigned loop index: no wrap-around checks in the word loops
        t0u = np.uint64(t0)
        _tap_runs(X, tap_c, tap_w, tap_b, t0, tu, XT)
        tp = _padded(tu, TW)  # the arithmetic's words; outputs: the first tu
        for e in range(cout):
            j = order[e]
            dj = depth[e]
            md = emode[e] if want_bits else 0
            cmp = md >= 2  # v >= T, built bottom-up with the planes (see below)
            # a leaf's planes are read by no later node: computed for the compare only
            store = want_planes or (e + 1 < cout and depth[e + 1] > dj)
            if not (store or cmp):  # a constant leaf: nothing to count
                if want_bits:
                    c = ones if md == 1 else np.uint64(0)
                    for i in range(tu):
                        OB[j, t0u + i] = c
                continue
            L = nbits[e]
            _count_taps(M, C4, XT, tidx, tflip, ptr[e], ptr[e + 1], L, tp)
            P = V[dj]
            kd = kind[e]
            T = etv[e]
            if cmp:
                for i in range(tp):
                    G[i] = ones
            if kd == 0:  # root: v = m
                for b in range(B):
                    up = (T >> np.uint64(b)) & np.uint64(1) != 0
                    if b < L:
                        if store:
                            for i in range(tp):
                                P[b, i] = M[b, i]
                        if cmp:
                            _compare_plane(G, M[b], up, tp)
                    else:
                        if store:
                            for i in range(tp):
                                P[b, i] = 0
                        if cmp and up:
                            for i in range(tp):
                                G[i] = 0
            else:  # v = src + 2m, src = v_parent or its complement over ncomp planes
                S = V[dj - 1]
                nc = ncomp[e] if kd == 2 else 0
                fl = ones if nc > 0 else np.uint64(0)
                D = P[0] if store else W
                for i in range(tp):
                    D[i] = S[0, i] ^ fl
                    C4[i] = 0
                if cmp:
                    _compare_plane(G, D, (T & np.uint64(1)) != 0, tp)
                for b in range(1, B):
                    fl = ones if b < nc else np.uint64(0)
                    D = P[b] if store else W
                    if b - 1 < L:
                        for i in range(tp):
                            C4[i], D[i] = _csa(S[b, i] ^ fl, M[b - 1, i], C4[i])
                    else:
                        for i in range(tp):
                            x = S[b, i] ^ fl
                            D[i] = x ^ C4[i]
                            C4[i] = x & C4[i]
                    if cmp:
                        _compare_plane(G, D, (T >> np.uint64(b)) & np.uint64(1) != 0, tp)
            if want_planes:
                for b in range(B):
                    for i in range(tu):
                        VS[j, b, t0u + i] = P[b, i]
            if want_bits:
                if md == 0:
                    for i in range(tu):
                        OB[j, t0u + i] = 0
                elif md == 1:
                    for i in range(tu):
                        OB[j, t0u + i] = ones
                elif md == 2:
                    for i in range(tu):
                        OB[j, t0u + i] = G[i]
                else:
                    for i in range(tu):
                        OB[j, t0u + i] = ~G[i]


@njit(cache=True, inline="always")
def _scalar_ripple(M, c, l0, L):  # pragma: no cover - numba
    """Add the carry word c at plane l0 of the counter M[:L]; stops once the carry is 0."""
    for l in range(l0, L):
        if c == 0:
            break
        x = M[l]
        M[l] = x ^ c
        c = x & c


@njit(cache=True, inline="always")
def _match4(XT, ti, tflip, q):  # pragma: no cover - numba
    """Match words of taps q..q+3 (unsigned q and tap indices ``ti``)."""
    one = np.uint64(1)
    two = np.uint64(2)
    three = np.uint64(3)
    return (
        XT[ti[q]] ^ tflip[q],
        XT[ti[q + one]] ^ tflip[q + one],
        XT[ti[q + two]] ^ tflip[q + two],
        XT[ti[q + three]] ^ tflip[q + three],
    )


@njit(cache=True, inline="always")
def _add4_scalar(XT, ti, tflip, q, o1, o2):  # pragma: no cover - numba
    """The match words of taps q..q+3 into the ones / twos words: (fours carry, o1, o2)."""
    a0, a1, a2, a3 = _match4(XT, ti, tflip, q)
    tA, o1 = _csa(o1, a0, a1)
    tB, o1 = _csa(o1, a2, a3)
    c4, o2 = _csa(o2, tA, tB)
    return c4, o1, o2


@njit(cache=True, inline="always")
def _tap_offsets(tap_c, tap_w, tap_b, ncol):  # pragma: no cover - numba
    """Per tap k, where its shifted plane starts in the flat input planes (row tap_c[k] of
    ``ncol`` words, word tap_w[k]) and its bit shift, both unsigned."""
    K = tap_c.shape[0]
    off = np.empty(K, np.uint64)
    sb = np.empty(K, np.uint64)
    for k in range(K):
        off[k] = np.uint64(tap_c[k]) * np.uint64(ncol) + np.uint64(tap_w[k])
        sb[k] = np.uint64(tap_b[k])
    return off, sb


@njit(cache=True)
def _words(
    X, tap_c, tap_w, tap_b, order, depth, kind, ncomp, ptr, tidx, tflip, nbits, B,
    emode, etv, ow, OB, VS,
):  # fmt: skip  # pragma: no cover - numba
    """The kernel of :func:`_tiles` one word (64 positions) at a time, every plane a scalar: the
    plain reference of :func:`_vwords` (which runs grids of a few words). Same arithmetic, same
    outputs (tested equal)."""
    K = tap_c.shape[0]
    cout = order.shape[0]
    nlev, lmax = _levels(depth, nbits)
    Xf = X.reshape(-1)
    off, sb = _tap_offsets(tap_c, tap_w, tap_b, X.shape[1])
    ti = tidx.astype(np.uint64)  # unsigned indices: no wrap-around checks per tap
    XT = np.empty(K, np.uint64)
    V = np.zeros((nlev, B), np.uint64)
    M = np.zeros(lmax + 4, np.uint64)
    ones = ~np.uint64(0)
    one = np.uint64(1)
    u4 = np.uint64(4)
    u8 = np.uint64(8)
    u12 = np.uint64(12)
    u16 = np.uint64(16)
    s63 = np.uint64(63)
    want_bits = OB.shape[0] > 0
    want_planes = VS.shape[0] > 0
    for i in range(ow):
        iu = np.uint64(i)
        for k in range(K):  # the tap words at word i: (x >> b) | (next << (64 - b)), 0 if b = 0
            a = off[k] + iu
            XT[k] = (Xf[a] >> sb[k]) | ((Xf[a + one] << one) << (s63 - sb[k]))
        for e in range(cout):
            j = order[e]
            L = nbits[e]
            for l in range(L + 1):
                M[l] = 0
            q = np.uint64(ptr[e])
            q1 = np.uint64(ptr[e + 1])
            o1 = np.uint64(0)
            o2 = np.uint64(0)
            o4 = np.uint64(0)
            o8 = np.uint64(0)
            while q + u16 <= q1:  # Harley-Seal: ones/twos/fours/eights, ripple the 16s
                fA, o1, o2 = _add4_scalar(XT, ti, tflip, q, o1, o2)
                fB, o1, o2 = _add4_scalar(XT, ti, tflip, q + u4, o1, o2)
                eA, o4 = _csa(o4, fA, fB)
                fA, o1, o2 = _add4_scalar(XT, ti, tflip, q + u8, o1, o2)
                fB, o1, o2 = _add4_scalar(XT, ti, tflip, q + u12, o1, o2)
                eB, o4 = _csa(o4, fA, fB)
                c16, o8 = _csa(o8, eA, eB)
                _scalar_ripple(M, c16, 4, L)
                q += u16
            M[0] = o1
            M[1] = o2
            M[2] = o4
            M[3] = o8
            while q + u4 <= q1:  # blocks of 4 into ones / twos, ripple the fours
                c4, M[0], M[1] = _add4_scalar(XT, ti, tflip, q, M[0], M[1])
                _scalar_ripple(M, c4, 2, L)
                q += u4
            while q < q1:  # single taps: ripple from the ones
                _scalar_ripple(M, XT[ti[q]] ^ tflip[q], 0, L)
                q += one
            dj = depth[e]
            kd = kind[e]
            T = etv[e]
            g = ones  # the LSB-first compare v >= T of _compare_plane
            if kd == 0:  # root: v = m
                for b in range(B):
                    v = M[b] if b < L else np.uint64(0)
                    V[dj, b] = v
                    g = v & g if (T >> np.uint64(b)) & one else v | g
            else:  # v = src + 2m, src = v_parent or its complement over ncomp planes
                nc = ncomp[e] if kd == 2 else 0
                s0 = V[dj - 1, 0]
                v = s0 ^ ones if nc > 0 else s0
                V[dj, 0] = v
                g = v & g if T & one else v | g
                c = np.uint64(0)
                for b in range(1, B):
                    sv = V[dj - 1, b] ^ (ones if b < nc else np.uint64(0))
                    if b - 1 < L:
                        c, v = _csa(sv, M[b - 1], c)
                    else:
                        v = sv ^ c
                        c = sv & c
                    V[dj, b] = v
                    g = v & g if (T >> np.uint64(b)) & one else v | g
            if want_planes:
                for b in range(B):
                    VS[j, b, i] = V[dj, b]
            if want_bits:
                md = emode[e]
                if md == 0:
                    OB[j, i] = 0
                elif md == 1:
                    OB[j, i] = ones
                else:
                    OB[j, i] = g if md == 2 else ~g


@njit(cache=True, inline="always")
def _vcsa(h, a, b):  # pragma: no cover - numba
    """:func:`_csa` on four lanes: (carry, sum) of h + a + b."""
    u = vxor(h, a)
    return vor(vand(h, a), vand(u, b)), vxor(u, b)


@njit(cache=True, inline="always")
def _vripple(M, c, l0, L):  # pragma: no cover - numba
    """:func:`_scalar_ripple` on four lanes; plane l of M is M[4 l : 4 l + 4]."""
    for l in range(l0, L):
        if not vany(c):
            break
        o = np.uint64(4 * l)
        x = vload(M, o)
        vstore(M, o, vxor(x, c))
        c = vand(x, c)


@njit(cache=True, inline="always")
def _vtap(XT, ti, tflip, q):  # pragma: no cover - numba
    """Match words of tap q on four lanes (XT: four words per tap)."""
    return vxor(vload(XT, ti[q] * np.uint64(4)), vfill(tflip[q]))


@njit(cache=True, inline="always")
def _vadd4(XT, ti, tflip, q, o1, o2):  # pragma: no cover - numba
    """:func:`_add4_scalar` on four lanes."""
    one = np.uint64(1)
    tA, o1 = _vcsa(o1, _vtap(XT, ti, tflip, q), _vtap(XT, ti, tflip, q + one))
    tB, o1 = _vcsa(
        o1, _vtap(XT, ti, tflip, q + np.uint64(2)), _vtap(XT, ti, tflip, q + np.uint64(3))
    )
    c4, o2 = _vcsa(o2, tA, tB)
    return c4, o1, o2


@njit(cache=True, inline="always")
def _vcount(M, XT, ti, tflip, q0, q1, L):  # pragma: no cover - numba
    """Planes 0..L-1 of M (plane l = M[4 l : 4 l + 4]) = the bit-sliced count of matches over
    taps q0..q1-1 on four words (:func:`_words`' Harley-Seal blocks of 16, 4, then 1)."""
    zero = vfill(np.uint64(0))
    u4 = np.uint64(4)
    for l in range(L + 1):
        vstore(M, np.uint64(4 * l), zero)
    q = np.uint64(q0)
    q1 = np.uint64(q1)
    o1 = zero
    o2 = zero
    o4 = zero
    o8 = zero
    while q + np.uint64(16) <= q1:  # Harley-Seal: ones/twos/fours/eights, ripple the 16s
        fA, o1, o2 = _vadd4(XT, ti, tflip, q, o1, o2)
        fB, o1, o2 = _vadd4(XT, ti, tflip, q + u4, o1, o2)
        eA, o4 = _vcsa(o4, fA, fB)
        fA, o1, o2 = _vadd4(XT, ti, tflip, q + np.uint64(8), o1, o2)
        fB, o1, o2 = _vadd4(XT, ti, tflip, q + np.uint64(12), o1, o2)
        eB, o4 = _vcsa(o4, fA, fB)
        c16, o8 = _vcsa(o8, eA, eB)
        _vripple(M, c16, 4, L)
        q += np.uint64(16)
    vstore(M, np.uint64(0), o1)
    vstore(M, u4, o2)
    vstore(M, np.uint64(8), o4)
    vstore(M, np.uint64(12), o8)
    while q + u4 <= q1:  # blocks of 4 into ones / twos, ripple the fours
        c4, m0, m1 = _vadd4(XT, ti, tflip, q, vload(M, np.uint64(0)), vload(M, u4))
        vstore(M, np.uint64(0), m0)
        vstore(M, u4, m1)
        _vripple(M, c4, 2, L)
        q += u4
    while q < q1:  # single taps: ripple from the ones
        _vripple(M, _vtap(XT, ti, tflip, q), 0, L)
        q += np.uint64(1)


@njit(cache=True, inline="always")
def _vtap_words(Xf, off, sb, i0, nw, XT):  # pragma: no cover - numba
    """XT[4 k + lane] = tap k's word i0 + lane of the grid (0 for lanes >= nw)."""
    one = np.uint64(1)
    s63 = np.uint64(63)
    for k in range(off.shape[0]):
        for lane in range(4):
            w = np.uint64(0)
            if lane < nw:
                a = off[k] + np.uint64(i0 + lane)
                w = (Xf[a] >> sb[k]) | ((Xf[a + one] << one) << (s63 - sb[k]))
            XT[4 * k + lane] = w


@njit(cache=True)
def _vwords(
    X, tap_c, tap_w, tap_b, order, depth, kind, ncomp, ptr, tidx, tflip, nbits, B,
    emode, etv, ow, OB, VS,
):  # fmt: skip  # pragma: no cover - numba
    """:func:`_words` four words at a time: every plane of a node is one ``u64x4`` vector
    register (``mstc.engine.simd``), so a node's taps, planes and compare cost the same for one
    to four words. Same arithmetic, same outputs (tested equal); lanes past ``ow`` compute on
    zero tap words and are not stored."""
    K = tap_c.shape[0]
    cout = order.shape[0]
    nlev, lmax = _levels(depth, nbits)
    Xf = X.reshape(-1)
    off, sb = _tap_offsets(tap_c, tap_w, tap_b, X.shape[1])
    ti = tidx.astype(np.uint64)
    XT = np.zeros(4 * K, np.uint64)
    V = np.zeros(4 * nlev * B, np.uint64)  # plane b of level d: V[4 (d B + b) :][:4]
    M = np.zeros(4 * max(lmax + 1, 4), np.uint64)  # _vcount: L + 1 planes, counters in 0..3
    one = np.uint64(1)
    zero = vfill(np.uint64(0))
    ones = vfill(~np.uint64(0))
    want_bits = OB.shape[0] > 0
    want_planes = VS.shape[0] > 0
    for i0 in range(0, ow, 4):
        nw = min(4, ow - i0)
        _vtap_words(Xf, off, sb, i0, nw, XT)  # the tap words at words i0..i0+3
        for e in range(cout):
            j = order[e]
            L = nbits[e]
            _vcount(M, XT, ti, tflip, ptr[e], ptr[e + 1], L)
            dj = depth[e]
            kd = kind[e]
            T = etv[e]
            g = ones  # the LSB-first compare v >= T of _compare_plane
            cur = np.uint64(4 * dj * B)
            if kd == 0:  # root: v = m
                for b in range(B):
                    v = vload(M, np.uint64(4 * b)) if b < L else zero
                    vstore(V, cur + np.uint64(4 * b), v)
                    g = vand(v, g) if (T >> np.uint64(b)) & one else vor(v, g)
            else:  # v = src + 2m, src = v_parent or its complement over ncomp planes
                nc = ncomp[e] if kd == 2 else 0
                src = cur - np.uint64(4 * B)
                v = vload(V, src)
                if nc > 0:
                    v = vxor(v, ones)
                vstore(V, cur, v)
                g = vand(v, g) if T & one else vor(v, g)
                c = zero
                for b in range(1, B):
                    sv = vload(V, src + np.uint64(4 * b))
                    if b < nc:
                        sv = vxor(sv, ones)
                    if b - 1 < L:
                        c, v = _vcsa(sv, vload(M, np.uint64(4 * (b - 1))), c)
                    else:
                        v = vxor(sv, c)
                        c = vand(sv, c)
                    vstore(V, cur + np.uint64(4 * b), v)
                    g = vand(v, g) if (T >> np.uint64(b)) & one else vor(v, g)
            if want_planes:
                for b in range(B):
                    v = vload(V, cur + np.uint64(4 * b))
                    for lane in range(nw):
                        VS[j, b, i0 + lane] = vlane(v, np.uint64(lane))
            if want_bits:
                md = emode[e]
                if md == 0:
                    g = zero
                elif md == 1:
                    g = ones
                elif md == 3:
                    g = vxor(g, ones)
                for lane in range(nw):
                    OB[j, i0 + lane] = vlane(g, np.uint64(lane))


@njit(cache=True)
def _vsum_words(
    X, tap_c, tap_w, tap_b, order, depth, kind, ptr, tidx, tflip, nbits, n_taps,
    ow, SO, kq, kdst, kt, HW,
):  # fmt: skip  # pragma: no cover - numba
    """:func:`_sum_tiles` four words at a time for grids of a few words: a node's count over
    its taps in vector registers (:func:`_vcount`), transposed to bytes (:func:`_transpose8`),
    then the same int16 tree step and output gather, over groups of 4 words (``kt`` per group:
    :func:`sums_index` with ``tile_words=4``)."""
    K = tap_c.shape[0]
    cout = order.shape[0]
    nlev, lmax = _levels(depth, nbits)
    Xf = X.reshape(-1)
    off, sb = _tap_offsets(tap_c, tap_w, tap_b, X.shape[1])
    ti = tidx.astype(np.uint64)
    XT = np.zeros(4 * K, np.uint64)
    M = np.zeros(4 * max(lmax + 1, 4), np.uint64)  # _vcount: L + 1 planes, counters in 0..3
    M2 = M.reshape(-1, 4)
    TR = np.empty((4, 8), np.uint64)
    TRH = np.zeros((4, 8), np.uint64)
    Y = np.empty((nlev, 256), np.int16)
    for gi in range(-(-ow // 4)):
        i0 = 4 * gi
        nw = min(4, ow - i0)
        _vtap_words(Xf, off, sb, i0, nw, XT)
        nu = np.uint64(nw)
        base = np.uint64(i0) * np.uint64(64)
        for e in range(cout):
            j = order[e]
            dj = depth[e]
            L = nbits[e]
            q0 = ptr[e]
            q1 = ptr[e + 1]
            _vcount(M, XT, ti, tflip, q0, q1, L)
            k0, k1 = np.uint64(kt[gi]), np.uint64(kt[gi + 1])
            _walk_node(M2, L, nu, TR, TRH, Y, dj, kind[e], q1 - q0, n_taps, SO, kq, kdst, k0, k1,
                       base, np.uint64(j * HW))  # fmt: skip


@njit(parallel=True, cache=True)
def _tiles_par(
    X, tap_c, tap_w, tap_b, order, depth, kind, ncomp, ptr, tidx, tflip, nbits, B,
    emode, etv, ow, ntiles, nchunks, OB, VS,
):  # fmt: skip  # pragma: no cover - numba
    for ch in prange(nchunks):
        _tiles(
            X, tap_c, tap_w, tap_b, order, depth, kind, ncomp, ptr, tidx, tflip, nbits, B,
            emode, etv, ow, ch * ntiles // nchunks, (ch + 1) * ntiles // nchunks, OB, VS,
        )  # fmt: skip


def _layer_kernel(
    sched: SlicedLayer,
    g: PlaneGeometry,
    emit: tuple[np.ndarray, np.ndarray] | None,
    nthreads: int,
) -> tuple:
    """(kernel, its arguments after the input bits and before OB, VS) for one input geometry:
    the vector word kernel for grids of a few words (one thread), else the tile kernel,
    parallel over chunks of tiles if ``nthreads`` > 1; None for an empty grid. The scalar word
    kernel :func:`_words` takes the same arguments (the reference of :func:`_vwords`)."""
    ow = grid_words(g.n, g.hp, g.wp)
    if emit is None:
        emode = np.zeros(sched.layer.cout, np.int8)
        etv = np.zeros(sched.layer.cout, np.uint64)
    else:
        emode, etv = emit
    args = (*_schedule_args(sched, g.wp), sched.ncomp, sched.ptr, sched.tap_idx)
    args = (*args, sched.tap_flip, sched.nbits, sched.planes, emode, etv, ow)
    ntiles = -(-ow // TW)
    if not ow:
        return None, args
    if ow <= VECTOR_WORDS:  # a few words: four at a time, node by node (one thread)
        return _vwords, args
    if nthreads > 1 and ntiles > 1:
        return _tiles_par, (*args, ntiles, min(ntiles, 4 * nthreads))
    return _tiles, (*args, 0, ntiles)


def run_layer(
    sched: SlicedLayer,
    planes: BitPlanes,
    *,
    emit: tuple[np.ndarray, np.ndarray] | None,
    want_planes: bool,
    nthreads: int = 1,
    pool: BufferPool | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Run one layer on input planes: (emitted bits [Cout, words] or None, v planes
    [Cout, B, words] or None, lent by ``pool`` if given), over the output grid of the input
    geometry."""
    g = planes.geometry
    ow = grid_words(g.n, g.hp, g.wp)
    cout = sched.layer.cout
    VS = empty(
        pool if want_planes else None, (cout if want_planes else 0, sched.planes, ow), np.uint64
    )
    OB = np.empty((cout if emit is not None else 0, ow + 1), dtype=np.uint64)
    if emit is not None:
        OB[:, ow] = 0
    kernel, args = _layer_kernel(sched, g, emit, nthreads)
    if kernel is not None:
        kernel(planes.bits, *args, OB, VS)
    return (OB if emit is not None else None), (VS if want_planes else None)


def _schedule_args(sched: SlicedLayer, wp: int) -> tuple:
    """The arguments of every tile kernel after the input planes: the schedule's taps on a grid
    of row width ``wp``, its order, depths and edge kinds."""
    tw, tb = sched.tap_shifts(wp)
    return (sched._tap_c, tw, tb, sched.order, sched.depth, sched.kind)


def _output_positions(n: int, hp: int, wp: int, ho: int, wo: int) -> np.ndarray:
    """Grid position q = (image * hp + h) * wp + w of each output (image, h, w), row-major."""
    img, h, w = np.meshgrid(np.arange(n), np.arange(ho), np.arange(wo), indexing="ij")
    return ((img * hp + h) * wp + w).reshape(-1)


def sums_index(
    n: int, hp: int, wp: int, ho: int, wo: int, cout: int, tile_words: int = TW
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where :func:`_sum_tiles` (tiles of ``tile_words`` words; :func:`_vsum_words`: 4) finds
    and puts each output k = (image, h, w) (row-major per image): kq its index among the tiles'
    positions in transposed order (grid position q, t = q % 64, at ``64 * (q // 64) + 8 * (t %
    8) + t // 8``), kdst its index in the flat (N, Cout, Ho, Wo) sums of channel 0, and kt[t]
    the first output of tile t (outputs lie in grid order)."""
    q = _output_positions(n, hp, wp, ho, wo)
    t = q & 63
    kq = (q >> 6) * 64 + (t & 7) * 8 + (t >> 3)
    k = np.arange(n * ho * wo)
    kdst = (k // (ho * wo)) * cout * ho * wo + k % (ho * wo)
    ntiles = -(-grid_words(n, hp, wp) // tile_words)
    kt = np.searchsorted(q >> 6, np.arange(ntiles + 1) * tile_words).astype(np.int64)
    return kq.astype(np.uint64), kdst.astype(np.uint64), kt


def layer_sums(
    sched: SlicedLayer,
    planes: BitPlanes,
    *,
    nthreads: int = 1,
    pool: BufferPool | None = None,
) -> np.ndarray:
    """int32 sums (N, Cout, Ho, Wo) of one layer (lent by ``pool`` if given), the tree walked
    in integers (:func:`_sum_tiles`; grids of at most ``VECTOR_WORDS`` words four words at a
    time, :func:`_vsum_words`): no v planes, no unpacking. Layers of 2^15 taps or more (the
    walk's rows are int16) take :func:`run_layer` then :func:`unpack_sums`."""
    g = planes.geometry
    ho, wo = output_hw(sched.layer, g)
    ow = grid_words(g.n, g.hp, g.wp)
    if not ho * wo or sched.layer.n >= 1 << 15:
        _, VS = run_layer(sched, planes, emit=None, want_planes=True, nthreads=nthreads, pool=pool)
        sums = unpack_sums(sched, VS, g, pool)
        if pool is not None:
            pool.give(VS)
        return sums
    cout = sched.layer.cout
    vector = ow <= VECTOR_WORDS
    key = ("vector" if vector else "tiles", g.n, g.hp, g.wp, ho, wo)
    index = sched._indices.get(key)
    if index is None:
        tile_words = 4 if vector else TW
        index = sched._indices[key] = sums_index(g.n, g.hp, g.wp, ho, wo, cout, tile_words)
    sums = empty(pool, (g.n, cout, ho, wo), np.int32)
    args = (planes.bits, *_schedule_args(sched, g.wp), sched.ptr, sched.tap_idx, sched.tap_flip)
    args = (*args, sched.nbits, sched.layer.n, ow)
    out = (sums.reshape(-1), *index, ho * wo)
    ntiles = -(-ow // TW)
    if vector:
        _vsum_words(*args, *out)
    elif nthreads > 1 and ntiles > 1:
        _sum_tiles_par(*args, ntiles, min(ntiles, 4 * nthreads), *out)
    else:
        _sum_tiles(*args, 0, ntiles, *out)
    return sums


# ------------------------------------------------------------------------------------ emitters


@njit(cache=True)
def _unpack_sums(VS, c, n_taps, N, Hp, Wp, Ho, Wo, out):  # pragma: no cover - numba
    """out[n, j, h, w] = 2 * (v_j + c_j) - n_taps at grid index (n*Hp + h)*Wp + w: v of a whole
    word of positions at once, one plane after the other (the bit loop vectorises; unsigned
    indices, so no wrap-around checks)."""
    cout, B, ow = VS.shape
    val = np.empty(ow * 64, np.int32)
    u64 = np.uint64(64)
    wu = np.uint64(Wo)
    for j in range(cout):
        for a in range(ow):
            base = np.uint64(a) * u64
            for t in range(u64):
                val[base + t] = 0
            for b in range(B):
                w = VS[j, b, a]
                for t in range(u64):
                    val[base + t] += np.int32((w >> t) & np.uint64(1)) << np.int32(b)
        cj = c[j]
        for n in range(N):
            for h in range(Ho):
                q0 = np.uint64((n * Hp + h) * Wp)
                dst = out[n, j, h]
                for w in range(wu):
                    dst[w] = 2 * (val[q0 + w] + cj) - n_taps


def _unpack_index(n: int, hp: int, wp: int, ho: int, wo: int) -> np.ndarray:
    """For output k = (image, h, w) of each image (row-major): the index of its value among the
    uint16 values of :func:`_unpack_sums_t`'s transposed words. Grid position q = (n * hp + h) *
    wp + w, t = q % 64, sits at ``64 * (q // 64) + 4 * (t % 16) + t // 16``."""
    q = _output_positions(n, hp, wp, ho, wo)
    t = q & 63
    return ((q >> 6) * 64 + (t & 15) * 4 + (t >> 4)).astype(np.uint64)


@njit(cache=True)
def _unpack_sums_t(VS, c, n_taps, idx, out):  # pragma: no cover - numba
    """:func:`_unpack_sums` for B <= 16 planes by :func:`_transpose16`; the valid outputs are
    then read through ``idx`` (:func:`_unpack_index`) into ``out`` (N, Cout, Ho, Wo)."""
    cout, B, ow = VS.shape
    N = out.shape[0]
    HW = out.shape[2] * out.shape[3]
    P = np.zeros((16, ow), np.uint64)
    T = np.empty((ow, 16), np.uint64)
    T16 = T.view(np.uint16).reshape(ow * 64)
    flat = out.reshape(N, cout, HW)
    for j in range(cout):
        for b in range(B):
            P[b, :] = VS[j, b, :]
        _transpose16(P, ow, T)
        cj = np.int32(2 * c[j] - n_taps)
        for n in range(N):
            dst = flat[n, j]
            base = np.uint64(n * HW)
            for k in range(np.uint64(HW)):
                dst[k] = 2 * np.int32(T16[idx[base + k]]) + cj


def unpack_sums(
    sched: SlicedLayer,
    VS: np.ndarray,
    geometry: PlaneGeometry,
    pool: BufferPool | None = None,
) -> np.ndarray:
    """int32 sums (N, Cout, Ho, Wo) of a stride-1 conv from its v planes (lent by ``pool`` if
    given): by bit-matrix transposes (:func:`_unpack_sums_t`) for up to 16 planes, else plane by
    plane (:func:`_unpack_sums`, also the reference the fast one is tested against)."""
    g = geometry
    ho, wo = output_hw(sched.layer, g)
    out = empty(pool, (g.n, sched.layer.cout, ho, wo), np.int32)
    if VS.shape[1] <= 16 and VS.shape[0] and ho * wo:
        key = ("unpack", g.n, g.hp, g.wp, ho, wo)
        idx = sched._indices.get(key)
        if idx is None:
            idx = sched._indices[key] = _unpack_index(*key[1:])
        _unpack_sums_t(VS, sched.c, sched.layer.n, idx, out)
    else:
        _unpack_sums(VS, sched.c, sched.layer.n, g.n, g.hp, g.wp, ho, wo, out)
    return out


@njit(cache=True, inline="always")
def _even_bits(x):  # pragma: no cover - numba
    """Bits 0, 2, 4, ..., 62 of x compressed into the low 32 bits."""
    x &= np.uint64(0x5555555555555555)
    x = (x | (x >> np.uint64(1))) & np.uint64(0x3333333333333333)
    x = (x | (x >> np.uint64(2))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x | (x >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x >> np.uint64(16))) & np.uint64(0x00000000FFFFFFFF)
    return x


@njit(cache=True)
def _valid_mask(N, Hp, Wp, Ho, Wo, words):  # pragma: no cover - numba
    """Bit q = (n*Hp + h)*Wp + w set for the valid outputs h < Ho, w < Wo of a stride-1 conv."""
    m = np.zeros(words, np.uint64)
    for n in range(N):
        for h in range(Ho):
            base = (n * Hp + h) * Wp
            for w in range(Wo):
                q = base + w
                m[q >> 6] |= np.uint64(1) << np.uint64(q & 63)
    return m


@njit(cache=True)
def _emit_shift(OB, valid, s, out):  # pragma: no cover - numba
    """out[j] = (OB[j] AND valid) shifted up by s bits (same grid, next conv's padding)."""
    cout = OB.shape[0]
    ow = valid.shape[0]
    sw = s >> 6
    sb = np.uint64(s & 63)
    cb = np.uint64(64 - (s & 63))
    n_out = out.shape[1]
    for j in range(cout):
        src = OB[j]
        dst = out[j]
        if sb == 0:
            for a in range(min(ow, n_out - sw)):
                dst[a + sw] = src[a] & valid[a]
        else:
            prev = np.uint64(0)
            for a in range(min(ow, n_out - sw - 1)):
                cur = src[a] & valid[a]
                dst[a + sw] = (cur << sb) | prev
                prev = cur >> cb
            if ow + sw < n_out:
                dst[ow + sw] = prev


@njit(cache=True)
def _emit_rows(OB, N, Hp, Wp, Ho, Wo, Hp2, Wp2, ph2, pw2, out):  # pragma: no cover - numba
    """Row by row copy of the valid outputs into the next conv's planes (another padding)."""
    for j in range(OB.shape[0]):
        src = OB[j]
        dst = out[j]
        for n in range(N):
            for h in range(Ho):
                s0 = (n * Hp + h) * Wp
                d0 = (n * Hp2 + h + ph2) * Wp2 + pw2
                for w0 in range(0, Wo, 64):
                    ln = min(64, Wo - w0)
                    _place(dst, d0 + w0, _extract(src, s0 + w0, ln), ln)


@njit(cache=True)
def _emit_pool(OB, N, Hp, Wp, Ho, Wo, Hp2, Wp2, ph2, pw2, half, out):  # pragma: no cover
    """2x2 stride-2 max pool (max then sign = OR of the signs) of the valid outputs into the
    zeroed planes ``out`` of the next conv. Per channel, word-wise: OR each row with the next
    one and each bit with its right neighbour, then compress the even bits (``half[0]``) and,
    where a pooled row starts at an odd grid bit (odd Wp and Hp, several images), the odd bits
    (``half[1]``) to half-length rows. Then per pooled row, every channel in turn: copy its W2
    bits from the half rows to the next grid (the channels' read-modify-writes are independent,
    so they overlap; one channel's rows after each other would wait on each other)."""
    cout = OB.shape[0]
    ns = OB.shape[1]
    owu = np.uint64(ns - 1)
    nh = half.shape[2]
    wsh = np.uint64(Wp >> 6)
    wsb = np.uint64(Wp & 63)
    wcb = np.uint64(63) - wsb  # (x << 1) << wcb == x << (64 - wsb), and 0 when wsb == 0
    one = np.uint64(1)
    two = np.uint64(2)
    s63 = np.uint64(63)
    s32 = np.uint64(32)
    odd = half.shape[0] > 1
    src = np.zeros(ns + (Wp >> 6) + 1, np.uint64)  # one row of OB, zero-padded: no bounds tests
    tmp = np.zeros(2 * nh + 1, np.uint64)  # words >= ow stay 0
    for j in range(cout):
        for a in range(np.uint64(ns)):
            src[a] = OB[j, a]
        for a in range(owu):  # tmp = src | (src >> Wp): bit q gets bit q + Wp
            hi = (src[a + wsh] >> wsb) | ((src[a + wsh + one] << one) << wcb)
            tmp[a] = src[a] | hi
        for a in range(owu):  # bit q |= bit q + 1
            tmp[a] = tmp[a] | (tmp[a] >> one) | (tmp[a + one] << s63)
        he = half[0, j]
        for a in range(nh):  # bit i of he = bit 2i of tmp
            b = np.uint64(2 * a)
            he[a] = _even_bits(tmp[b]) | (_even_bits(tmp[b + one]) << s32)
        if odd:  # bit i of ho = bit 2i + 1 of tmp
            hd = half[1, j]
            for a in range(nh):
                b = np.uint64(2 * a)
                x0 = (tmp[b] >> one) | (tmp[b + one] << s63)
                x1 = (tmp[b + one] >> one) | (tmp[b + two] << s63)
                hd[a] = _even_bits(x0) | (_even_bits(x1) << s32)
    H2 = Ho // 2
    W2 = Wo // 2
    for n in range(N):
        for h2 in range(H2):
            s0 = (n * Hp + 2 * h2) * Wp
            hs = half[s0 & 1]
            sh = s0 >> 1
            d0 = (n * Hp2 + h2 + ph2) * Wp2 + pw2
            for w0 in range(0, W2, 64):
                ln = min(64, W2 - w0)
                for j in range(cout):
                    _place(out[j], d0 + w0, _extract(hs[j], sh + w0, ln), ln)


def emit_call(sched: SlicedLayer, geometry: PlaneGeometry, pool: bool, nxt: PlaneGeometry) -> tuple:
    """(emitter, its arguments between OB and the output planes) for one input geometry: the
    2x2 max pool, a shift (same grid, the next conv's padding), or a row by row copy."""
    g = geometry
    ho, wo = output_hw(sched.layer, g)
    expect = (ho // 2, wo // 2) if pool else (ho, wo)
    if (nxt.h, nxt.w) != expect or nxt.n != g.n or nxt.c != sched.layer.cout:
        raise ValueError(f"next planes {nxt} do not match the output {expect}")
    ow = grid_words(g.n, g.hp, g.wp)
    if pool:  # half rows: ceil(ow / 2) words + 1 read by _extract; odd bits only if needed
        odd = g.wp % 2 == 1 and g.hp % 2 == 1 and g.n > 1
        half = np.empty((2 if odd else 1, nxt.c, (ow + 1) // 2 + 1), dtype=np.uint64)
        return _emit_pool, (g.n, g.hp, g.wp, ho, wo, nxt.hp, nxt.wp, nxt.ph, nxt.pw, half)
    if (nxt.hp, nxt.wp) == (g.hp, g.wp):
        return _emit_shift, (_valid_mask(g.n, g.hp, g.wp, ho, wo, ow), nxt.ph * g.wp + nxt.pw)
    return _emit_rows, (g.n, g.hp, g.wp, ho, wo, nxt.hp, nxt.wp, nxt.ph, nxt.pw)


#: emitter kinds of :func:`emit_any`
EMIT_SHIFT, EMIT_ROWS, EMIT_POOL = 0, 1, 2


def emit_params(
    sched: SlicedLayer, geometry: PlaneGeometry, pool: bool, nxt: PlaneGeometry
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`emit_call` as the arguments of :func:`emit_any`: (kind, int64 parameters, valid
    mask, half rows), unused arrays empty -- four arguments instead of up to eleven (numba
    unboxes each argument of a call from Python, ~0.1 us apiece)."""
    emitter, args = emit_call(sched, geometry, pool, nxt)
    none1 = np.zeros(0, np.uint64)
    none3 = np.zeros((0, 0, 0), np.uint64)
    if emitter is _emit_shift:
        return EMIT_SHIFT, np.asarray([args[1]], np.int64), args[0], none3
    if emitter is _emit_rows:
        return EMIT_ROWS, np.asarray(args, np.int64), none1, none3
    return EMIT_POOL, np.asarray(args[:9], np.int64), none1, args[9]


@njit(cache=True)
def emit_any(OB, kind, P, valid, half, out):  # pragma: no cover - numba
    """The emitter of :func:`emit_params` on emitted bits ``OB`` into the zeroed ``out``."""
    if kind == EMIT_SHIFT:
        _emit_shift(OB, valid, P[0], out)
    elif kind == EMIT_ROWS:
        _emit_rows(OB, P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8], out)
    else:
        _emit_pool(OB, P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8], half, out)


def emit_planes(
    sched: SlicedLayer, OB: np.ndarray, geometry: PlaneGeometry, pool: bool, nxt: PlaneGeometry
) -> BitPlanes:
    """The next conv's input planes from a layer's emitted bits (optionally 2x2 max-pooled)."""
    emitter, args = emit_call(sched, geometry, pool, nxt)
    out = np.zeros((nxt.c, nxt.words), dtype=np.uint64)
    emitter(OB, *args, out)
    return BitPlanes(out, nxt)


class FusedStep:
    """One fused layer at one input geometry: ``run_layer(emit=...)`` then ``emit_planes``
    (the next conv's planes, optionally 2x2 max-pooled), with all that does not depend on the
    input bits -- kernel arguments, the emitted-bits scratch, the next geometry, the valid mask
    -- made once. At batch 1 a layer's kernels take 15-25 us, and that preparation took about
    as long again."""

    def __init__(
        self,
        sched: SlicedLayer,
        geometry: PlaneGeometry,
        emit: tuple[np.ndarray, np.ndarray],
        pool: bool,
        nxt: PlaneGeometry,
        nthreads: int = 1,
    ) -> None:
        self.geometry = geometry
        self.next_geometry = nxt
        self._emitter, self._emit_args = emit_call(sched, geometry, pool, nxt)
        ow = grid_words(geometry.n, geometry.hp, geometry.wp)
        self._OB = np.zeros((sched.layer.cout, ow + 1), dtype=np.uint64)  # word ow stays 0
        self._VS = np.empty((0, sched.planes, ow), dtype=np.uint64)
        self._kernel, self._args = _layer_kernel(sched, geometry, emit, nthreads)
        self._out_shape = (nxt.c, nxt.words)

    def __call__(self, planes: BitPlanes) -> BitPlanes:
        if planes.geometry is not self.geometry and planes.geometry != self.geometry:
            raise ValueError(f"planes {planes.geometry} are not this step's {self.geometry}")
        OB = self._OB
        if self._kernel is not None:
            self._kernel(planes.bits, *self._args, OB, self._VS)
        out = np.zeros(self._out_shape, dtype=np.uint64)
        self._emitter(OB, *self._emit_args, out)
        return BitPlanes(out, self.next_geometry)
