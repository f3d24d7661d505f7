"""Training-time binary layers whose forward equals the engines' integer arithmetic.

BinaryConv2d computes, for output channel j at one position with input patch a (binarised,
padding = -1) and binarised weights w_j:  y_j = sum_k a_k w_jk  (an exact integer in float32,
|y_j| <= n < 2^24), then optionally ``y_j * alpha_j`` with alpha_j = mean|W_j| (XNOR-Net,
Rastegari et al. 2016), then an optional bias.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mstc.conventions import PAD_VALUE
from mstc.nn.ste import get_ste


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


class _BinaryMixin:
    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: bool
    activation_ste: str
    weight_ste: str

    def binary_weight(self) -> torch.Tensor:
        """sign(W) with the weight estimator's gradient rule."""
        return get_ste(self.weight_ste)(self.weight)

    def channel_scale(self) -> torch.Tensor:
        """alpha_j = mean over the filter of |W_j| (float32, shape (Cout,))."""
        return self.weight.abs().flatten(1).mean(dim=1)

    def _finish(self, sums: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (sums.dim() - 2)
        out = sums
        if self.scale:
            out = out * self.channel_scale().view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """A Conv2d with binary activations and weights (groups = 1).

    The input is binarised with ``activation_ste``, padded explicitly with -1, convolved with
    sign(W) (``weight_ste``); the per-channel scale and the bias are applied after the integer sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = False,
        *,
        scale: bool = True,
        activation_ste: str = "approx",
        weight_ste: str = "ste",
        groups: int = 1,
    ) -> None:
        if groups != 1:
            raise ValueError("BinaryConv2d supports groups = 1 only")
        if isinstance(padding, str):
            raise ValueError("BinaryConv2d needs explicit integer padding")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias)
        get_ste(activation_ste), get_ste(weight_ste)  # validate names early
        self.scale = bool(scale)
        self.activation_ste = activation_ste
        self.weight_ste = weight_ste

    def integer_sums(self, x: torch.Tensor) -> torch.Tensor:
        """sum_k a_k w_jk for every channel and position (float32 holding exact integers)."""
        xb = get_ste(self.activation_ste)(x)
        ph, pw = _pair(self.padding)
        if ph or pw:
            xb = F.pad(xb, (pw, pw, ph, ph), value=PAD_VALUE)
        return F.conv2d(xb, self.binary_weight(), None, self.stride, 0, self.dilation, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.integer_sums(x))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", scale={self.scale}, activation_ste={self.activation_ste!r}"
            + f", weight_ste={self.weight_ste!r}"
        )


class BinaryLinear(_BinaryMixin, nn.Linear):
    """A Linear layer with binary activations and weights; scale and bias after the integer sum."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        scale: bool = True,
        activation_ste: str = "approx",
        weight_ste: str = "ste",
    ) -> None:
        super().__init__(in_features, out_features, bias)
        get_ste(activation_ste), get_ste(weight_ste)
        self.scale = bool(scale)
        self.activation_ste = activation_ste
        self.weight_ste = weight_ste

    def integer_sums(self, x: torch.Tensor) -> torch.Tensor:
        xb = get_ste(self.activation_ste)(x)
        return F.linear(xb, self.binary_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.integer_sums(x))


BINARY_LAYER_TYPES = (BinaryConv2d, BinaryLinear)


def is_binary_layer(module: nn.Module) -> bool:
    return isinstance(module, BINARY_LAYER_TYPES)


def binary_weight_bits(layer: nn.Module) -> np.ndarray:
    """The layer's binary weights as a {0,1} uint8 array of shape (Cout, n), bit 1 = +1.

    n = Cin*kh*kw, taps flattened in PyTorch order (``weight.reshape(Cout, -1)``).
    """
    if not is_binary_layer(layer):
        raise TypeError(f"not a binary layer: {type(layer).__name__}")
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    if torch.isnan(w).any():
        raise ValueError("layer weights contain NaN")
    return (w >= 0).to(torch.uint8).cpu().numpy()
