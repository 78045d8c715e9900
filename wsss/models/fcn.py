"""Fully convolutional networks (Long, Shelhamer & Darrell, CVPR 2015): FCN-32s, FCN-16s and FCN-8s on VGG16.

As in the reference nets (``voc-fcn{32,16,8}s``):

* the VGG16 convolutions with the **first convolution padded by 100** (so that the 7x7 ``fc6`` fits any input),
  max pools with ``ceil_mode`` (Caffe's rounding);
* **fc6 / fc7 as convolutions** (7x7 -> 4096, 1x1 -> 4096, ReLU + dropout); with ``weights='imagenet'`` they are the
  torchvision classifier's fully connected weights reshaped ("convolutionalised");
* ``score_fr``: 1x1 convolution to the K classes; **1x1 score convolutions on pool4 / pool3** (zero-initialised,
  so the net starts from the coarser net's predictions, as in the paper's staged training);
* 2x upsampling by ``ConvTranspose2d(kernel 4, stride 2, no bias)`` **initialised bilinear** and learned;
* **crop layers** aligning two maps with the offset ``(original - desired) // 2`` (:func:`~.blocks.center_crop`);
* the final upsampling is a **fixed** bilinear transposed convolution (FCN-32s: kernel 64 / stride 32, FCN-16s:
  32 / 16, FCN-8s: 16 / 8), held as a buffer, not a parameter, then cropped to the input size.

Note: Caffe's crop layers use offsets computed from the layers' coordinate maps (19, 5, 9, 27, 31 px); the centre
offset used here equals them for the skip crops at the usual sizes (5 and 9 for a 500 px input) and differs from the
final crop by at most a few pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.vgg import vgg16, vgg16_stages
from .blocks import bilinear_kernel, center_crop, check_weights


class VGG16FCNEncoder(nn.Module):
    """VGG16 conv1..pool5 (conv1_1 padded by 100, ceil-mode pools) + fc6/fc7 as convolutions.

    ``forward`` returns ``(pool3, pool4, fc7)``.
    """

    def __init__(self, weights: str | None = None):
        super().__init__()
        vgg = vgg16(weights)
        stages = []
        for k, layers in enumerate(vgg16_stages(vgg)):
            if k == 0:
                layers[0].padding = (100, 100)  # conv1_1
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3, self.stage4, self.stage5 = stages
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        if check_weights(weights, "FCN"):
            fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
            with torch.no_grad():
                self.fc6.weight.copy_(fc6.weight.view(4096, 512, 7, 7))
                self.fc6.bias.copy_(fc6.bias)
                self.fc7.weight.copy_(fc7.weight.view(4096, 4096, 1, 1))
                self.fc7.bias.copy_(fc7.bias)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)

    def forward(self, x):
        x = self.stage2(self.stage1(x))
        pool3 = self.stage3(x)
        pool4 = self.stage4(pool3)
        pool5 = self.stage5(pool4)
        fc6 = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        fc7 = self.drop7(F.relu(self.fc7(fc6), inplace=True))
        return pool3, pool4, fc7


def _learned_upsample(num_classes: int, kernel: int, stride: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(num_classes, num_classes, kernel, stride=stride, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(num_classes, kernel))
    return up


class _FCN(nn.Module):
    """Shared parts: ``backbone`` (the VGG16 encoder with fc6/fc7), score_fr, fixed final upsampling."""

    final_kernel = 64
    final_stride = 32

    def __init__(self, num_classes: int, weights: str | None = None):
        super().__init__()
        check_weights(weights, type(self).__name__)
        self.num_classes = num_classes
        self.backbone = VGG16FCNEncoder(weights)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        # fixed (not learned) bilinear upsampling: a buffer, so no optimiser can touch it
        self.register_buffer("final_upsample_weight", bilinear_kernel(num_classes, self.final_kernel))

    def _final(self, score: torch.Tensor, size) -> torch.Tensor:
        up = F.conv_transpose2d(score, self.final_upsample_weight, stride=self.final_stride)
        return center_crop(up, size)


def _zero_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCN32s(_FCN):
    """FCN-32s: score_fr upsampled 32x by a fixed bilinear transposed conv (kernel 64, stride 32), cropped."""

    final_kernel, final_stride = 64, 32

    def forward(self, x):
        _, _, fc7 = self.backbone(x)
        return self._final(self.score_fr(fc7), x.shape[-2:])


class FCN16s(_FCN):
    """FCN-16s: 2x learned upsampling of score_fr + cropped score_pool4, then fixed 16x (kernel 32, stride 16)."""

    final_kernel, final_stride = 32, 16

    def __init__(self, num_classes: int, weights: str | None = None):
        super().__init__(num_classes, weights)
        self.score_pool4 = _zero_conv(512, num_classes)
        self.upscore2 = _learned_upsample(num_classes, 4, 2)

    def forward(self, x):
        _, pool4, fc7 = self.backbone(x)
        upscore2 = self.upscore2(self.score_fr(fc7))
        fuse_pool4 = upscore2 + center_crop(self.score_pool4(pool4), upscore2.shape[-2:])
        return self._final(fuse_pool4, x.shape[-2:])


class FCN8s(_FCN):
    """FCN-8s: FCN-16s's fusion, 2x learned upsampling, + cropped score_pool3, then fixed 8x (kernel 16, stride 8)."""

    final_kernel, final_stride = 16, 8

    def __init__(self, num_classes: int, weights: str | None = None):
        super().__init__(num_classes, weights)
        self.score_pool4 = _zero_conv(512, num_classes)
        self.score_pool3 = _zero_conv(256, num_classes)
        self.upscore2 = _learned_upsample(num_classes, 4, 2)
        self.upscore_pool4 = _learned_upsample(num_classes, 4, 2)

    def forward(self, x):
        pool3, pool4, fc7 = self.backbone(x)
        upscore2 = self.upscore2(self.score_fr(fc7))
        fuse_pool4 = upscore2 + center_crop(self.score_pool4(pool4), upscore2.shape[-2:])
        upscore_pool4 = self.upscore_pool4(fuse_pool4)
        fuse_pool3 = upscore_pool4 + center_crop(self.score_pool3(pool3), upscore_pool4.shape[-2:])
        return self._final(fuse_pool3, x.shape[-2:])


def _check_backbone(backbone: str, model: str) -> None:
    from ..errors import ConfigError

    if backbone != "vgg16":
        raise ConfigError(f"backbone={backbone!r}: {model} is defined on VGG16; use backbone='vgg16'")


def fcn32s(*, num_classes: int, backbone: str = "vgg16", weights: str | None = None) -> FCN32s:
    """FCN-32s on VGG16 (Long et al. 2015)."""
    _check_backbone(backbone, "FCN-32s")
    return FCN32s(num_classes, weights)


def fcn16s(*, num_classes: int, backbone: str = "vgg16", weights: str | None = None) -> FCN16s:
    """FCN-16s on VGG16 (Long et al. 2015)."""
    _check_backbone(backbone, "FCN-16s")
    return FCN16s(num_classes, weights)


def fcn8s(*, num_classes: int, backbone: str = "vgg16", weights: str | None = None) -> FCN8s:
    """FCN-8s on VGG16 (Long et al. 2015)."""
    _check_backbone(backbone, "FCN-8s")
    return FCN8s(num_classes, weights)
