"""A BatchNorm between a float op and a binary conv, folded into a per-channel float threshold.

``float_threshold_rule`` must give exactly sign(BN(x)) for every float32 x (torch's own BN,
negative gammas, tiny variances, infinities, zeros of both signs, NaN); the three packers fed a
rule must equal packing the rule's bits; and runtimes that fold (vgg_small's stem BN) must keep
logits and integer sums identical to the reference backend, which runs the BN in torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_batchnorm
from hypothesis import given, settings
from hypothesis import strategies as st

import mstc
from mstc.engine import Runtime, run
from mstc.engine.binarize import packed_input
from mstc.engine.fold import RuledInput, float_threshold_rule
from mstc.engine.mst_kernel import signed_planes
from mstc.engine.packed import check_input
from mstc.engine.sliced import PlaneGeometry, float_rule_bits, pack_planes
from mstc.format import BinaryLayerCode
from mstc.models import create_model
from mstc.mst import plan


def _bn(mean, var, w, b, eps=1e-5):
    t = torch.from_numpy

    def f(z: np.ndarray) -> np.ndarray:  # (m, C) -> (m, C), torch's BN on an NCHW tensor
        x = t(np.ascontiguousarray(z.T[None, :, None, :]))
        return F.batch_norm(x, t(mean), t(var), t(w), t(b), False, 0.0, eps).numpy()[0, :, 0].T

    return f


def _special(rng, shape):
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 4, shape)).astype(np.float32)
    flat = x.reshape(-1)
    flat[::7] = 0.0
    flat[1::11] = -0.0
    flat[2::13] = np.inf
    flat[3::17] = -np.inf
    flat[4::19] = np.nan
    return x


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_float_threshold_rule_is_sign_of_bn(c, seed):
    rng = np.random.default_rng(seed)
    mean = (rng.standard_normal(c) * 5).astype(np.float32)
    var = (rng.random(c) * 3 + 10.0 ** rng.integers(-6, 1, c)).astype(np.float32)
    w = (rng.standard_normal(c) * 10.0 ** rng.integers(-3, 3, c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    b[rng.random(c) < 0.2] = 0.0
    f = _bn(mean, var, w, b)
    rule = float_threshold_rule(f, c)
    assert rule is not None  # a BN with nonzero gammas is monotone per channel
    x = _special(rng, (3, c, 4, 9))
    want = f(np.moveaxis(x, 1, -1).reshape(-1, c)) >= 0
    got = float_rule_bits(x, *rule)
    np.testing.assert_array_equal(np.moveaxis(got, 1, -1).reshape(-1, c), want)


def test_zero_gamma_is_not_folded():
    """gamma = 0: BN(x) = beta for finite x but NaN at the infinities -- not a threshold."""
    f = _bn(np.zeros(2, np.float32), np.ones(2, np.float32), np.array([1, 0], np.float32),
            np.array([0.5, 0.5], np.float32))  # fmt: skip
    assert float_threshold_rule(f, 2) is None


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 70),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 9)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    seed=st.integers(0, 2**16),
)
def test_packers_with_rule(n, c, hw, pad, seed):
    """packed_input / signed_planes / pack_planes with a rule == packing the rule's bits."""
    rng = np.random.default_rng(seed)
    x = _special(rng, (n, c, *hw))
    mode = rng.integers(0, 4, c).astype(np.int8)
    t = rng.standard_normal(c).astype(np.float32)
    t[rng.random(c) < 0.2] = 0.0
    as_sign = np.where(float_rule_bits(x, mode, t), 1.0, -1.0).astype(np.float32)
    np.testing.assert_array_equal(packed_input(x, pad, 1, (mode, t)), packed_input(as_sign, pad))
    np.testing.assert_array_equal(
        signed_planes(x, pad, 3, 1, (mode, t)), signed_planes(as_sign, pad, 3)
    )
    hp, wp = hw[0] + 2 * pad[0], hw[1] + 2 * pad[1]
    g = PlaneGeometry(n, c, hw[0], hw[1], pad[0], pad[1], (n * hp * wp + 63) // 64 + 2)
    np.testing.assert_array_equal(pack_planes(x, g, (mode, t)).bits, pack_planes(as_sign, g).bits)


def test_ruled_input_checked():
    bits = np.random.default_rng(0).integers(0, 2, (4, 3 * 9)).astype(np.uint8)
    layer = BinaryLayerCode.from_bits(
        "L", bits, plan(bits), kind="conv2d", cin=3, kernel_size=(3, 3), stride=(1, 1),
        padding=(1, 1), dilation=(1, 1),
    )  # fmt: skip
    x = np.zeros((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="rule"):
        check_input(layer, RuledInput(x, np.zeros(2, np.int8), np.zeros(2, np.float32)))


@pytest.mark.parametrize("backend", ["packed", "mst", "sliced-dense"])
def test_vgg_stem_bn_folded_exact(backend):
    """vgg_small: conv0 -> bn0 -> features.0; random BN statistics (negative gammas); the folded
    runtime's logits and sums equal the reference's, at the traced shape and another batch."""
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("vgg_small", width=0.1, image_size=16), 4)
    cm = mstc.compress(model, complement=True, input_shape=(3, 16, 16))
    rt = Runtime(cm, backend, threads=1)
    assert [bn for bn, _, _ in rt.input_folds.values()] == ["bn0"]
    assert Runtime(cm, "reference").input_folds == {}
    x = _special(np.random.default_rng(1), (3, 3, 16, 16))
    x[np.isnan(x) | np.isinf(x)] = 1.0  # the model input must be finite
    for xi in (x, x[:1]):
        ref_logits, ref = run(cm, xi, "reference", return_sums=True)
        logits, sums = rt.run(xi, return_sums=True)
        for k in ref:
            np.testing.assert_array_equal(sums[k], ref[k], err_msg=k)
        np.testing.assert_array_equal(logits.view(np.uint32), ref_logits.view(np.uint32))
