"""VGG-small (LQ-Nets / XNOR-Net style): 128-128-256-256-512-512 3x3 convs on 32x32 inputs."""

from __future__ import annotations

from torch import nn

from mstc.models.registry import register_model, scaled
from mstc.nn import BinaryConv2d


class VGGSmall(nn.Module):
    """First conv full precision; five binary 3x3 convs, each followed by BN (and a 2x2 max pool
    after the 2nd, 4th and 6th conv); a full-precision linear classifier.

    Order conv -> BN -> max pool, so that sign(maxpool(BN(y))) = maxpool(sign(BN(y))).
    """

    def __init__(self, *, num_classes, in_channels, width, image_size=32, **binary_kw):
        super().__init__()
        c = [scaled(v, width) for v in (128, 128, 256, 256, 512, 512)]
        self.conv0 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(c[0])
        layers: list[nn.Module] = []
        for i in range(1, 6):
            layers += [
                BinaryConv2d(c[i - 1], c[i], 3, 1, 1, **binary_kw),
                nn.BatchNorm2d(c[i]),
            ]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        if side < 1:
            raise ValueError(f"image_size {image_size} too small for vgg_small (needs >= 8)")
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c[5] * side * side, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.features(self.bn0(self.conv0(x)))))


@register_model("vgg_small")
def vgg_small(*, num_classes=10, in_channels=3, width=1.0, image_size=32, **binary_kw):
    return VGGSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        image_size=image_size,
        **binary_kw,
    )
