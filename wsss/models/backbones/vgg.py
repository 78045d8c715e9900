"""The VGG16 family of the backbone contract: torchvision's VGG16 / VGG16-BN for the models defined on VGG16 (FCN,
SegNet, DeepLab-v1 LargeFOV, ParseNet). Those models keep their papers' own layer surgery (padding 100, pooling
indices, dilated conv5, subsampled fc6/fc7), so they take the whole torchvision network and regroup its layers by
stage (:func:`vgg16_stages`); the input normalisation is torchvision's ImageNet statistics.
"""

from __future__ import annotations

from torch import nn

from .resnet import IMAGENET_MEAN, IMAGENET_STD, torchvision_weights

VGG_MEAN, VGG_STD = IMAGENET_MEAN, IMAGENET_STD


def vgg16(weights: str | None = None, *, batch_norm: bool = False):
    """torchvision's whole VGG16 (or VGG16-BN) model, ImageNet weights through the weights enum on request."""
    import torchvision

    arch = "vgg16_bn" if batch_norm else "vgg16"
    return getattr(torchvision.models, arch)(weights=torchvision_weights(arch, weights))


def vgg16_stages(vgg) -> list[list[nn.Module]]:
    """The layers of a torchvision VGG16(-BN) ``features`` between the max pools, by stage (pools dropped):
    2, 2, 3, 3, 3 convolutions (each followed by its BN and ReLU modules)."""
    stages, current = [], []
    for layer in vgg.features:
        if isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
        else:
            current.append(layer)
    return stages
