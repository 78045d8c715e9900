"""A small class-agnostic saliency network: torchvision ResNet-18/34 encoder + U-Net-style decoder.

Oh et al. (CVPR 2017) train a class-agnostic saliency model whose labels come from boxes through GrabCut; this is
the project's compact stand-in. The encoder is a plain torchvision ResNet (``weights='imagenet'`` is an opt-in
download through torchvision's weights enums, the default is random init). The decoder upsamples the stride-32
features step by step, concatenating the encoder's stride-16/8/4/2 features (U-Net skip connections, Ronneberger et
al. 2015), and a 1x1 head gives one logit per pixel at input size. :meth:`SaliencyNet.forward` returns logits
(N, 1, H, W); apply ``torch.sigmoid`` for the saliency map in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD, torchvision_weights

BACKBONES = ("resnet18", "resnet34")


def _encoder(backbone: str, weights: str | None) -> nn.Module:
    import torchvision

    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    return getattr(torchvision.models, backbone)(weights=torchvision_weights(backbone, weights))


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
    backbone : {'resnet18', 'resnet34'}
        torchvision ResNet used as encoder (stem + layer1..layer4, strides 2, 4, 8, 16, 32).
    weights : None or 'imagenet'
        None: random init (default, no download). 'imagenet': torchvision's ImageNet weights for the encoder.
    decoder_channels : tuple of 4 ints
        Output channels of the four decoder blocks (stride 16, 8, 4, 2).
    fg_prior : float
        The head's bias starts at the log-odds of this foreground share, so the untrained map already matches the
        usual share of salient pixels instead of 0.5 (the prior-probability init of Lin et al., ICCV 2017); short
        trainings are much better calibrated.
    """

    def __init__(self, *, backbone: str = "resnet18", weights: str | None = None,
                 decoder_channels: tuple[int, int, int, int] = (128, 64, 48, 32), fg_prior: float = 0.2):
        super().__init__()
        net = _encoder(backbone, weights)
        self.backbone_name = backbone
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)  # stride 2, 64 ch
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        skips = (256, 128, 64, 64)  # layer3, layer2, layer1, stem channels (BasicBlock ResNets)
        blocks, in_ch = [], 512
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(_UpBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, kernel_size=1)
        if not 0.0 < fg_prior < 1.0:
            raise ValueError(f"fg_prior must lie in (0, 1), got {fg_prior}")
        nn.init.constant_(self.head.bias, math.log(fg_prior / (1.0 - fg_prior)))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = (x - self.mean) / self.std
        s2 = self.stem(x)
        s4 = self.layer1(self.pool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        y = self.layer4(s16)
        for block, skip in zip(self.decoder, (s16, s8, s4, s2)):
            y = block(y, skip)
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


def saliency_net(*, backbone: str = "resnet18", weights: str | None = None, **kwargs) -> SaliencyNet:
    """Builder with the project's keyword-only signature (no ``num_classes``: the output is one saliency map)."""
    return SaliencyNet(backbone=backbone, weights=weights, **kwargs)
