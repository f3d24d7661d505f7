"""The float ops that replace torch's: bit-identical to torch on random shapes and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mstc.engine.floatops import avg_pool2d


def _bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.int32)


def _torch_pool(x, k, s, p, ceil, include, div):
    return F.avg_pool2d(torch.from_numpy(x), k, s, p, ceil, include, div).numpy()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    data=st.data(),
)
def test_avg_pool2d_equals_torch(n, c, h, w, kh, kw, sh, sw, data):
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    ceil = data.draw(st.booleans())
    include = data.draw(st.booleans())
    div = data.draw(st.sampled_from([None, 1, 3, 4]))
    x = np.random.default_rng(h * 131 + w).standard_normal((n, c, h, w)).astype(np.float32)
    try:
        want = _torch_pool(x, (kh, kw), (sh, sw), (ph, pw), ceil, include, div)
    except RuntimeError:  # torch refuses the shape: so must we
        with pytest.raises(ValueError):
            avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil, include, div)
        return
    got = avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil, include, div)
    assert got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


def test_avg_pool2d_summation_order_and_zero_sign():
    """A million windows of values with wide exponents, where another summation order rounds
    differently (the test checks that it would); a window whose mean underflows to -0.0 (torch
    adds it to +0.0, giving +0.0)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 128, 128)) * 2.0 ** rng.integers(-20, 20, (4, 8, 128, 128))
    x = x.astype(np.float32)
    x[0, 0, :2, :2] = [[-(2.0**-149), 0.0], [0.0, 0.0]]  # -tiny / 4 rounds to -0.0
    args = ((2, 2), (2, 2), (0, 0), True, False, None)
    want = _torch_pool(x, *args)
    got = avg_pool2d(x, *args)
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert _bits(want[0, 0, 0, 0]) == 0 and _bits(got[0, 0, 0, 0]) == 0  # +0.0
    v = x.reshape(4, 8, 64, 2, 64, 2)
    pairwise = ((v[:, :, :, 0, :, 0] + v[:, :, :, 0, :, 1]) + (v[:, :, :, 1, :, 0] + v[:, :, :, 1, :, 1])) / np.float32(4)  # fmt: skip
    assert (_bits(pairwise) != _bits(want)).any()  # the order is what the test checks


def test_avg_pool2d_ceil_mode_partial_windows():
    """Odd sizes with ceil_mode: the last window holds 1 or 2 cells and divides by that."""
    x = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7) / 7
    for include, div in ((False, None), (True, None), (False, 3)):
        args = ((2, 2), (2, 2), (0, 0), True, include, div)
        np.testing.assert_array_equal(_bits(avg_pool2d(x, *args)), _bits(_torch_pool(x, *args)))


def test_avg_pool2d_rejects_bad_input():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="float32"):
        avg_pool2d(x.astype(np.float64), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="bad kernel"):
        avg_pool2d(x, (2, 2), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="out must be"):
        avg_pool2d(x, (2, 2), (2, 2), (0, 0), out=np.empty((1, 1, 3, 3), np.float32))
