"""RefineNet (Lin, Milan, Shen & Reid, CVPR 2017): multi-path refinement over the four ResNet stages.

Each ResNet stage output (strides 4, 8, 16, 32) is adapted by a 3x3 convolution (512 channels for the deepest
path, 256 for the others) and fed to a cascade of RefineNet blocks, RefineNet-4 (layer4 alone) -> RefineNet-3
(layer3 + RefineNet-4) -> RefineNet-2 -> RefineNet-1 (stride 4). A RefineNet block has:

* **residual conv units** (RCU: ReLU, 3x3 conv, ReLU, 3x3 conv, + identity), two on every input path;
* **multi-resolution fusion**: a 3x3 conv brings each path to the smallest channel count of the inputs, paths are
  bilinearly upsampled to the largest resolution and summed (skipped for a single input);
* **chained residual pooling**: ReLU, then a chain of blocks (5x5 max pooling stride 1, 3x3 conv), each block's
  output added to the running sum (two blocks, as in the paper's figure 3);
* one output RCU.

After RefineNet-1: two RCUs, dropout 0.5, a 1x1 classifier, and x4 bilinear upsampling to the input size. No batch
norm in the refinement path (the paper's design); the ResNet is torchvision's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .blocks import resize_to


def _stride_taps(strides: tuple[int, ...], wanted: tuple[int, ...]) -> list[int]:
    """Index of the deepest backbone map at each wanted stride."""
    return [max(i for i, s in enumerate(strides) if s == w) for w in wanted]


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv(relu(conv(relu(x))))`` with 3x3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ChainedResidualPooling(nn.Module):
    """``x = relu(x); p = x; repeat: p = conv(maxpool5x5(p)); x = x + p``."""

    def __init__(self, channels: int, blocks: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))

    def forward(self, x):
        x = F.relu(x)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, 5, stride=1, padding=2))
            x = x + path
        return x


class RefineNetBlock(nn.Module):
    """One RefineNet block over inputs ordered deepest (smallest) first."""

    def __init__(self, in_channels: tuple[int, ...], crp_blocks: int = 2):
        super().__init__()
        out_channels = min(in_channels)
        self.rcus = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels)
        self.fusion = nn.ModuleList(nn.Conv2d(c, out_channels, 3, padding=1) for c in in_channels) \
            if len(in_channels) > 1 else None
        self.crp = ChainedResidualPooling(out_channels, crp_blocks)
        self.output = ResidualConvUnit(out_channels)
        self.out_channels = out_channels

    def forward(self, *inputs):
        paths = [rcu(x) for rcu, x in zip(self.rcus, inputs)]
        if self.fusion is None:
            x = paths[0]
        else:
            size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
            x = sum(resize_to(conv(p), size) for conv, p in zip(self.fusion, paths))
        return self.output(self.crp(x))


class RefineNet(nn.Module):
    """4-cascaded RefineNet on a ResNet. ``forward`` returns (N, K, H, W) logits."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
                 crp_blocks: int = 2, dropout: float = 0.5):
        super().__init__()
        self.backbone = build_backbone(backbone, weights=weights, output_stride=32)
        self.taps = _stride_taps(self.backbone.strides, (4, 8, 16, 32))
        widths = (256, 256, 256, 512)  # adapted channels of the stride 4, 8, 16, 32 maps (ResNet: layer1..layer4)
        self.adapt = nn.ModuleList(nn.Conv2d(self.backbone.channels[t], w, 3, padding=1, bias=False)
                                   for t, w in zip(self.taps, widths))
        self.refine4 = RefineNetBlock((512,), crp_blocks)
        self.refine3 = RefineNetBlock((512, 256), crp_blocks)
        self.refine2 = RefineNetBlock((256, 256), crp_blocks)
        self.refine1 = RefineNetBlock((256, 256), crp_blocks)
        self.head = nn.Sequential(ResidualConvUnit(256), ResidualConvUnit(256), nn.Dropout(dropout),
                                  nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        features = self.backbone(x)
        l1, l2, l3, l4 = (adapt(features[t]) for adapt, t in zip(self.adapt, self.taps))
        y = self.refine4(l4)
        y = self.refine3(y, l3)
        y = self.refine2(y, l2)
        y = self.refine1(y, l1)
        return resize_to(self.head(y), x.shape[-2:])


def refinenet(*, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
              crp_blocks: int = 2) -> RefineNet:
    """RefineNet-4-cascaded on a ResNet (resnet18/34/50/101/152) or an EfficientNet-Lite."""
    return RefineNet(num_classes, backbone, weights, crp_blocks)
