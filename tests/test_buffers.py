"""The runtime's buffer pool: arrays are reused pass to pass, and nothing a pass returns is
overwritten by the next one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mstc
from mstc.engine import Runtime
from mstc.engine.buffers import BufferPool
from mstc.models import create_model
from mstc.nn import BinaryConv2d, BinaryLinear
from tests.conftest import randomize_batchnorm


def test_pool_lends_and_takes_back():
    pool = BufferPool()
    a = pool.empty((3, 5), np.int32)
    assert pool.lent(a.ctypes.data)
    pool.give(a.reshape(15))  # a view starting at the array's memory
    assert not pool.lent(a.ctypes.data)
    assert pool.empty((3, 5), np.int32) is a  # reused for the same shape and dtype
    assert pool.empty((3, 5), np.int32) is not a  # a is lent again: a new one
    assert pool.empty((3, 5), np.float32).dtype == np.float32
    foreign = np.zeros((3, 5), np.int32)
    pool.give(foreign)  # not lent by the pool: ignored
    pool.give(a)
    pool.give(a)  # twice: harmless
    b = pool.empty((3, 5), np.int32)
    assert b is a and pool.empty((3, 5), np.int32) is not foreign
    pool.forget(b)  # b now belongs to the caller
    pool.reclaim()
    assert all(pool.empty((3, 5), np.int32) is not b for _ in range(4))


def _ends_in_epilogue() -> nn.Module:
    """The model's output is the float epilogue of a binary linear layer (BN1d after it)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        BinaryConv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        BinaryLinear(8 * 5 * 5, 6),
        nn.BatchNorm1d(6),
    )
    return randomize_batchnorm(net)


@pytest.mark.parametrize("backend", ["packed", "mst"])
@pytest.mark.parametrize("which", ["vgg_small", "resnet20", "epilogue-output"])
def test_passes_do_not_overwrite_results(backend, which):
    torch.manual_seed(0)
    if which == "epilogue-output":
        cm = mstc.compress(_ends_in_epilogue(), input_shape=(3, 5, 5))
    else:
        cm = mstc.compress(randomize_batchnorm(create_model(which, width=0.25)), complement=True)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, *cm.input_shape)).astype(np.float32) for _ in range(3)]
    rt = Runtime(cm, backend, threads=1)
    first, first_sums = rt.run(xs[0], return_sums=True)
    kept = first.copy(), {k: v.copy() for k, v in first_sums.items()}
    logits = [rt.run(x) for x in xs[1:]]
    sizes = []
    for x in xs * 2:  # the pool stops growing once every shape has been seen
        rt.run(x)
        sizes.append(rt.pool.nbytes)
    assert sizes[-1] == sizes[2] > 0
    again, again_sums = rt.run(xs[0], return_sums=True)
    # nothing returned earlier was touched by the later passes
    np.testing.assert_array_equal(first, kept[0])
    for k, v in first_sums.items():
        np.testing.assert_array_equal(v, kept[1][k])
    assert first.view(np.uint32).tolist() == again.view(np.uint32).tolist()
    for k, v in again_sums.items():
        np.testing.assert_array_equal(v, kept[1][k])
    # and every pass equals a fresh runtime's (the reference backend) bit for bit
    for x, got in zip(xs[1:], logits, strict=True):
        want = Runtime(cm, "reference").run(x)
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
