"""The bit-sliced kernel, the exact BN + sign fold and the runtime's fused chains.

Contract: integer sums equal to the packed backend / reference (integer equality), emitted bits
equal to the rule applied to those sums (and OR-pooled), logits of fused runs equal to the
reference runtime's (exact), on random shapes, complement edges, random BN with negative gammas,
and the committed trained checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mstc
import mstc.engine.sliced as sliced
from mstc.bench import cluster_weights
from mstc.engine import Runtime, get_backend
from mstc.engine.fold import apply_rule, threshold_rule
from mstc.engine.sliced import (
    CONST0,
    CONST1,
    GE,
    LE,
    FusedStep,
    SlicedLayer,
    emit_planes,
    grid_words,
    layer_sums,
    output_hw,
    pack_planes,
    plane_geometry,
    run_layer,
    unpack_planes,
    unpack_sums,
)
from mstc.format import BinaryLayerCode
from mstc.models import create_model
from mstc.mst import plan

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc"


def _layer(rng, cin, cout, k, dil, pad, centres, flip, invert) -> BinaryLayerCode:
    kh, kw = k
    n = cin * kh * kw
    c = rng.integers(0, 2, (max(1, centres), n), dtype=np.uint8)
    bits = c[rng.integers(0, len(c), cout)]
    bits = bits ^ (rng.random((cout, n)) < flip).astype(np.uint8)
    bits = bits ^ (rng.random((cout, 1)) < invert).astype(np.uint8)
    p = plan(bits, complement=True)
    return BinaryLayerCode.from_bits(
        "l", bits, p, kind="conv2d", cin=cin, kernel_size=(kh, kw), stride=(1, 1),
        padding=pad, dilation=dil,
    )  # fmt: skip


def _packed_sums(layer: BinaryLayerCode, x: np.ndarray) -> np.ndarray:
    from mstc.format import CompressedModel

    cm = CompressedModel(nodes=[], tensors={}, layers={"l": layer}, input_shape=x.shape[1:])
    return get_backend("packed")(cm).conv2d(layer, x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    cin=st.integers(1, 70),
    cout=st.integers(1, 40),
    k=st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 2)]),
    dil=st.sampled_from([(1, 1), (2, 1)]),
    pad=st.sampled_from([(0, 0), (1, 1), (2, 0)]),
    n=st.integers(1, 3),
    h=st.integers(4, 12),
    w=st.integers(4, 70),
    tree=st.booleans(),
    centres=st.integers(1, 4),
    flip=st.sampled_from([0.0, 0.02, 0.3]),
    invert=st.sampled_from([0.0, 0.3]),
)
def test_sums_equal_packed(seed, cin, cout, k, dil, pad, n, h, w, tree, centres, flip, invert):
    """v planes unpacked to sums == XNOR-popcount sums, and emitted bits == rule(sums)."""
    assume(h + 2 * pad[0] > dil[0] * (k[0] - 1) and w + 2 * pad[1] > dil[1] * (k[1] - 1))
    rng = np.random.default_rng(seed)
    layer = _layer(rng, cin, cout, k, dil, pad, centres, flip, invert)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # sign(0) = +1
    x[rng.random(x.shape) < 0.05] = -0.0
    want = _packed_sums(layer, x)
    sched = SlicedLayer(layer, tree=tree)
    g = plane_geometry(layer, n, h, w)
    planes = pack_planes(x, g)
    np.testing.assert_array_equal(unpack_planes(planes), (x >= 0).astype(np.uint8))
    # a random per-channel rule: GE / LE / constants, thresholds anywhere in [-1, n+1]
    mode = rng.choice(np.array([GE, LE, CONST0, CONST1], np.int8), cout, p=[0.4, 0.4, 0.1, 0.1])
    t = rng.integers(-1, layer.n + 2, cout)
    OB, VS = run_layer(sched, planes, emit=sched.emit_rule(mode, t), want_planes=True)
    np.testing.assert_array_equal(unpack_sums(sched, VS, g), want)
    np.testing.assert_array_equal(layer_sums(sched, planes), want)
    bits = np.moveaxis(apply_rule((mode, t), np.moveaxis((want + layer.n) // 2, 1, -1)), -1, 1)
    ho, wo = want.shape[2:]
    nxt_layer = _layer(rng, cout, 2, (3, 3), (1, 1), (1, 1), 1, 0.0, 0.0)
    out = emit_planes(sched, OB, g, False, plane_geometry(nxt_layer, n, ho, wo))
    np.testing.assert_array_equal(unpack_planes(out), bits)
    if ho >= 2 and wo >= 2:
        pooled = bits[:, :, : ho // 2 * 2, : wo // 2 * 2]
        pooled = pooled.reshape(n, cout, ho // 2, 2, wo // 2, 2).max(axis=(3, 5))
        out = emit_planes(sched, OB, g, True, plane_geometry(nxt_layer, n, ho // 2, wo // 2))
        np.testing.assert_array_equal(unpack_planes(out), pooled)


@pytest.mark.parametrize(
    ("n", "h", "w"),
    [(2, 6, 61), (2, 6, 62), (2, 6, 63), (2, 6, 64), (2, 6, 126), (2, 6, 127)]
    + [(3, 7, 7), (5, 9, 5), (1, 7, 7), (4, 7, 8), (3, 5, 31)],
)
def test_emit_pool_rows(n, h, w):
    """Pooled emission == pooling the emitted bits, where the padded row width Wp = w + 2 is
    63..65 or 128..129 bits (whole-word shifts included), and where odd Hp and Wp make the
    pooled rows of odd images start at odd grid bits (the odd-bit half rows)."""
    rng = np.random.default_rng(w)
    cin, cout = 3, 5
    layer = _layer(rng, cin, cout, (3, 3), (1, 1), (1, 1), 2, 0.02, 0.0)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, n, h, w)
    mode = np.full(cout, GE, np.int8)
    t = rng.integers(0, layer.n + 1, cout)
    OB, _ = run_layer(sched, pack_planes(x, g), emit=sched.emit_rule(mode, t), want_planes=False)
    want = _packed_sums(layer, x)
    bits = np.moveaxis(apply_rule((mode, t), np.moveaxis((want + layer.n) // 2, 1, -1)), -1, 1)
    pooled = bits[:, :, : h // 2 * 2, : w // 2 * 2]
    pooled = pooled.reshape(n, cout, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    nxt_layer = _layer(rng, cout, 2, (3, 3), (1, 1), (1, 1), 1, 0.0, 0.0)
    out = emit_planes(sched, OB, g, True, plane_geometry(nxt_layer, n, h // 2, w // 2))
    np.testing.assert_array_equal(unpack_planes(out), pooled)


@pytest.mark.parametrize(
    ("seed", "shape"),
    [(s, None) for s in range(6)]
    # grids whose last tile is rounded up to 16 words (15, 42, 64 + 63 words) or not (4, 64 + 7);
    # 5 and 2 words: one vector group partly filled
    + [(6, (1, 28, 28)), (7, (3, 7, 7)), (8, (2, 30, 40)), (9, (5, 28, 28)), (10, (9, 28, 28))]
    + [(11, (1, 18, 14)), (12, (1, 7, 7))],
)
def test_word_kernel_equals_tile_kernel(seed, shape, monkeypatch):
    """run_layer's vector word kernel (small grids, four words per register) == its tile kernel
    == the scalar word kernel (the reference): emitted bits and v planes, roots, children,
    complement edges, every emit mode, tiles whose arithmetic runs over padded words, grids of
    1-3 words past a multiple of four."""
    import mstc.engine.sliced as sliced

    rng = np.random.default_rng(seed)
    cin, cout = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    n, h, w = int(rng.integers(1, 3)), int(rng.integers(3, 9)), int(rng.integers(3, 40))
    if shape is not None:
        n, h, w = shape
    layer = _layer(rng, cin, cout, (3, 3), (1, 1), (1, 1), int(rng.integers(1, 4)), 0.02, 0.3)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    sched = SlicedLayer(layer, tree=bool(seed % 3))
    g = plane_geometry(layer, n, h, w)
    planes = pack_planes(x, g)
    mode = rng.choice(np.array([GE, LE, CONST0, CONST1], np.int8), cout)
    emit = sched.emit_rule(mode, rng.integers(-1, layer.n + 2, cout))
    got = {}
    for vector in (0, 10**9):  # every grid to the tile kernel, then to the vector word kernel
        monkeypatch.setattr(sliced, "VECTOR_WORDS", vector)
        OB, VS = run_layer(sched, planes, emit=emit, want_planes=True)
        got[vector] = (OB[:, :-1], VS)
        # emitting only: the tile kernel keeps no planes of leaves, same bits
        bits, none = run_layer(sched, planes, emit=emit, want_planes=False)
        assert none is None
        np.testing.assert_array_equal(bits[:, :-1], got[vector][0])
    kernel, args = sliced._layer_kernel(sched, g, emit, 1)
    assert kernel is sliced._vwords
    OB = np.zeros_like(got[0][0], shape=(cout, got[0][0].shape[1] + 1))
    VS = np.zeros_like(got[0][1])
    sliced._words(planes.bits, *args, OB, VS)
    np.testing.assert_array_equal(got[0][0], got[10**9][0])
    np.testing.assert_array_equal(got[0][1], got[10**9][1])
    np.testing.assert_array_equal(OB[:, :-1], got[0][0])
    np.testing.assert_array_equal(VS, got[0][1])


@pytest.mark.parametrize("seed", range(4))
def test_fused_step_equals_run_layer_and_emit(seed, monkeypatch):
    """FusedStep (prepared once per geometry, scratch reused) == run_layer + emit_planes, call
    after call on new inputs: word and tile kernels, with and without the 2x2 pool, the next
    conv's padding the same or not; a wrong geometry is refused."""
    import mstc.engine.sliced as sliced

    rng = np.random.default_rng(seed)
    cin, cout = int(rng.integers(1, 40)), int(rng.integers(2, 30))
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(4, 12)), int(rng.integers(4, 30))
    layer = _layer(rng, cin, cout, (3, 3), (1, 1), (1, 1), int(rng.integers(1, 4)), 0.02, 0.3)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, n, h, w)
    mode = rng.choice(np.array([GE, LE, CONST0, CONST1], np.int8), cout)
    emit = sched.emit_rule(mode, rng.integers(-1, layer.n + 2, cout))
    for vector, pool, pad in [(0, False, 1), (10**9, True, 1), (0, True, 1), (10**9, False, 2)]:
        monkeypatch.setattr(sliced, "VECTOR_WORDS", vector)
        nxt_layer = _layer(rng, cout, 2, (3, 3), (1, 1), (pad, pad), 1, 0.0, 0.0)
        nxt = plane_geometry(nxt_layer, n, *((h // 2, w // 2) if pool else (h, w)))
        step = FusedStep(sched, g, emit, pool, nxt)
        for _ in range(2):
            x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
            planes = pack_planes(x, g)
            OB, _ = run_layer(sched, planes, emit=emit, want_planes=False)
            want = emit_planes(sched, OB, g, pool, nxt)
            got = step(planes)
            assert got.geometry == nxt
            np.testing.assert_array_equal(got.bits, want.bits)
    other = pack_planes(np.ones((n + 1, cin, h, w), np.float32), plane_geometry(layer, n + 1, h, w))
    with pytest.raises(ValueError, match="not this step"):
        step(other)


def test_deep_chain_and_complement_offsets():
    """A path-shaped tree (depth cout-1) with complement edges: planes and offsets stay exact."""
    rng = np.random.default_rng(3)
    cout, cin = 40, 64
    n = cin * 9
    bits = np.zeros((cout, n), np.uint8)
    bits[0] = rng.integers(0, 2, n)
    for j in range(1, cout):  # each channel flips a few taps of the previous one, some inverted
        bits[j] = bits[j - 1]
        bits[j, rng.choice(n, 7, replace=False)] ^= 1
        if j % 5 == 0:
            bits[j] ^= 1
    p = plan(bits, complement=True)
    layer = BinaryLayerCode.from_bits(
        "l", bits, p, kind="conv2d", cin=cin, kernel_size=(3, 3), stride=(1, 1),
        padding=(1, 1), dilation=(1, 1),
    )  # fmt: skip
    assert layer.negate.any() and layer.depth > 10
    x = rng.standard_normal((2, cin, 9, 7)).astype(np.float32)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, 2, 9, 7)
    _, VS = run_layer(sched, pack_planes(x, g), emit=None, want_planes=True)
    np.testing.assert_array_equal(unpack_sums(sched, VS, g), _packed_sums(layer, x))


def test_stride_rejected():
    rng = np.random.default_rng(0)
    layer = _layer(rng, 4, 4, (3, 3), (1, 1), (1, 1), 1, 0.1, 0.0)
    layer.stride = (2, 2)
    with pytest.raises(ValueError, match="stride-1"):
        SlicedLayer(layer)


def test_threshold_rule():
    u = np.arange(11)
    vals = torch.tensor(
        np.stack([u - 3.5, 4.0 - u, np.full(11, 1.0), np.full(11, -1.0), u * 0.0]),
        dtype=torch.float32,
    )
    mode, t = threshold_rule(vals)
    assert mode.tolist() == [GE, LE, CONST1, CONST0, CONST1]  # f = 0 counts as +1
    assert t[0] == 4 and t[1] == 4
    np.testing.assert_array_equal(apply_rule((mode, t), u[:, None]).T, (vals >= 0).numpy())
    bumpy = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    assert threshold_rule(bumpy) is None
    assert threshold_rule(torch.tensor([[0.0, float("nan")]])) is None
    assert threshold_rule(torch.tensor([[0.0, float("inf")]])) is None


def _vgg(seed: int, *, invert: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("vgg_small", width=0.125, image_size=16).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # negative gammas -> LE rules; far means
                mod.weight.normal_()
                mod.bias.normal_()
                mod.running_mean.normal_(0, 5)
                mod.running_var.uniform_(0.5, 30)
    return cluster_weights(m, centres=4, flip=0.03, invert=invert, seed=seed)


@pytest.mark.parametrize("backend,kernel", [("mst", None), ("mst", "sliced"), ("mst", "int"),
                                            ("mst", "walk16"), ("sliced-dense", None)])  # fmt: skip
def test_fused_runtime_exact(backend, kernel):
    """Fused chains: logits identical to the reference runtime, sums identical, 4 fusions."""
    cm = mstc.compress(_vgg(1), complement=True, input_shape=(3, 16, 16))
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref_logits, ref_sums = Runtime(cm, "reference").run(x, return_sums=True)
    rt = Runtime(cm, backend)
    if kernel is not None:
        rt.backend.plane_kernel = kernel
    assert len(rt.fusions) == 4 and sum(f.pool for f in rt.fusions.values()) == 2
    logits, sums = rt.run(x, return_sums=True)
    assert set(sums) == set(ref_sums)
    for k in ref_sums:
        np.testing.assert_array_equal(sums[k], ref_sums[k])
    np.testing.assert_array_equal(logits, ref_logits)
    np.testing.assert_array_equal(rt.run(x), ref_logits)  # without sums: bits only in between
    if kernel in ("sliced", "walk16"):
        assert {v for k, v in rt.backend.kernels.items() if len(k) == 3} == {kernel}
    # only the chosen kernels' prepared steps stay (the others' scratch goes after tuning)
    chosen = {k[0]: v for k, v in rt.backend.kernels.items() if len(k) == 3}
    for key in rt.backend._steps:
        want = "walk16" if key[-1] == "walk16 sums" else key[-1]
        assert chosen[key[0]] == want, (key, chosen[key[0]])


def test_fold_matches_float_path_on_every_sum():
    """The folded rule equals sign(BN(scale*y + bias)) of the runtime at every reachable y."""
    cm = mstc.compress(_vgg(4), complement=True, input_shape=(3, 16, 16))
    rt = Runtime(cm, "mst")
    nodes = {n.name: n for n in cm.nodes}
    seen_le = False
    for name, f in rt.fusions.items():
        layer = cm.layers[nodes[name].attrs["layer"]]
        bn = nodes[f.skip[0]]
        y = torch.arange(-layer.n, layer.n + 1, 2, dtype=torch.float32)
        y = y.view(1, 1, 1, -1).expand(2, layer.cout, 3, -1).contiguous()  # another NCHW shape
        z = rt._apply(bn, [rt._finish_binary(layer, y)], {})
        want = (z >= 0).numpy()
        u = np.arange(layer.n + 1)
        got = apply_rule(f.rule, np.broadcast_to(u[:, None], (layer.n + 1, layer.cout))).T
        np.testing.assert_array_equal(np.broadcast_to(got[None, :, None, :], want.shape), want)
        seen_le |= bool((f.rule[0] == LE).any())
    assert seen_le


def test_fusion_heuristic():
    """mst fuses regularized layers only (min_fuse_ratio); the ablation fuses random ones too."""
    torch.manual_seed(0)
    cm = mstc.compress(create_model("vgg_small", width=0.125, image_size=16).eval())
    assert Runtime(cm, "mst").fusions == {}  # random weights: the tree saves ~2x
    assert len(Runtime(cm, "sliced-dense").fusions) == 4


def test_no_fusion_for_bireal():
    torch.manual_seed(0)
    r20 = mstc.compress(create_model("resnet20", width=0.25).eval())
    assert Runtime(r20, "mst").fusions == {}  # BN output feeds the real-valued shortcut add


@pytest.mark.skipif(not TRAINED.exists(), reason="trained checkpoint not committed")
def test_trained_checkpoint_fused_exact():
    """The committed regularized model (11x BOP): fused mst logits == reference logits."""
    cm = mstc.load(TRAINED)
    x = np.random.default_rng(7).standard_normal((4, *cm.input_shape)).astype(np.float32)
    ref_logits, ref_sums = Runtime(cm, "reference").run(x, return_sums=True)
    for kernel in ("sliced", "walk16", None):
        rt = Runtime(cm, "mst")
        rt.backend.plane_kernel = kernel
        assert len(rt.fusions) == 4
        logits, sums = rt.run(x, return_sums=True)
        for k in ref_sums:
            np.testing.assert_array_equal(sums[k], ref_sums[k])
        np.testing.assert_array_equal(logits, ref_logits)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 130),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    seed=st.integers(0, 2**16),
)
def test_planes_to_int_layouts(n, c, hw, pad, seed):
    """Bit planes -> the channel-packed words and the +-2 int8 planes of the int kernels equal
    packing the float input directly (64x64 bit transposes, channels beyond 64, padding, tails)."""
    from mstc.engine.binarize import packed_input
    from mstc.engine.mst_kernel import signed_planes
    from mstc.engine.sliced import PlaneGeometry, planes_to_packed, planes_to_signed

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    x[np.abs(x) < 0.2] = 0.0
    hp, wp = hw[0] + 2 * pad[0], hw[1] + 2 * pad[1]
    g = PlaneGeometry(n, c, hw[0], hw[1], pad[0], pad[1], (n * hp * wp + 63) // 64 + 2)
    planes = pack_planes(x, g)
    np.testing.assert_array_equal(planes_to_packed(planes), packed_input(x, pad))
    np.testing.assert_array_equal(planes_to_signed(planes, 3), signed_planes(x, pad, 3))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 70)),
    taps=st.integers(1, 40),
    pool=st.booleans(),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    seed=st.integers(0, 2**16),
)
def test_rule_planes_matches_numpy(n, c, hw, taps, pool, pad, seed):
    """Int sums -> folded rule -> (2x2 OR-pooled) planes equals apply_rule + pooling + packing."""
    from mstc.engine.sliced import PlaneGeometry, rule_planes

    assume(not pool or (hw[0] >= 2 and hw[1] >= 2))
    rng = np.random.default_rng(seed)
    u = rng.integers(0, taps + 1, (n, c, *hw))
    sums = (2 * u - taps).astype(np.int32)
    mode = rng.integers(0, 4, c).astype(np.int8)
    t = rng.integers(0, taps + 1, c).astype(np.int64)
    bits = np.moveaxis(apply_rule((mode, t), np.moveaxis(u, 1, -1)), -1, 1)
    if pool:
        h2, w2 = hw[0] // 2, hw[1] // 2
        bits = bits[:, :, : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2).max(axis=(3, 5))
    h, w = bits.shape[2:]
    hp, wp = h + 2 * pad[0], w + 2 * pad[1]
    g = PlaneGeometry(n, c, h, w, pad[0], pad[1], (n * hp * wp + 63) // 64 + 2)
    want = pack_planes(bits.astype(np.float32) - 0.5, g)
    got = rule_planes(sums, taps, (mode, t), pool, g)
    np.testing.assert_array_equal(got.bits, want.bits)


@settings(max_examples=25, deadline=None)
@given(
    planes=st.integers(1, 20),
    n=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 70),
    pad=st.integers(0, 2),
    seed=st.integers(0, 5),
)
def test_unpack_sums_transposed_equals_plane_by_plane(planes, n, h, w, pad, seed):
    """The bit-matrix transpose unpack (up to 16 planes; beyond, the plane loop) against the
    plane-by-plane reference, on random v planes of odd grids (values up to 2^planes - 1)."""
    rng = np.random.default_rng(seed)
    layer = _layer(rng, 2, 5, (3, 3), (1, 1), (pad, pad), 1, 0.2, 0.0)
    assume(h + 2 * pad > 2 and w + 2 * pad > 2)
    sched = SlicedLayer(layer)
    g = plane_geometry(layer, n, h, w)
    ow = grid_words(n, g.hp, g.wp)
    VS = rng.integers(0, 2**63, size=(layer.cout, planes, ow), dtype=np.uint64)
    VS |= rng.integers(0, 2, size=VS.shape, dtype=np.uint64) << np.uint64(63)
    ho, wo = output_hw(layer, g)
    want = np.empty((n, layer.cout, ho, wo), np.int32)
    sliced._unpack_sums(VS, sched.c, layer.n, n, g.hp, g.wp, ho, wo, want)
    np.testing.assert_array_equal(unpack_sums(sched, VS, g), want)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_layer_sums_over_several_tiles(nthreads):
    """The integer tree walk of the tile kernel (counts transposed to bytes, one and two bytes
    wide, complement edges) over a grid of several tiles, serial and parallel."""
    rng = np.random.default_rng(11)
    for flip, cin in ((0.03, 24), (0.6, 40)):  # short and long (> 255 taps) difference lists
        layer = _layer(rng, cin, 40, (3, 3), (1, 1), (1, 1), 3, flip, 0.3)
        x = rng.standard_normal((7, cin, 20, 61)).astype(np.float32)
        sched = SlicedLayer(layer)
        assert (sched.nbits > 8).any() == (flip > 0.5)
        g = plane_geometry(layer, 7, 20, 61)
        assert grid_words(7, g.hp, g.wp) > 2 * sliced.TW
        sums = layer_sums(sched, pack_planes(x, g), nthreads=nthreads)
        np.testing.assert_array_equal(sums, _packed_sums(layer, x))


