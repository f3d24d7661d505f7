import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mstc.nn import BinaryConv2d, BinaryLinear, binary_weight_bits, get_ste, hard_sign, list_ste


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-1.5, -0.0, 0.0, 1e-30, -1e-30, 2.0])
    assert hard_sign(x).tolist() == [-1, 1, 1, 1, -1, 1]
    for name in list_ste():
        assert get_ste(name)(x).tolist() == [-1, 1, 1, 1, -1, 1]


def test_registry_has_required_estimators_and_rejects_unknown():
    assert {"ste", "approx"} <= set(list_ste())
    with pytest.raises(ValueError, match="unknown estimator"):
        get_ste("nope")


def test_ste_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    get_ste("ste")(x).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]
    x.grad = None
    get_ste("approx")(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 0.0]))


def _numpy_binary_conv(x, w, stride, padding, dilation):
    """Plain loop reference: sum_k sign(x)_k sign(w)_k with -1 padding."""
    xb = np.where(x >= 0, 1, -1)
    wb = np.where(w >= 0, 1, -1)
    n, c, h, wd = xb.shape
    co, _, kh, kw = wb.shape
    xp = np.pad(xb, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-1)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, co, ho, wo), dtype=np.int64)
    for i in range(ho):
        for j in range(wo):
            patch = xp[
                :,
                :,
                i * stride : i * stride + dilation * (kh - 1) + 1 : dilation,
                j * stride : j * stride + dilation * (kw - 1) + 1 : dilation,
            ]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, wb)
    return out


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 5),
    cout=st.integers(1, 6),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    h=st.integers(3, 7),
    seed=st.integers(0, 2**16),
)
def test_binary_conv_equals_plain_loop_with_minus_one_padding(
    cin, cout, k, stride, padding, dilation, h, seed
):
    if h + 2 * padding < dilation * (k - 1) + 1:
        return
    torch.manual_seed(seed)
    layer = BinaryConv2d(cin, cout, k, stride, padding, dilation, scale=False)
    x = torch.randn(2, cin, h, h + 1)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1
    with torch.no_grad():
        got = layer(x).numpy()
    ref = _numpy_binary_conv(x.numpy(), layer.weight.detach().numpy(), stride, padding, dilation)
    assert np.array_equal(got.astype(np.int64), ref)
    assert np.array_equal(got, np.round(got))


def test_scale_and_bias_applied_after_integer_sum():
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, bias=True, scale=True)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        sums = layer.integer_sums(x)
        alpha = layer.weight.abs().mean(dim=(1, 2, 3))
        expected = sums * alpha.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
        assert torch.equal(layer(x), expected)


def test_binary_linear_and_bits():
    torch.manual_seed(0)
    layer = BinaryLinear(7, 3, scale=False)
    x = torch.randn(4, 7)
    with torch.no_grad():
        y = layer(x)
    xb = np.where(x.numpy() >= 0, 1, -1)
    bits = binary_weight_bits(layer)
    assert bits.shape == (3, 7) and set(np.unique(bits)) <= {0, 1}
    assert np.array_equal(y.numpy().astype(np.int64), xb @ (2 * bits.astype(np.int64) - 1).T)


def test_gradients_reach_latent_weights():
    layer = BinaryConv2d(2, 3, 3, padding=1)
    layer(torch.randn(2, 2, 4, 4)).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_bad_configuration_and_nan_weights():
    with pytest.raises(ValueError):
        BinaryConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError):
        BinaryConv2d(4, 4, 3, padding="same")
    layer = BinaryLinear(3, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        binary_weight_bits(layer)
    with pytest.raises(TypeError):
        binary_weight_bits(torch.nn.Linear(2, 2))
