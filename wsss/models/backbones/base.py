"""What every backbone family shares: freezing the early layers (see :func:`wsss.models.backbones.freeze_early_layers`)
and the input normalisation its pretrained weights expect."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError

FREEZE_STRIDES = (0, 4, 8)


class FreezableBackbone(nn.Module):
    """Base of the backbone families: ``freeze(stride)`` fixes the early layers (see :func:`freeze_early_layers`);
    ``train()`` then leaves them in eval mode, so their BatchNorm statistics stay the pretrained ones.
    ``normalise`` maps RGB images to the input the weights were trained on (each family sets ``mean`` and ``std``,
    on the 0..1 scale)."""

    _frozen: tuple = ()
    mean: tuple
    std: tuple

    def normalise(self, images: torch.Tensor, *, max_value: float = 255.0) -> torch.Tensor:
        """(N, 3, H, W) RGB on the 0..``max_value`` scale (uint8 or float) -> float32 ``(x / max_value - mean) / std``."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        return (images.float() / max_value - mean) / std

    def early_layers(self, stride: int) -> list[nn.Module]:  # pragma: no cover - every family defines it
        raise NotImplementedError

    def freeze(self, stride: int) -> None:
        if stride not in FREEZE_STRIDES:
            raise ConfigError(f"freeze_stride {stride}: choose one of {', '.join(map(str, FREEZE_STRIDES))}")
        self._frozen = tuple(self.early_layers(stride)) if stride else ()
        for module in self._frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self
