# amaranth: UnusedElaboratable=no
"""Hardware datapath: threshold folding, numpy references, Amaranth simulation, synthesis."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("amaranth")

from mstc.hw import (  # noqa: E402
    GE,
    LE,
    LayerChain,
    LayerDatapath,
    LayerSpec,
    Thresholds,
    bn_sign_reference,
    chain_bits,
    clustered_bits,
    fold_bn_sign,
    layer_bits,
    layer_sums,
    layer_sums_tree,
    random_bits,
    simulate,
)
from mstc.hw.model import estimate, layer_cost, network_shapes, popcount_cost  # noqa: E402


def _thresholds(rng, cout: int, n: int) -> Thresholds:
    t = rng.integers(-n - 1, n + 2, size=cout)
    d = np.where(rng.random(cout) < 0.5, GE, LE).astype(np.int8)
    return Thresholds(t, d)


# --- folding ----------------------------------------------------------------------------------


def test_fold_matches_float_reference_at_every_sum():
    rng = np.random.default_rng(0)
    n, cout = 27, 40
    params = dict(
        scale=np.abs(rng.normal(1, 0.5, cout)).astype(np.float32) * rng.choice([1, -1], cout),
        bias=rng.normal(0, 2, cout).astype(np.float32),
        gamma=rng.normal(0, 1, cout).astype(np.float32),
        beta=rng.normal(0, 1, cout).astype(np.float32),
        mean=rng.normal(0, 3, cout).astype(np.float32),
        var=rng.uniform(0.1, 4, cout).astype(np.float32),
    )
    params["gamma"][:3] = 0.0  # constant channels
    params["scale"][3] = 0.0
    # ties: beta chosen so that the BN output is exactly 0 at an integer y
    params.update(gamma=params["gamma"].copy())
    th = fold_bn_sign(n, eps=1e-5, **params)
    y = np.arange(-n, n + 1)[:, None].repeat(cout, axis=1)
    ref = bn_sign_reference(y, eps=1e-5, **params)
    assert np.array_equal(th.apply(y), ref)
    assert set(np.unique(th.direction)) <= {GE, LE}
    assert (th.direction[params["scale"] * params["gamma"] < 0] == LE).all()


def test_fold_exact_tie_and_sign_zero():
    # BN(y) = y - 3: exactly 0 at y = 3 -> bit 1 there (sign(0) = +1)
    th = fold_bn_sign(9, mean=[3.0], var=[1.0], eps=0.0)
    assert th.t[0] == 3 and th.direction[0] == GE
    # negative gamma flips: bit = y <= 3
    th = fold_bn_sign(9, gamma=[-2.0], mean=[3.0], var=[1.0], eps=0.0)
    assert th.t[0] == 3 and th.direction[0] == LE
    assert np.array_equal(Thresholds.sign(2).apply(np.array([[0, -1]])), [[1, 0]])


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize("complement", [False, True])
def test_tree_reference_equals_dense(complement):
    rng = np.random.default_rng(1)
    bits = clustered_bits(13, 45, centres=3, flip=0.3, seed=2)
    bits[5] = 1 - bits[2]  # an exact complement
    bits[7] = bits[1]  # a duplicate: an empty diff
    spec = LayerSpec.from_plan(bits, complement=complement)
    a = rng.integers(0, 2, (50, 45), dtype=np.uint8)
    assert np.array_equal(layer_sums_tree(spec, a), layer_sums(spec, a))
    if complement:
        assert spec.negate.any()
    assert spec.xnors == spec.n * (spec.parent < 0).sum() + sum(
        len(spec.diff[j]) for j in np.flatnonzero(spec.parent >= 0)
    )


# --- simulation -------------------------------------------------------------------------------


CASES = [
    # cout, n, centres, flip, complement, parallel, levels_per_stage
    (5, 9, 2, 0.2, False, 1, 2),
    (13, 45, 3, 0.15, True, 1, 2),
    (8, 27, 0, 0.0, True, 2, 1),  # random bits
    (11, 20, 2, 0.1, True, 1, 3),
]


@pytest.mark.parametrize("cout,n,centres,flip,complement,parallel,lps", CASES)
def test_simulation_equals_reference(cout, n, centres, flip, complement, parallel, lps):
    rng = np.random.default_rng(cout * 100 + n)
    if centres:
        bits = clustered_bits(cout, n, centres=centres, flip=flip, seed=n)
    else:
        bits = random_bits(cout, n, seed=n)
    if complement:
        bits[-1] = 1 - bits[0]
        bits[-2] = bits[1]
    spec = LayerSpec.from_plan(bits, thresholds=_thresholds(rng, cout, n), complement=complement)
    if complement:
        assert spec.negate.any()
    a = rng.integers(0, 2, (12, parallel, n), dtype=np.uint8)
    for s in (spec, spec.dense()):
        dut = LayerDatapath(s, parallel=parallel, levels_per_stage=lps, emit_sums=True)
        r = simulate(dut, a, stall_seed=cout)  # random bubbles and back-pressure
        assert np.array_equal(r.sums, layer_sums(s, a))
        assert np.array_equal(r.bits, layer_bits(s, a))
    # with an always-ready consumer the first result appears after `latency` cycles, II = 1
    dut = LayerDatapath(spec, parallel=parallel, levels_per_stage=lps)
    r = simulate(dut, a)
    assert r.first_out == dut.latency
    assert r.cycles == dut.latency + len(a)
    assert np.array_equal(r.bits, layer_bits(spec, a))


def test_mst_latency_follows_depth():
    bits = clustered_bits(12, 36, centres=1, flip=0.1, seed=3)
    spec = LayerSpec.from_plan(bits)
    dense = LayerDatapath(spec.dense())
    mst = LayerDatapath(spec)
    assert spec.depth >= 1
    assert dense.latency < mst.latency <= dense.latency + spec.depth
    assert layer_cost(spec).latency == mst.latency
    assert layer_cost(spec.dense()).latency == dense.latency


def test_chain_of_two_layers():
    rng = np.random.default_rng(7)
    s1 = LayerSpec.from_plan(
        clustered_bits(10, 21, centres=2, flip=0.2, seed=1),
        thresholds=_thresholds(rng, 10, 21),
        complement=True,
        name="l1",
    )
    s2 = LayerSpec.from_plan(
        clustered_bits(7, 10, centres=2, flip=0.2, seed=2),
        thresholds=_thresholds(rng, 7, 10),
        name="l2",
    )
    a = rng.integers(0, 2, (15, 21), dtype=np.uint8)
    dut = LayerChain([s1, s2])
    r = simulate(dut, a, stall_seed=5)
    assert np.array_equal(r.bits[:, 0], chain_bits([s1, s2], a))
    with pytest.raises(ValueError):
        LayerChain([s2, s1])


def test_spec_from_code_roundtrip():
    pytest.importorskip("mstc.format")
    from mstc.format import BinaryLayerCode
    from mstc.mst import plan

    bits = clustered_bits(9, 18, centres=2, flip=0.2, seed=4)
    p = plan(bits, complement=True)
    code = BinaryLayerCode.from_bits(
        "c",
        bits,
        p,
        kind="conv2d",
        cin=2,
        kernel_size=(3, 3),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
    )
    spec = LayerSpec.from_code(code)
    assert np.array_equal(spec.bits, bits)
    assert spec.xnors == p.xnors


# --- model ------------------------------------------------------------------------------------


def test_model_counts_and_estimate():
    assert popcount_cost(0)["slots"] == 0
    assert popcount_cost(1)["slots"] == 1
    c = popcount_cost(64)
    assert c["fa"] == 42 and c["hi"] == 64
    shapes = network_shapes("vgg_small")
    assert sum(s.cout * s.n * s.positions for s in shapes) == 603_979_776
    r20 = network_shapes("resnet20")
    assert sum(s.cout * s.n * s.positions for s in r20) == 40_108_032
    r18 = network_shapes("resnet18")
    assert sum(s.cout * s.n for s in r18) == 10_985_472
    est = estimate(r20[:3], weights="clustered:4:0.05")
    assert est["mst"]["xnors_per_image"] < est["dense"]["xnors_per_image"]
    assert est["area_ratio"] < 1.0 and est["fps_gain"] > 1.0


# --- synthesis (yowasp; the first run compiles WebAssembly for about a minute) ---------------


@pytest.mark.synth
@pytest.mark.slow
def test_synthesize_small_layer(tmp_path, monkeypatch):
    from mstc.hw.synth import synthesize

    monkeypatch.setenv("MSTC_CACHE", str(tmp_path))
    spec = LayerSpec.from_plan(clustered_bits(6, 18, centres=2, flip=0.1, seed=0), name="t")
    r = synthesize(spec, device="25k")
    for k in ("dense", "mst"):
        assert r[k]["lut_equiv"] > 0 and r[k]["ffs"] > 0 and r[k]["fmax_mhz"] > 0
        assert r[k]["latency_cycles"] >= 2
    assert r["xnor_ratio"] < 1.0
    assert r["mst"]["lut_equiv"] < r["dense"]["lut_equiv"]
    r2 = synthesize(spec, device="25k")
    assert r2["mst"]["cached"] and r2["mst"]["lut_equiv"] == r["mst"]["lut_equiv"]


def test_compressed_model_layer_end_to_end(tmp_path):
    """A layer of a real .mstc file: folded thresholds equal sign(BN(conv(x))) from PyTorch, and
    the simulated MST datapath equals them on im2col patches."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import mstc
    from mstc.hw.spec import spec_from_model
    from mstc.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("vgg_small", width=1 / 16).eval()
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        bn.weight.copy_(torch.randn(bn.num_features))
        bn.bias.copy_(torch.randn(bn.num_features) * 3)
        bn.running_mean.copy_(torch.randn(bn.num_features) * 5)
        bn.running_var.copy_(torch.rand(bn.num_features) + 0.5)
    path = tmp_path / "m.mstc"
    mstc.compress(model, complement=True).save(path)
    spec = spec_from_model(mstc.load(path), "features.0")
    x = torch.randn(2, conv.in_channels, 6, 6)
    with torch.no_grad():
        want = (bn(conv(x)) >= 0).to(torch.uint8)  # (B, Cout, H, W)
    xb = F.pad(torch.where(x >= 0, 1.0, 0.0), (1, 1, 1, 1), value=0.0)
    patches = F.unfold(xb, 3).transpose(1, 2).reshape(-1, spec.n).numpy().astype(np.uint8)
    got = layer_bits(spec, patches)
    assert np.array_equal(got, want.permute(0, 2, 3, 1).reshape(-1, spec.cout).numpy())
    r = simulate(LayerDatapath(spec, emit_sums=True), patches[:16])
    assert np.array_equal(r.bits[:, 0], got[:16])
    assert np.array_equal(r.sums[:, 0], layer_sums(spec, patches[:16]))


