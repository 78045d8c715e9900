"""ParseNet (Liu, Rabinovich & Berg, "ParseNet: Looking wider to see better", ICLR 2016 workshop).

On the DeepLab-LargeFOV VGG16 trunk (the paper's baseline), ParseNet adds **global context**: the fc7 feature map is
**globally average-pooled** to one vector per image; the global vector and the local fc7 features are each
**L2-normalised across channels and multiplied by a learned per-channel scale** (features of different layers have
very different norms, so concatenating them un-normalised lets one dominate); the global vector is **unpooled**
(replicated over the feature map) and **concatenated** with the local features; a 1x1 classifier scores the result,
which is bilinearly upsampled to the input size. Scales start at 10 (the paper learns them; they are initialised so
that the normalised features are not tiny).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import resize_to
from .deeplab_variants import largefov_trunk


class L2Norm(nn.Module):
    """``y = scale[c] * x / ||x||_2`` with the norm over channels at each position; ``scale`` is learned."""

    def __init__(self, channels: int, initial_scale: float = 10.0, eps: float = 1e-10):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(initial_scale)))
        self.eps = eps

    def forward(self, x):
        return F.normalize(x, p=2, dim=1, eps=self.eps) * self.scale.view(1, -1, 1, 1)


class ParseNet(nn.Module):
    """ParseNet. ``forward`` returns (N, K, H, W) logits."""

    def __init__(self, num_classes: int, weights=None, initial_scale: float = 10.0,
                 dropout: float = 0.5, backbone: str = "vgg16"):
        super().__init__()
        self.backbone, self.fov = largefov_trunk(backbone, weights, "ParseNet")
        channels = 1024
        self.norm_local = L2Norm(channels, initial_scale)
        self.norm_global = L2Norm(channels, initial_scale)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(2 * channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        local = self.fov(self.backbone(x)[-1])
        context = self.norm_global(F.adaptive_avg_pool2d(local, 1))
        context = context.expand(-1, -1, *local.shape[-2:])  # unpool: the global feature at every position
        fused = torch.cat([self.norm_local(local), context], dim=1)
        return resize_to(self.classifier(self.dropout(fused)), x.shape[-2:])


def parsenet(*, num_classes: int, backbone: str = "vgg16", weights=None) -> ParseNet:
    """ParseNet on the DeepLab-LargeFOV VGG16 trunk (the paper), or on LargeFOV over another backbone."""
    return ParseNet(num_classes, weights, backbone=backbone)
