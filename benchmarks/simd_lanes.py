"""Four tree nodes per vector register (``mstc.engine.simd``), their tap words gathered: a
feasibility measurement for a word kernel vectorised across nodes, not used by the engines
(``sliced._vwords`` puts four words of one node in a vector instead).

numba's vectoriser leaves the bit-sliced word kernel scalar (BENCHMARKS.md, "Batch 1, what
limited it"). The measurement: the Harley-Seal ones / twos / fours of 4 node lanes, each lane's
tap words gathered from the same tap array (``XT[idx[q]] ^ flip[q]``, the word kernel's inner step), against the
same taps one lane at a time; the gather either as four scalar loads into the vector or as
``llvm.masked.gather`` (vpgatherqq). Minimum wall time of many calls:

    .venv/bin/python benchmarks/simd_lanes.py
"""

from __future__ import annotations

import time

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mstc.engine.simd import u64x4, vand, vfill, vload, vstore, vxor

I32 = ir.IntType(32)
I64 = ir.IntType(64)
VT = ir.VectorType(I64, 4)


@intrinsic
def vgather_loads(typingctx, arr, idx, q):
    """(arr[idx[q]], .., arr[idx[q+3]]) by four scalar loads inserted into the vector."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        ix = context.make_array(sig.args[1])(context, builder, args[1])
        v = ir.Constant(VT, ir.Undefined)
        for lane in range(4):
            k = builder.load(builder.gep(ix.data, [builder.add(args[2], ir.Constant(I64, lane))]))
            x = builder.load(builder.gep(a.data, [k]))
            v = builder.insert_element(v, x, ir.Constant(I32, lane))
        return v

    return u64x4(arr, idx, types.uint64), codegen


@intrinsic
def vgather_masked(typingctx, arr, idx, q):
    """The same by ``llvm.masked.gather`` (vpgatherqq where the target has it)."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        ix = context.make_array(sig.args[1])(context, builder, args[1])
        kv = builder.load(
            builder.bitcast(builder.gep(ix.data, [args[2]]), VT.as_pointer()), align=8
        )
        pv = ir.VectorType(I64.as_pointer(), 4)
        b = builder.insert_element(
            ir.Constant(VT, ir.Undefined), builder.ptrtoint(a.data, I64), ir.Constant(I32, 0)
        )
        zeros = ir.Constant(ir.VectorType(I32, 4), [0, 0, 0, 0])
        b = builder.shuffle_vector(b, ir.Constant(VT, ir.Undefined), zeros)
        ptrs = builder.inttoptr(builder.add(b, builder.shl(kv, ir.Constant(VT, [3] * 4))), pv)
        fnty = ir.FunctionType(VT, [pv, I32, ir.VectorType(ir.IntType(1), 4), VT])
        fn = cgutils.get_or_insert_function(
            builder.module, fnty, "llvm.masked.gather.v4i64.v4p0i64"
        )
        mask = ir.Constant(ir.VectorType(ir.IntType(1), 4), [1, 1, 1, 1])
        return builder.call(fn, [ptrs, ir.Constant(I32, 8), mask, ir.Constant(VT, ir.Undefined)])

    return u64x4(arr, idx, types.uint64), codegen


@njit(cache=True)
def lanes(XT, idx, flip, out, masked):  # pragma: no cover - numba
    """4 lanes; lane l takes taps l, l+4, l+8, ...: ones / twos / fours counters; the gather by
    scalar loads or (``masked``) by llvm.masked.gather."""
    o1 = vfill(np.uint64(0))
    o2 = vfill(np.uint64(0))
    o4 = vfill(np.uint64(0))
    for q in range(np.uint64(0), np.uint64(idx.shape[0]), np.uint64(4)):
        x = vgather_masked(XT, idx, q) if masked else vgather_loads(XT, idx, q)
        a = vxor(x, vload(flip, q))
        c = vand(o1, a)
        o1 = vxor(o1, a)
        d = vand(o2, c)
        o2 = vxor(o2, c)
        o4 = vxor(o4, d)
    vstore(out, np.uint64(0), o1)
    vstore(out, np.uint64(4), o2)
    vstore(out, np.uint64(8), o4)


@njit(cache=True)
def one_lane(XT, idx, flip, out):  # pragma: no cover - numba
    """The same counters, one lane after the other (scalar, as the word kernel runs)."""
    for lane in range(4):
        o1 = o2 = o4 = np.uint64(0)
        for q in range(lane, idx.shape[0], 4):
            x = XT[idx[q]] ^ flip[q]
            c = o1 & x
            o1 ^= x
            d = o2 & c
            o2 ^= c
            o4 ^= d
        out[lane] = o1
        out[4 + lane] = o2
        out[8 + lane] = o4


def main() -> None:
    rng = np.random.default_rng(0)
    n_words, n_taps = 576, 2648  # features.8 of the trained checkpoints: 576 tap words
    XT = rng.integers(0, 2**63, n_words, dtype=np.uint64)
    idx = rng.integers(0, n_words, n_taps).astype(np.uint64)
    flip = rng.integers(0, 2, n_taps).astype(np.uint64) * np.uint64(2**64 - 1)
    fs = {
        "4 lanes, scalar loads": lambda *a: lanes(*a, False),
        "4 lanes, masked.gather": lambda *a: lanes(*a, True),
        "1 lane at a time": one_lane,
    }
    outs = {k: np.zeros(12, np.uint64) for k in fs}
    for k, f in fs.items():
        f(XT, idx, flip, outs[k])
    ref = outs["1 lane at a time"]
    assert all(np.array_equal(o, ref) for o in outs.values()), "lanes disagree"
    best = {k: float("inf") for k in fs}
    for _ in range(3000):
        for k, f in fs.items():
            t0 = time.perf_counter_ns()
            f(XT, idx, flip, outs[k])
            best[k] = min(best[k], time.perf_counter_ns() - t0)
    for k, t in best.items():
        print(f"{k:<24} {t / 1e3:7.2f} us  {t / n_taps:5.2f} ns per tap")


if __name__ == "__main__":
    main()
