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
from numba.extending import intrinsic, models, register_model

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VT = ir.VectorType(_I64, 4)


class U64x4(types.Type):
    """Four uint64 lanes in one LLVM vector."""

    def __init__(self) -> None:
        super().__init__(name="u64x4")


u64x4 = U64x4()


@register_model(U64x4)
class _U64x4Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _VT)


@intrinsic
def vfill(typingctx, x):
    """All four lanes = the uint64 ``x``."""

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), args[0], ir.Constant(_I32, 0))
        zeros = ir.Constant(ir.VectorType(_I32, 4), [0, 0, 0, 0])
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined), zeros)

    return u64x4(types.uint64), codegen


def _binop(name: str):
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return u64x4(u64x4, u64x4), codegen

    return op


vxor = _binop("xor")
vand = _binop("and_")
vor = _binop("or_")


@intrinsic
def vload(typingctx, arr, i):
    """(arr[i], arr[i+1], arr[i+2], arr[i+3]) of a contiguous 1-D uint64 array."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _VT.as_pointer())
        return builder.load(p, align=8)

    return u64x4(arr, types.uint64), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """arr[i .. i+3] = the lanes of ``v``."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _VT.as_pointer())
        builder.store(args[2], p, align=8)
        return context.get_dummy_value()

    return types.none(arr, types.uint64, u64x4), codegen


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


# ------------------------------------------------------------------------------- 64 x int16

_I16 = ir.IntType(16)
_HT = ir.VectorType(_I16, 64)


class I16x64(types.Type):
    """64 int16 lanes in one LLVM vector."""

    def __init__(self) -> None:
        super().__init__(name="i16x64")


i16x64 = I16x64()


@register_model(I16x64)
class _I16x64Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _HT)


def _splat16(builder, x):
    v = builder.insert_element(ir.Constant(_HT, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(
        v, ir.Constant(_HT, ir.Undefined), ir.Constant(ir.VectorType(_I32, 64), [0] * 64)
    )


@intrinsic
def hfill(typingctx, x):
    """All 64 lanes = the integer ``x`` (truncated to int16)."""

    def codegen(context, builder, sig, args):
        return _splat16(builder, builder.trunc(args[0], _I16))

    return i16x64(types.int64), codegen


def _hbinop(name: str):
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return i16x64(i16x64, i16x64), codegen

    return op


hadd = _hbinop("add")
hsub = _hbinop("sub")


@intrinsic
def hload(typingctx, arr, i):
    """arr[i .. i+63] of a contiguous 1-D int16 array."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _HT.as_pointer())
        return builder.load(p, align=2)

    return i16x64(arr, types.uint64), codegen


@intrinsic
def hstore(typingctx, arr, i, v):
    """arr[i .. i+63] = the lanes of ``v``."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _HT.as_pointer())
        builder.store(args[2], p, align=2)
        return context.get_dummy_value()

    return types.none(arr, types.uint64, i16x64), codegen


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


# -------------------------------------------------------------------------------- 64 x int8

_I8 = ir.IntType(8)
_BT = ir.VectorType(_I8, 64)


class I8x64(types.Type):
    """64 int8 lanes in one LLVM vector."""

    def __init__(self) -> None:
        super().__init__(name="i8x64")


i8x64 = I8x64()


@register_model(I8x64)
class _I8x64Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _BT)


@intrinsic
def bzero(typingctx):
    """64 int8 zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_BT, [0] * 64)

    return i8x64(), codegen


@intrinsic
def badd(typingctx, a, b):
    """Lane-wise a + b, wrapping."""

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return i8x64(i8x64, i8x64), codegen


@intrinsic
def bload(typingctx, arr, i):
    """arr[i .. i+63] of a contiguous 1-D int8 array."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _BT.as_pointer())
        return builder.load(p, align=1)

    return i8x64(arr, types.uint64), codegen


@intrinsic
def bstore(typingctx, arr, i, v):
    """arr[i .. i+63] = the lanes of ``v``."""

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        p = builder.bitcast(builder.gep(a.data, [args[1]]), _BT.as_pointer())
        builder.store(args[2], p, align=1)
        return context.get_dummy_value()

    return types.none(arr, types.uint64, i8x64), codegen


@intrinsic
def bsigns(typingctx, word, flip):
    """Lane i = +1 where bit i of ``word`` XOR ``flip`` is set, else -1 (int8)."""

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(builder.xor(args[0], args[1]), ir.VectorType(_I1, 64))
        one = ir.Constant(_BT, [1] * 64)
        return builder.select(bits, one, ir.Constant(_BT, [-1] * 64))

    return i8x64(types.uint64, types.uint64), codegen


@intrinsic
def widen(typingctx, v):
    """The int8 lanes of ``v`` sign-extended to int16."""

    def codegen(context, builder, sig, args):
        return builder.sext(args[0], _HT)

    return i16x64(i8x64), codegen


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
