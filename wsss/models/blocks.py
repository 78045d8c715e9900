"""Small building blocks shared by the model zoo: conv-BN-ReLU, bilinear kernels, centre crops, resizing, mirror
padding and the weights argument check (backbones come from :mod:`wsss.models.backbones`).

Everything here is a pure tensor function or an ``nn.Module``; nothing reads files except torchvision's own weight
loader, which runs only for ``weights='imagenet'`` (random initialisation is the default everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


# ------------------------------------------------------------------------------------------------ layers
def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, *, padding: int | None = None,
                 dilation: int = 1, relu: bool = True) -> nn.Sequential:
    """``Conv2d(bias=False) -> BatchNorm2d [-> ReLU]``; ``padding`` defaults to "same" for odd kernels."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """The (channels, channels, k, k) weight of a per-channel bilinear upsampling ``ConvTranspose2d``.

    FCN's ``upsample_filt``: ``factor = (k + 1) // 2``, ``center = factor - 1`` (k odd) or ``factor - 0.5``
    (k even), ``w[i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor)`` on the diagonal
    channel pairs (channel c -> channel c), zero elsewhere. For k = 4: ``[0.25, 0.75, 0.75, 0.25]`` outer itself.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def crop_offset(original: int, desired: int) -> int:
    """The offset of a centre crop: ``(original - desired) // 2`` (FCN's crop layers)."""
    if desired > original:
        raise ValueError(f"cannot crop {original} pixels to {desired}")
    return (original - desired) // 2


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dims of ``x`` to ``size`` = (h, w) with offsets ``(original - desired) // 2``."""
    h, w = size
    top, left = crop_offset(x.shape[-2], h), crop_offset(x.shape[-1], w)
    return x[..., top:top + h, left:left + w]


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` (align_corners=False); a no-op when sizes already match."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad (N, C, H, W) by any amount: pads wider than the image are applied in repeated mirror steps
    (U-Net's overlap-tile extrapolation of the missing context)."""
    pads = [left, right, top, bottom]
    h, w = x.shape[-2:]
    if (h < 2 and top + bottom) or (w < 2 and left + right):  # nothing to mirror in one pixel: repeat it
        return F.pad(x, pads, mode="replicate")
    while any(p > 0 for p in pads):
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


# --------------------------------------------------------------------------------------------- weights
def check_weights(weights, model: str, available: bool = True) -> bool:
    """Validate the ``weights`` argument of a model with a fixed encoder (VGG16, or none); True when ImageNet
    weights are to be loaded. ``auto`` is random init here (torchvision's VGG weights are a download).

    Models trained from scratch in their paper (``available=False``: U-Net, SegNet-Basic) accept only random init.
    """
    from .backbones import parse_weights

    weights = parse_weights(weights)
    if weights is None:
        return False
    if weights != "imagenet":
        raise ConfigError(f"--weights {str(weights)!r}: a weights file initialises a --backbone (ResNet or "
                          f"EfficientNet-Lite) and {model} has none; use 'imagenet' or leave --weights out")
    if not available:
        raise ConfigError(f"--weights imagenet: {model} is trained from scratch in its paper and has no ImageNet "
                          "backbone; leave --weights out")
    return True
