"""Full-precision convs in torch's tap order (mstc.engine.floatconv): bit-identical to F.conv2d
wherever the probe says so, found for the shapes the registered models run, and the runtime's
logits unchanged with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_batchnorm
from hypothesis import given, settings
from hypothesis import strategies as st

import mstc
import mstc.engine.floatconv as floatconv
from mstc.bench import cluster_weights
from mstc.engine import Runtime
from mstc.engine.binarize import packed_input
from mstc.engine.floatconv import FloatConv, probe_input, rule_compare, torch_order
from mstc.engine.fold import CONST0, CONST1, GE, LE, PackedBits, RuledInput, float_rule_bits
from mstc.engine.sliced import PlaneGeometry, pack_planes
from mstc.models import create_model


def _bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.int32)


def _torch(x, w, stride, padding) -> np.ndarray:
    with torch.no_grad():
        return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding).numpy()


def _data(rng, shape) -> np.ndarray:
    """Inputs unlike the probe: image-like values with exact zeros (black pixels)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = 0.0
    return x


# shapes the registered models run (stems and 1x1 shortcut convs), batch 1 and 32
KNOWN = [
    ((32, 3, 32, 32), (16, 3, 3, 3), 1, 1),  # resnet20 stem
    ((1, 3, 32, 32), (16, 3, 3, 3), 1, 1),
    ((32, 16, 16, 16), (32, 16, 1, 1), 1, 0),  # resnet20 shortcut convs (after the avg pool)
    ((32, 32, 8, 8), (64, 32, 1, 1), 1, 0),
    ((32, 1, 28, 28), (32, 1, 3, 3), 1, 1),  # vgg_small w0.25 on Fashion-MNIST
    ((1, 1, 28, 28), (32, 1, 3, 3), 1, 1),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", KNOWN)
def test_known_shapes_have_an_exact_order(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    conv = FloatConv(w, (stride, stride), (padding, padding))
    order = torch_order(conv, x_shape)
    assert order is not None, "torch's conv took an order FloatConv does not know"
    for seed in range(2):
        x = _data(np.random.default_rng(seed + 1), x_shape)
        assert np.array_equal(_bits(conv(x, order)), _bits(_torch(x, w, stride, padding)))
    # the other order is a different computation: the check tells them apart
    other = next(o for o in floatconv.ORDERS if o != order)
    if w_shape[1] * w_shape[2] * w_shape[3] > max(w_shape[2] * w_shape[3], w_shape[1]):
        x = probe_input(x_shape)
        assert not np.array_equal(_bits(conv(x, other)), _bits(_torch(x, w, stride, padding)))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    o=st.integers(1, 9),
    h=st.integers(3, 11),
    w=st.integers(3, 11),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    data=st.data(),
)
def test_exact_wherever_the_probe_says(n, c, o, h, w, k, stride, data):
    """Odd shapes, strides and paddings: if the probe finds an order, the kernel equals torch on
    other inputs too (the probe's verdict is not a coincidence of its data)."""
    padding = data.draw(st.integers(0, k // 2))
    rng = np.random.default_rng(n * 1000 + c * 100 + o)
    weight = rng.standard_normal((o, c, k, k)).astype(np.float32)
    conv = FloatConv(weight, (stride, stride), (padding, padding))
    order = torch_order(conv, (n, c, h, w))
    if order is None:
        return
    x = _data(rng, (n, c, h, w))
    assert np.array_equal(_bits(conv(x, order)), _bits(_torch(x, weight, stride, padding)))


def test_one_output_is_probed_many_times():
    """A 3x3 input, 3x3 kernel: one output per probe. A single probe once matched the tap order
    by chance while torch summed in another order (1 ulp apart on other data)."""
    rng = np.random.default_rng(1101)
    weight = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    conv = FloatConv(weight, (1, 1), (0, 0))
    order = torch_order(conv, (1, 1, 3, 3))
    for seed in range(50):
        x = _data(np.random.default_rng(seed), (1, 1, 3, 3))
        if order is not None:
            assert np.array_equal(_bits(conv(x, order)), _bits(_torch(x, weight, 1, 0)))


def _rule(rng, o):
    mode = rng.choice([GE, LE, CONST0, CONST1], size=o, p=[0.5, 0.3, 0.1, 0.1]).astype(np.int8)
    t = rng.standard_normal(o).astype(np.float32)
    t[rng.random(o) < 0.2] = 0.0
    t[rng.random(o) < 0.1] = -0.0
    return mode, t


def test_rule_compare_equals_the_float_rule():
    rng = np.random.default_rng(3)
    mode, t = _rule(rng, 64)
    g, h = rule_compare((mode, t))
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38]
    x = np.concatenate([rng.standard_normal((200, 64)), np.tile(special, (64, 1)).T])
    x = np.concatenate(
        [x, t[None, :], np.nextafter(t, np.inf)[None], np.nextafter(t, -np.inf)[None]]
    )
    x = x.astype(np.float32)
    want = float_rule_bits(x.T[None], mode, t)[0].T.astype(bool)
    with np.errstate(invalid="ignore"):
        got = x * g >= h
    assert np.array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    o=st.sampled_from([1, 3, 8, 32, 33, 70]),
    h=st.integers(3, 10),
    w=st.integers(3, 10),
    k=st.sampled_from([1, 3]),
    pad_out=st.integers(0, 2),
    seed=st.integers(0, 3),
)
def test_packed_bits_equal_packing_the_float_output(n, c, o, h, w, k, pad_out, seed):
    """conv + rule + packing in one kernel: the words of packed_input on the float conv (NaN and
    infinities included: inf - inf in a chain), more than 32 and 64 channels, any padding."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k)).astype(np.float32)
    conv = FloatConv(weight, (1, 1), (k // 2, k // 2))
    x = _data(rng, (n, c, h, w))
    x[0, 0, 0, :2] = [np.inf, -np.inf]
    order = torch_order(conv, x.shape)
    if order is None:
        return
    rule = _rule(rng, o)
    want = packed_input(conv(x, order), (pad_out, pad_out), 1, rule)
    got = conv.packed_bits(x, order, rule_compare(rule), (pad_out, pad_out))
    assert got.dtype == np.uint64 and np.array_equal(got, want)
    _check_bit_planes(conv, x, order, rule, pad_out)


def _check_bit_planes(conv, x, order, rule, pad_out):
    """bit_planes: the planes pack_planes makes of the float conv's output, slack bits 0."""
    n, o, ho, wo = conv.output_shape(x.shape)
    words = (n * (ho + 2 * pad_out) * (wo + 2 * pad_out) + 63) // 64 + 2
    geometry = PlaneGeometry(n, o, ho, wo, pad_out, pad_out, words)
    want = pack_planes(conv(x, order), geometry, rule).bits
    got = conv.bit_planes(x, order, rule_compare(rule), (pad_out, pad_out), words)
    assert got.dtype == np.uint64 and got.shape == (o, words) and np.array_equal(got, want)


def test_bit_planes_of_rows_longer_than_a_word():
    """Output rows of more than 64 positions are placed in several pieces."""
    rng = np.random.default_rng(7)
    conv = FloatConv(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), (1, 1), (1, 1))
    x = _data(rng, (2, 2, 5, 131))
    order = torch_order(conv, x.shape)
    assert order is not None
    for pad_out in (0, 1, 2):
        _check_bit_planes(conv, x, order, _rule(rng, 3), pad_out)
    with pytest.raises(ValueError, match="words"):
        conv.bit_planes(x, order, rule_compare(_rule(rng, 3)), (1, 1), 10)


