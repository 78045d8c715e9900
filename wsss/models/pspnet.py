"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017): a dilated ResNet (output stride 8) and the **pyramid pooling
module**: the last feature map is average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced to 1/4 of the channels
by a 1x1 conv + BN + ReLU, bilinearly upsampled to the feature size and **concatenated** with the features; a 3x3
conv (512) + BN + ReLU, dropout 0.1 and a 1x1 classifier follow, and the scores are upsampled x8 to the input.

The paper's auxiliary loss on layer3 (deep supervision, weight 0.4) is a training device; the zoo's contract is one
logits tensor, so the auxiliary branch is not built here.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import build_backbone
from .blocks import conv_bn_relu, resize_to


class PyramidPoolingModule(nn.Module):
    """PPM: adaptive average pooling to ``bins``, 1x1 conv to ``in_channels // len(bins)``, upsample, concat."""

    def __init__(self, in_channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x):
        size = x.shape[-2:]
        return torch.cat([x] + [resize_to(stage(x), size) for stage in self.stages], dim=1)


class PSPNet(nn.Module):
    """PSPNet. ``forward`` returns (N, K, H, W) logits."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
                 bins=(1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.backbone = build_backbone(backbone, weights=weights, output_stride=8)
        channels = self.backbone.channels[-1]
        self.ppm = PyramidPoolingModule(channels, bins)
        self.head = nn.Sequential(conv_bn_relu(self.ppm.out_channels, 512, 3), nn.Dropout(dropout),
                                  nn.Conv2d(512, num_classes, 1))

    def forward(self, x):
        features = self.backbone(x)[-1]
        return resize_to(self.head(self.ppm(features)), x.shape[-2:])


def pspnet(*, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
           bins=(1, 2, 3, 6)) -> PSPNet:
    """PSPNet on a dilated backbone (output stride 8: ResNet as in the paper, or EfficientNet-Lite) with pyramid
    bins 1, 2, 3, 6."""
    return PSPNet(num_classes, backbone, weights, bins)
