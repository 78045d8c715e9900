"""DeepLab-v2 (Chen et al., TPAMI 2017): dilated ResNet (output stride 8) + ASPP with rates 6/12/18/24, summed.

As in the paper's ResNet-101 model (``fc1_voc12_c0..c3`` of the released prototxt), each ASPP branch is a single
3x3 convolution with its dilation rate straight to the class scores; the four branches' scores are summed. The
logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone


class ASPPv2(nn.Module):
    """Atrous spatial pyramid pooling of DeepLab-v2: parallel 3x3 dilated convolutions whose outputs are summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        for conv in self.branches:  # the paper's initialisation: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab-v2: ``backbone`` (any backbone of :mod:`wsss.models.backbones`; the paper's is ResNet-101) + ``head``
    (:class:`ASPPv2` on its deepest map).

    ``forward(x)`` with ``x`` (N, 3, H, W) float returns (N, K, H, W) logits. Parameters of ``self.backbone`` are the
    pretrained part (1x learning rate), everything else the head (10x), see :func:`wsss.models.split_parameters`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        self.backbone = backbone
        self.head = ASPPv2(backbone.channels[-1], num_classes, rates)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        logits = self.head(self.backbone(x)[-1])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def deeplabv2(*, num_classes: int, backbone: str = "resnet101", weights=None,
              output_stride: int = 8, rates: tuple[int, ...] = (6, 12, 18, 24)) -> DeepLabV2:
    """Build DeepLab-v2 on ``backbone`` (``resnet101`` as in the paper; any ResNet or ``efficientnet_lite0/1/2``)
    at ``output_stride`` 8 (the paper) or 16."""
    return DeepLabV2(build_backbone(backbone, weights=weights, output_stride=output_stride), num_classes, rates)
