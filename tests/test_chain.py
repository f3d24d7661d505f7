"""Runs of Bi-Real blocks in one call (mstc.engine.chain) and the runtime's prepared steps.

A :class:`BiRealChain` equals, bit for bit, the blocks computed apart by the oracles: the
reference backend's integer sums of the binarised input, then the epilogue pass
(:class:`EpilogueKernel` called on the sums; tested against torch's ops in test_epilogue.py).
Compiled passes with prepared steps (chains included) give the reference backend's logits, and
fall back to the step-by-step path when the XNOR kernel is switched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_float_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mstc
import mstc.engine.chain as chain_mod
from mstc.engine import Runtime, get_backend, run
from mstc.engine import packed as pk
from mstc.engine.buffers import BufferPool
from mstc.engine.chain import BiRealChain
from mstc.engine.epilogue import EpilogueKernel
from mstc.engine.fold import CONST0, CONST1, GE, LE
from mstc.format import BinaryLayerCode, CompressedModel
from mstc.models import create_model
from mstc.mst import plan


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _layer(name: str, rng, cin: int, cout: int, stride: int) -> BinaryLayerCode:
    bits = rng.integers(0, 2, (cout, cin * 9)).astype(np.uint8)
    return BinaryLayerCode.from_bits(
        name, bits, plan(bits), kind="conv2d", cin=cin, kernel_size=(3, 3),
        stride=(stride, stride), padding=(1, 1), dilation=(1, 1),
    )  # fmt: skip


def _kernel(rng, C: int, n: int, shortcut_bn: bool) -> EpilogueKernel:
    """A Bi-Real epilogue (affine fma form, shortcut, PReLU) with random constants."""
    coef = rng.standard_normal((4, C)).astype(np.float32)
    alpha = rng.standard_normal(C).astype(np.float32)
    alpha[0] = 0.0
    sbn = None
    if shortcut_bn:
        sbn = np.stack([rng.standard_normal(C), rng.standard_normal(C)]).astype(np.float32)
    table = np.zeros((C, n + 1), np.float32)  # unused: the affine form stands in for it
    k = EpilogueKernel(table, n, alpha, add=True, affine=(coef, True), shortcut_bn=sbn)
    assert k.fuses_into_xnor
    return k


def _ruled(x: np.ndarray, mode: np.ndarray, t: np.ndarray) -> np.ndarray:
    """+-1 from the rule (fold.RuledInput's semantics: NaN gives bit 0)."""
    m, tt = mode[None, :, None, None], t[None, :, None, None]
    with np.errstate(invalid="ignore"):
        bit = np.where(m == GE, x >= tt, x <= tt)
    bit = np.where(m == CONST1, True, np.where(m == CONST0, False, bit)) & ~np.isnan(x)
    return np.where(bit, 1.0, -1.0).astype(np.float32)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 2),
    cin=st.integers(1, 70),
    C=st.sampled_from([1, 3, 8, 16, 33, 40]),
    stride=st.sampled_from([1, 2]),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    length=st.integers(2, 4),
    sbn=st.booleans(),
    pooled=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chain_equals_blocks(batch, cin, C, stride, hw, length, sbn, pooled, seed):
    """BiRealChain == block by block (reference sums, then the epilogue pass), every bit; the
    first block with its own input rule (every mode, NaNs and zeros), stride and shortcut."""
    rng = np.random.default_rng(seed)
    layers = [_layer("L0", rng, cin, C, stride)]
    layers += [_layer(f"L{i}", rng, C, C, 1) for i in range(1, length)]
    kernels = [_kernel(rng, C, L.n, sbn and i == 0) for i, L in enumerate(layers)]
    x = rng.standard_normal((batch, cin, *hw)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    mode = rng.choice([GE, LE, CONST0, CONST1], cin).astype(np.int8)
    t = rng.standard_normal(cin).astype(np.float32)
    ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
    shortcut = rng.standard_normal((batch, C, ho, wo)).astype(np.float32)

    weights = [pk.packed_weights(L.weight_bits(), L.cin, 3, 3) for L in layers]
    blocks = [pk.prepare_xnor(layers[0], x.shape, weights[0], (mode, t))]
    blocks += [
        pk.prepare_xnor(L, shortcut.shape, w) for L, w in zip(layers[1:], weights[1:], strict=True)
    ]
    assert all(b is not None for b in blocks)  # small layers: popcounts under "auto"
    chain = BiRealChain(blocks, kernels)
    pool = BufferPool() if pooled else None
    got = chain(x, shortcut, pool)

    cm = CompressedModel(nodes=[], tensors={}, layers={L.name: L for L in layers}, input_shape=())
    ref = get_backend("reference")(cm)
    cur, short = _ruled(x, mode, t), shortcut
    for L, k in zip(layers, kernels, strict=True):
        sums = ref.conv2d(L, cur)
        short = k(np.ascontiguousarray(sums, dtype=np.int32), short)
        cur = np.where(short >= 0, 1.0, -1.0).astype(np.float32)  # sign(): NaN-free here
    assert got.shape == short.shape
    np.testing.assert_array_equal(_bits(got), _bits(short))
    if pool is not None:  # only the output stays lent
        assert len(pool._lent) == 1


def test_chain_bad_arguments():
    rng = np.random.default_rng(0)
    a, b = _layer("A", rng, 8, 8, 1), _layer("B", rng, 8, 8, 1)
    x = np.zeros((1, 8, 5, 5), np.float32)
    blocks = [pk.prepare_xnor(L, x.shape, pk.packed_weights(L.weight_bits(), 8, 3, 3))
              for L in (a, b)]  # fmt: skip
    ks = [_kernel(rng, 8, a.n, False) for _ in range(2)]
    with pytest.raises(ValueError, match="two or more"):
        BiRealChain(blocks[:1], ks[:1])
    with pytest.raises(ValueError, match="one epilogue kernel each"):
        BiRealChain(blocks, ks[:1])
    with pytest.raises(ValueError, match="Bi-Real epilogue"):
        BiRealChain(blocks, [ks[0], _kernel(rng, 4, a.n, False)])
    wide = _layer("W", rng, 8, 16, 1)
    w16 = pk.prepare_xnor(wide, x.shape, pk.packed_weights(wide.weight_bits(), 8, 3, 3))
    with pytest.raises(ValueError, match="output shape"):
        BiRealChain([blocks[0], w16], ks)
    chain = BiRealChain(blocks, ks)
    sc = np.zeros((1, 8, 5, 5), np.float32)
    assert chain(x[:, :, :4], sc, None) is None  # another shape: the caller goes block by block
    assert chain(x, sc.astype(np.float64), None) is None
    assert chain(np.asfortranarray(x), sc, None) is None


class _Counting:
    """Counts calls of chain._run_chain."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


def _resnet(width: float, seed: int, cluster: bool = False):
    torch.manual_seed(seed)
    model = create_model("resnet20", width=width).eval()
    randomize_float_parts(model, seed)
    if cluster:
        from mstc.bench import cluster_weights

        cluster_weights(model, centres=3, flip=0.03, seed=seed)
    return mstc.compress(model, complement=True, input_shape=(3, 16, 16))


@pytest.mark.parametrize("backend", ["packed", "mst"])
@pytest.mark.parametrize("width,cluster", [(0.3, False), (0.5, True)])
def test_runtime_chains(monkeypatch, backend, width, cluster):
    """One thread, batch 1 and 3: the compiled pass runs resnet20's stages as chains (after the
    "mst" kernel choice where a layer's tree kernel was tuned) and gives the reference backend's
    logits, as the pass without prepared steps does."""
    counting = _Counting(chain_mod._run_chain)
    monkeypatch.setattr(chain_mod, "_run_chain", counting)
    monkeypatch.setattr(pk, "XNOR_KERNEL", "popcount")
    cm = _resnet(width, 1, cluster)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        want = _bits(run(cm, x, "reference"))
        rt, plain = Runtime(cm, backend, threads=1), Runtime(cm, backend, threads=1)
        plain.prepared_steps = False
        for _ in range(3):
            np.testing.assert_array_equal(_bits(rt.run(x)), want)
        np.testing.assert_array_equal(_bits(plain.run(x)), want)
        program = next(iter(rt._programs.values()))
        assert len(program.steps) < len(next(iter(plain._programs.values())).steps)
    if backend == "packed" or not cluster:
        assert counting.calls >= 6  # three stages, two batch sizes
    else:  # tree layers break some runs; the rest chain once their kernel is chosen
        assert counting.calls >= 1


def _lent_trace(rt: Runtime, x: np.ndarray) -> list[int]:
    """The bytes rt's pool has lent after each of its allocations during one pass."""
    pool, empty, trace = rt.pool, rt.pool.empty, []

    def counting(shape, dtype):
        a = empty(shape, dtype)
        trace.append(sum(b.nbytes for b in pool._lent.values()))
        return a

    pool.empty = counting
    try:
        rt.run(x)
    finally:
        del pool.empty
    return trace


def test_runtime_chain_falls_back(monkeypatch):
    """A chain prepared under popcounts, then the table-lookup kernel forced: the pass goes block
    by block (no chain call), still exact, releasing each buffer after its last reader as the
    plain pass does (the same lent bytes after every allocation); back under popcounts the chains run again."""
    counting = _Counting(chain_mod._run_chain)
    monkeypatch.setattr(chain_mod, "_run_chain", counting)
    monkeypatch.setattr(pk, "XNOR_KERNEL", "popcount")
    cm = _resnet(0.3, 2)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = _bits(run(cm, x, "reference"))
    rt = Runtime(cm, "packed", threads=1)
    np.testing.assert_array_equal(_bits(rt.run(x)), want)
    assert counting.calls == 3
    monkeypatch.setattr(pk, "XNOR_KERNEL", "lut")
    plain = Runtime(cm, "packed", threads=1)
    plain.prepared_steps = False
    for _ in range(2):
        np.testing.assert_array_equal(_bits(rt.run(x)), want)
        np.testing.assert_array_equal(_bits(plain.run(x)), want)
    assert counting.calls == 3
    assert _lent_trace(rt, x) == _lent_trace(plain, x)
    monkeypatch.setattr(pk, "XNOR_KERNEL", "popcount")
    np.testing.assert_array_equal(_bits(rt.run(x)), want)
    assert counting.calls == 6