# --- window generator and a chain of 3x3 convolutions ----------------------------------------


def _stream(dut, words: list[int], n_out: int, width: int, seed: int) -> np.ndarray:
    from amaranth.sim import Simulator

    rng = np.random.default_rng(seed)
    got: list[list[int]] = []

    async def bench(ctx) -> None:
        i = 0
        for _ in range(50 * (len(words) + n_out) + 200):
            v = i < len(words) and rng.random() < 0.8
            r = rng.random() < 0.7
            ctx.set(dut.in_valid, int(v))
            ctx.set(dut.in_data, words[i] if i < len(words) else 0)
            ctx.set(dut.out_ready, int(r))
            if v and ctx.get(dut.in_ready):
                i += 1
            if r and ctx.get(dut.out_valid):
                val = ctx.get(dut.out_data)
                got.append([(val >> t) & 1 for t in range(width)])
            await ctx.tick()
            if len(got) == n_out:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.uint8)


def _pixels(img: np.ndarray) -> list[int]:
    return [
        int(sum(int(b) << c for c, b in enumerate(px))) for px in img.reshape(-1, img.shape[-1])
    ]


@pytest.mark.parametrize("h,w,c,stride", [(5, 4, 2, 1), (6, 5, 1, 2)])
def test_window_generator(h, w, c, stride):
    from mstc.hw.window import WindowGenerator, im2col_bits

    rng = np.random.default_rng(h * w)
    frames = [rng.integers(0, 2, (h, w, c), dtype=np.uint8) for _ in range(2)]
    want = np.concatenate([im2col_bits(f, stride=stride) for f in frames])
    dut = WindowGenerator(c, h, w, stride=stride)
    got = _stream(dut, sum((_pixels(f) for f in frames), []), len(want), c * 9, seed=h)
    assert np.array_equal(got, want)


