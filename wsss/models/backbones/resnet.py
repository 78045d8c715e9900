"""The ResNet family of the backbone contract (:mod:`wsss.models.backbones`): torchvision ResNets, dilated to output
stride 8/16/32.

``weights=None`` (default) is random initialisation and never touches the network; ``weights="imagenet"`` loads
torchvision's ImageNet weights enum (downloaded once into torch's cache by torchvision itself: users with internet).
A local file (a torchvision state dict or a wsss CAM classifier checkpoint) goes through
:func:`wsss.models.backbones.build_backbone`.
"""

from __future__ import annotations

import torch
from torch import nn
import torchvision

from ...errors import ConfigError
from .base import FreezableBackbone

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
WEIGHTS_CHOICES = (None, "imagenet")

#: ImageNet statistics torchvision's backbones expect: RGB in [0, 1] normalised with these (one copy for every model).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
}


def torchvision_weights(arch: str, weights: str | None):
    """The torchvision weights enum member for ``arch`` (``None`` for random init).

    ``weights`` is ``None``/``"none"`` (random init) or ``"imagenet"`` (the enum's ``DEFAULT``).
    """
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if str(weights).lower() != "imagenet":
        raise ConfigError(f"--weights {weights!r}: use 'imagenet' (torchvision's ImageNet weights) or leave it out "
                          "for random initialisation")
    enum_name = _RESNET_WEIGHTS.get(arch) or {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}.get(arch)
    if enum_name is None:
        raise ConfigError(f"no ImageNet weights known for backbone {arch!r}")
    return getattr(torchvision.models, enum_name).DEFAULT


def _dilations(output_stride: int) -> tuple[bool, bool, bool]:
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ConfigError(f"output_stride {output_stride}: choose 8, 16 or 32")
    return table[output_stride]


def _dilate_basic_layer(layer: nn.Sequential, dilation: int, previous: int) -> None:
    """Turn a BasicBlock layer's stride 2 into dilation (torchvision supports this for Bottleneck only).

    Mirrors torchvision's rule for Bottleneck: the first block keeps the previous dilation in its first 3x3 conv
    and drops the stride; every later 3x3 conv uses the new dilation (padding = dilation keeps the size).
    """
    for index, block in enumerate(layer):
        convs = [block.conv1, block.conv2]
        for k, conv in enumerate(convs):
            d = previous if (index == 0 and k == 0) else dilation
            conv.stride = (1, 1)
            conv.dilation = (d, d)
            conv.padding = (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class ResNetBackbone(FreezableBackbone):
    """A torchvision ResNet without its pooling/fc head; ``forward`` returns ``[c1, c2, c3, c4]`` (layer1..4).

    ``channels`` holds the four feature widths, ``strides`` their strides, ``output_stride`` the stride of ``c4``
    (8, 16 or 32); ``mean``/``std`` are torchvision's ImageNet statistics.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, arch: str = "resnet101", *, weights: str | None = None, output_stride: int = 8):
        super().__init__()
        if arch not in RESNETS:
            raise ConfigError(f"backbone {arch!r}: choose one of {', '.join(RESNETS)}")
        dilate = _dilations(output_stride)
        bottleneck = arch in ("resnet50", "resnet101", "resnet152")
        net = getattr(torchvision.models, arch)(
            weights=torchvision_weights(arch, weights),
            replace_stride_with_dilation=list(dilate) if bottleneck else None,
        )
        if not bottleneck:
            dilation = 1
            for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
                if flag:
                    _dilate_basic_layer(layer, dilation * 2, dilation)
                    dilation *= 2
        self.arch = arch
        self.output_stride = output_stride
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        width = 4 if bottleneck else 1
        self.channels = (64 * width, 128 * width, 256 * width, 512 * width)
        self.strides = (4, 8, min(16, output_stride), output_stride)

    def load_pretrained_state(self, state: dict, *, source: str) -> None:
        """Load a torchvision ResNet state dict (``conv1``/``bn1``/``layerN``; ``fc`` dropped) or this backbone's
        own, every key checked (:func:`wsss.models.backbones.check_state_fits`)."""
        from . import check_state_fits

        renamed = {("stem.0" + k[5:] if k.startswith("conv1.") else "stem.1" + k[3:] if k.startswith("bn1.") else k): v
                   for k, v in state.items()}
        self.load_state_dict(check_state_fits(self, renamed, source=source, ignore_prefixes=("fc.",)), strict=True)

    def early_layers(self, stride: int) -> list[nn.Module]:
        """The stem and layer1 (stride 4), and layer2 (stride 8)."""
        return [self.stem, self.layer1] + ([self.layer2] if stride >= 8 else [])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


def resnet_backbone(arch: str = "resnet101", *, weights: str | None = None, output_stride: int = 8) -> ResNetBackbone:
    """A dilated torchvision ResNet (see :class:`ResNetBackbone`)."""
    return ResNetBackbone(arch, weights=weights, output_stride=output_stride)
