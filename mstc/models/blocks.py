"""Bi-Real / ReActNet-style building blocks: binary 3x3 convs with real-valued shortcuts."""

from __future__ import annotations

from torch import nn

from mstc.nn import BinaryConv2d


class BinaryConvBlock(nn.Module):
    """out = PReLU(BN(BinaryConv3x3(x)) + shortcut(x)) (Bi-Real Net, one shortcut per conv).

    The shortcut is the identity, or for a change of shape a full-precision
    AvgPool2d(2) (when strided) + 1x1 Conv2d + BN (Bi-Real / ReActNet downsampling).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, **binary_kw) -> None:
        super().__init__()
        self.conv = BinaryConv2d(cin, cout, 3, stride=stride, padding=1, **binary_kw)
        self.bn = nn.BatchNorm2d(cout)
        layers: list[nn.Module] = []
        if stride != 1:
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
        if cin != cout:
            layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.shortcut = nn.Sequential(*layers) if layers else nn.Identity()
        self.act = nn.PReLU(cout, init=0.25)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two BinaryConvBlocks: the ResNet basic block in Bi-Real form."""

    def __init__(self, cin: int, cout: int, stride: int = 1, **binary_kw) -> None:
        super().__init__()
        self.block1 = BinaryConvBlock(cin, cout, stride, **binary_kw)
        self.block2 = BinaryConvBlock(cout, cout, 1, **binary_kw)

    def forward(self, x):
        return self.block2(self.block1(x))
