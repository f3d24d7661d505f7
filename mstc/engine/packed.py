"""The "packed" backend: dense bit-packed XNOR-popcount with numba (engine-notes.md layouts 1-2).

Activations are binarised and packed in one pass (:mod:`mstc.engine.binarize`), 64 input channels
per uint64 word, into a padded channel-last array ``[N, H+2ph, W+2pw, ceil(C/64)]``; padding is bit
0 (= -1), so no mask is needed, and unused high bits are 0 in both activations and weights.
Weights are packed in the same (ky, kx, channel) order, concatenated across taps, as
``[words, Cout]``. The XNOR kernel gathers
the patches of a block of output rows into a tile ``[words, positions]`` (im2col on bits) and runs
its innermost loop over positions, 4 output channels per pass, so the popcounts vectorise whatever
the channel count. For output channel j at one position, with patch words A and weight words W_j:

    y_j = n - 2 * sum_t popcount(A_t XOR W_jt)            (n = Cin*kh*kw)

On AVX2 CPUs without AVX-512 VPOPCNTDQ, layers with enough work run the table-lookup kernel of
:mod:`mstc.engine.lut` instead (``XNOR_KERNEL``; same sums, same epilogue).

Oracle: the "dense" and "reference" backends (:mod:`mstc.engine.reference`).
"""

from __future__ import annotations

import collections
import os
import weakref

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from mstc.bitpack import pack_words
from mstc.engine import lut
from mstc.engine.backend import Backend, register_backend
from mstc.engine.binarize import _pack_one, pack_binary_input, sign_rule
from mstc.engine.buffers import empty
from mstc.engine.epilogue import xnor_epilogue_row
from mstc.engine.fold import PackedBits, RuledInput
from mstc.format import BinaryLayerCode

_FLOAT32 = np.dtype(np.float32)
#: words of patch tile (patch words x positions) the XNOR kernel gathers per unit of output rows
TILE_WORDS = 4096


