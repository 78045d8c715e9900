"""GAP-CAM classifier: a torchvision ResNet with a dilated last stage, global average pooling and a bias-free 1x1
classifier, so that the class activation map of class k is ``sum_c W[k, c] * features[c]`` (Zhou et al., CVPR 2016;
the ResNet-50 OS16 variant of IRN, Ahn et al., CVPR 2019).

The classifier predicts the dataset's *foreground* classes: output index ``i`` is dataset class ``i + 1``
(background has no output; an image is "background" where no class map is high).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD, ResNetBackbone

BACKBONES = ("resnet18", "resnet50", "resnet101")


def _resnet(backbone: str, weights: str | None) -> ResNetBackbone:
    """The project's torchvision ResNet with ``layer4`` at stride 1, dilation 2 (output stride 16).

    ``weights`` goes through :func:`wsss.models.backbones.torchvision_weights` (``ConfigError`` for anything but
    None/'imagenet').
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    return ResNetBackbone(backbone, weights=weights, output_stride=16)


class CAMClassifier(nn.Module):
    """ResNet (OS16) -> features (N, C, h, w) -> GAP -> bias-free 1x1 conv -> (N, K) multi-label logits.

    Parameters
    ----------
    num_classes : int
        Number of foreground classes K (dataset classes minus background).
    backbone : {'resnet18', 'resnet50', 'resnet101'}
    weights : None or 'imagenet'
        None: random init (default). 'imagenet': torchvision's ImageNet weights (downloads once); anything else
        raises :class:`~wsss.errors.ConfigError`.
    """

    def __init__(self, *, num_classes: int, backbone: str = "resnet50", weights: str | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        net = _resnet(backbone, weights)
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.stem = net.stem  # conv1, bn1, relu, maxpool (the state-dict keys of older checkpoints)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.channels[3]
        self.classifier = nn.Conv2d(self.out_channels, num_classes, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, ceil(H/16), ceil(W/16)) features."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, K) logits (GAP then the 1x1 classifier)."""
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, features: torch.Tensor, class_index: torch.Tensor | None = None) -> torch.Tensor:
        """Class activation maps (N, K', h, w) = W[class_index] x features (no ReLU, no normalisation).

        ``class_index`` (classifier output indices) restricts the maps to those classes; None gives all K.
        """
        weight = self.classifier.weight
        if class_index is not None:
            weight = weight[class_index]
        return nn.functional.conv2d(features, weight.to(features.dtype))

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 (or float 0..255) RGB -> normalised float input."""
        return (images_uint8.float() / 255.0 - self.mean) / self.std


def build_classifier(*, num_classes: int, backbone: str = "resnet50", weights: str | None = None) -> CAMClassifier:
    """Builder with the project's keyword-only model signature."""
    return CAMClassifier(num_classes=num_classes, backbone=backbone, weights=weights)
