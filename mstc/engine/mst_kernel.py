"""The "mst" backend: dense roots by XNOR-popcount, then tree-ordered delta updates (numba).

Per binary layer (method.md section 2, engine-notes.md layout 3), over a tile of output positions:

1. "dense" channels -- the roots of the forest, plus any child whose difference list is longer than
   ``dense_threshold * n`` (where a delta costs more than XNOR-popcount) -- are computed for the
   whole layer by the tiled XNOR-popcount kernel of :mod:`mstc.engine.packed`,
   ``y_j = n - 2 * sum_t popcount(A_t XOR W_jt)``, and copied into each tile;
2. the input is kept as int8 planes of 2a and -2a (a = sign(x), padding -1), batch stacked along
   the height; for stride 1 the tap (ci, ky, kx) of a run of positions is a shifted run of the
   plane (positions in the padding columns/rows are computed and dropped), otherwise an int8
   im2col of the tile is built;
3. every other channel, parents first: ``y_j = (+/-) y_parent + sum_{k in D_j} w_jk * (2 a_k)``
   (minus for a complement edge), taking the row of -2a where w_jk = -1, four taps summed in int8
   per pass, accumulated in int16 while n <= 32767 (exact: |y_j| <= n, and intermediate
   wrap-around cancels in two's complement), int32 beyond.

Fused chains (the runtime calls :meth:`MSTBackend.conv2d_fused`): a stride-1 binary conv whose
BatchNorm (and 2x2 max pool) feeds another binary conv runs the bit-sliced kernel of
:mod:`mstc.engine.sliced` -- vertical popcounts along the tree, BN + sign as a bit-sliced compare,
output bits written straight into the next layer's input planes. The int kernels above stay the
fallback (chosen per layer and shape by timing both, like the delta/XNOR choice).

Oracle: the "reference" backend (:mod:`mstc.engine.reference`), which walks the same trees.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mstc.engine import walk16
from mstc.engine.backend import Backend, fastest, register_backend
from mstc.engine.binarize import pack_binary_input, sign_rule
from mstc.engine.buffers import empty
from mstc.engine.fold import CONST1, GE, LE, PackedBits, RuledInput
from mstc.engine.packed import (
    _set_threads,
    check_input,
    conv_geometry,
    linear_as_conv,
    packed_weights,
    prepare_xnor,
    xnor_conv,
    xnor_layer,
)
from mstc.engine.sliced import (
    BitPlanes,
    FusedStep,
    PlaneGeometry,
    SlicedLayer,
    emit_planes,
    grid_words,
    layer_sums,
    output_hw,
    pack_planes,
    plane_geometry,
    planes_to_packed,
    planes_to_signed,
    rule_planes,
    run_layer,
    sliceable,
    unpack_sums,
    words_to_planes,
)
from mstc.format import BinaryLayerCode

#: a child whose difference list is longer than this fraction of n is computed densely
DENSE_THRESHOLD = 0.08
#: kernels of fused layers and of layers fed bit planes: bit-sliced, XNOR / int16 delta on
#: transposed planes, the int16 walk in vector lanes (inputs of at most WALK_BYTES expanded)
PLANE_KERNELS = ("sliced", "int", "walk16")
#: the int16 walk is a candidate where its input, one byte per position and channel, takes at
#: most this much (8x the bit planes); the autotune then times it against the others. It wins
#: on short grids (batch 1: per node it costs ~50 cycles, the bit-sliced kernels' compare and
#: planes more) and on chain ends (sums straight from int16 lanes), and loses on fused layers
#: of wide grids (~1.4x slower at batch 32: benchmarks/walk16.py)
WALK_BYTES = 8 << 20
#: target bytes of one tile's int16 sums (and int8 im2col where one is built), kept in L2
TILE_BYTES = 256 * 1024


# ------------------------------------------------------------------------------ +-2 planes


@njit(cache=True)
def _sign_planes(x, ph, pw, c0, c1, mode, t, S):  # pragma: no cover - numba
    """Channels [c0, c1): S[c, (b*Hp + h+ph)*Wp + w+pw] = 2a and S[C+c, same] = -2a (int8) with
    a = +-1 the channel's rule on x[b, c, h, w] (sign: GE with t = 0). The padding is pre-filled
    (-2 / +2)."""
    N, C, H, W = x.shape
    Hp = H + 2 * ph
    Wp = W + 2 * pw
    for cc in range(c1 - c0):
        c = c0 + cc
        md = mode[c]
        tc = t[c]
        for b in range(N):
            for h in range(H):
                base = (b * Hp + h + ph) * Wp + pw
                src = x[b, c, h]
                dp = S[c, base:]
                dn = S[C + c, base:]
                for w in range(W):
                    xv = src[w]
                    if md == GE:
                        bit = xv >= tc
                    elif md == LE:
                        bit = xv <= tc
                    else:
                        bit = md == CONST1 and xv == xv
                    v = np.int8(4) * np.int8(bit) - np.int8(2)
                    dp[w] = v
                    dn[w] = -v


@njit(parallel=True, cache=True)
def _sign_par(x, ph, pw, nchunks, mode, t, S):  # pragma: no cover - numba
    C = x.shape[1]
    for ch in prange(nchunks):
        _sign_planes(x, ph, pw, ch * C // nchunks, (ch + 1) * C // nchunks, mode, t, S)


def signed_planes(x: np.ndarray, padding: tuple[int, int], tail: int, nthreads: int = 1, rule=None):
    """int8 ``[2C, N*Hp*Wp + tail]``: row c is the padded plane of channel c, the batch stacked
    along the height, holding 2*a (a = sign(x), or the float ``rule`` (mode, t); padding -1), row
    C+c holds -2*a."""
    n, c, h, w = x.shape
    ph, pw = padding
    mode, t = sign_rule(c) if rule is None else rule
    mode = np.ascontiguousarray(mode, dtype=np.int8)
    t = np.ascontiguousarray(t, dtype=np.float32)
    S = np.empty((2 * c, n * (h + 2 * ph) * (w + 2 * pw) + tail), dtype=np.int8)
    S[:c] = -2
    S[c:] = 2
    if x.size:
        if nthreads > 1 and c > 1:
            _sign_par(x, ph, pw, min(2 * nthreads, c), mode, t, S)
        else:
            _sign_planes(x, ph, pw, 0, c, mode, t, S)
    return S


# ------------------------------------------------------------------------------ one tile


@njit(cache=True, inline="always")
def _tile_row(v, direct, Hp, Ho):  # pragma: no cover - numba
    """(image, output row) of tile row v: virtual rows of the batch stacked along the height
    (direct, Hp per image; output row >= Ho is junk) or rows of the flattened (batch, Ho)."""
    rows = Hp if direct else Ho
    b = v // rows
    return b, v - b * rows


@njit(cache=True)
def _tile(
    S, D, dense_idx, ch_j, ch_p, ch_neg, ch_ptr, d_ci, d_ky, d_kx, d_pos, n, geom, Hp,
    Wp, Ho, Wo, direct, tile, rows_per_tile, X, O, out,
):  # fmt: skip  # pragma: no cover - numba
    """One tile of output rows.

    direct (stride 1): virtual rows v of the batch stacked along the height (row v = image
    v // Hp, output row v % Hp, junk when >= Ho), Wp positions each (junk when wo >= Wo); the
    +-2 input of tap (ci, ky, kx) at virtual position q is S[ci, v0*Wp + q + ky*dh*Wp + kx*dw],
    so no im2col is built. Otherwise rows of the flattened (batch, Ho) index with Wo positions
    each and an int8 im2col X[k (+K for -2a), q] built from S.
    """
    kh, kw, sh, sw, dh, dw = geom
    N = out.shape[0]
    C = S.shape[0] // 2
    K = C * kh * kw
    if direct:
        vtot = (N - 1) * Hp + Ho
        width = Wp
    else:
        vtot = N * Ho
        width = Wo
    v0 = tile * rows_per_tile
    nrows = min(rows_per_tile, vtot - v0)
    Pt = nrows * width
    # 1. dense channels: their XNOR-popcount sums D[b, d, ho*Wo + wo] (computed for the whole
    #    layer by the tiled XNOR kernel) copied into the tile
    nD = dense_idx.shape[0]
    Wu = np.uint64(Wo)
    for r in range(nrows):
        b, ho = _tile_row(v0 + r, direct, Hp, Ho)
        if ho >= Ho:
            continue
        so = np.uint64(ho * Wo)
        do = np.uint64(r * width)
        for d in range(nD):
            od = O[dense_idx[d]]
            dd = D[b, d]
            for wo in range(Wu):
                od[do + wo] = dd[so + wo]
    # 2. int8 im2col (strided layers only)
    if not direct:
        for r in range(nrows):
            b, ho = _tile_row(v0 + r, False, Hp, Ho)
            for ci in range(C):
                for ky in range(kh):
                    base = (b * Hp + ho * sh + ky * dh) * Wp
                    for kx in range(kw):
                        k = (ci * kh + ky) * kw + kx
                        xr = X[k, r * Wo :]
                        sr = S[ci, base + kx * dw :]
                        for wo in range(Wo):
                            xr[wo] = sr[wo * sw]
        for k in range(K):
            xr = X[k]
            xn = X[K + k]
            for q in range(Pt):
                xn[q] = -xr[q]
        src = X
    else:
        src = S
    # 3. children, parents first: O[j] = +-O[parent] + sum over D_j of (2 w_jk a_k), 4 taps/pass.
    #    Taps are read from the flat array at unsigned offsets (no sub-array view per tap, no
    #    negative-index wrap-around check): this is what vectorises with short position runs.
    dhw = dh * Wp
    Sf = src.reshape(-1)
    ncol = src.shape[1]
    Ptu = np.uint64(Pt)
    for c in range(ch_j.shape[0]):
        oj = O[ch_j[c]]
        op = O[ch_p[c]]
        if ch_neg[c]:
            for q in range(Ptu):
                oj[q] = -op[q]
        else:
            for q in range(Ptu):
                oj[q] = op[q]
        t0 = ch_ptr[c]
        cnt = ch_ptr[c + 1] - t0
        t = 0
        while t < cnt:
            g = min(4, cnt - t)
            a0 = a1 = a2 = a3 = np.uint64(0)
            for u in range(g):
                tt = t0 + t + u
                if direct:
                    row = d_ci[tt] + (0 if d_pos[tt] else C)
                    a = np.uint64(row * ncol + v0 * Wp + d_ky[tt] * dhw + d_kx[tt] * dw)
                else:
                    row = (d_ci[tt] * kh + d_ky[tt]) * kw + d_kx[tt] + (0 if d_pos[tt] else K)
                    a = np.uint64(row * ncol)
                if u == 0:
                    a0 = a
                elif u == 1:
                    a1 = a
                elif u == 2:
                    a2 = a
                else:
                    a3 = a
            if g == 4:
                for q in range(Ptu):
                    oj[q] += np.int8(
                        np.int8(Sf[a0 + q] + Sf[a1 + q]) + np.int8(Sf[a2 + q] + Sf[a3 + q])
                    )
            elif g == 3:
                for q in range(Ptu):
                    oj[q] += np.int8(Sf[a0 + q] + Sf[a1 + q] + Sf[a2 + q])
            elif g == 2:
                for q in range(Ptu):
                    oj[q] += np.int8(Sf[a0 + q] + Sf[a1 + q])
            else:
                for q in range(Ptu):
                    oj[q] += Sf[a0 + q]
            t += g
    # 4. write the valid positions into out[N, Cout, Ho*Wo]
    Cout = O.shape[0]
    for r in range(nrows):
        b, ho = _tile_row(v0 + r, direct, Hp, Ho)
        if ho >= Ho:
            continue
        so = np.uint64(r * width)  # unsigned offsets: no wrap-around checks, the copy vectorises
        do = np.uint64(ho * Wo)
        for j in range(Cout):
            ob = out[b, j]
            oj = O[j]
            for wo in range(np.uint64(Wo)):
                ob[do + wo] = oj[so + wo]


@njit(cache=True)
def _tiles(
    S, D, dense_idx, ch_j, ch_p, ch_neg, ch_ptr, d_ci, d_ky, d_kx, d_pos, n, geom, Hp,
    Wp, Ho, Wo, direct, rows_per_tile, t0, t1, X, O, out,
):  # fmt: skip  # pragma: no cover - numba
    """Tiles [t0, t1) with one worker's scratch X (im2col, unused when direct) and O (sums)."""
    for t in range(t1 - t0):
        _tile(
            S, D, dense_idx, ch_j, ch_p, ch_neg, ch_ptr, d_ci, d_ky, d_kx, d_pos, n, geom,
            Hp, Wp, Ho, Wo, direct, t0 + t, rows_per_tile, X, O, out,
        )  # fmt: skip


@njit(parallel=True, cache=True)
def _tiles_par(
    S, D, dense_idx, ch_j, ch_p, ch_neg, ch_ptr, d_ci, d_ky, d_kx, d_pos, n, geom, Hp,
    Wp, Ho, Wo, direct, rows_per_tile, ntiles, Xs, Os, out,
):  # fmt: skip  # pragma: no cover - numba
    """All tiles split over the workers; worker c uses the scratch Xs[c], Os[c]."""
    nchunks = Os.shape[0]
    for ch in prange(nchunks):
        _tiles(
            S, D, dense_idx, ch_j, ch_p, ch_neg, ch_ptr, d_ci, d_ky, d_kx, d_pos, n, geom,
            Hp, Wp, Ho, Wo, direct, rows_per_tile, ch * ntiles // nchunks,
            (ch + 1) * ntiles // nchunks, Xs[ch], Os[ch], out,
        )  # fmt: skip


class _Input:
    """A binary layer's input in the layouts the int kernels read -- channel-packed words and
    +-2 int8 planes -- made once, from floats (sign + pack; a RuledInput's rule instead of sign)
    or from bit planes (a transpose)."""

    def __init__(self, x, padding: tuple[int, int], nthreads: int, pool=None) -> None:
        if isinstance(x, BitPlanes) and (x.geometry.ph, x.geometry.pw) != tuple(padding):
            raise ValueError(f"bit planes padded {x.geometry.ph, x.geometry.pw}, layer {padding}")
        self.x = x
        self.padding = tuple(padding)
        self.nthreads = nthreads
        self.shape = tuple(x.shape)
        self.pool = pool
        self._packed: np.ndarray | None = None
        self._pooled = False

    def packed(self) -> np.ndarray:
        if self._packed is None:
            x = self.x
            if isinstance(x, BitPlanes):
                self._packed = planes_to_packed(x)
            else:
                self._packed = pack_binary_input(x, self.padding, self.nthreads, self.pool)
                self._pooled = self.pool is not None and not isinstance(x, PackedBits)
        return self._packed

    def release(self) -> None:
        """Give the packed words back to the pool they came from."""
        if self._pooled:
            self.pool.give(self._packed)
        self._packed, self._pooled = None, False

    def signed(self, tail: int) -> np.ndarray:
        x = self.x
        if isinstance(x, BitPlanes):
            return planes_to_signed(x, tail)
        if isinstance(x, RuledInput):
            return signed_planes(x.x, self.padding, tail, self.nthreads, (x.mode, x.t))
        if isinstance(x, PackedBits):
            n, c, h, w = x.shape
            hp, wp = h + 2 * x.padding[0], w + 2 * x.padding[1]
            g = PlaneGeometry(n, c, h, w, *x.padding, grid_words(n, hp, wp))
            return planes_to_signed(words_to_planes(x.words, g), tail)
        return signed_planes(x, self.padding, tail, self.nthreads)


class LayerSchedule:
    """Per-layer precomputed data of the "mst" backend.

    ``dense``: channels computed by XNOR-popcount (roots and expensive children), packed weights
    ``wTd`` [kh*kw*CW, len(dense)]; children in tree order with parent, negate flag and CSR
    (ptr, idx, pos) difference lists where ``pos`` is w_jk = +1.
    """

    def __init__(self, layer: BinaryLayerCode, dense_threshold: float = DENSE_THRESHOLD) -> None:
        n = layer.n
        bits = layer.weight_bits()
        cost = np.diff(layer.diff_ptr)
        is_dense = (layer.parent < 0) | (cost > dense_threshold * n)
        self.dense = np.flatnonzero(is_dense).astype(np.int64)
        kh, kw = layer.kernel_size
        cin = layer.cin if layer.kind == "conv2d" else n
        self.wTd = packed_weights(bits[self.dense], cin, kh, kw)
        children = [int(j) for j in layer.order if not is_dense[j]]
        self.ch_j = np.asarray(children, dtype=np.int64)
        self.ch_p = layer.parent[self.ch_j].astype(np.int64)
        self.ch_neg = layer.negate[self.ch_j].astype(np.bool_)
        counts = cost[self.ch_j] if children else np.zeros(0, np.int64)
        self.ch_ptr = np.zeros(len(children) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.ch_ptr[1:])
        idx = [layer.diffs(j) for j in children]
        self.ch_idx = np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64)
        rows = np.repeat(self.ch_j, counts)
        self.ch_pos = bits[rows, self.ch_idx].astype(np.bool_)
        khw = kh * kw
        self.d_ci = self.ch_idx // khw
        self.d_ky = (self.ch_idx % khw) // kw
        self.d_kx = self.ch_idx % kw
        self.acc_dtype = np.int16 if n <= 32767 else np.int32
        self.delta_xnors = int(counts.sum())
        self.dense_xnors = len(self.dense) * n