@intrinsic
def popc(typingctx, x):
    """popcount of a uint64 (LLVM ctpop: popcnt / vpopcntq)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def packed_weights(bits: np.ndarray, cin: int, kh: int, kw: int) -> np.ndarray:
    """{0,1} weights (Cout, n) in PyTorch tap order -> uint64 ``[ceil(n/64), Cout]``.

    Bits in patch order (ky, kx, ci), concatenated across taps (so Cin < 64 wastes no bits)."""
    cout = bits.shape[0]
    b = bits.reshape(cout, cin, kh, kw).transpose(0, 2, 3, 1)  # (Cout, kh, kw, Cin)
    words = pack_words(np.ascontiguousarray(b).reshape(cout, -1))  # (Cout, ceil(n/64))
    return np.ascontiguousarray(words.T)


# ------------------------------------------------------------------------------- XNOR kernel


@njit(cache=True, inline="always")
def _popc4(tile, wT, P, j0, acc):  # pragma: no cover - numba
    """acc[q, p] = sum_t popcount(tile[t, p] XOR wT[t, j0 + q]) for q < 4, p < P: patch words
    two at a time (one read-modify-write of acc per two popcounts), an odd first word alone."""
    KW = tile.shape[0]
    Pu = np.uint64(P)  # unsigned loop index: no wrap-around checks, the loops vectorise
    t = KW % 2
    if t:
        w0 = wT[0, j0]
        w1 = wT[0, j0 + 1]
        w2 = wT[0, j0 + 2]
        w3 = wT[0, j0 + 3]
        for p in range(Pu):
            x = tile[0, p]
            acc[0, p] = popc(x ^ w0)
            acc[1, p] = popc(x ^ w1)
            acc[2, p] = popc(x ^ w2)
            acc[3, p] = popc(x ^ w3)
    else:
        for q in range(4):
            for p in range(Pu):
                acc[q, p] = 0
    while t < KW:
        a0 = wT[t, j0]
        a1 = wT[t, j0 + 1]
        a2 = wT[t, j0 + 2]
        a3 = wT[t, j0 + 3]
        b0 = wT[t + 1, j0]
        b1 = wT[t + 1, j0 + 1]
        b2 = wT[t + 1, j0 + 2]
        b3 = wT[t + 1, j0 + 3]
        for p in range(Pu):
            x = tile[t, p]
            y = tile[t + 1, p]
            acc[0, p] += popc(x ^ a0) + popc(y ^ b0)
            acc[1, p] += popc(x ^ a1) + popc(y ^ b1)
            acc[2, p] += popc(x ^ a2) + popc(y ^ b2)
            acc[3, p] += popc(x ^ a3) + popc(y ^ b3)
        t += 2


@njit(cache=True, inline="always")
def _gather_tile(
    xf, Hp, Wp, CW, C, kh, kw, sh, sw, dh, dw, Ho, Wo, g0, nr, tile
):  # pragma: no cover
    """tile[t, r*Wo + wo] = word t of the patch of output (row g0 + r of the flattened (batch,
    Ho), wo): tap (ky, kx), channel word cw lands at patch bit (ky*kw + kx)*C + 64*cw."""
    KW = tile.shape[0]
    Pu = np.uint64(nr * Wo)
    Wu = np.uint64(Wo)
    step = np.uint64(sw * CW)
    for t in range(KW):
        for p in range(Pu):
            tile[t, p] = 0
    for ky in range(kh):
        for kx in range(kw):
            for cw in range(CW):
                o = (ky * kw + kx) * C + 64 * cw
                t = o >> 6
                s = np.uint64(o & 63)
                spill = s > 0 and t + 1 < KW
                cs = np.uint64(64) - s
                dst = tile[t]
                nxt = tile[t + 1] if spill else tile[t]
                for r in range(nr):
                    b = (g0 + r) // Ho
                    hh = (g0 + r - b * Ho) * sh + ky * dh
                    q = np.uint64(r * Wo)
                    base = np.uint64(((b * Hp + hh) * Wp + kx * dw) * CW + cw)
                    if step == 1:  # contiguous source: a separate loop LLVM vectorises
                        if spill:
                            for wo in range(Wu):
                                word = xf[base + wo]
                                dst[q + wo] |= word << s
                                nxt[q + wo] |= word >> cs
                        else:
                            for wo in range(Wu):
                                dst[q + wo] |= xf[base + wo] << s
                    elif spill:
                        for wo in range(Wu):
                            word = xf[base + wo * step]
                            dst[q + wo] |= word << s
                            nxt[q + wo] |= word >> cs
                    else:
                        for wo in range(Wu):
                            dst[q + wo] |= xf[base + wo * step] << s


@njit(cache=True)
def _xnor_rows(xp, wT, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, u0, u1, out, epi):  # pragma: no cover
    """Units [u0, u1) of R output rows each; rows are flattened over (batch, Ho).

    Per unit the patches of its P = rows * Wo positions are gathered into a tile [KW, P]
    (word t of every patch contiguous over positions, the packed_weights order), then for 4
    output channels j at a time ``acc[j, p] += popcount(tile[t, p] XOR wT[t, j])`` runs over the
    positions (vectorised with vpopcnt), and out[b, j, ho*Wo + wo] = n - 2*acc, written in runs of
    whole rows of one image (contiguous in both). Patches of 3 or 4 words (the caller pads
    shorter ones with zero words) skip the accumulator: each channel's popcounts go straight to
    out.

    ``epi``: None, or (coef, sbn, alpha, shortcut) of a Bi-Real epilogue (:func:`xnor_epilogue_row`), whose
    float32 result is written to ``out`` instead of the sums (which then never reach memory)."""
    KW = wT.shape[0]
    Cout = wT.shape[1]
    Hp, Wp, CW = xp.shape[1], xp.shape[2], xp.shape[3]
    xf = xp.reshape(-1)  # flat, unsigned indices: the gather loops vectorise
    C = n // (kh * kw)
    G = out.shape[0] * Ho
    tile = np.empty((KW, R * Wo), np.uint64)
    acc = np.empty((4, R * Wo), np.uint64)
    cnt = np.empty((1, R * Wo if KW <= 4 and epi is not None else 0), np.int32)  # 8-wide epilogue
    for u in range(u0, u1):
        g0 = u * R
        nr = min(R, G - g0)
        P = nr * Wo
        _gather_tile(xf, Hp, Wp, CW, C, kh, kw, sh, sw, dh, dw, Ho, Wo, g0, nr, tile)
        for j0 in range(0, Cout, 1 if KW <= 4 else 4):
            nj = 1 if KW <= 4 else min(4, Cout - j0)
            if KW > 4:
                if nj == 4:
                    _popc4(tile, wT, P, j0, acc)
                else:
                    for q in range(nj):
                        for p in range(P):
                            acc[q, p] = 0
                    for t in range(KW):
                        for q in range(nj):
                            wq = wT[t, j0 + q]
                            for p in range(P):
                                acc[q, p] += popc(tile[t, p] ^ wq)
            r = 0
            while r < nr:  # runs of whole rows of one image
                b = (g0 + r) // Ho
                ho = g0 + r - b * Ho
                seg = min(nr - r, Ho - ho)
                q0 = np.uint64(r * Wo)
                obase = np.uint64(ho * Wo)
                L = np.uint64(seg * Wo)
                if KW == 3:  # n <= 192 (16 channels 3x3): three popcounts, straight out
                    w0, w1, w2 = wT[0, j0], wT[1, j0], wT[2, j0]
                    dst = out[b, j0]
                    if epi is None:
                        for p in range(L):
                            m = popc(tile[0, q0 + p] ^ w0) + popc(tile[1, q0 + p] ^ w1)
                            m += popc(tile[2, q0 + p] ^ w2)
                            dst[obase + p] = n - 2 * np.int64(m)
                    else:
                        for p in range(L):
                            m = popc(tile[0, q0 + p] ^ w0) + popc(tile[1, q0 + p] ^ w1)
                            cnt[0, q0 + p] = np.int32(m + popc(tile[2, q0 + p] ^ w2))
                        xnor_epilogue_row(cnt, 0, q0, n, epi, b, j0, dst, obase, L)
                elif KW == 4:
                    w0, w1, w2, w3 = wT[0, j0], wT[1, j0], wT[2, j0], wT[3, j0]
                    dst = out[b, j0]
                    if epi is None:
                        for p in range(L):
                            m = popc(tile[0, q0 + p] ^ w0) + popc(tile[1, q0 + p] ^ w1)
                            m += popc(tile[2, q0 + p] ^ w2) + popc(tile[3, q0 + p] ^ w3)
                            dst[obase + p] = n - 2 * np.int64(m)
                    else:  # the counts as int32 into cnt (in L1), then the epilogue's loop
                        for p in range(L):
                            m = popc(tile[0, q0 + p] ^ w0) + popc(tile[1, q0 + p] ^ w1)
                            m += popc(tile[2, q0 + p] ^ w2) + popc(tile[3, q0 + p] ^ w3)
                            cnt[0, q0 + p] = np.int32(m)
                        xnor_epilogue_row(cnt, 0, q0, n, epi, b, j0, dst, obase, L)
                else:
                    for q in range(nj):
                        dst = out[b, j0 + q]
                        if epi is None:
                            for p in range(L):
                                dst[obase + p] = n - 2 * np.int64(acc[q, q0 + p])
                        else:
                            xnor_epilogue_row(acc, q, q0, n, epi, b, j0 + q, dst, obase, L)
                r += seg


@njit(cache=True)
def _pack_xnor(
    x, ph, pw, mode, t, xp, wT, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, units, out, epi
):  # pragma: no cover
    """One thread, one call: a float input packed into ``xp`` (:func:`mstc.engine.binarize.packed_input`),
    then every unit of :func:`_xnor_rows`."""
    _pack_one(x, ph, pw, mode, t, xp)
    _xnor_rows(xp, wT, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, 0, units, out, epi)


@njit(parallel=True, cache=True)
def _xnor_par(xp, wT, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, nchunks, out, epi):  # pragma: no cover
    units = (out.shape[0] * Ho + R - 1) // R
    for ch in prange(nchunks):
        u0 = ch * units // nchunks
        u1 = (ch + 1) * units // nchunks
        _xnor_rows(xp, wT, n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, u0, u1, out, epi)


def pad_patch_words(wT: np.ndarray) -> np.ndarray:
    """Packed weights ``[words, Cout]`` of patches shorter than 3 words padded with zero words
    (popcount 0 against the tile's zero rows): they take the direct 3-word path of
    :func:`xnor_conv`. Returned as is otherwise."""
    if wT.shape[0] >= 3:
        return wT
    return np.concatenate([wT, np.zeros((3 - wT.shape[0], wT.shape[1]), np.uint64)])


#: the XNOR kernel: "auto" (table lookups, :mod:`mstc.engine.lut`, where the CPU has AVX2 but no
#: vector popcount, the layer has >= LUT_MIN_WORK work and the lookup kernel fills >= LUT_MIN_LANES
#: of its lanes; else popcounts), "lut" (table lookups wherever n <= lut.MAX_TAPS) or "popcount"
XNOR_KERNEL = os.environ.get("MSTC_XNOR", "auto")
_LUT_CPU = lut.available() and not lut.has_vector_popcount()
_plans: collections.OrderedDict[tuple, lut.LutPlan] = collections.OrderedDict()
_tables: dict[int, tuple[weakref.ref, np.ndarray]] = {}


#: the least work (output positions x Cout x n) the "auto" rule gives the lookup kernel: below it
#: (resnet20 at batch 1) its two extra passes and calls cost more than its counting saves
LUT_MIN_WORK = 8 << 20
#: the least share of its 64-position chunks' lanes the lookup kernel must fill under "auto"
#: (7x7 and 14x14 maps fill 77% and ran slower than popcounts at batch 32)
LUT_MIN_LANES = 0.85


def _lookup_kernel(xshape, wT, n, geometry, Ho, Wo):
    """(plan, tables) of the table-lookup kernel for a call on packed words of ``xshape``, or
    None for popcounts."""
    if XNOR_KERNEL == "popcount" or n > lut.MAX_TAPS:
        return None
    if XNOR_KERNEL == "auto" and (
        not _LUT_CPU or xshape[0] * Ho * Wo * wT.shape[1] * n < LUT_MIN_WORK
    ):
        return None
    if not lut.available():
        raise RuntimeError("the table-lookup XNOR kernel needs AVX2")
    kh, kw = geometry[0], geometry[1]
    cin = n // (kh * kw)
    key = (xshape, cin, geometry, Ho, Wo)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = lut.LutPlan(xshape, cin, geometry, Ho, Wo)
        if len(_plans) > 64:
            _plans.popitem(last=False)
    if XNOR_KERNEL == "auto" and plan.utilisation < LUT_MIN_LANES:
        return None
    entry = _tables.get(id(wT))
    if entry is None or entry[0]() is not wT:
        for k in [k for k, (r, _) in _tables.items() if r() is None]:
            del _tables[k]
        entry = _tables[id(wT)] = (weakref.ref(wT), lut.lut_tables(wT, cin, kh, kw))
    return plan, entry[1]


def xnor_conv(
    xp: np.ndarray,
    wT: np.ndarray,
    n: int,
    geometry: tuple[int, int, int, int, int, int],
    Ho: int,
    Wo: int,
    out: np.ndarray,
    nthreads: int = 1,
    epilogue: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Dense XNOR-popcount conv into ``out`` int32 [N, Cout, Ho*Wo]:
    ``out[b, j, p] = n - 2 * sum_t popcount(patch_t(b, p) XOR wT[t, j])``.

    ``xp`` from :func:`mstc.engine.binarize.packed_input`, ``wT`` from :func:`packed_weights`, geometry
    (kh, kw, sh, sw, dh, dw). One thread runs serially (no thread pool is started).
    ``epilogue``: (coef, sbn, alpha, shortcut [N, Cout, Ho*Wo]) of
    :meth:`mstc.engine.epilogue.EpilogueKernel.xnor_args`: ``out`` is then float32 and receives
    the Bi-Real epilogue of the sums, computed as they are counted."""
    if epilogue is not None and epilogue[3].shape != out.shape:
        raise ValueError(f"shortcut of shape {epilogue[3].shape}, output {out.shape}")
    chosen = _lookup_kernel(xp.shape, wT, n, tuple(geometry), Ho, Wo)
    if chosen is not None:
        plan, tables = chosen
        plan.run(xp, tables, n, out, nthreads, epilogue)
        return
    wT = pad_patch_words(wT)
    KW = wT.shape[0]
    R = max(1, (TILE_WORDS // KW) // Wo)  # rows per unit: the [KW, R*Wo] tile stays in L1/L2
    units = (out.shape[0] * Ho + R - 1) // R
    if nthreads > 1 and units > 1:
        _xnor_par(xp, wT, n, *geometry, Ho, Wo, R, min(units, 4 * nthreads), out, epilogue)
    else:
        _xnor_rows(xp, wT, n, *geometry, Ho, Wo, R, 0, units, out, epilogue)


def _set_threads(threads: int | None) -> int:
    """The worker count in effect: ``threads`` clamped to numba's pool, or numba's default for
    None. One thread never touches numba's thread pool (its spinning workers stall torch)."""
    if threads is not None and threads <= 1:
        return 1
    if threads is not None:
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    return numba.get_num_threads()


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_geometry(layer: BinaryLayerCode, shape: tuple[int, ...]) -> tuple[int, ...]:
    """(kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo) of a binary layer on an NCHW input shape
    (a linear layer runs as a 1x1 conv on a 1x1 map)."""
    if layer.kind == "linear":
        kh = kw = sh = sw = dh = dw = 1
        ph = pw = 0
    else:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
        )
    H, W = shape[2], shape[3]
    return kh, kw, sh, sw, ph, pw, dh, dw, out_size(H, kh, sh, ph, dh), out_size(W, kw, sw, pw, dw)


def check_input(layer: BinaryLayerCode, x):
    """Validate a float NCHW input of a binary conv (or a :class:`RuledInput`, whose rule must
    have one entry per channel); returns it float32 C-contiguous."""
    if isinstance(x, RuledInput):
        if np.shape(x.mode) != (layer.cin,) or np.shape(x.t) != (layer.cin,):
            raise ValueError(f"layer {layer.name}: input rule for {np.shape(x.mode)} channels")
        return RuledInput(check_input(layer, x.x), x.mode, x.t)
    if isinstance(x, PackedBits):
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), (dh, dw) = layer.padding, layer.kernel_size, layer.dilation
        if c != layer.cin or tuple(x.padding) != (ph, pw):
            raise ValueError(
                f"layer {layer.name}: packed input of {c} channels padded {tuple(x.padding)}, "
                f"expected {layer.cin} padded {(ph, pw)}"
            )
        if (
            x.words.shape != (n, h + 2 * ph, w + 2 * pw, (c + 63) // 64)
            or x.words.dtype != np.uint64
        ):
            raise ValueError(
                f"layer {layer.name}: packed words {x.words.shape} for input {x.shape}"
            )
        if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
            raise ValueError(f"layer {layer.name}: input {h}x{w} smaller than kernel")
        return x
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != layer.cin:
        raise ValueError(
            f"layer {layer.name}: expected input (N, {layer.cin}, H, W), got {tuple(x.shape)}"
        )
    (kh, kw), (ph, pw), (dh, dw) = layer.kernel_size, layer.padding, layer.dilation
    if x.shape[2] + 2 * ph < dh * (kh - 1) + 1 or x.shape[3] + 2 * pw < dw * (kw - 1) + 1:
        raise ValueError(f"layer {layer.name}: input {x.shape[2]}x{x.shape[3]} smaller than kernel")
    return x


def linear_as_conv(layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
    """A linear layer's (N, n) input as an (N, n, 1, 1) conv input."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != layer.n:
        raise ValueError(f"layer {layer.name}: expected input (N, {layer.n}), got {x.shape}")
    return np.ascontiguousarray(x.reshape(x.shape[0], layer.n, 1, 1))


class PreparedXnor:
    """A binary conv by dense XNOR-popcount on one thread, prepared for one float32 input shape
    and one binarisation rule: its geometry, padded weights and tile rows are worked out once,
    and each call packs the input and counts in one numba call (:func:`_pack_xnor`). At batch 1
    the Python around a layer's kernels cost about as much as the kernels did.

    Made by :func:`prepare_xnor` (None where another path applies). A call returns the int32
    sums (N, Cout, Ho, Wo), or with ``epi`` (``EpilogueKernel.xnor_args`` of the shortcut) the
    float32 epilogue applied inside the kernel, in arrays lent by ``pool``; or None where this
    call must take the general path: ``XNOR_KERNEL`` changed since, or an input that is not a
    C-contiguous float32 array of the prepared shape."""

    __slots__ = ("shape", "kernel", "_out3", "_out4", "_xshape", "_head", "_tail")

    def __init__(self, layer: BinaryLayerCode, shape: tuple[int, ...], wT, rule, geometry):
        kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = geometry
        N, C = shape[0], shape[1]
        mode, t = sign_rule(C) if rule is None else rule
        mode = np.ascontiguousarray(mode, dtype=np.int8)
        t = np.ascontiguousarray(t, dtype=np.float32)
        if mode.shape != (C,) or t.shape != (C,):
            raise ValueError(f"layer {layer.name}: input rule for {mode.shape} channels, need {C}")
        wTp = pad_patch_words(wT)
        R = max(1, (TILE_WORDS // wTp.shape[0]) // Wo)
        self.shape = tuple(shape)
        self.kernel = XNOR_KERNEL
        self._out3 = (N, layer.cout, Ho * Wo)
        self._out4 = (N, layer.cout, Ho, Wo)
        self._xshape = (N, shape[2] + 2 * ph, shape[3] + 2 * pw, (C + 63) // 64)
        self._head = (ph, pw, mode, t)
        self._tail = (wTp, layer.n, kh, kw, sh, sw, dh, dw, Ho, Wo, R, (N * Ho + R - 1) // R)

    def __call__(self, x: np.ndarray, pool, epi: tuple | None = None) -> np.ndarray | None:
        if (
            XNOR_KERNEL != self.kernel
            or x.shape != self.shape
            or x.dtype is not _FLOAT32  # (a float32 of the other byte order: the general path)
            or not x.flags.c_contiguous
        ):
            return None
        if epi is not None and epi[3].shape != self._out3:
            raise ValueError(f"shortcut of shape {epi[3].shape}, output {self._out4}")
        # the output as the pool's own 4-d array (giving back a view costs more)
        out = empty(pool, self._out4, np.int32 if epi is None else np.float32)
        xp = empty(pool, self._xshape, np.uint64)
        _pack_xnor(x, *self._head, xp, *self._tail, out.reshape(self._out3), epi)
        if pool is not None:
            pool.give(xp)
        return out


def prepare_xnor(
    layer: BinaryLayerCode, shape: tuple[int, ...], wT: np.ndarray, rule=None
) -> PreparedXnor | None:
    """A :class:`PreparedXnor` of ``layer`` with packed weights ``wT`` for float inputs of
    ``shape`` binarised by ``rule`` ((mode, t) as :class:`~mstc.engine.fold.RuledInput`; None:
    sign), or None where the popcount kernel does not run it (an empty output, or the
    table-lookup kernel chosen under ``XNOR_KERNEL``)."""
    if len(shape) != 4 or shape[1] != (layer.cin if layer.kind == "conv2d" else layer.n):
        raise ValueError(f"layer {layer.name}: no conv input of shape {tuple(shape)}")
    geometry = conv_geometry(layer, shape)
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = geometry
    xshape = (shape[0], shape[2] + 2 * ph, shape[3] + 2 * pw, (shape[1] + 63) // 64)
    if Ho * Wo * shape[0] * layer.cout == 0 or _lookup_kernel(
        xshape, wT, layer.n, (kh, kw, sh, sw, dh, dw), Ho, Wo
    ):
        return None
    return PreparedXnor(layer, shape, wT, rule, geometry)


#: (id(wT), layer name, input shape, XNOR_KERNEL) -> (weakref to wT, its PreparedXnor or None)
_prepared: dict[tuple, tuple[weakref.ref, PreparedXnor | None]] = {}


def xnor_layer(layer: BinaryLayerCode, x, wT: np.ndarray, threads, pool, epilogue=None):
    """A binary conv by dense XNOR-popcount on a checked input (:func:`check_input`) with
    packed weights ``wT``: int32 sums (N, Cout, Ho, Wo), or with ``epilogue`` = (an
    :class:`~mstc.engine.epilogue.EpilogueKernel` that ``fuses_into_xnor``, its shortcut) the
    float32 epilogue of the sums, applied inside the kernel. Arrays from ``pool``.

    A float input on one thread by popcounts takes a :class:`PreparedXnor` (made once per
    weights array, layer and shape)."""
    nthreads = _set_threads(threads)
    if epilogue is not None:
        epilogue = epilogue[0].xnor_args(epilogue[1])
    if nthreads == 1 and type(x) is np.ndarray:
        key = (id(wT), layer.name, x.shape, XNOR_KERNEL)
        entry = _prepared.get(key)
        if entry is None or entry[0]() is not wT:  # new, or another array at a freed one's id
            if len(_prepared) > 1024:
                _prepared.clear()
            entry = _prepared[key] = (weakref.ref(wT), prepare_xnor(layer, x.shape, wT))
        if entry[1] is not None:
            y = entry[1](x, pool, epilogue)
            if y is not None:
                return y
    N = x.shape[0]
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = conv_geometry(layer, x.shape)
    dtype = np.int32 if epilogue is None else np.float32
    out = empty(pool, (N, layer.cout, Ho * Wo), dtype)
    if out.size == 0:
        return out.reshape(N, layer.cout, Ho, Wo)
    xp = pack_binary_input(x, (ph, pw), nthreads, pool)
    xnor_conv(xp, wT, layer.n, (kh, kw, sh, sw, dh, dw), Ho, Wo, out, nthreads, epilogue)
    if pool is not None and not isinstance(x, PackedBits):  # PackedBits: the caller's words
        pool.give(xp)
    return out.reshape(N, layer.cout, Ho, Wo)


@register_backend("packed")
class PackedBackend(Backend):
    """Dense XNOR-popcount on bit-packed activations and weights (numba, ``threads`` workers)."""

    name = "packed"
    #: the float ops after a binary layer run as one pass (mstc.engine.epilogue)
    fuses_epilogue = True
    #: the runtime may hand binary convs a RuledInput (a BatchNorm before them folded away)
    folds_inputs = True

    def __init__(self, compressed, threads: int | None = None) -> None:
        super().__init__(compressed, threads)
        self._w: dict[str, np.ndarray] = {}
        for name, layer in compressed.layers.items():
            kh, kw = layer.kernel_size
            cin = layer.cin if layer.kind == "conv2d" else layer.n
            self._w[name] = pad_patch_words(packed_weights(layer.weight_bits(), cin, kh, kw))

    def _conv(self, layer: BinaryLayerCode, x, epilogue=None) -> np.ndarray:
        return xnor_layer(layer, x, self._w[layer.name], self.threads, self.pool, epilogue)

    def conv2d(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        return self._conv(layer, check_input(layer, x))

    def conv2d_epilogue(self, layer: BinaryLayerCode, x, kernel, shortcut) -> np.ndarray:
        """float32 ``kernel(conv2d(layer, x), shortcut)`` for an
        :class:`~mstc.engine.epilogue.EpilogueKernel` that ``fuses_into_xnor``: the epilogue
        is applied inside the XNOR kernel, so the integer sums never reach memory."""
        return self._conv(layer, check_input(layer, x), (kernel, shortcut))

    def linear(self, layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
        return self._conv(layer, linear_as_conv(layer, x)).reshape(x.shape[0], layer.cout)

    def prepared_xnor(self, layer: BinaryLayerCode, shape: tuple[int, ...], rule=None):
        """A :class:`PreparedXnor` running ``layer`` on float inputs of ``shape`` (binarised by
        ``rule``, None: sign) on one thread; False where it never applies (more threads, or
        the table-lookup kernel chosen)."""
        if _set_threads(self.threads) != 1:
            return False
        return prepare_xnor(layer, shape, self._w[layer.name], rule) or False
