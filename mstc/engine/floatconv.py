"""Full-precision conv2d with torch's own CPU float32 operations, written into pooled buffers.

torch 2.13's CPU convolution (float32, groups 1, dilation 1, no bias) computes each output as one
chain of fused multiply-adds from +0 over the taps, in one of two fixed orders:

    y[n, o, i, j] = fma(x_T w_T, ... fma(x_2 w_2, fma(x_1 w_1, +0)))
    x_t = x[n, c_t, i*sh + kh_t - ph, j*sw + kw_t - pw],  w_t = w[o, c_t, kh_t, kw_t]

- ``"tap"``: kernel row, kernel column, then input channel (oneDNN's direct kernel; e.g. every
  stem and 1x1 conv of the registered models at batch 32),
- ``"channel"``: input channel, then kernel row and column (im2col + GEMM; e.g. a 3-channel stem
  at batch 1).

A tap in the zero padding adds ``fma(0, w, acc) = acc`` (a chain from +0 never rounds to -0), so
the kernel skips nothing and reads a zero-padded copy. Which order torch takes depends on the
shape, the thread count and the build, so :func:`torch_order` tries both on a probe of the exact
input shape (wide magnitudes, zeros, signed zeros) against ``F.conv2d`` and returns the one that
is bit-identical, or None; the runtime then uses :class:`FloatConv` only where it was found exact
and faster than torch, else torch itself.

Why at all: torch allocates each conv output afresh, and glibc hands large blocks back to the
system when they are freed, so the output's pages fault again on every pass; the generated
kernel writes into the runtime's buffer pool (``benchmarks/float_convs.py``, BENCHMARKS.md).
:meth:`FloatConv.packed_bits` goes one step further for a conv whose output is only binarised
(vgg_small's stem): the same chains, compared with the folded BatchNorm's threshold and packed
into the next binary conv's input words, no float output at all; :meth:`FloatConv.bit_planes`
writes the same bits in the bit-plane layout of :mod:`mstc.engine.sliced`, for mst convs that
read planes.

Each tap list is compiled once (numba, generated source with the taps unrolled so that the loop
over output positions vectorises; 1-3 s) and cached on disk (:func:`cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from mstc.engine.buffers import BufferPool, empty
from mstc.engine.fold import CONST1, GE, LE
from mstc.io import write_text_atomic

ORDERS = ("tap", "channel")
#: most unrolled multiply-adds per generated kernel (taps x output channels per block). The
#: weights of a block stay in registers across the position loop; with many more they spill and
#: the kernel slowed down 2-3x in the fifth session's trials (a 32-tap 1x1 conv in blocks of 4).
MAX_UNROLLED = 112

_compiled: dict[tuple, Callable] = {}


def _tap_list(C: int, KH: int, KW: int, order: str) -> list[tuple[int, int, int]]:
    if order == "tap":
        return [(c, kh, kw) for kh in range(KH) for kw in range(KW) for c in range(C)]
    if order == "channel":
        return [(c, kh, kw) for c in range(C) for kh in range(KH) for kw in range(KW)]
    raise ValueError(f"unknown tap order {order!r}; expected one of {ORDERS}")


def _kernel(taps: tuple[tuple[int, int, int], ...], sh: int, sw: int, ob: int) -> Callable:
    """The numba kernel ``k(xp, wt, out)`` for one tap list: ``xp`` the zero-padded input
    (N, C, Hp, Wp), ``wt`` (T, O) the weights in tap order, ``out`` (N, O, Ho, Wo); output
    channels in blocks of ``ob`` (O % ob == 0). sh = sw = 0: a 1x1 conv on flat planes,
    ``xp`` (N, C, P) and ``out`` (N, O, P), one long loop over the positions."""
    key = (taps, sh, sw, ob)
    if key in _compiled:
        return _compiled[key]
    T = len(taps)
    if sh == 0:
        dims, loops, at = "P = out.shape[2]", ["for p in range(P):"], "p"
    else:
        dims = "Ho = out.shape[2]; Wo = out.shape[3]"
        loops, at = ["for y in range(Ho):", "    for x in range(Wo):"], "y, x"
    inner = " " * (12 + 4 * len(loops))

    def tap(c: int, kh: int, kw: int) -> str:
        return f"xp[n, {c}, p]" if sh == 0 else f"xp[n, {c}, y * {sh} + {kh}, x * {sw} + {kw}]"

    src = [
        "def k(xp, wt, out):",
        f"    N = out.shape[0]; O = out.shape[1]; {dims}",
        "    for n in range(N):",
        f"        for o0 in range(0, O, {ob}):",
    ]
    src += [f"            w{j}_{t} = wt[{t}, o0 + {j}]" for j in range(ob) for t in range(T)]
    src += ["            " + line for line in loops]
    src += [f"{inner}s{j} = np.float32(0.0)" for j in range(ob)]
    for t, (c, kh, kw) in enumerate(taps):
        src.append(f"{inner}v = {tap(c, kh, kw)}")
        src += [f"{inner}s{j} = s{j} + v * w{j}_{t}" for j in range(ob)]
    src += [f"{inner}out[n, o0 + {j}, {at}] = s{j}" for j in range(ob)]
    return _compile(key, src)


def _flat_chains(taps: tuple[tuple[int, int, int], ...], ob: int) -> list[str]:
    """Generated lines shared by the flat-plane kernels, inside ``for o0``: the block's weights,
    its compare (g, h), and the loop over the ``L`` flat positions ``q`` computing the fma
    chains ``s0 .. s{ob-1}`` (the caller appends the loop body's last lines)."""
    i4, i5 = " " * 16, " " * 20
    src = [f"{i4}w{j}_{t} = wt[{t}, o0 + {j}]" for j in range(ob) for t in range(len(taps))]
    src += [f"{i4}g{j} = g[o0 + {j}]; h{j} = h[o0 + {j}]" for j in range(ob)]
    src += [f"{i4}for q in range(L):"]
    src += [f"{i5}s{j} = np.float32(0.0)" for j in range(ob)]
    for t, (c, kh, kw) in enumerate(taps):
        src.append(f"{i5}v = xf[n, {c}, q + np.uint64({kh}) * Wu + np.uint64({kw})]")
        src += [f"{i5}s{j} = s{j} + v * w{j}_{t}" for j in range(ob)]
    return src


def _bits_kernel(taps: tuple[tuple[int, int, int], ...], ob: int) -> Callable:
    """The numba kernel of :meth:`FloatConv.packed_bits` (stride 1):
    ``k(xf, wt, g, h, Ho, Wo, Wp, ph2, pw2, out, row, lo, hi)``. ``xf`` (N, C, Hp * Wp + tail)
    holds the zero-padded input planes flat, so a tap is a shift by ``kh * Wp + kw`` and one loop
    runs over the ``Ho * Wp`` positions of a block of ``ob`` channels (the pad columns computed and
    dropped); the same fma chains as :func:`_kernel`, then ``s * g_c >= h_c`` ored into the 32-bit
    lanes ``lo`` / ``hi`` (channels 0-31 / 32-63 of each 64-channel word). Unsigned indices: with
    signed ones numba's negative-index check kept the loop scalar (4-5x slower)."""
    key = ("bits", taps, ob)
    if key in _compiled:
        return _compiled[key]
    i3, i4, i5 = " " * 12, " " * 16, " " * 20
    bits = " | ".join(f"(np.uint32(row[{j}, q] * g{j} >= h{j}) << b{j})" for j in range(ob))
    src = [
        "def k(xf, wt, g, h, Ho, Wo, Wp, ph2, pw2, out, row, lo, hi):",
        "    N = out.shape[0]; Hq = out.shape[1]; Wq = out.shape[2]; CW = out.shape[3]",
        "    O = wt.shape[1]; L = np.uint64(Ho * Wp); Wu = np.uint64(Wp)",
        "    for n in range(N):",
        "        for r in range(Hq):",
        "            for q in range(Wq):",
        "                if r < ph2 or r >= Ho + ph2 or q < pw2 or q >= Wo + pw2:",
        "                    for cw in range(CW):",
        "                        out[n, r, q, cw] = 0",
        "        for cw in range(CW):",
        "            for q in range(L):",
        "                lo[q] = 0",
        "                hi[q] = 0",
        f"            for o0 in range(64 * cw, min(O, 64 * cw + 64), {ob}):",
    ]
    src += [f"{i4}b{j} = np.uint32((o0 + {j}) & 31)" for j in range(ob)]
    src += _flat_chains(taps, ob)
    src += [f"{i5}row[{j}, q] = s{j}" for j in range(ob)]
    src += [
        f"{i4}if o0 - 64 * cw >= 32:",
        f"{i5}for q in range(L):",
        f"{i5}    hi[q] |= {bits}",
        f"{i4}else:",
        f"{i5}for q in range(L):",
        f"{i5}    lo[q] |= {bits}",
        f"{i3}for y in range(Ho):",
        f"{i3}    for x in range(Wo):",
        f"{i3}        p = y * Wp + x",
        f"{i3}        out[n, y + ph2, x + pw2, cw] = np.uint64(lo[p]) | (np.uint64(hi[p]) << np.uint64(32))",
        "    return out",
    ]
    return _compile(key, src)


def _planes_kernel(taps: tuple[tuple[int, int, int], ...], ob: int) -> Callable:
    """The numba kernel of :meth:`FloatConv.bit_planes` (stride 1):
    ``k(xf, wt, g, h, Ho, Wo, Wp, Hq, Wq, ph2, pw2, valid, out, cb)``. The fma chains of
    :func:`_bits_kernel` over the flat padded planes ``xf``, each compared at once
    (``s * g_c >= h_c``) into the bytes ``cb[j, q]``; then per output channel the bits of the
    valid outputs go into the zeroed plane ``out[c]`` at bit ``(n * Hq + y + ph2) * Wq + x +
    pw2`` (the bit-plane layout of :mod:`mstc.engine.sliced`; ``out`` has a word of slack). When
    the output grid is as wide as the input's (``Wq == Wp``) the ``Ho * Wp`` flat positions are
    one run of bits: packed 64 at a time, masked by ``valid`` (the pad columns), shifted in
    whole; else row by row."""
    key = ("planes", taps, ob)
    if key in _compiled:
        return _compiled[key]
    i4, i5 = " " * 16, " " * 20
    src = [
        "def k(xf, wt, g, h, Ho, Wo, Wp, Hq, Wq, ph2, pw2, valid, out, cb):",
        "    N = xf.shape[0]; O = wt.shape[1]; L = np.uint64(Ho * Wp); Wu = np.uint64(Wp)",
        "    one = np.uint64(1); s63 = np.uint64(63); s6 = np.uint64(6)",
        "    NW = np.uint64(valid.shape[0])",
        "    for n in range(N):",
        f"        for o0 in range(0, O, {ob}):",
    ]
    src += _flat_chains(taps, ob)
    src += [f"{i5}cb[{j}, q] = np.uint8(s{j} * g{j} >= h{j})" for j in range(ob)]
    src += [
        f"{i4}for j in range({ob}):",
        f"{i4}    plane = out[o0 + j]; cj = cb[j]",
        f"{i4}    if Wq == Wp:",
        f"{i4}        base = np.uint64((n * Hq + ph2) * Wq + pw2)",
        f"{i4}        a0 = base >> s6; b = base & s63",
        f"{i4}        for k in range(NW):",
        f"{i4}            wd = np.uint64(0)",
        f"{i4}            for t in range(64):",
        f"{i4}                wd |= np.uint64(cj[k * np.uint64(64) + np.uint64(t)]) << np.uint64(t)",
        f"{i4}            wd &= valid[k]",
        f"{i4}            plane[a0 + k] |= wd << b",
        f"{i4}            plane[a0 + k + one] |= (wd >> one) >> (s63 - b)",
        f"{i4}    else:",
        f"{i4}        for y in range(Ho):",
        f"{i4}            qb = np.uint64(y) * Wu",
        f"{i4}            d = np.uint64((n * Hq + y + ph2) * Wq + pw2)",
        f"{i4}            for x0 in range(0, Wo, 64):",
        f"{i4}                ln = np.uint64(min(64, Wo - x0))",
        f"{i4}                q0 = qb + np.uint64(x0)",
        f"{i4}                wd = np.uint64(0)",
        f"{i4}                for t in range(ln):",
        f"{i4}                    wd |= np.uint64(cj[q0 + t]) << t",
        f"{i4}                p = d + np.uint64(x0); a = p >> s6; b = p & s63",
        f"{i4}                plane[a] |= wd << b",
        f"{i4}                plane[a + one] |= (wd >> one) >> (s63 - b)",
        "    return out",
    ]
    return _compile(key, src)


def cache_dir() -> Path:
    """``$MSTC_CACHE/floatconv`` or ``~/.cache/mstc/floatconv``: generated kernel sources, and
    numba's compiled code beside them."""
    base = os.environ.get("MSTC_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mstc") / "floatconv"


_HEADER = (
    "import numpy as np\nfrom numba import njit\n\n\n"
    # "contract" lets LLVM fuse each s + v * w into one fma (the only float flag given: no
    # reassociation, so the chain keeps its order); tests check it against torch bit for bit
    "@njit(nogil=True, fastmath={'contract'}, cache=True)\n"
)


def _compile(key: tuple, src: list[str]) -> Callable:
    """Compile generated source (from integers only). It is written to :func:`cache_dir` so that
    numba caches the machine code across processes; a file there is used only if its text is
    exactly the generated one. Without a writable cache it compiles in memory."""
    text = _HEADER + "\n".join(src) + "\n"
    name = "mstc_floatconv_" + hashlib.sha256(text.encode()).hexdigest()[:20]
    try:
        path = cache_dir() / f"{name}.py"
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache finds the kernel's globals by module name
        spec.loader.exec_module(module)
        kernel = module.k
    except OSError:
        namespace: dict = {"np": np}
        exec("\n".join(src), namespace)  # noqa: S102 - generated from integers only
        kernel = njit(nogil=True, fastmath={"contract"})(namespace["k"])
    _compiled[key] = kernel
    return kernel


def _pad_into(x: np.ndarray, grid: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """``grid`` (N, C, H + 2 ph, W + 2 pw) := ``x`` (N, C, H, W) with a zero border."""
    H, W = x.shape[2], x.shape[3]
    grid[:, :, :ph] = 0
    grid[:, :, H + ph :] = 0
    grid[:, :, ph : H + ph, :pw] = 0
    grid[:, :, ph : H + ph, W + pw :] = 0
    grid[:, :, ph : H + ph, pw : W + pw] = x
    return grid


class FloatConv:
    """conv2d of float32 NCHW inputs with a fixed weight (no bias, groups 1, dilation 1) in one
    of torch's tap orders (module doc)."""

    def __init__(self, weight: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]):
        weight = np.asarray(weight)
        if weight.dtype != np.float32 or weight.ndim != 4:
            raise ValueError(
                f"weight must be float32 (O, C, KH, KW), got {weight.dtype} {weight.shape}"
            )
        self.weight = weight
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        O, C, KH, KW = weight.shape
        T = C * KH * KW
        self.block = next((b for b in (4, 2, 1) if O % b == 0 and T * b <= MAX_UNROLLED), 0)
        self._wt: dict[str, np.ndarray] = {}
        self._valid: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def supported(self) -> bool:
        """Whether a kernel fits the unroll budget (else the runtime keeps torch's conv)."""
        return self.block > 0

    def output_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        N, C, H, W = x_shape
        O, Cw, KH, KW = self.weight.shape
        if C != Cw:
            raise ValueError(f"input has {C} channels, the weight expects {Cw}")
        (sh, sw), (ph, pw) = self.stride, self.padding
        Ho, Wo = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
        if Ho < 1 or Wo < 1:
            raise ValueError(f"input {x_shape} too small for a {KH}x{KW} kernel")
        return N, O, Ho, Wo

    def _taps(self, order: str) -> tuple[tuple[tuple[int, int, int], ...], np.ndarray]:
        """The tap list of ``order`` and the weights (T, O) in that order (made once)."""
        O, C, KH, KW = self.weight.shape
        taps = tuple(_tap_list(C, KH, KW, order))
        if order not in self._wt:
            w = self.weight
            self._wt[order] = np.ascontiguousarray(
                np.stack([w[:, c, kh, kw] for c, kh, kw in taps]), dtype=np.float32
            )
        return taps, self._wt[order]

    def _check(self, x: np.ndarray) -> tuple[int, int, int, int]:
        """The output shape for input ``x``, after checking it."""
        if not self.supported:
            raise ValueError(f"a {self.weight.shape} kernel unrolls too far (> {MAX_UNROLLED})")
        if x.dtype != np.float32 or x.ndim != 4 or not x.flags.c_contiguous:
            raise ValueError("input must be a C-contiguous float32 (N, C, H, W) array")
        return self.output_shape(x.shape)

    def __call__(
        self,
        x: np.ndarray,
        order: str,
        pool: BufferPool | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        shape = self._check(x)
        if out is None:
            out = empty(pool, shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
        taps, wt = self._taps(order)
        N, C, H, W = x.shape
        O, (ph, pw) = shape[1], self.padding
        if self.weight.shape[2:] == (1, 1) and self.stride == (1, 1) and not (ph or pw):
            _kernel(taps, 0, 0, self.block)(x.reshape(N, C, H * W), wt, out.reshape(N, O, -1))
            return out
        xp = x
        if ph or pw:
            xp = _pad_into(x, empty(pool, (N, C, H + 2 * ph, W + 2 * pw), np.float32), ph, pw)
        _kernel(taps, *self.stride, self.block)(xp, wt, out)
        if xp is not x and pool is not None:
            pool.give(xp)
        return out

    def _flat_input(self, x: np.ndarray, compare, pool: BufferPool | None):
        """Checks of the binarising kernels, and ``x`` zero-padded into flat planes (N, C,
        Hp * Wp + KW) (the tail covers the last row's pad-column reads): (output shape, planes,
        Wp)."""
        N, O, Ho, Wo = self._check(x)
        if not self.packs_bits:
            raise ValueError("binarised outputs need stride 1")
        g, h = compare
        if g.shape != (O,) or h.shape != (O,) or g.dtype != np.float32 or h.dtype != np.float32:
            raise ValueError(f"compare arrays must be float32 ({O},)")
        _, C, H, W = x.shape
        (ph, pw), KW = self.padding, self.weight.shape[3]
        Hp, Wp = H + 2 * ph, W + 2 * pw
        xf = empty(pool, (N, C, Hp * Wp + KW), np.float32)
        xf[:, :, Hp * Wp :] = 0
        _pad_into(x, xf[:, :, : Hp * Wp].reshape(N, C, Hp, Wp), ph, pw)
        return (N, O, Ho, Wo), xf, Wp

    def packed_bits(
        self,
        x: np.ndarray,
        order: str,
        compare: tuple[np.ndarray, np.ndarray],
        padding: tuple[int, int],
        pool: BufferPool | None = None,
    ) -> np.ndarray:
        """The conv's output binarised by a per-channel float rule and packed as
        :func:`mstc.engine.binarize.packed_input` packs it -- ``[N, Ho + 2 ph, Wo + 2 pw,
        ceil(O / 64)]`` uint64, pad bits 0 -- without the float output reaching memory (stride 1
        only, :attr:`packs_bits`). The same fma chains as :meth:`__call__`, then
        ``bit = s * g_c >= h_c`` with ``compare`` = (g, h) from :func:`rule_compare`."""
        (N, O, Ho, Wo), xf, Wp = self._flat_input(x, compare, pool)
        taps, wt = self._taps(order)
        g, h = compare
        ph2, pw2 = int(padding[0]), int(padding[1])
        words = empty(pool, (N, Ho + 2 * ph2, Wo + 2 * pw2, (O + 63) // 64), np.uint64)
        L = Ho * Wp
        row = empty(pool, (self.block, L), np.float32)
        lanes = empty(pool, (2, L), np.uint32)  # lo / hi 32-bit lane words of a row of positions
        kernel = _bits_kernel(taps, self.block)
        kernel(xf, wt, g, h, Ho, Wo, Wp, ph2, pw2, words, row, lanes[0], lanes[1])
        if pool is not None:
            for a in (xf, row, lanes):
                pool.give(a)
        return words

    def bit_planes(
        self,
        x: np.ndarray,
        order: str,
        compare: tuple[np.ndarray, np.ndarray],
        padding: tuple[int, int],
        words: int,
        pool: BufferPool | None = None,
    ) -> np.ndarray:
        """As :meth:`packed_bits`, but in the bit-plane layout of :mod:`mstc.engine.sliced`:
        uint64 ``(O, words)``, bit ``(n * (Ho + 2 ph) + y + ph) * (Wo + 2 pw) + x + pw`` of row
        c set iff ``s * g_c >= h_c`` for output (n, c, y, x); padding and slack bits 0. ``words``
        (the consumer's :class:`~mstc.engine.sliced.PlaneGeometry` words) must cover the grid
        plus one word."""
        N, O, Ho, Wo = self._check(x)
        ph2, pw2 = int(padding[0]), int(padding[1])
        Hq, Wq = Ho + 2 * ph2, Wo + 2 * pw2
        if words < (N * Hq * Wq + 63) // 64 + 1:
            raise ValueError(f"{words} words per plane cannot hold {N} grids of {Hq} x {Wq}")
        _, xf, Wp = self._flat_input(x, compare, pool)
        taps, wt = self._taps(order)
        g, h = compare
        out = np.zeros((O, words), np.uint64)
        L = Ho * Wp
        nw = (L + 63) // 64
        valid = self._valid.get((L, Wp, Wo))
        if valid is None:  # bit q of the flat run: a valid output column
            keep = np.zeros(64 * nw, bool)
            keep[:L] = np.arange(L) % Wp < Wo
            valid = self._valid[(L, Wp, Wo)] = (
                np.packbits(keep, bitorder="little").view("<u8").astype(np.uint64)
            )
        cb = empty(pool, (self.block, 64 * nw), np.uint8)
        cb[:, L:] = 0
        kernel = _planes_kernel(taps, self.block)
        kernel(xf, wt, g, h, Ho, Wo, Wp, Hq, Wq, ph2, pw2, valid, out, cb)
        if pool is not None:
            pool.give(xf)
            pool.give(cb)
        return out

    @property
    def packs_bits(self) -> bool:
        """Whether :meth:`packed_bits` applies (stride 1, a kernel within the unroll budget)."""
        return self.supported and self.stride == (1, 1)


def rule_compare(rule: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(g, h) float32 with ``bit = x * g_c >= h_c`` equal to the float rule (mode, t) of
    :mod:`mstc.engine.fold` for every float32 x: GE (1, t), LE (-1, -t) (x <= t iff -x >= -t,
    negation being exact), CONST1 (1, -inf): every non-NaN x, CONST0 (1, NaN): none; NaN x gives 0
    as in :func:`mstc.engine.binarize.packed_input`."""
    mode = np.asarray(rule[0])
    t = np.asarray(rule[1], dtype=np.float32)
    if mode.shape != t.shape or mode.ndim != 1:
        raise ValueError(f"rule arrays of shapes {mode.shape} and {t.shape}")
    g = np.where(mode == LE, np.float32(-1), np.float32(1)).astype(np.float32)
    h = np.select(
        [mode == GE, mode == LE, mode == CONST1], [t, -t, np.float32(-np.inf)], np.float32(np.nan)
    ).astype(np.float32)
    return g, h


def probe_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 input for checking a float kernel against torch: normal values scaled over
    ~2^-20..2^20, a zero block, signed zeros and exact small integers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x *= np.exp2(rng.integers(-20, 21, size=shape)).astype(np.float32)
    flat = x.reshape(-1)
    k = max(1, flat.size // 16)
    flat[:k] = 0.0
    flat[k : 2 * k] = -0.0
    flat[2 * k : 3 * k] = rng.integers(-4, 5, size=k).astype(np.float32)
    rng.shuffle(flat[: 4 * k])
    return x


#: outputs compared before an order counts as torch's (small shapes get several probes)
PROBE_OUTPUTS = 1 << 14
MAX_PROBES = 64


def torch_order(conv: FloatConv, x_shape: tuple[int, ...]) -> str | None:
    """The tap order in which ``F.conv2d`` computes ``conv`` at input shape ``x_shape`` with
    torch's current thread count (bit-identical on probes of >= ``PROBE_OUTPUTS`` outputs, at
    most ``MAX_PROBES`` inputs), or None if neither is. One probe is not enough for tiny shapes:
    a 3x3 input giving one output matched the tap order by chance while torch summed otherwise."""
    if not conv.supported:
        return None
    n_out = int(np.prod(conv.output_shape(x_shape)))
    probes = min(MAX_PROBES, max(1, -(-PROBE_OUTPUTS // max(n_out, 1))))
    orders = list(ORDERS)
    with torch.no_grad():
        for seed in range(probes):
            x = probe_input(x_shape, seed)
            ref = F.conv2d(
                torch.from_numpy(x), torch.from_numpy(conv.weight), None, conv.stride, conv.padding
            ).numpy()
            orders = [
                o for o in orders if np.array_equal(conv(x, o).view(np.int32), ref.view(np.int32))
            ]
            if not orders:
                return None
    return orders[0]


def _faster(ours: Callable[[], object], theirs: Callable[[], object], margin: float) -> bool:
    """Whether ``ours`` takes under ``margin`` times ``theirs`` (fastest of 5 alternating runs
    each)."""
    t_ours, t_theirs = [], []
    with torch.no_grad():
        for _ in range(5):
            t0 = time.perf_counter()
            ours()
            t1 = time.perf_counter()
            theirs()
            t_theirs.append(time.perf_counter() - t1)
            t_ours.append(t1 - t0)
    return min(t_ours) < margin * min(t_theirs)


def faster_than_torch(conv: FloatConv, order: str, x: np.ndarray, margin: float = 0.8) -> bool:
    """Whether the kernel takes under ``margin`` times ``F.conv2d``'s time on ``x`` (the margin
    keeps torch where the two are within noise, e.g. the small convs at batch 1)."""
    xt, wt = torch.from_numpy(x), torch.from_numpy(conv.weight)
    out = np.empty(conv.output_shape(x.shape), np.float32)
    return _faster(
        lambda: conv(x, order, out=out),
        lambda: F.conv2d(xt, wt, None, conv.stride, conv.padding),
        margin,
    )


def _torch_packed(conv: FloatConv, x: np.ndarray, rule, padding: tuple[int, int]) -> np.ndarray:
    """What a binary conv reads without :meth:`FloatConv.packed_bits`: torch's conv output,
    packed by the rule."""
    from mstc.engine.binarize import packed_input  # the engines' float -> bits pass

    with torch.no_grad():
        y = F.conv2d(
            torch.from_numpy(x), torch.from_numpy(conv.weight), None, conv.stride, conv.padding
        )
    return packed_input(y.numpy(), padding, 1, rule)


def _torch_planes(conv: FloatConv, x: np.ndarray, rule, geometry):
    """What a fused mst conv reads without :meth:`FloatConv.bit_planes`: torch's conv output,
    packed by the rule into the bit planes of ``geometry``."""
    from mstc.engine.sliced import pack_planes  # the fused readers' float -> planes pass

    with torch.no_grad():
        y = F.conv2d(
            torch.from_numpy(x), torch.from_numpy(conv.weight), None, conv.stride, conv.padding
        )
    return pack_planes(y.numpy(), geometry, rule)


def bits_plan(
    conv: FloatConv,
    x: np.ndarray,
    rule,
    padding: tuple[int, int],
    timed: bool = True,
    geometry=None,
) -> tuple[str, tuple[np.ndarray, np.ndarray]] | None:
    """(tap order, compare) for :meth:`FloatConv.packed_bits` at the shape of ``x``: torch's
    order (:func:`torch_order`), the bits equal to packing torch's conv output by ``rule`` on a
    probe, and (``timed``) faster than that on ``x``; else None. With ``geometry`` (the
    :class:`~mstc.engine.sliced.PlaneGeometry` of fused readers) the time is that of
    :meth:`FloatConv.bit_planes` against torch's conv packed into those planes, what the
    readers would do instead."""
    if not conv.packs_bits:
        return None
    order = torch_order(conv, tuple(x.shape))
    if order is None:
        return None
    compare = rule_compare(rule)
    probe = probe_input(tuple(x.shape), seed=1)
    want = _torch_packed(conv, probe, rule, padding)
    if not np.array_equal(conv.packed_bits(probe, order, compare, padding), want):
        return None

    def ours():
        if geometry is None:
            return conv.packed_bits(x, order, compare, padding)
        return conv.bit_planes(x, order, compare, padding, geometry.words)

    def theirs():
        if geometry is None:
            return _torch_packed(conv, x, rule, padding)
        return _torch_planes(conv, x, rule, geometry)

    if timed and not _faster(ours, theirs, 1.0):
        return None
    return order, compare
