"""Binary ResNets (Bi-Real style): full-precision stem, 1x1 downsampling and classifier."""

from __future__ import annotations

from torch import nn

from mstc.models.blocks import BasicBlock
from mstc.models.registry import register_model, scaled


class BinaryResNet(nn.Module):
    def __init__(
        self,
        stage_channels: list[int],
        blocks_per_stage: list[int],
        *,
        num_classes: int,
        in_channels: int,
        imagenet_stem: bool,
        **binary_kw,
    ) -> None:
        super().__init__()
        c0 = stage_channels[0]
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c0, 7, 2, 3, bias=False),
                nn.BatchNorm2d(c0),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0)
            )
        stages = []
        cin = c0
        for i, (c, nb) in enumerate(zip(stage_channels, blocks_per_stage, strict=True)):
            blocks = []
            for b in range(nb):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(cin, c, stride, **binary_kw))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


@register_model("resnet20")
def resnet20(*, num_classes=10, in_channels=3, width=1.0, **binary_kw) -> BinaryResNet:
    """ResNet-20 for 32x32 inputs: 3 stages (16, 32, 64) x 3 basic blocks."""
    chans = [scaled(c, width) for c in (16, 32, 64)]
    return BinaryResNet(
        chans,
        [3, 3, 3],
        num_classes=num_classes,
        in_channels=in_channels,
        imagenet_stem=False,
        **binary_kw,
    )


@register_model("resnet18_cifar")
def resnet18_cifar(*, num_classes=10, in_channels=3, width=1.0, **binary_kw) -> BinaryResNet:
    """ResNet-18 with a 3x3 stride-1 stem (CIFAR): 4 stages (64..512) x 2 basic blocks."""
    chans = [scaled(c, width) for c in (64, 128, 256, 512)]
    return BinaryResNet(
        chans,
        [2, 2, 2, 2],
        num_classes=num_classes,
        in_channels=in_channels,
        imagenet_stem=False,
        **binary_kw,
    )


@register_model("resnet18")
def resnet18(*, num_classes=1000, in_channels=3, width=1.0, **binary_kw) -> BinaryResNet:
    """ResNet-18 with the ImageNet stem (7x7 stride 2 + max pool)."""
    chans = [scaled(c, width) for c in (64, 128, 256, 512)]
    return BinaryResNet(
        chans,
        [2, 2, 2, 2],
        num_classes=num_classes,
        in_channels=in_channels,
        imagenet_stem=True,
        **binary_kw,
    )
