"""The table-lookup XNOR kernel (:mod:`mstc.engine.lut`) equals the popcount kernel and the
reference backend bit for bit: single convs over random shapes (strides, dilations, paddings,
channel counts off multiples of 8 and 4, partial chunks, 1 and 2 threads), its numpy reference,
the Bi-Real epilogue path, the uint8 counters' flush, whole models through both engines, and bad
arguments."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mstc
from mstc.bench import cluster_weights
from mstc.engine import lut, run
from mstc.engine import packed as pk
from mstc.engine.binarize import packed_input
from mstc.engine.fold import CONST0, CONST1, GE, LE, RuledInput
from mstc.models import create_model

pytestmark = pytest.mark.skipif(not lut.available(), reason="the lookup kernel needs AVX2")


def _conv(xp, wT, n, g, Ho, Wo, kernel, threads=1, epilogue=None, monkeypatch=None):
    monkeypatch.setattr(pk, "XNOR_KERNEL", kernel)
    dtype = np.int32 if epilogue is None else np.float32
    out = np.full((xp.shape[0], wT.shape[1], Ho * Wo), -7, dtype)
    pk.xnor_conv(xp, wT, n, g, Ho, Wo, out, threads, epilogue)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.integers(1, 3),
    cin=st.sampled_from([1, 3, 7, 8, 9, 16, 24, 33, 64, 70, 130]),
    cout=st.integers(1, 11),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    hw=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_lookup_equals_popcount(
    batch, cin, cout, k, stride, dilation, padding, hw, threads, seed, monkeypatch
):
    """xnor_conv by table lookups == by popcounts == lut_sums_ref, any geometry."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = k, stride, dilation, padding
    h = max(hw[0], dh * (kh - 1) + 1 - 2 * ph)
    w = max(hw[1], dw * (kw - 1) + 1 - 2 * pw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    n = cin * kh * kw
    wT = pk.packed_weights(rng.integers(0, 2, (cout, n)).astype(np.uint8), cin, kh, kw)
    xp = packed_input(x, (ph, pw))
    Ho, Wo = pk.out_size(h, kh, sh, ph, dh), pk.out_size(w, kw, sw, pw, dw)
    g = (kh, kw, sh, sw, dh, dw)
    want = _conv(xp, wT, n, g, Ho, Wo, "popcount", monkeypatch=monkeypatch)
    got = _conv(xp, wT, n, g, Ho, Wo, "lut", threads, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(got, want)
    ref = lut.lut_sums_ref(xp, lut.lut_tables(wT, cin, kh, kw), cin, g, Ho, Wo, cout)
    np.testing.assert_array_equal(ref.reshape(want.shape), want)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.integers(1, 3),
    cin=st.sampled_from([1, 5, 8, 13, 16, 32, 45]),
    cout=st.integers(1, 9),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    ruled=st.booleans(),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_layer_inputs(batch, cin, cout, k, stride, padding, hw, ruled, threads, seed, monkeypatch):
    """xnor_layer on float inputs (sign, or a RuledInput with every mode; NaNs and zeros mixed
    in), with the sums by table lookups == by popcounts."""
    h, w = max(hw[0], k - 2 * padding[0]), max(hw[1], k - 2 * padding[1])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    n = cin * k * k
    wT = pk.packed_weights(rng.integers(0, 2, (cout, n)).astype(np.uint8), cin, k, k)
    layer = SimpleNamespace(
        name="L", n=n, cin=cin, cout=cout, kind="conv2d", kernel_size=(k, k), stride=(stride, stride),
        padding=padding, dilation=(1, 1),
    )  # fmt: skip
    inp = x
    if ruled:
        mode = rng.choice([GE, LE, CONST0, CONST1], cin).astype(np.int8)
        inp = RuledInput(x, mode, rng.standard_normal(cin).astype(np.float32))
    monkeypatch.setattr(pk, "XNOR_KERNEL", "popcount")
    want = pk.xnor_layer(layer, inp, wT, threads, None).copy()
    monkeypatch.setattr(pk, "XNOR_KERNEL", "lut")
    got = pk.xnor_layer(layer, inp, wT, threads, None)
    np.testing.assert_array_equal(got, want)


def test_counters_flush(monkeypatch):
    """Every tap mismatching (input all -1, padding -1 too, weights all +1): 8 mismatches per
    tap-plane and 72 tap-planes (64 channels 3x3), so the uint8 counters must be widened before
    32 tap-planes (31 * 8 <= 255); every sum is -n."""
    cin, cout, n = 64, 5, 64 * 9
    x = -np.ones((2, cin, 6, 7), np.float32)
    wT = pk.packed_weights(np.ones((cout, n), np.uint8), cin, 3, 3)
    xp = packed_input(x, (1, 1))
    got = _conv(xp, wT, n, (3, 3, 1, 1, 1, 1), 6, 7, "lut", monkeypatch=monkeypatch)
    assert (got == -n).all()
    assert lut.FLUSH * 8 <= 255


def test_epilogue_path(monkeypatch):
    """The Bi-Real epilogue applied by the lookup kernel == applied by the popcount kernel (both
    are tested against the unfused torch ops in tests/test_epilogue.py), bit for bit."""
    rng = np.random.default_rng(0)
    for cin, cout, hw, s in [(16, 16, (9, 11), 1), (32, 6, (4, 4), 1), (64, 9, (8, 8), 1),
                             (16, 6, (9, 11), 2)]:  # fmt: skip
        N, n = 3, cin * 9
        x = rng.standard_normal((N, cin, *hw)).astype(np.float32)
        wT = pk.packed_weights(rng.integers(0, 2, (cout, n)).astype(np.uint8), cin, 3, 3)
        xp = packed_input(x, (1, 1))
        ho, wo = pk.out_size(hw[0], 3, s, 1, 1), pk.out_size(hw[1], 3, s, 1, 1)
        sc = rng.standard_normal((N, cout, ho * wo)).astype(np.float32)
        coef = rng.standard_normal((4, cout)).astype(np.float32)
        sbn = rng.standard_normal((2, cout)).astype(np.float32)
        alpha = rng.standard_normal(cout).astype(np.float32)
        epi = (coef, sbn, alpha, sc)
        g = (3, 3, s, s, 1, 1)  # stride 2: chunks across images (runs from lanes > 0)
        for threads in (1, 2):
            want = _conv(xp, wT, n, g, ho, wo, "popcount", threads, epi, monkeypatch)
            got = _conv(xp, wT, n, g, ho, wo, "lut", threads, epi, monkeypatch)
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize(
    "name,kw,shape",
    [
        ("resnet20", dict(width=0.5), (2, 3, 16, 16)),
        ("vgg_small", dict(width=0.1, image_size=16), (3, 3, 16, 16)),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_models_by_lookup(name, kw, shape, threads, monkeypatch):
    """Both engines with every XNOR conv by table lookups: sums and logits == reference."""
    torch.manual_seed(2)
    model = create_model(name, **kw).eval()
    cluster_weights(model, centres=3, flip=0.05, seed=1)
    cm = mstc.compress(model, complement=True, input_shape=shape[1:])
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    ref_logits, ref = run(cm, x, "reference", return_sums=True)
    monkeypatch.setattr(pk, "XNOR_KERNEL", "lut")
    used = []
    plan_run = lut.LutPlan.run
    monkeypatch.setattr(
        lut.LutPlan, "run", lambda self, *a, **k: used.append(1) or plan_run(self, *a, **k)
    )
    for b in ("packed", "mst"):
        logits, sums = run(cm, x, b, threads=threads, return_sums=True)
        for k in ref:
            np.testing.assert_array_equal(sums[k], ref[k], err_msg=f"{b} {k}")
        np.testing.assert_array_equal(logits, ref_logits, err_msg=b)
    assert used  # the lookup kernel ran


def test_auto_rule(monkeypatch):
    """ "auto": lookups only for enough work and lane use; "popcount" never."""
    rng = np.random.default_rng(1)
    wT = pk.packed_weights(rng.integers(0, 2, (64, 576)).astype(np.uint8), 64, 3, 3)
    g = (3, 3, 1, 1, 1, 1)
    monkeypatch.setattr(pk, "_LUT_CPU", True)
    monkeypatch.setattr(pk, "XNOR_KERNEL", "auto")
    assert pk._lookup_kernel((32, 10, 10, 1), wT, 576, g, 8, 8) is not None
    assert pk._lookup_kernel((1, 10, 10, 1), wT, 576, g, 8, 8) is None  # too little work
    monkeypatch.setattr(pk, "LUT_MIN_WORK", 0)
    assert pk._lookup_kernel((64, 3, 3, 1), wT, 576, g, 1, 1) is None  # 1 of 64 lanes used
    monkeypatch.setattr(pk, "XNOR_KERNEL", "lut")
    assert pk._lookup_kernel((64, 3, 3, 1), wT, 576, g, 1, 1) is not None
    monkeypatch.setattr(pk, "XNOR_KERNEL", "popcount")
    assert pk._lookup_kernel((32, 10, 10, 1), wT, 576, g, 8, 8) is None


def test_bad_arguments():
    rng = np.random.default_rng(2)
    wT = pk.packed_weights(rng.integers(0, 2, (6, 144)).astype(np.uint8), 16, 3, 3)
    T = lut.lut_tables(wT, 16, 3, 3)
    assert T.shape == (8, 18, 2, 16)
    plan = lut.LutPlan((2, 6, 6, 1), 16, (3, 3, 1, 1, 1, 1), 4, 4)
    xp = np.zeros((2, 6, 6, 1), np.uint64)
    out = np.zeros((2, 6, 16), np.int32)
    plan.run(xp, T, 144, out)
    ref = lut.lut_sums_ref(xp, T, 16, (3, 3, 1, 1, 1, 1), 4, 4, 6)
    np.testing.assert_array_equal(out, ref.reshape(out.shape))
    with pytest.raises(ValueError, match="packed input"):
        plan.run(np.zeros((2, 6, 7, 1), np.uint64), T, 144, out)
    with pytest.raises(ValueError, match="tables"):
        plan.run(xp, T[:, :9], 144, out)
    with pytest.raises(ValueError, match="int16"):
        plan.run(xp, T, lut.MAX_TAPS + 1, out)
    with pytest.raises(ValueError, match="output"):
        plan.run(xp, T, 144, np.zeros((2, 6, 15), np.int32))
    with pytest.raises(ValueError, match="shortcut"):
        e = (np.ones((4, 6), np.float32), np.ones((2, 6), np.float32), np.ones(6, np.float32))
        plan.run(xp, T, 144, out.astype(np.float32), 1, (*e, np.zeros((2, 6, 15), np.float32)))
    with pytest.raises(ValueError, match="does not fit"):
        lut.LutPlan((2, 6, 6, 1), 16, (3, 3, 1, 1, 1, 1), 5, 4)
    with pytest.raises(ValueError, match="channels"):
        lut.LutPlan((2, 6, 6, 1), 65, (3, 3, 1, 1, 1, 1), 4, 4)
    with pytest.raises(ValueError, match="words"):
        lut.lut_tables(wT[:1], 16, 3, 3)
