"""The int16 tree walk in vector lanes (mstc.engine.walk16) and its int8 / int16 vector ops.

Contract: sums equal to XNOR-popcount (the packed backend) and to the plain walk, emitted bits
(placed by emit_planes, pooled or not) equal to the rule applied to those sums, on random shapes,
complement edges, nodes of more than 127 differing taps, one or two workers; bad arguments raise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import njit
from test_sliced import _layer, _packed_sums

from mstc.engine import walk16
from mstc.engine.fold import apply_rule
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
    hmask,
    hstore,
    hsub,
    widen,
)
from mstc.engine.sliced import (
    CONST0,
    CONST1,
    GE,
    LE,
    SlicedLayer,
    pack_planes,
    plane_geometry,
    unpack_planes,
)


@njit(cache=True)
def _ops16(a, b, w, t, out):  # pragma: no cover - numba
    va = hload(a, np.uint64(0))
    vb = hload(b, np.uint64(3))  # unaligned
    hstore(out, np.uint64(0), hadd(va, vb))
    hstore(out, np.uint64(64), hsub(va, vb))
    hstore(out, np.uint64(128), hmask(w))
    hstore(out, np.uint64(192), hfill(t))
    return hge(va, vb)


@njit(cache=True)
def _ops8(a, b, w, f, out8, out16):  # pragma: no cover - numba
    va = bload(a, np.uint64(0))
    vb = bload(b, np.uint64(5))
    bstore(out8, np.uint64(0), badd(va, vb))
    bstore(out8, np.uint64(64), bsigns(w, f))
    bstore(out8, np.uint64(128), badd(bzero(), va))
    hstore(out16, np.uint64(0), widen(va))


def test_vector_ops_equal_numpy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(-(2**15), 2**15, 64).astype(np.int16)
        b = rng.integers(-(2**15), 2**15, 70).astype(np.int16)
        b[3:67:5] = a[::5]  # some equal lanes: >= holds
        w = np.uint64(rng.integers(0, 2**64, dtype=np.uint64))
        t = int(rng.integers(-(2**15), 2**15))
        out = np.zeros(256, np.int16)
        m = _ops16(a, b, w, t, out)
        bits = (w >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(out[:64], a + b[3:67])
            np.testing.assert_array_equal(out[64:128], a - b[3:67])
        np.testing.assert_array_equal(out[128:192], -bits.astype(np.int16))
        np.testing.assert_array_equal(out[192:], np.full(64, t, np.int16))
        want = sum(1 << i for i in range(64) if a[i] >= b[3 + i])
        assert int(m) == want
        a8 = rng.integers(-128, 128, 64).astype(np.int8)
        b8 = rng.integers(-128, 128, 70).astype(np.int8)
        f = np.uint64(rng.integers(0, 2**64, dtype=np.uint64))
        out8 = np.zeros(192, np.int8)
        out16 = np.zeros(64, np.int16)
        _ops8(a8, b8, w, f, out8, out16)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(out8[:64], a8 + b8[5:69])
        sb = ((w ^ f) >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        np.testing.assert_array_equal(out8[64:128], np.where(sb == 1, 1, -1).astype(np.int8))
        np.testing.assert_array_equal(out8[128:], a8)
        np.testing.assert_array_equal(out16, a8.astype(np.int16))


def _rule(rng, layer):
    mode = rng.choice(
        np.array([GE, LE, CONST0, CONST1], np.int8), layer.cout, p=[0.4, 0.4, 0.1, 0.1]
    )
    return mode, rng.integers(-1, layer.n + 2, layer.cout)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    cin=st.integers(1, 70),
    cout=st.integers(1, 40),
    k=st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 2)]),
    dil=st.sampled_from([(1, 1), (2, 1)]),
    pad=st.sampled_from([(0, 0), (1, 1), (2, 0)]),
    n=st.integers(1, 3),
    h=st.integers(2, 12),
    w=st.integers(2, 40),
    centres=st.integers(1, 4),
    flip=st.sampled_from([0.0, 0.02, 0.3, 0.6]),
    invert=st.sampled_from([0.0, 0.3]),
    nthreads=st.sampled_from([1, 2]),
)
def test_walk_equals_xnor_and_rule(
    seed, cin, cout, k, dil, pad, n, h, w, centres, flip, invert, nthreads
):
    """Walk16 sums == XNOR-popcount sums == the plain walk; emitted bits == rule(sums)."""
    assume(h + 2 * pad[0] > dil[0] * (k[0] - 1) and w + 2 * pad[1] > dil[1] * (k[1] - 1))
    rng = np.random.default_rng(seed)
    layer = _layer(rng, cin, cout, k, dil, pad, centres, flip, invert)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # sign(0) = +1
    want = _packed_sums(layer, x)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, n, h, w)
    planes = pack_planes(x, g)
    rule = _rule(rng, layer)
    walk = walk16.Walk16(sched, g, rule, nthreads)
    OB = np.zeros((cout, walk.columns), np.uint64)
    np.testing.assert_array_equal(walk(planes, OB, sums=True), want)
    np.testing.assert_array_equal(walk16.walk_sums_ref(sched, planes), want)
    bits = np.moveaxis(apply_rule(rule, np.moveaxis((want + layer.n) // 2, 1, -1)), -1, 1)
    ho, wo = want.shape[2:]
    nxt_layer = _layer(rng, cout, 2, (3, 3), (1, 1), (1, 1), 1, 0.0, 0.0)
    step = walk16.FusedWalk(sched, g, rule, False, plane_geometry(nxt_layer, n, ho, wo), nthreads)
    for _ in range(2):  # a prepared step called again
        out, sums = step.with_sums(planes)
        np.testing.assert_array_equal(unpack_planes(out), bits)
        np.testing.assert_array_equal(sums, want)
    if ho >= 2 and wo >= 2:
        pooled = bits[:, :, : ho // 2 * 2, : wo // 2 * 2]
        pooled = pooled.reshape(n, cout, ho // 2, 2, wo // 2, 2).max(axis=(3, 5))
        nxt = plane_geometry(nxt_layer, n, ho // 2, wo // 2)
        step = walk16.FusedWalk(sched, g, rule, True, nxt, nthreads)
        other = pack_planes(-x, g)  # another input first: the step rewrites its planes whole
        step(other)
        np.testing.assert_array_equal(unpack_planes(step(planes)), pooled)


@pytest.mark.parametrize("ones", [True, False])
def test_long_difference_lists(ones):
    """Roots of 600 taps and children of 200-599 differing taps, with partial sums far beyond
    int8 (an all-positive input on all-(+1) weights: every tap adds +1, every difference -1):
    the int8 partial sums are flushed to int16 every 127 taps."""
    from mstc.format import BinaryLayerCode
    from mstc.mst import plan

    rng = np.random.default_rng(3)
    cin, kh, kw = 120, 1, 5
    n = cin * kh * kw
    bits = np.ones((6, n), np.uint8)
    for j, d in enumerate([200, 290, 310, 450, 599], start=1):
        bits[j, rng.permutation(n)[:d]] = 0
    p = plan(bits, complement=True)
    layer = BinaryLayerCode.from_bits(
        "l", bits, p, kind="conv2d", cin=cin, kernel_size=(kh, kw), stride=(1, 1),
        padding=(0, 2), dilation=(1, 1),
    )  # fmt: skip
    sched = SlicedLayer(layer)
    assert np.diff(sched.ptr).max() >= 200
    x = rng.standard_normal((1, cin, 3, 9)).astype(np.float32)
    if ones:
        x = np.abs(x) + 0.1
    g = plane_geometry(layer, 1, 3, 9)
    want = _packed_sums(layer, x)
    if ones:
        assert np.abs(want).max() > 400
    got = walk16.Walk16(sched, g)(pack_planes(x, g), sums=True)
    np.testing.assert_array_equal(got, want)


def test_bad_arguments():
    rng = np.random.default_rng(4)
    layer = _layer(rng, 4, 5, (3, 3), (1, 1), (1, 1), 2, 0.1, 0.0)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, 1, 6, 6)
    walk = walk16.Walk16(sched, g, _rule(rng, layer))
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="emitted bits"):
        walk(pack_planes(x, g), np.zeros((5, walk.columns - 1), np.uint64))
    with pytest.raises(ValueError, match="emitted bits"):
        walk(pack_planes(x, g), np.zeros((4, walk.columns), np.uint64))
    g2 = plane_geometry(layer, 1, 7, 6)
    with pytest.raises(ValueError, match="not this walk's"):
        walk(pack_planes(rng.standard_normal((1, 4, 7, 6)).astype(np.float32), g2), sums=True)
    big = _layer(rng, 2000, 2, (3, 3), (1, 1), (1, 1), 1, 0.0, 0.0)  # n = 18000 > 16383
    assert not walk16.fits(SlicedLayer(big))
    with pytest.raises(ValueError, match="taps"):
        walk16.Walk16(SlicedLayer(big), plane_geometry(big, 1, 3, 3))


def test_parallel_kernels_leave_torch_threads():
    """numba's OpenMP layer shares libgomp with torch: a parallel launch there sets torch's
    thread count (and so the order of torch's float sums); the engines use another layer."""
    import numba

    rng = np.random.default_rng(5)
    layer = _layer(rng, 8, 6, (3, 3), (1, 1), (1, 1), 2, 0.1, 0.0)
    before = torch.get_num_threads()
    g = plane_geometry(layer, 3, 12, 12)
    x = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    walk16.Walk16(SlicedLayer(layer), g, None, 2)(pack_planes(x, g), sums=True)
    _packed_sums(layer, x)
    assert numba.threading_layer() != "omp"
    assert torch.get_num_threads() == before
