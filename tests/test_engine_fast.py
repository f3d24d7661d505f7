"""The optimised backends ("packed", "mst") equal the reference backend bit for bit.

Integer sums of every binary layer (``return_sums=True``) are compared on every registered model
(small odd widths, stride 2, batch > 1), on clustered ("regularized") weights with and without
complement edges, on trained checkpoints when present, and by hypothesis over random layer shapes.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mstc
from mstc.bench import cluster_weights
from mstc.engine import Runtime, backends, get_backend, run
from mstc.engine.mst_kernel import MSTBackend
from mstc.format import BinaryLayerCode, CompressedModel
from mstc.models import create_model, list_models
from mstc.mst import plan

FAST = ("packed", "mst")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parents[1]


def _input(seed: int, shape) -> np.ndarray:
    """Gaussian values with exact zeros and negative zeros mixed in (sign(0) = +1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    mask = rng.random(shape)
    x[mask < 0.05] = 0.0
    x[(mask >= 0.05) & (mask < 0.1)] = -0.0
    return x


@pytest.fixture(autouse=True)
def _delta_kernel(monkeypatch):
    """Test the tree (delta) kernel itself: no per-layer autotuning towards plain XNOR."""
    monkeypatch.setattr(MSTBackend, "autotune", False)


def _same(cm: CompressedModel, x: np.ndarray, threads: int | None = None) -> None:
    """Every fast backend: integer sums and logits equal to the reference backend's, in the
    plain pass (which collects sums) and in the compiled inference pass, twice (buffers reused)."""
    ref_logits, ref = run(cm, x, "reference", return_sums=True)
    for b in FAST:
        logits, sums = run(cm, x, b, threads=threads, return_sums=True)
        assert sums.keys() == ref.keys()
        for k in ref:
            assert sums[k].dtype == np.int32 and sums[k].shape == ref[k].shape, (b, k)
            np.testing.assert_array_equal(sums[k], ref[k], err_msg=f"{b} {k}")
        np.testing.assert_array_equal(logits, ref_logits, err_msg=b)
        rt = Runtime(cm, b, threads=threads)
        for _ in range(2):
            np.testing.assert_array_equal(rt.run(x), ref_logits, err_msg=f"{b} compiled")


def test_registered():
    assert {"packed", "mst"} <= set(backends())


MODEL_CASES = {
    "vgg_small": dict(width=0.1, shape=(3, 3, 16, 16), image_size=16),
    "resnet20": dict(width=0.3, shape=(3, 3, 16, 16)),
    "resnet18_cifar": dict(width=0.05, shape=(2, 3, 16, 16)),
    "resnet18": dict(width=0.05, shape=(2, 3, 40, 40)),
}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("mode", ["random", "clustered", "clustered-complement"])
def test_models(name, mode):
    case = dict(MODEL_CASES.get(name, dict(width=0.1, shape=(2, 3, 32, 32))))
    shape = case.pop("shape")
    torch.manual_seed(1)
    model = create_model(name, **case).eval()
    if mode != "random":
        cluster_weights(model, centres=3, flip=0.03, seed=2)
    cm = mstc.compress(model, complement=mode != "clustered", input_shape=shape[1:])
    _same(cm, _input(3, shape), threads=2 if mode == "clustered" else None)


# trained, regularized checkpoints committed under results/models (real weights)
CHECKPOINTS = sorted(glob.glob(str(ROOT / "results" / "models" / "*.safetensors")))


@pytest.mark.parametrize("path", CHECKPOINTS or [None])
def test_trained_checkpoint(path):
    if path is None:
        pytest.fail("no trained checkpoint under results/models/")
    from mstc.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    cm = mstc.compress(model, complement=True)
    _same(cm, _input(4, (2, *cm.input_shape)))


COMPRESSED = sorted(glob.glob(str(ROOT / "results" / "models" / "*.mstc")))


@pytest.mark.parametrize("path", COMPRESSED, ids=lambda p: Path(p).name)
def test_committed_mstc_files(path):
    """The committed .mstc files (trained, regularized vgg_small): every engine equals the
    reference, sums and logits."""
    cm = mstc.load(path)
    _same(cm, _input(5, (2, *cm.input_shape)))


@pytest.mark.parametrize("path", COMPRESSED, ids=lambda p: Path(p).name)
def test_compiled_pass_equals_plain_pass_in_every_plan(path):
    """The compiled inference pass (Runtime._program) against the plain one, with mst's fused
    links all on and all off, and with the pool's buffers reused pass after pass."""
    cm = mstc.load(path)
    x = _input(6, (3, *cm.input_shape))
    for b in (*FAST, "reference"):
        compiled, plain = Runtime(cm, b, threads=1), Runtime(cm, b, threads=1)
        plain.compiled_passes = False
        plans = [frozenset(compiled.fusions), frozenset()] if compiled.fusions else [None]
        for links in plans:
            for rt in (compiled, plain):
                if links is not None:
                    rt.plans[x.shape] = links
            for _ in range(2):
                a, c = compiled.run(x), plain.run(x)
                np.testing.assert_array_equal(a.view(np.uint32), c.view(np.uint32), err_msg=b)
        assert compiled._programs and not plain._programs
        assert not compiled.pool._lent  # every buffer back after the pass


def test_compiled_pass_follows_replaced_epilogues():
    """Replacing the runtime's epilogues (here: table lookups instead of closed forms) after a
    compiled pass makes a new program, same logits."""
    import dataclasses

    torch.manual_seed(0)
    cm = mstc.compress(create_model("resnet20", width=0.3).eval(), input_shape=(3, 16, 16))
    x = _input(7, (2, 3, 16, 16))
    rt = Runtime(cm, "packed", threads=1)
    first = rt.run(x)
    rt.epilogues = {k: dataclasses.replace(e, affine=None) for k, e in rt.epilogues.items()}
    rt._epilogue_at = {e.at: (k, e) for k, e in rt.epilogues.items() if e.at != k}
    np.testing.assert_array_equal(rt.run(x).view(np.uint32), first.view(np.uint32))
    assert len(rt._programs) == 2
    assert all(not k.fuses_into_xnor for _, k in rt._epilogue_kernels.values())


# ------------------------------------------------------------------ single layers, hypothesis


def _layer(bits, clustered: bool, complement: bool, **geometry) -> BinaryLayerCode:
    p = plan(bits, complement=complement)
    return BinaryLayerCode.from_bits("L", bits, p, **geometry)


def _bits(rng, cout: int, n: int, clustered: bool) -> np.ndarray:
    if not clustered:
        return rng.integers(0, 2, (cout, n)).astype(np.uint8)
    c = rng.integers(0, 2, (max(1, cout // 4), n))
    rows = c[rng.integers(0, len(c), cout)]
    flip = rng.random((cout, n)) < 0.04
    inv = rng.random(cout) < 0.3  # some inverted filters: complement edges
    return (rows ^ flip ^ inv[:, None]).astype(np.uint8)


def _check_layer(layer: BinaryLayerCode, x: np.ndarray, threads: int | None) -> None:
    cm = CompressedModel(nodes=[], tensors={}, layers={"L": layer}, input_shape=x.shape[1:])
    method = "conv2d" if layer.kind == "conv2d" else "linear"
    ref = getattr(get_backend("reference")(cm), method)(layer, x)
    for b in FAST:
        got = getattr(get_backend(b)(cm, threads=threads), method)(layer, x)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref, err_msg=b)


@SETTINGS
@given(
    cin=st.integers(1, 70),
    cout=st.integers(1, 40),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    hw=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    batch=st.integers(1, 3),
    clustered=st.booleans(),
    complement=st.booleans(),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_conv_shapes(
    cin, cout, kh, kw, stride, padding, dilation, hw, batch, clustered, complement, threads, seed
):
    h = max(hw[0], dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    w = max(hw[1], dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    rng = np.random.default_rng(seed)
    layer = _layer(
        _bits(rng, cout, cin * kh * kw, clustered),
        clustered,
        complement,
        kind="conv2d",
        cin=cin,
        kernel_size=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    _check_layer(layer, _input(seed, (batch, cin, h, w)), threads)


@SETTINGS
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 150),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_packed_input_layout(n, c, hw, pad, threads, seed):
    """packed_input == a numpy packing: bit c%64 of word c//64 at the padded position is
    x >= 0 (NaN and the padding 0); words beyond C are 0."""
    from mstc.engine.binarize import packed_input

    x = _input(seed, (n, c, *hw))
    x[np.random.default_rng(seed).random(x.shape) < 0.03] = np.nan
    bits = (x >= 0).astype(np.uint64)  # NaN >= 0 is False
    want = np.zeros((n, hw[0] + 2 * pad[0], hw[1] + 2 * pad[1], (c + 63) // 64), np.uint64)
    inner = want[:, pad[0] : pad[0] + hw[0], pad[1] : pad[1] + hw[1]]
    for ch in range(c):
        inner[..., ch // 64] |= bits[:, ch] << np.uint64(ch % 64)
    np.testing.assert_array_equal(packed_input(x, pad, threads), want)


@SETTINGS
@given(
    n=st.integers(1, 300),
    cout=st.integers(1, 40),
    batch=st.integers(1, 9),
    clustered=st.booleans(),
    complement=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_shapes(n, cout, batch, clustered, complement, seed):
    rng = np.random.default_rng(seed)
    layer = _layer(
        _bits(rng, cout, n, clustered),
        clustered,
        complement,
        kind="linear",
        cin=n,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
    )
    _check_layer(layer, _input(seed, (batch, n)), None)


def test_int32_accumulators():
    """n > 32767: the mst backend switches its accumulators from int16 to int32."""
    rng = np.random.default_rng(0)
    n = 33000
    base = rng.integers(0, 2, n)
    bits = np.stack([base, base ^ (rng.random(n) < 0.01), 1 - base]).astype(np.uint8)
    layer = _layer(
        bits,
        True,
        True,
        kind="linear",
        cin=n,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
    )
    x = np.ones((2, n), np.float32)  # |y| = n for the root: overflows int16
    x[1, ::3] = -1
    _check_layer(layer, x, None)


def test_prepared_xnor_follows_new_weights(monkeypatch):
    """packed.xnor_layer's prepared path is per weights array (and layer name and shape), keyed
    by the array's id with a weak reference to tell a new array at a freed one's id: with every
    id made equal, layers of one name and shape with new weights each time still give each
    their own sums (the reference backend's)."""
    from mstc.engine import packed as pk

    rng = np.random.default_rng(3)
    x = _input(8, (1, 16, 6, 6))
    geometry = dict(kind="conv2d", cin=16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1),
                    dilation=(1, 1))  # fmt: skip
    monkeypatch.setattr(pk, "id", lambda obj: 7, raising=False)  # every array at one id
    for _ in range(4):
        layer = _layer(rng.integers(0, 2, (8, 144)).astype(np.uint8), False, False, **geometry)
        cm = CompressedModel(nodes=[], tensors={}, layers={"L": layer}, input_shape=x.shape[1:])
        want = get_backend("reference")(cm).conv2d(layer, x)
        wT = pk.packed_weights(layer.weight_bits(), 16, 3, 3)
        np.testing.assert_array_equal(pk.xnor_layer(layer, x, wT, 1, None), want)


def test_bad_input():
    torch.manual_seed(0)
    cm = mstc.compress(create_model("resnet20", width=0.25).eval())
    layer = next(iter(cm.layers.values()))
    for b in FAST:
        with pytest.raises(ValueError):
            get_backend(b)(cm).conv2d(layer, np.zeros((1, layer.cin + 1, 8, 8), np.float32))


def test_autotune(monkeypatch):
    """Autotuned "mst" picks a kernel per layer and shape and stays exact."""
    monkeypatch.setattr(MSTBackend, "autotune", True)
    torch.manual_seed(0)
    model = cluster_weights(create_model("vgg_small", width=0.1, image_size=16).eval(), seed=1)
    cm = mstc.compress(model, complement=True, input_shape=(3, 16, 16))
    x = _input(5, (2, 3, 16, 16))
    _, ref = run(cm, x, "reference", return_sums=True)
    rt = mstc.engine.Runtime(cm, "mst")
    for _ in range(2):
        _, sums = rt.run(x, return_sums=True)
        for k in ref:
            np.testing.assert_array_equal(sums[k], ref[k])
    assert set(rt.backend.kernels.values()) <= {"delta", "xnor", "sliced", "int", "walk16"}
    assert rt.backend.kernels and rt.fusions


def test_fastest_rounds():
    """fastest(): the cheaper of two callables; short ones get extra timed rounds (3 at least,
    15 at most, after one untimed round), long ones stop at 3."""
    from mstc.engine.backend import fastest

    calls = {"slow": 0, "fast": 0}

    def work(name, n):
        def run():
            calls[name] += 1
            sum(range(n))

        return run

    assert fastest({"slow": work("slow", 20000), "fast": work("fast", 200)}, 1) == "fast"
    assert calls["slow"] == calls["fast"] == 1 + 15  # ~5 ms in all: the round limit stops it
    calls.update(slow=0, fast=0)
    assert fastest({"slow": work("slow", 4_000_000), "fast": work("fast", 2_000_000)}, 1) == "fast"
    assert calls["fast"] == 1 + 3  # 3 timed rounds already spend the 50 ms budget


def test_bench_cli_json(capsys):
    """``mstc bench --json``: one object with the documented keys (tiny model, one round)."""
    import json

    from mstc.cli import main

    rc = main(
        ["bench", "resnet20", "--width", "0.25", "--reps", "1", "--min-time", "0.01", "--json"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert {"model", "batch", "threads", "bop_ratio", "median_ms"} <= set(r)
    assert set(r["median_ms"]) == {"torch", "packed", "mst"}
    assert r["bop_ratio"] > 1 and all(v > 0 for v in r["median_ms"].values())
    assert all(0 < r["min_ms"][b] <= r["median_ms"][b] for b in r["median_ms"])
    assert len(r["layers"]) == 18
    assert all(layer["ms"]["packed"] > 0 for layer in r["layers"])  # binary layers were timed
