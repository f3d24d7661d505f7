"""Explicit vectors for numba kernels that the auto-vectoriser leaves scalar: four uint64 words
in one vector register (the bit-sliced word kernel at batch 1: a node's few words, one at a
time), and 64 int16 lanes (the int16 tree walk of :mod:`mstc.engine.walk16`: a node's sums at
64 positions).

``u64x4`` is a numba type whose data model is the LLVM vector ``<4 x i64>``; the operations below
are ``@intrinsic`` functions that emit one LLVM vector instruction each, so values of this type
stay in registers (AVX2 ``ymm`` on x86; LLVM lowers the same IR on any target). Loads and
stores take a 1-D uint64 array and an element offset and touch 4 consecutive elements; callers
keep them in bounds. ``benchmarks/simd_lanes.py`` measures the approach.

``i16x64`` is ``<64 x i16>``: LLVM splits it into four 256-bit registers on AVX2 (two on
AVX-512), one instruction per register and operation. Its loads and stores take a 1-D int16
array and touch 64 consecutive elements.
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VT = ir.VectorType(_I64, 4)
_HT = ir.VectorType(_I16, 64)
_BT = ir.VectorType(_I8, 64)


def _vector_type(name: str, cls_name: str, vt: ir.VectorType, doc: str) -> types.Type:
    """A numba type whose values are the LLVM vector ``vt`` (kept in registers); its class is
    a module global ``cls_name`` (numba's cache pickles types by reference)."""

    def __init__(self) -> None:
        types.Type.__init__(self, name=name)

    cls = type(cls_name, (types.Type,), {"__doc__": doc, "__init__": __init__})
    cls.__module__ = __name__
    globals()[cls_name] = cls

    @register_model(cls)
    class _Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type) -> None:
            super().__init__(dmm, fe_type, vt)

    return cls()


def _binop(vtype: types.Type, name: str, doc: str):
    """Lane-wise ``builder.<name>`` of two vectors of ``vtype``."""

    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return vtype(vtype, vtype), codegen

    op.__doc__ = doc
    return op


def _load(vtype: types.Type, vt: ir.VectorType, align: int, doc: str):
    """``arr[i ..]`` of a contiguous 1-D array as one vector of ``vtype``."""

    @intrinsic
    def load(typingctx, arr, i):
        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            p = builder.bitcast(builder.gep(a.data, [args[1]]), vt.as_pointer())
            return builder.load(p, align=align)

        return vtype(arr, types.uint64), codegen

    load.__doc__ = doc
    return load


def _store(vtype: types.Type, vt: ir.VectorType, align: int, doc: str):
    """``arr[i ..] = v`` for a vector ``v`` of ``vtype``."""

    @intrinsic
    def store(typingctx, arr, i, v):
        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            p = builder.bitcast(builder.gep(a.data, [args[1]]), vt.as_pointer())
            builder.store(args[2], p, align=align)
            return context.get_dummy_value()

        return types.none(arr, types.uint64, vtype), codegen

    store.__doc__ = doc
    return store


def _splat(builder, vt: ir.VectorType, x):
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


# ---------------------------------------------------------------------------------- 4 x uint64

u64x4 = _vector_type("u64x4", "U64x4", _VT, "Four uint64 lanes in one LLVM vector.")


@intrinsic
def vfill(typingctx, x):
    """All four lanes = the uint64 ``x``."""

    def codegen(context, builder, sig, args):
        return _splat(builder, _VT, args[0])

    return u64x4(types.uint64), codegen


vxor = _binop(u64x4, "xor", "Lane-wise a XOR b.")
vand = _binop(u64x4, "and_", "Lane-wise a AND b.")
vor = _binop(u64x4, "or_", "Lane-wise a OR b.")
vload = _load(
    u64x4, _VT, 8, "(arr[i], arr[i+1], arr[i+2], arr[i+3]) of a contiguous 1-D uint64 array."
)
vstore = _store(u64x4, _VT, 8, "arr[i .. i+3] = the lanes of ``v``.")


@intrinsic
def vlane(typingctx, v, lane):
    """Lane ``lane`` (0..3) of ``v``."""

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32))

    return types.uint64(u64x4, types.uint64), codegen


@intrinsic
def vany(typingctx, v):
    """Whether any bit of any lane of ``v`` is set."""

    def codegen(context, builder, sig, args):
        wide = builder.bitcast(args[0], ir.IntType(256))
        return builder.icmp_unsigned("!=", wide, ir.Constant(ir.IntType(256), 0))

    return types.boolean(u64x4), codegen


# ---------------------------------------------------------------------------------- 64 x int16

i16x64 = _vector_type("i16x64", "I16x64", _HT, "64 int16 lanes in one LLVM vector.")


@intrinsic
def hfill(typingctx, x):
    """All 64 lanes = the integer ``x`` (truncated to int16)."""

    def codegen(context, builder, sig, args):
        return _splat(builder, _HT, builder.trunc(args[0], _I16))

    return i16x64(types.int64), codegen


hadd = _binop(i16x64, "add", "Lane-wise a + b, wrapping.")
hsub = _binop(i16x64, "sub", "Lane-wise a - b, wrapping.")
hload = _load(i16x64, _HT, 2, "arr[i .. i+63] of a contiguous 1-D int16 array.")
hstore = _store(i16x64, _HT, 2, "arr[i .. i+63] = the lanes of ``v``.")