@pytest.mark.parametrize("shape", [(1, 5, 5), (1, 7, 7), (1, 14, 14), (1, 28, 28), (2, 30, 30)])
def test_layer_sums_vector_walk(shape, monkeypatch):
    """The integer tree walk four words at a time (grids of <= VECTOR_WORDS words: 1, 2, 5, 15
    and 32 here) == XNOR-popcount == the tile walk, one- and two-byte counts, complement edges."""
    import mstc.engine.sliced as sliced

    n, h, w = shape
    rng = np.random.default_rng(h)
    for flip, cin in ((0.03, 24), (0.6, 40)):
        layer = _layer(rng, cin, 20, (3, 3), (1, 1), (1, 1), 3, flip, 0.3)
        x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
        sched = SlicedLayer(layer)
        g = plane_geometry(layer, n, h, w)
        assert grid_words(n, g.hp, g.wp) <= sliced.VECTOR_WORDS
        planes = pack_planes(x, g)
        want = _packed_sums(layer, x)
        np.testing.assert_array_equal(layer_sums(sched, planes), want)
        monkeypatch.setattr(sliced, "VECTOR_WORDS", 0)  # the tile walk on the same grid
        np.testing.assert_array_equal(layer_sums(sched, planes), want)
        monkeypatch.undo()
