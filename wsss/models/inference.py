"""Inference helpers shared by training (validation) and ``wsss predict``: normalisation, image-pyramid + flip.

Pure functions on arrays and tensors: no file I/O.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD


def input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per RGB channel on the 0..1 scale that ``model``'s inputs are normalised with: its backbone's
    (the statistics its weights expect: ImageNet's for torchvision networks, 0.5/0.5 for EfficientNet-Lite), or
    ImageNet's for a model without a separate backbone (U-Net, SegNet-Basic, FCN and SegNet on VGG16)."""
    backbone = getattr(model, "module", model)  # a DDP wrapper holds the model in .module
    backbone = getattr(backbone, "backbone", None)
    if backbone is not None and hasattr(backbone, "mean") and hasattr(backbone, "std"):
        return tuple(backbone.mean), tuple(backbone.std)
    return IMAGENET_MEAN, IMAGENET_STD


def normalize_image(image: np.ndarray, normalisation=(IMAGENET_MEAN, IMAGENET_STD)) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 ``(image / 255 - mean) / std`` (``normalisation`` = (mean, std) on
    the 0..1 scale, e.g. :func:`input_normalisation` of the model; the mean maps to 0)."""
    mean = np.asarray(normalisation[0], np.float32) * 255.0
    std = np.asarray(normalisation[1], np.float32) * 255.0
    return (image.astype(np.float32) - mean) / std


def image_to_tensor(image: np.ndarray, normalisation=(IMAGENET_MEAN, IMAGENET_STD)) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 normalised tensor."""
    return torch.from_numpy(np.ascontiguousarray(normalize_image(image, normalisation).transpose(2, 0, 1)))[None]


def segment(model: nn.Module, image: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = False,
            device: str | torch.device = "cpu", channels_last: bool = False, bf16: bool = False) -> np.ndarray:
    """Class probabilities (K, H, W) float32 for one (H, W, 3) uint8 image.

    The image is resized to each scale (bilinear), optionally with its mirror in the same batch, the logits are
    resized back to (H, W), un-mirrored and averaged over all passes; softmax comes last (as in DeepLab's
    multi-scale inference, which averages score maps). ``model`` must be in eval mode; the image is normalised as
    its backbone expects (:func:`input_normalisation`).
    """
    h, w = image.shape[:2]
    x = image_to_tensor(image, input_normalisation(model)).to(device)
    total = None
    passes = 0
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        for scale in scales:
            size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits = model(batch).float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            summed = logits[0] + logits[1].flip(-1) if flip else logits[0]
            total = summed if total is None else total + summed
            passes += 2 if flip else 1
        probs = torch.softmax(total / passes, dim=0)
    return probs.cpu().numpy().astype(np.float32)
