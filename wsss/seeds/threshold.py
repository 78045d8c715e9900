"""Threshold seeds: Otsu (``cv2.threshold`` with ``THRESH_OTSU``) or a fixed grey level.

Rules
-----
* **Polarity** (``polarity='auto'``): the two sides of the threshold are compared on the image border (a band of
  5 % of the shorter side). Objects rarely fill the border, so the side that covers *less* of the border is
  foreground. ``'bright'`` / ``'dark'`` force it.
* **Classes**: no tag -> every pixel background (0). One tag -> foreground takes that class. Several tags ->
  a foreground pixel inside a box takes the box's class (the smallest box wins where boxes overlap); a foreground
  pixel in no box, or an image without boxes, is 255 (unsure). Background pixels are 0.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..conventions import BACKGROUND, IGNORE


def foreground_mask(image: np.ndarray, *, threshold: float | None = None, polarity: str = "auto",
                    blur_sigma: float = 1.0) -> tuple[np.ndarray, float]:
    """Binary foreground of an (H, W, 3) uint8 RGB image: ``(fg (H, W) bool, threshold used)``."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    if threshold is None:
        used, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        used, binary = cv2.threshold(gray, float(threshold), 1, cv2.THRESH_BINARY)
    bright = binary.astype(bool)
    if polarity == "bright":
        fg = bright
    elif polarity == "dark":
        fg = ~bright
    elif polarity == "auto":
        h, w = bright.shape
        band = max(1, int(round(0.05 * min(h, w))))
        border = np.ones_like(bright)
        border[band:h - band, band:w - band] = False
        fg = ~bright if bright[border].mean() > 0.5 else bright
    else:
        raise ValueError(f"polarity must be auto, bright or dark, not {polarity!r}")
    return fg, float(used)


def paint_boxes(shape: tuple[int, int], boxes: np.ndarray, fill: int = IGNORE) -> np.ndarray:
    """(H, W) uint8 map: each pixel gets the class of the smallest box covering it, else ``fill``."""
    out = np.full(shape, fill, np.uint8)
    if len(boxes) == 0:
        return out
    areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    for cls, x0, y0, x1, y1 in boxes[np.argsort(-areas, kind="stable")]:  # large first, small painted over
        out[y0:y1, x0:x1] = cls
    return out


def threshold_seeds(image: np.ndarray, image_labels, boxes: np.ndarray | None = None, *,
                    threshold: float | None = None, polarity: str = "auto", blur_sigma: float = 1.0) -> np.ndarray:
    """Seed mask (H, W) uint8 in {0, tagged classes, 255} by the rules in the module docstring."""
    h, w = image.shape[:2]
    labels = sorted(set(int(c) for c in image_labels))
    if not labels:
        return np.full((h, w), BACKGROUND, np.uint8)
    fg, _ = foreground_mask(image, threshold=threshold, polarity=polarity, blur_sigma=blur_sigma)
    if len(labels) == 1:
        fg_class = np.full((h, w), labels[0], np.uint8)
    else:
        boxes = np.zeros((0, 5), np.int64) if boxes is None else np.asarray(boxes)
        fg_class = paint_boxes((h, w), boxes[np.isin(boxes[:, 0], labels)] if len(boxes) else boxes)
    return np.where(fg, fg_class, BACKGROUND).astype(np.uint8)
