"""Backbones from torchvision: dilated ResNets (output stride 8/16/32) and VGG16 features.

``weights=None`` (default) is random initialisation and never touches the network; ``weights="imagenet"`` loads
torchvision's ImageNet weights enum (downloaded once into torch's cache by torchvision itself). A segmentation model's
ResNet backbone can also start from a wsss CAM classifier checkpoint (:func:`init_backbone_from_checkpoint`): the
classifier was trained on the same images' tags, so it is the pre-training available without a download.
"""

from __future__ import annotations

import torch
from torch import nn
import torchvision

from ..errors import ConfigError

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


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling/fc head; ``forward`` returns ``[c1, c2, c3, c4]`` (layer1..4).

    ``channels`` holds the four feature widths, ``output_stride`` the stride of ``c4`` (8, 16 or 32).
    """

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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


def is_checkpoint_weights(weights) -> bool:
    """True when ``weights`` names a checkpoint file rather than random init or ``imagenet``."""
    return weights is not None and str(weights).lower() not in ("none", "random", "", "imagenet")


def init_backbone_from_checkpoint(model: nn.Module, path) -> None:
    """Copy the ResNet of a wsss CAM classifier checkpoint (``RUN/seeds/cam/classifier.pt``; its ``model`` state
    without the ``classifier.*`` layer) into ``model.backbone``. Read by the classifier's own reader
    (:func:`wsss.train_classifier.read_checkpoint`: ``weights_only=True``, foreign files refused); the backbone's
    architecture must match (the same ``--backbone``), else :class:`ConfigError` naming the file and the fix."""
    from pathlib import Path

    from ..train_classifier import read_checkpoint

    if not Path(path).is_file():
        raise ConfigError(f"--weights {str(path)!r}: no such file; use 'imagenet' (torchvision's ImageNet weights), the "
                          "path of a wsss CAM classifier checkpoint (RUN/seeds/cam/classifier.pt) or leave it out "
                          "(random init)")
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ResNetBackbone):
        raise ConfigError(f"--weights {path}: a classifier checkpoint initialises a ResNet backbone, and "
                          f"{type(model).__name__} has none; use a ResNet model (e.g. deeplabv2) or leave --weights out")
    state = read_checkpoint(path)
    weights = {k: v for k, v in state["model"].items() if not k.startswith("classifier.")}
    expected = backbone.state_dict()
    trained_arch = state["meta"].get("backbone") if isinstance(state["meta"], dict) else None
    wrong = sorted(set(expected) ^ set(weights))
    wrong += [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ConfigError(f"{path}: its network does not fit a {backbone.arch} backbone"
                          f"{f' (it is a {trained_arch})' if trained_arch else ''}, first mismatch {wrong[0]!r}; "
                          f"give --backbone {trained_arch or 'of the classifier'} or another checkpoint")
    backbone.load_state_dict(weights, strict=True)


def resnet_backbone(arch: str = "resnet101", *, weights: str | None = None, output_stride: int = 8) -> ResNetBackbone:
    """A dilated torchvision ResNet (see :class:`ResNetBackbone`)."""
    return ResNetBackbone(arch, weights=weights, output_stride=output_stride)


def vgg16_features(*, weights: str | None = None, batch_norm: bool = False) -> nn.Sequential:
    """torchvision's VGG16 ``features`` (13 convolutions + 5 max-pools), random init unless ``weights="imagenet"``.

    Indices of the pools in the returned ``nn.Sequential``: 4, 9, 16, 23, 30 (without batch norm).
    """
    arch = "vgg16_bn" if batch_norm else "vgg16"
    net = getattr(torchvision.models, arch)(weights=torchvision_weights(arch, weights))
    return net.features


def vgg16_classifier_convs(*, weights: str | None = None) -> tuple[nn.Conv2d, nn.Conv2d]:
    """fc6 / fc7 of torchvision's VGG16 as convolutions (7x7x512->4096, 1x1x4096->4096), weights reshaped."""
    net = torchvision.models.vgg16(weights=torchvision_weights("vgg16", weights))
    fc6, fc7 = net.classifier[0], net.classifier[3]
    conv6 = nn.Conv2d(512, 4096, 7)
    conv7 = nn.Conv2d(4096, 4096, 1)
    with torch.no_grad():
        conv6.weight.copy_(fc6.weight.view(4096, 512, 7, 7))
        conv6.bias.copy_(fc6.bias)
        conv7.weight.copy_(fc7.weight.view(4096, 4096, 1, 1))
        conv7.bias.copy_(fc7.bias)
    return conv6, conv7
