"""AffinityNet's head (Ahn & Kwak, CVPR 2018) on a frozen CAM classifier: a per-pixel embedding whose distances give
the affinity that the random walk of :mod:`wsss.seeds.affinity` spreads CAMs over.

psa trains a whole second network for it; here the classifier's backbone stays fixed and only a small head learns:
a 1x1 convolution (+ GroupNorm, ReLU) on the backbone's last map at each stride >= 4 (4, 8 and the deepest for an
EfficientNet-Lite at output stride 16), each resampled to the stride-8 grid, concatenated and fused by two 1x1
convolutions into a ``dim``-channel embedding ``e``. The affinity of grid pixels ``i, j`` is psa's
``exp(-mean_c |e_i - e_j|)``, in (0, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GRID_STRIDE = 8  # the embedding's grid: psa's stride


def tap_indices(strides: list[int]) -> list[int]:
    """Indices of the backbone maps the head reads: the last (deepest) map at each distinct stride >= 4."""
    return [max(i for i, s in enumerate(strides) if s == stride) for stride in sorted(set(strides)) if stride >= 4]


def grid_size(height: int, width: int) -> tuple[int, int]:
    """The stride-8 grid of an image of ``height x width`` pixels (a partial cell counts)."""
    return (height + GRID_STRIDE - 1) // GRID_STRIDE, (width + GRID_STRIDE - 1) // GRID_STRIDE


class AffinityHead(nn.Module):
    """The trainable part: ``channels`` are the tapped maps' channel counts (shallow to deep)."""

    def __init__(self, channels: list[int], *, width: int = 64, dim: int = 128):
        super().__init__()
        self.side = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True))
            for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width * len(channels), dim, 1, bias=False), nn.GroupNorm(8, dim),
                                  nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1))

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        parts = [F.interpolate(side(m), size=size, mode="bilinear", align_corners=False)
                 for side, m in zip(self.side, maps)]
        return self.fuse(torch.cat(parts, dim=1))


class AffinityNet(nn.Module):
    """A classifier's backbone (frozen: no gradient, BatchNorm in eval mode whatever ``train()`` says) and an
    :class:`AffinityHead`; ``forward`` maps a normalised image batch (B, 3, H, W) to embeddings (B, dim, h, w) on
    the stride-8 grid."""

    def __init__(self, backbone: nn.Module, *, width: int = 64, dim: int = 128):
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        strides = list(backbone.strides)
        self.taps = tap_indices(strides)
        if not self.taps:
            raise ValueError(f"the backbone has no map at stride 4 or more (strides {strides})")
        self.head = AffinityHead([backbone.channels[i] for i in self.taps], width=width, dim=dim)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 (or float 0..255) RGB -> the backbone's input (its ``mean`` and ``std``, 0..1 scale)."""
        return self.backbone.normalise(images_uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.backbone(x)
        return self.head([maps[i].float() for i in self.taps], grid_size(*x.shape[-2:]))