def test_backends_take_packed_bits_like_the_ruled_float_input():
    """A binary conv fed PackedBits gives the sums it gives for the RuledInput they came from."""
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.1, in_channels=1, image_size=16).eval()
    cm = mstc.compress(model, complement=True, input_shape=(1, 16, 16))
    layer = next(iter(cm.layers.values()))
    rng = np.random.default_rng(4)
    xf = _data(rng, (3, layer.cin, 16, 16))
    rule = _rule(rng, layer.cin)
    bits = PackedBits(
        packed_input(xf, tuple(layer.padding), 1, rule), xf.shape, tuple(layer.padding)
    )
    for name in ("packed", "mst"):
        rt = Runtime(cm, name, threads=1)
        want = rt.backend.conv2d(layer, RuledInput(xf, *rule))
        assert np.array_equal(rt.backend.conv2d(layer, bits), want), name
        bad = PackedBits(bits.words, bits.shape, (0, 0))
        with pytest.raises(ValueError, match="padded"):
            rt.backend.conv2d(layer, bad)


def test_rejects_bad_input():
    conv = FloatConv(np.ones((4, 3, 3, 3), np.float32), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="channels"):
        conv(np.zeros((1, 2, 8, 8), np.float32), "tap")
    with pytest.raises(ValueError, match="float32"):
        conv(np.zeros((1, 3, 8, 8), np.float64), "tap")
    with pytest.raises(ValueError, match="contiguous"):
        conv(np.zeros((1, 3, 8, 16), np.float32)[..., ::2], "tap")
    with pytest.raises(ValueError, match="too small"):
        FloatConv(np.ones((4, 3, 5, 5), np.float32), (1, 1), (0, 0))(
            np.zeros((1, 3, 3, 3), np.float32), "tap"
        )
    with pytest.raises(ValueError, match="order"):
        conv(np.zeros((1, 3, 8, 8), np.float32), "rows")
    with pytest.raises(ValueError, match="weight"):
        FloatConv(np.ones((4, 3, 3), np.float32), (1, 1), (1, 1))
    big = FloatConv(np.ones((4, 3, 7, 7), np.float32), (2, 2), (3, 3))  # 147 taps
    assert not big.supported and torch_order(big, (1, 3, 16, 16)) is None