@register_backend("mst")
class MSTBackend(Backend):
    """Roots dense (XNOR-popcount), children by delta correction along the MST, numba.

    With ``autotune`` (default), the first call of each layer at a given input shape times the
    tree kernel against plain XNOR-popcount of all channels and keeps the faster one for that
    layer and shape (both are exact; ``kernels`` records the choice). The delta kernel wins when
    the tree saves enough work (engine-notes.md: break-even around 7-9% differing taps, and
    short position runs at batch 1 cost more per tap).
    """

    name = "mst"
    autotune = True
    #: the runtime may fuse binary conv -> BN -> [max pool] -> binary conv chains (conv2d_fused)
    fuses = True
    #: the float ops after other binary layers run as one pass (mstc.engine.epilogue)
    fuses_epilogue = True
    #: the runtime may hand binary convs a RuledInput (a BatchNorm before them folded away)
    folds_inputs = True
    #: bit-sliced kernel along the trees (False: every channel a root, the dense ablation)
    sliced_tree = True
    #: kernel of fused layers and of layers fed bit planes: one of PLANE_KERNELS or None (autotune)
    plane_kernel: str | None = None
    #: fuse only layers whose tree saves at least this factor of XNORs: the bit-sliced kernel
    #: costs about as much as XNOR-popcount per tap, so it pays off on regularized layers only
    #: (BENCHMARKS.md: on random weights, 2.1x, fused batch 1 was 1.4x slower than "packed")
    min_fuse_ratio = 4.0

    def __init__(
        self,
        compressed,
        threads: int | None = None,
        *,
        dense_threshold: float = DENSE_THRESHOLD,
        tile_bytes: int = TILE_BYTES,
        autotune: bool | None = None,
        plane_kernel: str | None = None,
    ) -> None:
        super().__init__(compressed, threads)
        self.tile_bytes = tile_bytes
        if autotune is not None:
            self.autotune = autotune
        if plane_kernel is not None:
            if plane_kernel not in PLANE_KERNELS:
                raise ValueError(
                    f"plane_kernel must be one of {PLANE_KERNELS}, got {plane_kernel!r}"
                )
            self.plane_kernel = plane_kernel
        self._sliced_cache: dict[str, SlicedLayer] = {}
        self._emit_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._steps: dict[tuple, object] = {}  # prepared fused layers / walks per input geometry
        #: (layer, input shape, pool, consumer) -> the chosen prepared step, for planes inputs
        self._ready: dict[tuple, object] = {}
        self.schedules = {
            name: LayerSchedule(layer, dense_threshold) for name, layer in compressed.layers.items()
        }
        #: (layer name, input shape) -> "delta" or "xnor"
        self.kernels: dict[tuple[str, tuple[int, ...]], str] = {}
        self._w_full: dict[str, np.ndarray] = {}

    def _full_weights(self, layer: BinaryLayerCode) -> np.ndarray:
        w = self._w_full.get(layer.name)
        if w is None:
            kh, kw = layer.kernel_size
            cin = layer.cin if layer.kind == "conv2d" else layer.n
            w = self._w_full[layer.name] = packed_weights(layer.weight_bits(), cin, kh, kw)
        return w

    def _conv(self, layer: BinaryLayerCode, x) -> np.ndarray:
        """int32 sums by the int kernels; ``x`` float NCHW (checked) or bit planes."""
        sched = self.schedules[layer.name]
        if not isinstance(x, BitPlanes):  # plain XNOR as packed runs it (prepared where it can)
            if len(sched.ch_j) == 0:
                return xnor_layer(layer, x, sched.wTd, self.threads, self.pool)
            if self.kernels.get((layer.name, tuple(x.shape))) == "xnor":
                return xnor_layer(layer, x, self._full_weights(layer), self.threads, self.pool)
        nthreads = _set_threads(self.threads)
        N = x.shape[0]
        kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = conv_geometry(layer, x.shape)
        geom = (kh, kw, sh, sw, dh, dw, ph, pw, Ho, Wo)
        out = empty(self.pool, (N, layer.cout, Ho * Wo), np.int32)
        if out.size == 0:
            return out.reshape(N, layer.cout, Ho, Wo)
        inp = _Input(x, (ph, pw), nthreads, self.pool)
        if len(sched.ch_j) == 0:  # every channel dense (e.g. random weights): plain XNOR
            self._xnor(sched.wTd, layer, inp, geom, out, nthreads)
            inp.release()
            return out.reshape(N, layer.cout, Ho, Wo)
        key = (layer.name, tuple(x.shape))
        kernel = self.kernels.get(key)
        if kernel is None:
            kernel = "delta"
            if self.autotune:
                kernel = self._tune(layer, sched, inp, geom, out, nthreads)
            self.kernels[key] = kernel
        if kernel == "xnor":
            self._xnor(self._full_weights(layer), layer, inp, geom, out, nthreads)
        else:
            self._delta(layer, sched, inp, geom, out, nthreads)
        inp.release()
        return out.reshape(N, layer.cout, Ho, Wo)

    def conv2d_epilogue(self, layer: BinaryLayerCode, x, kernel, shortcut) -> np.ndarray:
        """float32 ``kernel(conv2d(layer, x), shortcut)`` (an
        :class:`~mstc.engine.epilogue.EpilogueKernel` that ``fuses_into_xnor``): inside the XNOR
        kernel where this layer runs XNOR on every channel, else after the tree kernel."""
        x = check_input(layer, x)
        sched = self.schedules[layer.name]
        xnor = len(sched.ch_j) == 0 or self.kernels.get((layer.name, tuple(x.shape))) == "xnor"
        if not xnor:
            s = self._conv(layer, x)
            out = kernel(
                s, shortcut, _set_threads(self.threads), out=empty(self.pool, s.shape, np.float32)
            )
            if self.pool is not None:
                self.pool.give(s)
            return out
        wT = sched.wTd if len(sched.ch_j) == 0 else self._full_weights(layer)
        return xnor_layer(layer, x, wT, self.threads, self.pool, (kernel, shortcut))

    def prepared_xnor(self, layer: BinaryLayerCode, shape: tuple[int, ...], rule=None):
        """A :class:`~mstc.engine.packed.PreparedXnor` for a layer that runs XNOR on every channel
        at float inputs of ``shape`` on one thread (as :meth:`conv2d_epilogue`); None while the
        kernel for this shape is not chosen yet, False where it is the tree kernel (or more
        threads, or the table-lookup kernel)."""
        if _set_threads(self.threads) != 1:
            return False
        sched = self.schedules[layer.name]
        if len(sched.ch_j) == 0:
            wT = sched.wTd
        else:
            kernel = self.kernels.get((layer.name, tuple(shape)))
            if kernel != "xnor":
                return None if kernel is None else False
            wT = self._full_weights(layer)
        return prepare_xnor(layer, shape, wT, rule) or False

    def _tune(self, layer, sched, inp, geom, out, nthreads) -> str:
        return fastest(
            {
                "delta": lambda: self._delta(layer, sched, inp, geom, out, nthreads),
                "xnor": lambda: self._xnor(
                    self._full_weights(layer), layer, inp, geom, out, nthreads
                ),
            },
            nthreads,
        )

    def _xnor(self, wT, layer, inp: _Input, geom, out, nthreads) -> None:
        kh, kw, sh, sw, dh, dw, ph, pw, Ho, Wo = geom
        xnor_conv(inp.packed(), wT, layer.n, (kh, kw, sh, sw, dh, dw), Ho, Wo, out, nthreads)

    def _delta(self, layer, sched, inp: _Input, geom, out, nthreads) -> None:
        kh, kw, sh, sw, dh, dw, ph, pw, Ho, Wo = geom
        N, C, H, W = inp.shape
        Hp, Wp = H + 2 * ph, W + 2 * pw
        xp = inp.packed()
        S = inp.signed(kw * dw)
        direct = sh == 1 and sw == 1
        cout, n = layer.cout, layer.n
        if direct:
            vtot, width = (N - 1) * Hp + Ho, Wp
            pt = self.tile_bytes // (2 * cout)
        else:
            vtot, width = N * Ho, Wo
            pt = self.tile_bytes // (2 * cout + 2 * n)
        rows = max(1, pt // width, -(-64 // width))  # at least 64 positions per tile
        rows = min(rows, -(-vtot // nthreads))  # at least one tile per worker
        ntiles = -(-vtot // rows)
        nchunks = max(1, min(nthreads, ntiles))
        X = np.empty((nchunks, 2 * n if not direct else 1, rows * width), dtype=np.int8)
        O = np.empty((nchunks, cout, rows * width), dtype=sched.acc_dtype)
        D = np.empty((N, len(sched.dense), Ho * Wo), dtype=np.int32)
        if D.size:
            xnor_conv(xp, sched.wTd, n, (kh, kw, sh, sw, dh, dw), Ho, Wo, D, nthreads)
        args = (
            S, D, sched.dense, sched.ch_j, sched.ch_p, sched.ch_neg, sched.ch_ptr,
            sched.d_ci, sched.d_ky, sched.d_kx, sched.ch_pos, n, (kh, kw, sh, sw, dh, dw), Hp, Wp,
            Ho, Wo, direct, rows,
        )  # fmt: skip
        if nchunks > 1:
            _tiles_par(*args, ntiles, X, O, out)
        else:
            _tiles(*args, 0, ntiles, X[0], O[0], out)

    # -------------------------------------------------------------- bit planes and fusion

    def can_fuse(self, layer: BinaryLayerCode) -> bool:
        """Whether the runtime should hand this layer bit planes / let it produce them: a
        stride-1 conv whose tree saves at least ``min_fuse_ratio`` of its XNORs."""
        return sliceable(layer) and layer.dense_xnors >= self.min_fuse_ratio * max(1, layer.xnors)

    def _sliced(self, layer: BinaryLayerCode) -> SlicedLayer:
        st = self._sliced_cache.get(layer.name)
        if st is None:
            st = self._sliced_cache[layer.name] = SlicedLayer(layer, tree=self.sliced_tree)
        return st

    def _as_planes(self, layer: BinaryLayerCode, x) -> BitPlanes:
        if isinstance(x, BitPlanes):
            return x
        x = check_input(layer, x)
        g = plane_geometry(layer, x.shape[0], x.shape[2], x.shape[3])
        if isinstance(x, RuledInput):
            return pack_planes(x.x, g, (x.mode, x.t))
        if isinstance(x, PackedBits):
            return words_to_planes(x.words, g)
        return pack_planes(x, g)

    def _choose(self, key, candidates: dict) -> str:
        """The plane kernel for ``key`` among ``candidates`` (name -> callable): fixed, or timed
        once (all are exact). Each timed call gives its arrays back to the pool, as a pass does:
        without, every call allocated fresh (page-faulting) memory, unlike the pass the choice
        is for. A fixed ``plane_kernel`` that does not apply here ("walk16" on a large grid)
        falls back to "sliced"."""
        kernel = self.kernels.get(key)
        if kernel is None:
            if self.plane_kernel is not None:
                kernel = self.plane_kernel if self.plane_kernel in candidates else "sliced"
            else:
                timed = {name: self._recycled(run) for name, run in candidates.items()}
                kernel = fastest(timed, _set_threads(self.threads))
            self.kernels[key] = kernel
        return kernel

    def _walks(self, layer: BinaryLayerCode, g: PlaneGeometry) -> bool:
        """Whether the int16 walk (:mod:`mstc.engine.walk16`) is a candidate: exact for the
        layer, and its expanded input at most ``WALK_BYTES``."""
        return walk16.fits(self._sliced(layer)) and g.c * g.words * 64 <= WALK_BYTES

    def _recycled(self, run):
        """``run``, giving the arrays it returns (alone or in a tuple) back to the pool."""

        def timed():
            out = run()
            if self.pool is not None:
                for a in out if isinstance(out, tuple) else (out,):
                    if isinstance(a, np.ndarray):
                        self.pool.give(a)

        return timed

    def conv2d_fused(
        self,
        layer: BinaryLayerCode,
        x,
        rule: tuple[np.ndarray, np.ndarray],
        pool: bool,
        consumer: BinaryLayerCode,
        *,
        want_sums: bool = False,
    ) -> tuple[BitPlanes, np.ndarray | None]:
        """Binary conv with BN + sign folded into ``rule`` (and an optional 2x2 max pool): the
        next layer's input planes, plus the integer sums if ``want_sums``."""
        if type(x) is BitPlanes and not want_sums:
            ready = self._ready.get((layer.name, x.shape, pool, consumer.name))
            if ready is not None:
                return ready(x), None  # the chosen step, prepared (batch 1: Python costs ~4 us)
        shape = tuple(x.shape)
        key = (layer.name, "fused", shape)
        runs = {
            "sliced": lambda: self._fused_sliced(layer, x, rule, pool, consumer, want_sums),
            "int": lambda: self._fused_int(layer, x, rule, pool, consumer, want_sums),
        }
        g = (
            x.geometry
            if isinstance(x, BitPlanes)
            else plane_geometry(layer, *shape[:1], *shape[2:])
        )
        if self._walks(layer, g):
            runs["walk16"] = lambda: self._fused_walk(layer, x, rule, pool, consumer, want_sums)
        tuned = key not in self.kernels
        kernel = self._choose(key, runs)
        if tuned:  # the prepared steps of the kernels not chosen (scratch of up to 8 MiB) go
            nthreads = _set_threads(self.threads)
            for other in {"sliced", "walk16"} - {kernel}:
                self._steps.pop((layer.name, g, pool, consumer.name, nthreads, other), None)
        if kernel != "int" and type(x) is BitPlanes:
            step = self._step_for(kernel, layer, g, rule, pool, consumer)
            self._ready[(layer.name, x.shape, pool, consumer.name)] = step
        return runs[kernel]()

    def _step_for(self, kernel: str, layer, g: PlaneGeometry, rule, pool: bool, consumer):
        """The prepared fused layer (:class:`FusedStep` or :class:`walk16.FusedWalk`) at input
        geometry ``g``, made once."""
        nthreads = _set_threads(self.threads)
        key = (layer.name, g, pool, consumer.name, nthreads, kernel)
        step = self._steps.get(key)
        if step is None:
            st = self._sliced(layer)
            ho, wo = output_hw(layer, g)
            h2, w2 = (ho // 2, wo // 2) if pool else (ho, wo)
            nxt = plane_geometry(consumer, g.n, h2, w2)
            if kernel == "walk16":
                step = walk16.FusedWalk(st, g, rule, pool, nxt, nthreads)
            else:
                step = FusedStep(st, g, self._emit_rule(layer, rule), pool, nxt, nthreads)
            self._steps[key] = step
        return step

    def _emit_rule(self, layer, rule):
        emit = self._emit_cache.get(layer.name)
        if emit is None:
            emit = self._emit_cache[layer.name] = self._sliced(layer).emit_rule(*rule)
        return emit

    def _fused_sliced(self, layer, x, rule, pool, consumer, want_sums):
        planes = self._as_planes(layer, x)
        g = planes.geometry
        step = self._step_for("sliced", layer, g, rule, pool, consumer)
        if not want_sums:
            return step(planes), None
        st = self._sliced(layer)
        nthreads = _set_threads(self.threads)
        OB, VS = run_layer(st, planes, emit=self._emit_rule(layer, rule), want_planes=True,
                           nthreads=nthreads)  # fmt: skip
        return emit_planes(st, OB, g, pool, step.next_geometry), unpack_sums(st, VS, g)

    def _fused_walk(self, layer, x, rule, pool, consumer, want_sums):
        planes = self._as_planes(layer, x)
        step = self._step_for("walk16", layer, planes.geometry, rule, pool, consumer)
        if not want_sums:
            return step(planes), None
        return step.with_sums(planes, self.pool)

    def _fused_int(self, layer, x, rule, pool, consumer, want_sums):
        s = self._conv(layer, x if isinstance(x, BitPlanes) else check_input(layer, x))
        n, _, ho, wo = s.shape
        h2, w2 = (ho // 2, wo // 2) if pool else (ho, wo)
        out = rule_planes(s, layer.n, rule, pool, plane_geometry(consumer, n, h2, w2))
        if want_sums:
            return out, s
        if self.pool is not None:
            self.pool.give(s)
        return out, None

    def _walk_for(self, layer: BinaryLayerCode, g: PlaneGeometry) -> walk16.Walk16:
        nthreads = _set_threads(self.threads)
        key = (layer.name, g, nthreads, "walk16 sums")
        walk = self._steps.get(key)
        if walk is None:
            walk = self._steps[key] = walk16.Walk16(self._sliced(layer), g, None, nthreads)
        return walk

    def _walk_sums(self, layer: BinaryLayerCode, x: BitPlanes) -> np.ndarray:
        return self._walk_for(layer, x.geometry)(x, sums=True, pool=self.pool)

    def _planes_sums(self, layer: BinaryLayerCode, x: BitPlanes) -> np.ndarray:
        nthreads = _set_threads(self.threads)
        return layer_sums(self._sliced(layer), x, nthreads=nthreads, pool=self.pool)

    def conv2d(self, layer: BinaryLayerCode, x) -> np.ndarray:
        if isinstance(x, BitPlanes):
            ready = self._ready.get((layer.name, x.shape))
            if ready is not None:
                return ready(x, sums=True, pool=self.pool)
            if not sliceable(layer):
                raise ValueError(f"layer {layer.name}: cannot consume bit planes")
            key = (layer.name, "planes", x.shape)
            runs = {
                "sliced": lambda: self._planes_sums(layer, x),
                "int": lambda: self._conv(layer, x),
            }
            if self._walks(layer, x.geometry):
                runs["walk16"] = lambda: self._walk_sums(layer, x)
            tuned = key not in self.kernels
            kernel = self._choose(key, runs)
            if kernel == "walk16":
                self._ready[(layer.name, x.shape)] = self._walk_for(layer, x.geometry)
            elif tuned:  # the walk's scratch goes
                nthreads = _set_threads(self.threads)
                self._steps.pop((layer.name, x.geometry, nthreads, "walk16 sums"), None)
            return runs[kernel]()
        return self._conv(layer, check_input(layer, x))

    def linear(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        return self._conv(layer, linear_as_conv(layer, x)).reshape(x.shape[0], layer.cout)


@register_backend("sliced-dense")
class SlicedDenseBackend(MSTBackend):
    """Ablation of "mst": the same fused bit-sliced kernel with every channel a root (no tree).

    It separates what the MST saves from what fusing BN + sign into the kernel saves."""

    name = "sliced-dense"
    sliced_tree = False
    plane_kernel = "sliced"
    min_fuse_ratio = 0.0  # fuse whatever "mst" could fuse, and more
