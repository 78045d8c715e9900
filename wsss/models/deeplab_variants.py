"""DeepLab-v1 LargeFOV and DeepLab-v3+ (DeepLab-v2 lives in :mod:`wsss.models.deeplab`).

* :class:`DeepLabV1LargeFOV` (Chen et al., ICLR 2015, "Semantic image segmentation with deep convolutional nets and
  fully connected CRFs"): VGG16 with 3x3 / stride 2 / pad 1 max pools after conv1..conv3, **stride 1** pools after
  conv4 and conv5 (output stride 8), conv5 dilated by 2, then the LargeFOV head: ``fc6`` 3x3 convolution with
  **dilation 12** and 1024 channels, ``fc7`` 1x1 with 1024 channels (ReLU + dropout 0.5 each), ``fc8`` 1x1 to the
  classes; scores bilinearly upsampled x8 to the input size. With ``weights='imagenet'``, fc6/fc7 are the VGG16 fully
  connected weights **subsampled** as in the paper (every 4th filter, every 3rd tap of the 7x7 kernel -> 3x3).
* :class:`DeepLabV3Plus` (Chen et al., ECCV 2018): a dilated ResNet at output stride 16 (8 optional), ASPP of a 1x1
  conv, three 3x3 atrous convs (rates 6, 12, 18 at stride 16, doubled at stride 8) and **image pooling** (global
  average pool -> 1x1 conv -> upsample), each 256 channels + BN + ReLU, concatenated and projected by a 1x1 conv;
  the **decoder** reduces the low-level (layer1, stride 4) features to 48 channels by a 1x1 conv, concatenates them
  with the 4x-upsampled ASPP output, refines with two 3x3 convs (256), classifies, and upsamples 4x to the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from .backbones.vgg import vgg16, vgg16_stages
from .blocks import check_weights, conv_bn_relu, resize_to


class DeepLabV1Trunk(nn.Module):
    """Dilated VGG16 + LargeFOV fc6/fc7 (1024 channels): the paper's backbone (fc6/fc7 come from VGG16's fully
    connected layers). ``forward`` returns ``[fc7 features]`` at stride 8 (the backbone contract)."""

    arch = "vgg16"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    output_stride = 8
    strides = (8,)

    def __init__(self, weights: str | None = None, fc_channels: int = 1024, fc6_dilation: int = 12):
        super().__init__()
        self.channels = (fc_channels,)
        vgg = vgg16(weights)
        layers: list[nn.Module] = []
        for k, stage in enumerate(vgg16_stages(vgg)):
            for layer in stage:
                if k == 4 and isinstance(layer, nn.Conv2d):  # conv5: dilation 2 (the "hole" algorithm)
                    layer.dilation, layer.padding = (2, 2), (2, 2)
            layers += stage
            layers.append(nn.MaxPool2d(3, stride=2 if k < 3 else 1, padding=1))
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, fc_channels, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop6, self.drop7 = nn.Dropout(0.5), nn.Dropout(0.5)
        if check_weights(weights, "DeepLab-v1"):
            self._subsample_fc(vgg, fc_channels)

    @torch.no_grad()
    def _subsample_fc(self, vgg, fc_channels: int) -> None:
        step = 4096 // fc_channels
        fc6 = vgg.classifier[0].weight.view(4096, 512, 7, 7)
        self.fc6.weight.copy_(fc6[::step, :, ::3, ::3])
        self.fc6.bias.copy_(vgg.classifier[0].bias[::step])
        self.fc7.weight.copy_(vgg.classifier[3].weight[::step, ::step, None, None])
        self.fc7.bias.copy_(vgg.classifier[3].bias[::step])

    def forward(self, x):
        x = self.features(x)
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        return [self.drop7(F.relu(self.fc7(x), inplace=True))]


class LargeFOV(nn.Module):
    """The LargeFOV fc6 (3x3, dilation 12, 1024) + fc7 (1x1, 1024) with ReLU + dropout 0.5, new on top of a
    backbone other than VGG16 (whose fc6/fc7 are part of :class:`DeepLabV1Trunk`)."""

    def __init__(self, in_channels: int, fc_channels: int = 1024, fc6_dilation: int = 12):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, fc_channels, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop6, self.drop7 = nn.Dropout(0.5), nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        return self.drop7(F.relu(self.fc7(x), inplace=True))


def largefov_trunk(backbone: str, weights, model: str) -> tuple[nn.Module, nn.Module]:
    """``(backbone, fov)`` of DeepLab-LargeFOV: on ``vgg16`` the paper's dilated VGG16 with its subsampled fc6/fc7
    (``fov`` the identity); on any other backbone (at output stride 8) a new :class:`LargeFOV` head."""
    if backbone == "vgg16":
        check_weights(weights, model)
        return DeepLabV1Trunk(weights), nn.Identity()
    body = build_backbone(backbone, weights=weights, output_stride=8)
    return body, LargeFOV(body.channels[-1])


class DeepLabV1LargeFOV(nn.Module):
    """DeepLab-v1 LargeFOV. ``forward`` returns (N, K, H, W) logits (x8 bilinear upsampling of fc8)."""

    def __init__(self, num_classes: int, weights=None, backbone: str = "vgg16"):
        super().__init__()
        self.backbone, self.fov = largefov_trunk(backbone, weights, "DeepLab-v1")
        self.fc8 = nn.Conv2d(1024, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x):
        return resize_to(self.fc8(self.fov(self.backbone(x)[-1])), x.shape[-2:])


class ASPPv3(nn.Module):
    """DeepLab-v3 ASPP: 1x1 conv, three 3x3 atrous convs, image pooling; concatenated, 1x1 projection."""

    def __init__(self, in_channels: int, rates=(6, 12, 18), channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, channels, 1)] + [
            conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates
        ])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels, 1))
        self.project = nn.Sequential(conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(dropout))

    def forward(self, x):
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        outs.append(pooled.expand(-1, -1, *x.shape[-2:]))  # bilinear upsampling of a 1x1 map = replication
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLab-v3+ on a dilated ResNet (or EfficientNet-Lite). ``forward`` returns (N, K, H, W) logits."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
                 output_stride: int = 16):
        super().__init__()
        if output_stride not in (8, 16):
            raise ConfigError(f"output_stride={output_stride}: DeepLab-v3+ uses 16 (or 8)")
        self.backbone = build_backbone(backbone, weights=weights, output_stride=output_stride)
        self.low_index = self.backbone.strides.index(4)  # the stride-4 map (ResNet: layer1)
        low_channels, high_channels = self.backbone.channels[self.low_index], self.backbone.channels[-1]
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPPv3(high_channels, rates)
        self.low_level = conv_bn_relu(low_channels, 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + 48, 256, 3), conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        low, high = features[self.low_index], features[-1]
        y = resize_to(self.aspp(high), low.shape[-2:])
        y = self.decoder(torch.cat([y, self.low_level(low)], dim=1))
        return resize_to(self.classifier(y), x.shape[-2:])


def deeplabv1(*, num_classes: int, backbone: str = "vgg16", weights=None) -> DeepLabV1LargeFOV:
    """DeepLab-v1 LargeFOV on VGG16 (the paper), or the LargeFOV head on another backbone at output stride 8."""
    return DeepLabV1LargeFOV(num_classes, weights, backbone)


def deeplabv3plus(*, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
                  output_stride: int = 16) -> DeepLabV3Plus:
    """DeepLab-v3+ (ResNet backbone: resnet18/34/50/101/152, or efficientnet_lite0/1/2)."""
    return DeepLabV3Plus(num_classes, backbone, weights, output_stride)
