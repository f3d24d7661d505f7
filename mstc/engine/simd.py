"""Four uint64 words in one vector register, for numba kernels that the auto-vectoriser leaves
scalar (the bit-sliced word kernel at batch 1: a node's few words, one at a time).

``u64x4`` is a numba type whose data model is the LLVM vector ``<4 x i64>``; the operations below
are ``@intrinsic`` functions that emit one LLVM vector instruction each, so values of this type
stay in registers (AVX2 ``ymm`` on x86; LLVM lowers the same IR on any target). Loads and
stores take a 1-D uint64 array and an element offset and touch 4 consecutive elements; callers
keep them in bounds. ``benchmarks/simd_lanes.py`` measures the approach.
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