def test_cached_source_is_used_only_if_it_is_the_generated_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTC_CACHE", str(tmp_path))
    monkeypatch.setattr(floatconv, "_compiled", {})
    w = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    conv = FloatConv(w, (1, 1), (1, 1))
    x = _data(np.random.default_rng(1), (2, 2, 6, 7))
    first = conv(x, "tap")
    (source,) = (tmp_path / "floatconv").glob("*.py")
    source.write_text("raise RuntimeError('not ours')\n")  # tampered with
    monkeypatch.setattr(floatconv, "_compiled", {})
    assert np.array_equal(_bits(conv(x, "tap")), _bits(first))
    assert "not ours" not in source.read_text()


@pytest.mark.parametrize(
    "name, kw, shape",
    [
        ("resnet20", dict(width=0.5), (4, 3, 16, 16)),
        ("vgg_small", dict(width=0.1, in_channels=1, image_size=16), (4, 1, 16, 16)),
    ],
)
def test_runtime_logits_and_sums_unchanged(name, kw, shape):
    """Every exact float conv in use: logits and binary sums equal to torch's convs."""
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, **kw), seed=1)
    cm = mstc.compress(model, complement=True, input_shape=shape[1:])
    x = _data(np.random.default_rng(2), shape)
    for backend in ("reference", "packed", "mst"):
        ours, theirs = Runtime(cm, backend, threads=1), Runtime(cm, backend, threads=1)
        ours.float_convs, theirs.float_convs = "exact", False
        a, sa = ours.run(x, return_sums=True)
        b, sb = theirs.run(x, return_sums=True)
        assert any(p is not None for p in ours._float_conv_plans.values()), backend
        assert not theirs._float_conv_plans
        assert np.array_equal(_bits(a), _bits(b)), backend
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
        if backend != "reference":  # the compiled pass, with vgg's stem made as packed bits
            assert np.array_equal(_bits(ours.run(x)), _bits(b)), backend
            stems = [k for k, p in ours._float_conv_plans.items() if k[0] == "bits" and p]
            assert bool(stems) == (name == "vgg_small"), backend


def test_stem_as_bit_planes_for_fused_readers(monkeypatch):
    """mst with every link fused (clustered weights): vgg_small's stem is made as the bit planes
    its fused reader takes (FloatConv.bit_planes), logits equal to the runtime with torch's
    convs, in both pass kinds."""
    torch.manual_seed(0)
    model = randomize_batchnorm(
        create_model("vgg_small", width=0.25, in_channels=1, image_size=16), seed=1
    )
    cluster_weights(model, centres=2, flip=0.01, seed=0)
    cm = mstc.compress(model, complement=True, input_shape=(1, 16, 16))
    x = _data(np.random.default_rng(3), (5, 1, 16, 16))
    made = []
    bit_planes = FloatConv.bit_planes

    def counted(self, *a, **k):
        made.append(1)
        return bit_planes(self, *a, **k)

    monkeypatch.setattr(FloatConv, "bit_planes", counted)
    ours, theirs = Runtime(cm, "mst", threads=1), Runtime(cm, "mst", threads=1)
    ours.float_convs, theirs.float_convs = "exact", False
    assert ours.fusions
    for rt in (ours, theirs):
        rt.plans[x.shape] = frozenset(rt.fusions)
    want, _ = theirs.run(x, return_sums=True)
    for _ in range(2):
        assert np.array_equal(_bits(ours.run(x)), _bits(want))
    assert len(made) == 2
    assert np.array_equal(_bits(ours.run(x, return_sums=True)[0]), _bits(want))


@pytest.mark.parametrize("planes", [False, True])
def test_bits_plan_times_what_the_readers_would_do(planes, monkeypatch):
    """bits_plan's timing compares equal outputs: packed_bits against torch's conv packed into
    words, or (fused readers' geometry) bit_planes against torch's conv packed into planes."""
    rng = np.random.default_rng(5)
    conv = FloatConv(rng.standard_normal((20, 1, 3, 3)).astype(np.float32), (1, 1), (1, 1))
    x = _data(rng, (1, 1, 12, 12))
    rule = _rule(rng, 20)
    geometry = PlaneGeometry(1, 20, 12, 12, 1, 1, (14 * 14 + 63) // 64 + 2) if planes else None
    timed = {}

    def faster(ours, theirs, margin):
        timed["ours"], timed["theirs"] = ours(), theirs()
        return True

    monkeypatch.setattr(floatconv, "_faster", faster)
    assert floatconv.bits_plan(conv, x, rule, (1, 1), True, geometry) is not None
    theirs = timed["theirs"].bits if planes else timed["theirs"]
    assert timed["ours"].shape == theirs.shape and np.array_equal(timed["ours"], theirs)
