"""Bit-exactness of the reference engines against the PyTorch model (integer equality)."""

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm

import mstc
from mstc.engine import backends, run
from mstc.models import create_model, list_models
from mstc.verify import torch_integer_sums, verify

# width giving channel counts that are not multiples of 8 or 64 (e.g. 7/14/29 for resnet20)
SMALL = {"resnet20": 0.45, "resnet18_cifar": 0.11, "resnet18": 0.11, "vgg_small": 0.09}
SIZE = {"resnet18": 37}


def _model(name, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_batchnorm(create_model(name, width=SMALL[name], **kw), seed)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("complement", [False, True])
def test_reference_backends_bit_exact_on_every_model(name, complement):
    assert set(SMALL) == set(list_models())
    model = _model(name)
    cm = mstc.compress(model, complement=complement)
    s = SIZE.get(name, 32)
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    ref_logits, ref_sums = torch_integer_sums(model, x)
    assert any(layer.stride == (2, 2) for layer in cm.layers.values()) or name == "vgg_small"
    for backend in ("reference", "dense"):
        logits, sums = run(cm, x.numpy(), backend, return_sums=True)
        assert set(sums) == set(ref_sums)
        for k in ref_sums:
            assert sums[k].dtype == np.int32
            assert np.array_equal(sums[k], ref_sums[k]), (backend, k)
        # float parts run the same torch functions: logits are identical, not just close
        assert np.array_equal(logits, ref_logits)


def test_max_depth_plan_is_still_bit_exact():
    model = _model("resnet20")
    cm = mstc.compress(model, max_depth=2)
    assert max(c.depth for c in cm.layers.values()) <= 2
    x = torch.randn(2, 3, 32, 32)
    assert verify(cm, model, x).ok


def test_odd_input_size_and_batch_one():
    model = _model("resnet20", seed=3)
    cm = mstc.compress(model, complement=True)
    x = torch.randn(1, 3, 19, 23)
    assert verify(cm, model, x, backend="dense").ok
    assert verify(cm, model, x, backend="reference").ok


def test_zero_inputs_binarise_to_plus_one():
    model = _model("vgg_small", image_size=16)
    cm = mstc.compress(model)
    assert verify(cm, model, torch.zeros(2, 3, 16, 16)).ok


def test_engine_rejects_bad_input():
    cm = mstc.compress(_model("resnet20"))
    with pytest.raises(ValueError, match="shape"):
        run(cm, np.zeros((2, 5, 32, 32), np.float32))
    with pytest.raises(ValueError, match="shape"):
        run(cm, np.zeros((3, 32, 32), np.float32))
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run(cm, x)
    with pytest.raises(ValueError, match="unknown backend"):
        run(cm, np.zeros((1, 3, 32, 32), np.float32), backend="nope")


def test_backend_registry_lists_reference_backends():
    assert {"reference", "dense"} <= set(backends())


def test_verify_detects_a_corrupted_layer():
    model = _model("resnet20")
    cm = mstc.compress(model)
    layer = next(iter(cm.layers.values()))
    j = int(np.flatnonzero(layer.parent >= 0)[0])
    # move one stored difference: a different but still valid code
    lo = layer.diff_ptr[j]
    idx = layer.diff_idx.astype(np.int64)
    row = set(idx[layer.diff_ptr[j] : layer.diff_ptr[j + 1]].tolist())
    free = next(k for k in range(layer.n) if k not in row)
    new_row = sorted((row - {int(idx[lo])}) | {free}) if row else [free]
    if not row:
        pytest.skip("first child has no differences")
    idx[layer.diff_ptr[j] : layer.diff_ptr[j + 1]] = new_row
    layer.diff_idx = idx.astype(layer.diff_idx.dtype)
    result = verify(cm, model, torch.randn(2, 3, 32, 32))
    assert not result.ok and layer.name in result.mismatched_layers


def test_reference_backends_bit_exact_on_a_trained_checkpoint():
    """Real weights: a vgg_small trained on Fashion-MNIST with the MST regularizer."""
    from pathlib import Path

    from mstc.checkpoint import load_checkpoint

    path = (
        Path(__file__).parent.parent
        / "results/models/vgg_small_w0.125_fmnist_lam1e-4_k4_cinit.safetensors"
    )
    model, _ = load_checkpoint(path)
    for complement in (False, True):
        cm = mstc.compress(model, complement=complement)
        x = torch.randn(3, *cm.input_shape, generator=torch.Generator().manual_seed(5))
        for backend in ("reference", "dense"):
            assert verify(cm, model, x, backend=backend).ok
