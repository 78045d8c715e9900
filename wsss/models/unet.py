"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

The paper's network: a contracting path of 4 steps (two 3x3 convolutions + ReLU, then 2x2 max pooling with stride
2, channels doubling 64 -> 1024) and an expansive path of 4 steps (2x2 up-convolution halving the channels,
concatenation with the correspondingly **cropped** contracting feature map, two 3x3 convolutions + ReLU), and a final
1x1 convolution to the classes: 23 convolution layers. Convolutions are unpadded ("valid"), so a 572x572 input tile
gives a 388x388 output; drop-out sits at the end of the contracting path; weights start from a Gaussian with
std sqrt(2 / fan_in).

Output at input size (the zoo's contract) follows the paper's **overlap-tile strategy**: the input is mirrored
(reflect-padded, repeatedly when the pad is wider than the image) by 92 pixels on the top/left and enough on the
bottom/right to reach the next valid tile size, where every max pooling sees an even size; the net's output then
covers the original image exactly and is cropped to it.

``padded=True`` selects the common "same"-padded variant (3x3 convolutions with padding 1, no cropping inside the
net); the input is mirrored up to a multiple of 16 and the output cropped back.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import center_crop, check_weights, reflect_pad

#: pixels lost at each border by the unpadded net (572 -> 388: (572 - 388) / 2)
UNPADDED_MARGIN = 92


def _double_conv(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True),
    )


def unet_tile_size(size: int, depth: int = 4) -> int:
    """The smallest valid input size of the unpadded U-Net whose output (``tile - 2 * 92``) covers ``size``
    pixels: every max pooling must see an even size. Example: 388 -> 572."""
    tile = size + 2 * UNPADDED_MARGIN
    while True:
        s, ok = tile, True
        for _ in range(depth):
            s -= 4
            if s <= 0 or s % 2:
                ok = False
                break
            s //= 2
        if ok and s - 4 > 0:
            return tile
        tile += 1


class UNet(nn.Module):
    """U-Net. ``forward`` returns (N, K, H, W) logits at input size (see the module doc for how)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, depth: int = 4,
                 padded: bool = False, dropout: float = 0.5):
        super().__init__()
        self.padded = padded
        self.depth = depth
        pad = 1 if padded else 0
        widths = [width * 2 ** k for k in range(depth + 1)]  # 64 128 256 512 1024
        self.down = nn.ModuleList(
            _double_conv(in_channels if k == 0 else widths[k - 1], widths[k], pad) for k in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(dropout)
        self.upconv = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2)
                                    for k in reversed(range(depth)))
        self.up = nn.ModuleList(_double_conv(2 * widths[k], widths[k], pad) for k in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # N(0, sqrt(2 / fan_in)), the paper's init
                nn.init.zeros_(m.bias)

    def forward_tile(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network on one tile: unpadded, a (572, 572) tile gives (388, 388) scores."""
        skips = []
        for k, block in enumerate(self.down):
            x = block(x)
            if k < self.depth:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = upconv(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.classifier(x)

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.padded:
            step = 2 ** self.depth
            x = reflect_pad(x, 0, -h % step, 0, -w % step)
            return self.forward_tile(x)[..., :h, :w]
        th, tw = unet_tile_size(h, self.depth), unet_tile_size(w, self.depth)
        m = UNPADDED_MARGIN
        x = reflect_pad(x, m, th - h - m, m, tw - w - m)
        return self.forward_tile(x)[..., :h, :w]


def unet(*, num_classes: int, backbone: str = "none", weights: str | None = None, in_channels: int = 3,
         padded: bool = False, width: int = 64) -> UNet:
    """U-Net as in the paper (unpadded, overlap-tile to input size); ``padded=True`` for the padded variant."""
    from ..errors import ConfigError

    if backbone not in ("none", None):
        raise ConfigError(f"backbone={backbone!r}: U-Net has its own encoder; use backbone='none'")
    check_weights(weights, "U-Net", available=False)
    return UNet(num_classes, in_channels=in_channels, width=width, padded=padded)
