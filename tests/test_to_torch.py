"""to_torch: the PyTorch model rebuilt from a CompressedModel compresses back to the same model and
gives the engine's logits exactly."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm

import mstc
from mstc.errors import FormatError
from mstc.format import to_torch
from mstc.models import create_model

COMMITTED = (
    Path(__file__).resolve().parents[1] / "results/models/vgg_small_w0.25_fmnist_lam3e-5_k4.mstc"
)


def _random(name, width, **plan):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, width=width))
    return mstc.compress(model, **plan)


CASES = {
    "vgg_small_w0.125": lambda: _random("vgg_small", 0.125),
    "resnet20_w0.25_complement": lambda: _random("resnet20", 0.25, complement=True, max_depth=3),
    "committed_vgg_fmnist": lambda: mstc.load(COMMITTED),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    cm = CASES[request.param]()
    return cm, to_torch(cm)


def test_recompression_is_identical(case):
    cm, model = case
    assert not model.training and model.mstc_config == cm.model_config
    cm2 = mstc.compress(model, **cm.plan_options, input_shape=cm.input_shape)
    assert [n.to_json() for n in cm2.nodes] == [n.to_json() for n in cm.nodes]
    assert set(cm2.tensors) == set(cm.tensors)
    for k, v in cm.tensors.items():
        assert np.array_equal(cm2.tensors[k], v), k
    assert set(cm2.layers) == set(cm.layers)
    for name, a in cm.layers.items():
        b = cm2.layers[name]
        assert np.array_equal(b.weight_bits(), a.weight_bits()), name
        assert (a.scale is None) == (b.scale is None) and (a.bias is None) == (b.bias is None)
        if a.scale is not None:
            assert a.scale.dtype == b.scale.dtype == np.float32
            assert np.array_equal(b.scale, a.scale), name  # bit for bit
        if a.bias is not None:
            assert np.array_equal(b.bias, a.bias), name
        for f in ("parent", "negate", "root_bits", "diff_ptr", "diff_idx"):
            assert np.array_equal(getattr(b, f), getattr(a, f)), (name, f)


def test_logits_equal_engine_exactly(case):
    cm, model = case
    x = np.random.default_rng(1).standard_normal((3, *cm.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(mstc.engine.run(cm, x, backend="reference"), expected)


def test_committed_model_is_the_fmnist_vgg():
    cm = mstc.load(COMMITTED)
    assert cm.model_config["name"] == "vgg_small" and cm.input_shape == (1, 28, 28)
    assert to_torch(cm).mstc_input_shape == (1, 28, 28)


def test_no_model_config_is_a_format_error():
    cm = dataclasses.replace(_random("vgg_small", 0.125), model_config={})
    with pytest.raises(FormatError, match="no model config"):
        to_torch(cm)


def _unreachable_scale(n: int) -> np.float32:
    """A float32 s that is fl(S / n) for no float32 S near n*s, so no float32 row of n values has
    the mean s (torch's mean is fl(float32 sum / n)). Such s exist where the significand of n*s
    is smaller than that of s (the sums' spacing / n exceeds s's): just below a power of two."""
    s = np.float32(0.125)
    for _ in range(100_000):
        s = np.nextafter(s, np.float32(0))
        up = down = np.float32(np.float64(s) * n)
        near = [up]
        for _ in range(8):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
            near += [up, down]
        if all(np.float32(t / np.float32(n)) != s for t in near):
            return s
    raise AssertionError(f"no unreachable scale found for n = {n}")


def test_unreachable_scale_is_a_format_error():
    cm = _random("vgg_small", 0.125)
    name, layer = next(iter(cm.layers.items()))
    scale = layer.scale.copy()
    scale[0] = _unreachable_scale(layer.n)
    layers = {**cm.layers, name: dataclasses.replace(layer, scale=scale)}
    with pytest.raises(FormatError, match="no float32 weights"):
        to_torch(dataclasses.replace(cm, layers=layers))