def test_conv_pipeline_of_two_layers():
    from mstc.hw.window import ConvPipeline, im2col_bits

    rng = np.random.default_rng(11)
    h, w, cin = 5, 4, 2
    s1 = LayerSpec.from_plan(
        clustered_bits(5, cin * 9, centres=2, flip=0.2, seed=1),
        thresholds=_thresholds(rng, 5, cin * 9),
        complement=True,
    )
    s2 = LayerSpec.from_plan(
        clustered_bits(7, 5 * 9, centres=2, flip=0.15, seed=2),
        thresholds=_thresholds(rng, 7, 45),
    )
    img = rng.integers(0, 2, (h, w, cin), dtype=np.uint8)
    y1 = layer_bits(s1, im2col_bits(img)).reshape(h, w, 5)
    want = layer_bits(s2, im2col_bits(y1))
    dut = ConvPipeline([s1, s2], cin, h, w)
    got = _stream(dut, _pixels(img), h * w, 7, seed=3)
    assert np.array_equal(got, want)


def test_synth_reports_a_design_that_does_not_fit(tmp_path, monkeypatch):
    """The fit check after Yosys, with the tools replaced by a fake that reports a huge design."""
    import json

    import mstc.hw.synth as hs

    def fake_run(cmd, cwd, timeout, what):
        cells = {"LUT4": 30000, "CCU2C": 10, "TRELLIS_FF": 100}
        (cwd / "stat.json").write_text(
            json.dumps({"modules": {"\\top": {"num_cells_by_type": cells}}})
        )
        return ""

    monkeypatch.setattr(hs, "_run", fake_run)
    monkeypatch.setenv("MSTC_CACHE", str(tmp_path))
    spec = LayerSpec.from_plan(random_bits(4, 9), name="t")
    with pytest.raises(hs.HardwareError, match="does not fit"):
        hs.synth_design(LayerDatapath(spec), device="25k")


def test_forest_with_several_roots():
    rng = np.random.default_rng(5)
    bits = clustered_bits(10, 33, centres=3, flip=0.1, seed=5)
    spec = LayerSpec.from_plan(bits, thresholds=_thresholds(rng, 10, 33), max_depth=1)
    assert (spec.parent < 0).sum() >= 2 and spec.depth <= 1
    a = rng.integers(0, 2, (10, 33), dtype=np.uint8)
    r = simulate(LayerDatapath(spec, emit_sums=True), a, stall_seed=1)
    assert np.array_equal(r.sums[:, 0], layer_sums(spec, a))
    assert np.array_equal(r.bits[:, 0], layer_bits(spec, a))