@intrinsic
def hmask(typingctx, word):
    """Lane i = -1 where bit i of the uint64 ``word`` is set, else 0."""

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], ir.VectorType(_I1, 64))
        return builder.sext(bits, _HT)

    return i16x64(types.uint64), codegen


@intrinsic
def hge(typingctx, v, t):
    """The uint64 whose bit i is ``v[i] >= t[i]`` (signed)."""

    def codegen(context, builder, sig, args):
        m = builder.icmp_signed(">=", args[0], args[1])
        return builder.bitcast(m, _I64)

    return types.uint64(i16x64, i16x64), codegen


# ----------------------------------------------------------------------------------- 64 x int8

i8x64 = _vector_type("i8x64", "I8x64", _BT, "64 int8 lanes in one LLVM vector.")


@intrinsic
def bzero(typingctx):
    """64 int8 zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_BT, [0] * 64)

    return i8x64(), codegen


badd = _binop(i8x64, "add", "Lane-wise a + b, wrapping.")
bload = _load(i8x64, _BT, 1, "arr[i .. i+63] of a contiguous 1-D int8 array.")
bstore = _store(i8x64, _BT, 1, "arr[i .. i+63] = the lanes of ``v``.")


@intrinsic
def bsigns(typingctx, word, flip):
    """Lane i = +1 where bit i of ``word`` XOR ``flip`` is set, else -1 (int8)."""

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(builder.xor(args[0], args[1]), ir.VectorType(_I1, 64))
        one = ir.Constant(_BT, [1] * 64)
        return builder.select(bits, one, ir.Constant(_BT, [-1] * 64))

    return i8x64(types.uint64, types.uint64), codegen


def _extend(signed: bool, doc: str):
    """The int8 lanes of a vector extended to int16, sign- or zero-extended."""

    @intrinsic
    def op(typingctx, v):
        def codegen(context, builder, sig, args):
            return (builder.sext if signed else builder.zext)(args[0], _HT)

        return i16x64(i8x64), codegen

    op.__doc__ = doc
    return op


widen = _extend(True, "The int8 lanes of ``v`` sign-extended to int16.")
uwiden = _extend(False, "The int8 lanes of ``v`` zero-extended to int16 (unsigned bytes 0..255).")


@intrinsic
def widen_store8(typingctx, dst, i, src, j):
    """dst[i .. i+7] = src[j .. j+7]: int16 ``src`` sign-extended into the int32 ``dst`` (one
    ``vpmovsxwd`` load and one store on AVX2; a masked store, ``vpmaskmovd``, is microcoded on
    AMD Zen 2 and took ~20 cycles)."""

    def codegen(context, builder, sig, args):
        v8 = ir.VectorType(_I16, 8)
        w8 = ir.VectorType(_I32, 8)
        s = context.make_array(sig.args[2])(context, builder, args[2])
        d = context.make_array(sig.args[0])(context, builder, args[0])
        ps = builder.bitcast(builder.gep(s.data, [args[3]]), v8.as_pointer())
        v = builder.sext(builder.load(ps, align=2), w8)
        pd = builder.bitcast(builder.gep(d.data, [args[1]]), w8.as_pointer())
        builder.store(v, pd, align=4)
        return context.get_dummy_value()

    return types.none(dst, types.uint64, src, types.uint64), codegen


_B16 = ir.VectorType(_I8, 16)
_B32 = ir.VectorType(_I8, 32)


def _lanes(*idx: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(idx)), list(idx))


@intrinsic
def blookup(typingctx, table, i, idx):
    """Lane k = ``table[i + idx[k]]`` for ``idx[k]`` in 0..15: a 16-entry byte table (uint8
    array, from element ``i``) looked up by every lane, i.e. ``vpshufb`` with the table broadcast
    to both 128-bit halves (AVX2; two instructions per 64 lanes). Indices above 15 are not
    allowed (``vpshufb`` would read bit 7 as "zero the lane" and ignore bits 4-6)."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _B16.as_pointer())
        t16 = builder.load(p, align=1)
        t32 = builder.shuffle_vector(
            t16, ir.Constant(_B16, ir.Undefined), _lanes(*range(16), *range(16))
        )
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_B32, [_B32, _B32]), "llvm.x86.avx2.pshuf.b"
        )
        undef = ir.Constant(_BT, ir.Undefined)
        lo = builder.call(fn, [t32, builder.shuffle_vector(args[2], undef, _lanes(*range(32)))])
        hi = builder.call(fn, [t32, builder.shuffle_vector(args[2], undef, _lanes(*range(32, 64)))])
        return builder.shuffle_vector(lo, hi, _lanes(*range(64)))

    return i8x64(table, types.uint64, i8x64), codegen


@intrinsic
def hstore_wide(typingctx, arr, i, v):
    """arr[i .. i+63] = the int16 lanes of ``v`` sign-extended, into a contiguous 1-D int32
    array (eight ``vpmovsxwd`` and stores on AVX2)."""

    def codegen(context, builder, sig, args):
        w = ir.VectorType(_I32, 64)
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), w.as_pointer())
        builder.store(builder.sext(args[2], w), p, align=4)
        return context.get_dummy_value()

    return types.none(arr, types.uint64, i16x64), codegen
