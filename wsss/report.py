"""Overlays, contact sheets and the HTML report."""

from __future__ import annotations

import numpy as np

from .labels import IGNORE, palette_for


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) label mask -> (H, W, 3) uint8 colours (255 drawn in the palette's ignore colour)."""
    palette = palette_for(256) if palette is None else palette
    return palette[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """Blend a colour-coded mask over an RGB image; background stays as the image, 255 is hatched grey."""
    colours = colorize(mask, palette).astype(np.float32)
    out = image.astype(np.float32)
    labelled = (mask != 0)[..., None]
    out = np.where(labelled, (1 - alpha) * out + alpha * colours, out)
    unsure = mask == IGNORE
    if unsure.any():
        yy, xx = np.indices(mask.shape)
        hatch = unsure & (((yy + xx) // 3) % 2 == 0)
        out[hatch] = 0.5 * out[hatch] + 0.5 * 255
    return np.clip(out, 0, 255).astype(np.uint8)
