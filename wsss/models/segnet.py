"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): a symmetric encoder-decoder whose decoder upsamples with
the **max-pooling indices of its own encoder** (max-unpooling, no learned upsampling), followed by convolutions that
densify the sparse maps.

* :class:`SegNet`: the VGG16 encoder (13 conv + BN + ReLU, the VGG16-BN layers of torchvision) and a mirrored
  13-convolution decoder (``conv5_3_D`` ... ``conv1_1_D``); the last decoder convolution emits the K class scores.
* :class:`SegNetBasic`: the paper's smaller net for the CamVid analysis: local response normalisation of the input,
  4 encoder layers (7x7 conv, 64 channels, BN, ReLU, 2x2 max pool) and 4 decoder layers (unpool, 7x7 conv,
  64 channels, BN; no ReLU in the decoder, as in ``segnet_basic_train.prototxt``), then a 1x1 classifier.

Odd sizes are pooled with Caffe's ceil rounding and unpooled to the exact pre-pooling size (``output_size``), so
the output has the input's size for any input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.vgg import vgg16, vgg16_stages
from .blocks import check_weights, conv_bn_relu


def pool_with_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """2x2 / stride 2 max pooling returning ``(pooled, indices, pre-pool size)``; indices are flat positions in
    each (H, W) plane, as ``nn.MaxUnpool2d`` wants them. Caffe's rounding (``ceil_mode``): an odd row/column is
    pooled on its own, so any size >= 1 pixel goes through every stage."""
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    return pooled, indices, x.shape


def unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Max-unpooling: each value goes back to the position its encoder max came from; every other pixel is 0."""
    return F.max_unpool2d(x, indices, 2, 2, output_size=size[-2:])


def encode_decode(x: torch.Tensor, encoder, decoder) -> torch.Tensor:
    """The SegNet pass: every encoder stage is followed by :func:`pool_with_indices`; the decoder stages run in
    order, each after unpooling with the indices of its mirror encoder stage (the last encoder's first)."""
    saved = []
    for stage in encoder:
        x, indices, size = pool_with_indices(stage(x))
        saved.append((indices, size))
    for stage, (indices, size) in zip(decoder, reversed(saved)):
        x = stage(unpool(x, indices, size))
    return x


class SegNet(nn.Module):
    """VGG16 SegNet. ``forward`` returns (N, K, H, W) logits."""

    # output widths of conv5_3_D .. conv1_1_D (stage 5 .. stage 1); None: conv1_1_D emits the class scores
    DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, None))

    def __init__(self, num_classes: int, weights: str | None = None, in_channels: int = 3):
        super().__init__()
        check_weights(weights, "SegNet")
        vgg = vgg16(weights, batch_norm=True)
        stages = []
        for k, layers in enumerate(vgg16_stages(vgg)):  # conv, BN, ReLU triples
            if k == 0 and in_channels != 3:
                layers[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
            stages.append(nn.Sequential(*layers))
        self.backbone = nn.ModuleList(stages)  # the encoder (ImageNet-initialised on request)
        decoder = []
        in_ch = 512
        for k, widths in enumerate(self.DECODER):
            layers = []
            for out_ch in widths:
                if out_ch is None:
                    layers.append(nn.Conv2d(in_ch, num_classes, 3, padding=1))
                else:
                    layers.append(conv_bn_relu(in_ch, out_ch, 3))
                in_ch = out_ch
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)

    def forward(self, x):
        return encode_decode(x, self.backbone, self.decoder)


class SegNetBasic(nn.Module):
    """SegNet-Basic: 4 encoder + 4 decoder layers, 64 channels, 7x7 kernels, index unpooling."""

    def __init__(self, num_classes: int, depth: int = 4, width: int = 64, kernel_size: int = 7, in_channels: int = 3):
        super().__init__()
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.encoder = nn.ModuleList(
            conv_bn_relu(in_channels if k == 0 else width, width, kernel_size) for k in range(depth)
        )
        self.decoder = nn.ModuleList(conv_bn_relu(width, width, kernel_size, relu=False) for _ in range(depth))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(encode_decode(self.norm(x), self.encoder, self.decoder))


def segnet(*, num_classes: int, backbone: str = "vgg16", weights: str | None = None, in_channels: int = 3) -> SegNet:
    """SegNet with the VGG16 encoder (``weights='imagenet'``: torchvision's VGG16-BN ImageNet weights)."""
    from ..errors import ConfigError

    if backbone != "vgg16":
        raise ConfigError(f"backbone={backbone!r}: SegNet's encoder is VGG16; use backbone='vgg16'")
    return SegNet(num_classes, weights, in_channels)


def segnet_basic(*, num_classes: int, backbone: str = "none", weights: str | None = None,
                 in_channels: int = 3) -> SegNetBasic:
    """SegNet-Basic (trained from scratch; there are no ImageNet weights)."""
    from ..errors import ConfigError

    if backbone not in ("none", None):
        raise ConfigError(f"backbone={backbone!r}: SegNet-Basic has its own 4-layer encoder; use backbone='none'")
    check_weights(weights, "SegNet-Basic", available=False)
    return SegNetBasic(num_classes, in_channels=in_channels)
