"""The one-pass float epilogue equals the unfused torch ops bit for bit.

Unit level: ``epilogue`` against ``table gather -> + shortcut -> F.prelu`` on random values
(negative and zero PReLU slopes, zeros and negative zeros, odd shapes, 2-D sums of a linear layer).
Model level: Bi-Real networks with random BatchNorm statistics (negative gammas included) and
random PReLU slopes run through "packed" and "mst" with epilogues give logits and integer sums
identical to the reference backend, which runs every float op in torch; also at an input size other
than the traced one. The packed XNOR kernel's row tiling is exercised with tiny tiles.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_float_parts
from hypothesis import given, settings
from hypothesis import strategies as st

import mstc
from mstc.bench import cluster_weights
from mstc.engine import Runtime, run
from mstc.engine import packed as packed_mod
from mstc.engine.binarize import packed_input
from mstc.engine.epilogue import EpilogueKernel, affine_form, epilogue, shortcut_bn_form
from mstc.models import create_model


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    cout=st.integers(1, 9),
    spatial=st.sampled_from([(), (1,), (5,), (3, 7), (1, 1)]),
    n=st.integers(1, 40),
    add=st.booleans(),
    prelu=st.sampled_from([None, "per-channel", "single"]),
    seed=st.integers(0, 2**16),
)
def test_epilogue_matches_torch(batch, cout, spatial, n, add, prelu, seed):
    rng = np.random.default_rng(seed)
    shape = (batch, cout, *spatial)
    u = rng.integers(0, n + 1, size=shape)
    sums = (2 * u - n).astype(np.int32)
    table = rng.standard_normal((cout, n + 1)).astype(np.float32)
    table[:, rng.integers(0, n + 1)] = -0.0
    shortcut = rng.standard_normal(shape).astype(np.float32) if add else None
    if shortcut is not None:
        shortcut.reshape(-1)[:: max(1, shortcut.size // 3)] = 0.0
    alpha = None
    if prelu == "per-channel":
        alpha = rng.standard_normal(cout).astype(np.float32)
        alpha[0] = 0.0
    elif prelu == "single":
        alpha = np.array([-0.3], np.float32)

    expect = torch.from_numpy(np.take_along_axis(table[None], u.reshape(batch, cout, -1), 2))
    expect = expect.reshape(shape)
    if shortcut is not None:
        expect = expect + torch.from_numpy(shortcut)
    if alpha is not None:
        expect = F.prelu(expect, torch.from_numpy(alpha))
    for threads in (1, 2):
        got = epilogue(sums, table, n, shortcut, alpha, nthreads=threads)
        assert got.shape == shape and got.dtype == np.float32
        np.testing.assert_array_equal(_bits(got), _bits(expect.numpy()))


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    cout=st.integers(1, 5),
    hw=st.tuples(st.integers(2, 9), st.integers(2, 9)),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_epilogue_pool_matches_torch(batch, cout, hw, n, seed):
    """Odd sizes (floor), ties of 0.0 / -0.0 and NaN / infinities in the table."""
    rng = np.random.default_rng(seed)
    shape = (batch, cout, *hw)
    u = rng.integers(0, n + 1, size=shape)
    table = rng.choice(np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan], np.float32),
                       size=(cout, n + 1))  # fmt: skip
    expect = np.take_along_axis(table[None], u.reshape(batch, cout, -1), 2).reshape(shape)
    expect = F.max_pool2d(torch.from_numpy(expect), 2).numpy()
    for threads in (1, 2):
        got = epilogue((2 * u - n).astype(np.int32), table, n, nthreads=threads, pool=True)
        assert got.shape == expect.shape
        np.testing.assert_array_equal(_bits(got), _bits(expect))


@pytest.mark.parametrize("with_scale", [False, True])
def test_affine_form_only_if_exact(with_scale):
    """A closed form is returned only if the kernel reproduces the torch table on every sum
    (checked here independently against torch), and never for a table it does not match."""
    rng = np.random.default_rng(11)
    C, n = 24, 75
    mean = (rng.standard_normal(C) * 20).astype(np.float32)
    var = (rng.random(C) * 9 + 0.01).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    scale = (rng.random(C) + 0.5).astype(np.float32) if with_scale else None
    y = torch.from_numpy((2 * np.arange(n + 1) - n).astype(np.float32)).expand(1, C, 1, n + 1)
    if scale is not None:
        y = y * torch.from_numpy(scale).view(1, -1, 1, 1)
    t = torch.from_numpy
    table = F.batch_norm(y.contiguous(), t(mean), t(var), t(w), t(b), False, 0.0, 1e-5)
    table = table.numpy().reshape(C, n + 1)
    kw = dict(scale=scale, bias=None, mean=mean, var=var, weight=w, bn_bias=b, eps=1e-5)
    form = affine_form(table, n, **kw)
    if form is not None:  # torch's BN has a closed form on this build: it must be exact
        sums = (2 * rng.integers(0, n + 1, (3, C, 7)) - n).astype(np.int32)
        got = epilogue(sums, table, n, affine=form)
        want = epilogue(sums, table, n)
        np.testing.assert_array_equal(_bits(got), _bits(want))
        # the fused Bi-Real loop (closed form + shortcut + PReLU in one) == the table's passes
        shortcut = rng.standard_normal(sums.shape).astype(np.float32)
        shortcut.reshape(-1)[::5] = -got.reshape(-1)[::5]  # exact zeros: the sign of 0
        alpha = rng.standard_normal(C).astype(np.float32)
        got = epilogue(sums, table, n, shortcut, alpha, affine=form)
        want = epilogue(sums, table, n, shortcut, alpha)
        np.testing.assert_array_equal(_bits(got), _bits(want))
    bad = table.copy()
    bad[3, 5] = np.nextafter(bad[3, 5], np.float32(np.inf))
    assert affine_form(bad, n, **kw) is None


def _bn_params(rng, C):
    mean = (rng.standard_normal(C) * 5).astype(np.float32)
    var = (rng.random(C) * 4 + 0.01).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    return dict(mean=mean, var=var, weight=w, bn_bias=b, eps=1e-5)


def _torch_bn(p):
    t = torch.from_numpy
    args = (t(p["mean"]), t(p["var"]), t(p["weight"]), t(p["bn_bias"]), False, 0.0, p["eps"])
    return lambda x: F.batch_norm(t(np.ascontiguousarray(x)), *args).numpy()


def test_shortcut_bn_form_only_if_exact():
    """The shortcut BatchNorm's closed form is kept only if it equals torch's BN on the probe,
    and then the epilogue with the BN inline equals the epilogue of torch's BN output on other
    data -- the table passes and the fused Bi-Real loop. A BN with two roundings is rejected."""
    rng = np.random.default_rng(3)
    C, n = 12, 27
    p = _bn_params(rng, C)
    sbn = shortcut_bn_form(_torch_bn(p), **p)
    invstd = np.float32(1) / np.sqrt(p["var"] + np.float32(p["eps"]))
    ka = (invstd * p["weight"]).astype(np.float32)[None, :, None, None]
    kb = (p["bn_bias"] - p["mean"] * ka.reshape(-1)).astype(np.float32)[None, :, None, None]
    assert shortcut_bn_form(lambda x: (x * ka + kb).astype(np.float32), **p) is None
    if sbn is None:
        pytest.skip("torch's BatchNorm has no fma closed form on this build")
    sums = (2 * rng.integers(0, n + 1, (3, C, 5, 11)) - n).astype(np.int32)
    z = (rng.standard_normal(sums.shape) * 3).astype(np.float32)
    z.reshape(-1)[::7] = 0.0
    alpha = rng.standard_normal(C).astype(np.float32)
    q = _bn_params(rng, C)  # the binary layer's own BN, as a table and maybe a closed form
    y = torch.from_numpy((2 * np.arange(n + 1) - n).astype(np.float32)).expand(1, C, 1, n + 1)
    table = _torch_bn(q)(y.contiguous().numpy()).reshape(C, n + 1)
    form = affine_form(table, n, scale=None, bias=None, **q)
    for affine in (None, form):
        want = epilogue(sums, table, n, _torch_bn(p)(z), alpha, affine=affine)
        got = epilogue(sums, table, n, z, alpha, affine=affine, shortcut_bn=sbn)
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_epilogue_bad_shapes():
    sums = np.zeros((2, 3, 4), np.int32)
    with pytest.raises(ValueError, match="table"):
        epilogue(sums, np.zeros((3, 5), np.float32), 5)
    with pytest.raises(ValueError, match="shortcut"):
        epilogue(sums, np.zeros((3, 6), np.float32), 5, shortcut=np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="pool"):
        epilogue(sums, np.zeros((3, 6), np.float32), 5, pool=True)


@pytest.mark.parametrize(
    "name,kw,shape",
    [
        ("resnet20", dict(width=0.3), (3, 3, 16, 16)),
        ("resnet20", dict(width=0.5, cluster=True), (2, 3, 12, 12)),  # tree layers in "mst"
        ("resnet18_cifar", dict(width=0.1), (2, 3, 12, 12)),
        ("vgg_small", dict(width=0.1, image_size=16), (2, 3, 16, 16)),
    ],
)
@pytest.mark.parametrize("backend", ["packed", "mst"])
@pytest.mark.parametrize("form", ["as planned", "table only"])
def test_models_with_epilogues(name, kw, shape, backend, form):
    torch.manual_seed(0)
    kw = dict(kw)
    cluster = kw.pop("cluster", False)
    model = create_model(name, **kw).eval()
    if cluster:
        cluster_weights(model, centres=2, flip=0.01, seed=0)
    randomize_float_parts(model, 1)
    cm = mstc.compress(model, input_shape=shape[1:])
    rt = Runtime(cm, backend, threads=1)
    if cluster and backend == "mst":  # the tree kernel on every layer, then the epilogue
        rt.backend.autotune = False
    assert rt.epilogues, "no epilogue planned"
    if form == "table only":  # the lookup path, also where no closed form was verified
        rt.epilogues = {k: dataclasses.replace(e, affine=None) for k, e in rt.epilogues.items()}
        rt._epilogue_at = {e.at: (k, e) for k, e in rt.epilogues.items() if e.at != k}
    if name.startswith("resnet"):  # Bi-Real: every binary conv's BN feeds an add, then PReLU
        assert all(e.shortcut is not None and e.alpha is not None for e in rt.epilogues.values())
        # the stem's and the downsampling shortcuts' BatchNorms run inside the epilogues
        inline = [e for e in rt.epilogues.values() if e.shortcut_bn is not None]
        stages = {"resnet20": 3, "resnet18_cifar": 4}[name]  # the stem, stages - 1 downsamplings
        assert len(inline) == (stages if rt.folded_bns else 0)
    else:  # vgg: BN, then a 2x2 max pool after some layers
        assert any(e.pool for e in rt.epilogues.values())
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    other = x[:1, :, 1:, :-2] if name.startswith("resnet") else x[:1]  # vgg: fixed classifier
    for xi in (x, other):  # the traced shape and another one
        ref_logits, ref = run(cm, xi, "reference", return_sums=True)
        logits, sums = rt.run(xi, return_sums=True)
        assert sums.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(sums[k], ref[k], err_msg=k)
        np.testing.assert_array_equal(_bits(logits), _bits(ref_logits))
        # without sums asked for, the XNOR kernel may apply Bi-Real epilogues itself
        np.testing.assert_array_equal(_bits(rt.run(xi)), _bits(ref_logits))
    fused = [k for k, e in rt.epilogues.items() if rt._fuses_into_conv(rt._nodes[k], e)]
    if backend == "packed" and form == "as planned" and name.startswith("resnet"):
        assert fused or all(e.affine is None for e in rt.epilogues.values())
    if form == "table only":
        assert not fused


@pytest.mark.parametrize("tile_words", [1, 7, 50])
def test_xnor_row_tiles(monkeypatch, tile_words):
    """Units of one row, partial units and units spanning images give the same sums."""
    monkeypatch.setattr(packed_mod, "TILE_WORDS", tile_words)
    torch.manual_seed(3)
    model = create_model("resnet20", width=0.3).eval()
    cm = mstc.compress(model, input_shape=(3, 11, 9))
    x = np.random.default_rng(6).standard_normal((3, 3, 11, 9)).astype(np.float32)
    _, ref = run(cm, x, "reference", return_sums=True)
    for threads in (1, 2):
        _, sums = run(cm, x, "packed", threads=threads, return_sums=True)
        for k in ref:
            np.testing.assert_array_equal(sums[k], ref[k], err_msg=k)


def test_plan_choice_fused_and_unfused():
    """The autotuned "mst" runtime picks its fused links per input shape by timing; every plan --
    all links, none (epilogues on every binary layer), mixed -- is exact."""
    from mstc.bench import cluster_weights

    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.125, image_size=16).eval()
    randomize_float_parts(model, 2)
    cluster_weights(model, centres=2, flip=0.01, seed=3)
    cm = mstc.compress(model, complement=True, input_shape=(3, 16, 16))
    x = np.random.default_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref_logits, ref = run(cm, x, "reference", return_sums=True)
    rt = Runtime(cm, "mst", threads=1)
    assert rt.fusions and all(k in rt.epilogues for k in rt.fusions)
    rt.run(x)
    links = frozenset(rt.fusions)
    assert rt.plans[x.shape] <= links
    first = sorted(links)[0]
    for plan in (links, frozenset(), frozenset({first}), links - {first}):
        rt.plans[x.shape] = plan
        for want_sums in (True, False):
            got = rt.run(x, return_sums=want_sums)
            logits = got[0] if want_sums else got
            np.testing.assert_array_equal(_bits(logits), _bits(ref_logits), err_msg=str(plan))
            if want_sums:
                for k in ref:
                    np.testing.assert_array_equal(got[1][k], ref[k], err_msg=f"{plan} {k}")


@pytest.mark.parametrize("cin,cout", [(3, 4), (16, 5), (24, 6), (32, 7)])
@pytest.mark.parametrize("with_bn", [False, True])
def test_xnor_conv_fused_epilogue(cin, cout, with_bn):
    """xnor_conv with a Bi-Real epilogue inside == xnor_conv then the epilogue, bit for bit,
    with exact zeros before PReLU (shortcut = -f(sum) at every third position)."""
    rng = np.random.default_rng(cin * 10 + cout)
    N, H, W, n = 2, 5, 7, cin * 9
    x = rng.standard_normal((N, cin, H, W)).astype(np.float32)
    bits = rng.integers(0, 2, (cout, n)).astype(np.uint8)
    wT = packed_mod.packed_weights(bits, cin, 3, 3)  # 1, 3, 4, 5 words: every kernel path
    xp = packed_input(x, (1, 1))
    sums = np.empty((N, cout, H * W), np.int32)
    packed_mod.xnor_conv(xp, wT, n, (3, 3, 1, 1, 1, 1), H, W, sums)
    q = _bn_params(rng, cout)
    y = torch.from_numpy((2 * np.arange(n + 1) - n).astype(np.float32)).expand(1, cout, 1, n + 1)
    table = _torch_bn(q)(y.contiguous().numpy()).reshape(cout, n + 1)
    form = affine_form(table, n, scale=None, bias=None, **q)
    p = _bn_params(rng, cout)
    sbn = shortcut_bn_form(_torch_bn(p), **p) if with_bn else None
    if form is None or not form[1] or (with_bn and sbn is None):
        pytest.skip("no fma closed form of torch's BatchNorm on this build")
    alpha = rng.standard_normal(cout).astype(np.float32)
    alpha[0] = 0.0
    kernel = EpilogueKernel(table, n, alpha, add=True, affine=form, shortcut_bn=sbn)
    assert kernel.fuses_into_xnor
    f = epilogue(sums, table, n)  # f(sum) alone, to place exact zeros
    shortcut = rng.standard_normal(sums.shape).astype(np.float32)
    if not with_bn:
        shortcut.reshape(-1)[::3] = -f.reshape(-1)[::3]
    want = kernel(sums, shortcut)
    got = np.empty(sums.shape, np.float32)
    packed_mod.xnor_conv(
        xp, wT, n, (3, 3, 1, 1, 1, 1), H, W, got, 1, kernel.xnor_args(shortcut)
    )  # fmt: skip
    np.testing.assert_array_equal(_bits(got), _bits(want))
    if not with_bn:
        assert (want == 0).any()


@pytest.mark.parametrize("backend", ["packed", "mst"])
def test_epilogue_in_xnor_two_threads(backend):
    """The XNOR kernel's epilogue path over two workers (row units split between them): logits
    identical to the reference."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.3).eval()
    randomize_float_parts(model, 2)
    cm = mstc.compress(model, input_shape=(3, 16, 16))
    x = np.random.default_rng(6).standard_normal((5, 3, 16, 16)).astype(np.float32)
    rt = Runtime(cm, backend, threads=2)
    fused = any(rt._fuses_into_conv(rt._nodes[k], e) for k, e in rt.epilogues.items())
    assert fused or all(e.affine is None for e in rt.epilogues.values())
    np.testing.assert_array_equal(_bits(rt.run(x)), _bits(run(cm, x, "reference")))
