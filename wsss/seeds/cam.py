"""Class activation maps (CAM) and CAM seed masks. Pure functions on arrays and a model; no file I/O.

CAM of class k at one input scale (Zhou et al., CVPR 2016): ``relu(W_k . features)``, where ``features`` are the
classifier's last feature maps and ``W_k`` its 1x1 classifier weights (:class:`wsss.models.classifier.CAMClassifier`).

Multi-scale inference (:func:`multiscale_cam`, the IRN recipe): for every scale the image is resized, run together
with its horizontal flip in one batch, the flipped map is flipped back, both go through ReLU, are upsampled to the
image size and summed over flips and scales. Each tagged class's map is then divided by its own maximum (so it lies
in [0, 1]); untagged classes are never computed.

Seed masks (:func:`cam_seed_mask`), with ``m`` the largest normalised CAM at a pixel and ``c`` its class:

* ``fg_threshold`` given: ``m > fg_threshold`` -> ``c``; ``m < bg_threshold`` -> 0 (background); else 255 (unsure).
* ``fg_threshold`` None (dense CAM label map): ``m > bg_threshold`` -> ``c``; else 0.
* an image without tags is all background.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..conventions import BACKGROUND, IGNORE
from ..runtime import bf16_autocast

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


# ------------------------------------------------------------------------------------------------ inference
def scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` resized by ``scale`` (at least 1 pixel, rounded)."""
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the convolution before it.

    Same outputs (up to float rounding), fewer passes over memory at inference. Conv/BN pairs are consecutive
    children of one module (torchvision's ``convN``/``bnN`` and downsample ``0``/``1``, timm's ``conv_dw``/``bn1``
    ...). A norm that carries its activation (timm's ``BatchNormAct2d``: BN, dropout, ReLU6 in one module) is
    replaced by that dropout and activation, not by the identity, which would drop the ReLU6 silently.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        children = list(module.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                setattr(module, name_a, fuse_conv_bn_eval(a, b))
                rest = [m for m in (getattr(b, "drop", None), getattr(b, "act", None)) if m is not None]
                setattr(module, name_b, nn.Sequential(*rest) if rest else nn.Identity())
    return model


def prepare_for_inference(model: nn.Module, *, channels_last: bool = False, fold_bn: bool = True) -> nn.Module:
    """Eval-mode model ready for :func:`multiscale_cam` (BN folded, channels_last memory format if asked)."""
    model = fold_batchnorm(model) if fold_bn else model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def multiscale_cam(model: nn.Module, image: np.ndarray, image_labels, *, scales=DEFAULT_SCALES, flip: bool = True,
                   bf16: bool = False, channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Normalised multi-scale CAMs of one image for its tagged classes.

    Parameters
    ----------
    model : CAMClassifier
        In eval mode (see :func:`prepare_for_inference`); its device is used.
    image : (H, W, 3) uint8 RGB
    image_labels : iterable of int
        Dataset class ids (background 0 excluded); classifier output ``i`` is class ``i + 1``.
    scales : tuple of float
        Input scales; each one is run with its horizontal flip in one batch when ``flip``.
    bf16, channels_last : bool
        bfloat16 autocast and channels_last input layout (speed; same maps up to rounding).

    Returns
    -------
    cams : (K, H, W) float32 in [0, 1], one map per tagged class (K may be 0)
    class_ids : (K,) int64, sorted dataset class ids of the maps
    """
    h, w = image.shape[:2]
    class_ids = np.array(sorted({int(c) for c in image_labels if int(c) != BACKGROUND}), np.int64)
    if class_ids.size == 0:
        return np.zeros((0, h, w), np.float32), class_ids
    if class_ids.min() < 1 or class_ids.max() > model.num_classes:
        raise ValueError(f"class ids {class_ids.tolist()} are outside the classifier's 1..{model.num_classes}")
    device = next(model.parameters()).device
    index = torch.as_tensor(class_ids - 1, device=device)
    with torch.inference_mode():
        x = torch.from_numpy(np.array(image, np.uint8)).to(device).permute(2, 0, 1)[None]
        x = model.normalise(x)
        total = torch.zeros((class_ids.size, h, w), dtype=torch.float32, device=device)
        for scale in scales:
            size = scaled_size((h, w), scale)
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if flip:
                xs = torch.cat([xs, xs.flip(-1)], dim=0)
            if channels_last:
                xs = xs.contiguous(memory_format=torch.channels_last)
            with bf16_autocast(device, bf16):
                cam = model.cam(model.features(xs), index)
            cam = F.relu(cam.float())
            if flip:
                cam = cam[:1] + cam[1:].flip(-1)
            total += F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0]
        peak = total.flatten(1).amax(dim=1).clamp_min(1e-5)
        cams = (total / peak[:, None, None]).cpu().numpy()
    return cams.astype(np.float32, copy=False), class_ids


# -------------------------------------------------------------------------------------------------- masks
def _peak(cams: np.ndarray, class_ids, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(m, c)``: largest map value per pixel (0 without classes) and its class id (uint8)."""
    cams = np.asarray(cams, np.float32)
    class_ids = np.asarray(class_ids, np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != class_ids.size:
        raise ValueError(f"cams {cams.shape} do not match {class_ids.size} class ids")
    if class_ids.size == 0:
        return np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    best = cams.argmax(axis=0)
    peak = np.take_along_axis(cams, best[None], axis=0)[0]
    return peak, class_ids.astype(np.uint8)[best]


def cam_seed_mask(cams: np.ndarray, class_ids, *, bg_threshold: float,
                  fg_threshold: float | None = None) -> np.ndarray:
    """Seed mask (H, W) uint8 from normalised CAMs by the rules in the module docstring.

    ``cams`` (K, H, W) float with ``class_ids`` (K,) dataset class ids; with ``K == 0`` the mask is all 0.
    """
    if fg_threshold is not None and fg_threshold < bg_threshold:
        raise ValueError(f"fg_threshold {fg_threshold} is below bg_threshold {bg_threshold}; use fg >= bg")
    shape = tuple(np.shape(cams)[1:])
    peak, cls = _peak(cams, class_ids, shape)
    if fg_threshold is None:
        return np.where(peak > bg_threshold, cls, BACKGROUND).astype(np.uint8)
    out = np.full(shape, IGNORE, np.uint8)
    out[peak > fg_threshold] = cls[peak > fg_threshold]
    out[peak < bg_threshold] = BACKGROUND
    return out


def sweep_confusions(cams: np.ndarray, class_ids, gt: np.ndarray, bg_thresholds, num_classes: int) -> np.ndarray:
    """Confusion matrices (T, K, K + 1) of the dense CAM label map at each background threshold against ``gt``.

    Same as ``confusion_matrix(gt, cam_seed_mask(cams, class_ids, bg_threshold=t), num_classes)`` for every ``t``,
    computed from one arg-max pass.
    """
    peak, cls = _peak(cams, class_ids, gt.shape)
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p_cls = cls[valid].astype(np.int64)
    p_peak = peak[valid]
    if g.size and g.max() >= num_classes:
        raise ValueError(f"GT labels outside 0..{num_classes - 1} and 255")
    out = np.zeros((len(bg_thresholds), num_classes, num_classes + 1), np.int64)
    size = num_classes * (num_classes + 1)
    for k, t in enumerate(bg_thresholds):
        pred = np.where(p_peak > t, p_cls, BACKGROUND)
        out[k] = np.bincount(g * (num_classes + 1) + pred, minlength=size).reshape(num_classes, num_classes + 1)
    return out


def threshold_range(spec: str) -> tuple[float, ...]:
    """``'START:STOP:STEP'`` (STOP included) or ``'a,b,c'`` -> thresholds; raises ValueError on bad text."""
    spec = spec.strip()
    if ":" in spec:
        start, stop, step = (float(v) for v in spec.split(":"))
        if step <= 0 or stop < start:
            raise ValueError(f"{spec!r}: need STEP > 0 and STOP >= START")
        n = int(np.floor((stop - start) / step + 1e-6)) + 1
        return tuple(round(start + k * step, 6) for k in range(n))
    values = tuple(float(v) for v in spec.split(",") if v.strip())
    if not values:
        raise ValueError(f"{spec!r}: no thresholds")
    return values
