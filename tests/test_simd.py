"""mstc.engine.simd: each four-lane operation against numpy on random words."""

import numpy as np
from numba import njit

from mstc.engine.simd import vand, vany, vfill, vlane, vload, vor, vstore, vxor


@njit(cache=True)
def _ops(a, b, x, out, lanes, flags):  # pragma: no cover - numba
    va = vload(a, np.uint64(0))
    vb = vload(b, np.uint64(4))  # an unaligned offset: b[4:8]
    vstore(out, np.uint64(0), vxor(va, vb))
    vstore(out, np.uint64(4), vand(va, vb))
    vstore(out, np.uint64(8), vor(va, vb))
    vstore(out, np.uint64(12), vfill(x))
    for lane in range(4):
        lanes[lane] = vlane(va, np.uint64(lane))
    flags[0] = vany(vfill(np.uint64(0)))
    flags[1] = vany(va)
    flags[2] = vany(vand(va, vfill(np.uint64(1) << np.uint64(63))))


def test_four_lane_ops_equal_numpy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 2**64, 4, dtype=np.uint64)
        b = rng.integers(0, 2**64, 9, dtype=np.uint64)
        x = np.uint64(rng.integers(0, 2**64, dtype=np.uint64))
        out = np.zeros(16, np.uint64)
        lanes = np.zeros(4, np.uint64)
        flags = np.zeros(3, np.bool_)
        _ops(a, b, x, out, lanes, flags)
        np.testing.assert_array_equal(out[0:4], a ^ b[4:8])
        np.testing.assert_array_equal(out[4:8], a & b[4:8])
        np.testing.assert_array_equal(out[8:12], a | b[4:8])
        np.testing.assert_array_equal(out[12:16], np.full(4, x, np.uint64))
        np.testing.assert_array_equal(lanes, a)
        assert not flags[0]
        assert flags[1] == bool(a.any())
        assert flags[2] == bool((a >> np.uint64(63)).any())
    # a single set bit in any lane counts
    for lane in range(4):
        for bit in (0, 31, 63):
            a = np.zeros(4, np.uint64)
            a[lane] = np.uint64(1) << np.uint64(bit)
            flags = np.zeros(3, np.bool_)
            _ops(a, np.zeros(9, np.uint64), np.uint64(0), np.zeros(16, np.uint64),
                 np.zeros(4, np.uint64), flags)  # fmt: skip
            assert flags[1]
