"""Box-constrained self-training: a network trained on box labels relabels its own training images, held to the
boxes (Khoreva et al., CVPR 2017, "Simple Does It": the network's output, cleaned by the box constraints, becomes
the next round's labels).

:func:`box_constrained_labels` is the rule, on arrays:

- outside every box: background (0);
- inside the boxes: the network's class where a box of that class covers the pixel, background where the network
  says background; a pixel the network gives a class with no box of it there: 255 (unsure);
- a box left without a single pixel of its class (the network missed the object): the reference labels of that
  class inside the box, so an object is never dropped;
- where the reference (the box labels' confident pixels, e.g. GrabCut seeds: 255 where GrabCut was unsure) holds a
  label and the result disagrees with it: 255.

A CRF then labels the 255 pixels (:func:`wsss.crf.crf_refine` with ``relabel='ignore'``), as the box chain's own
refine step does.
"""

from __future__ import annotations

import numpy as np

from ..conventions import BACKGROUND, IGNORE


def box_constrained_labels(prediction: np.ndarray, boxes: np.ndarray, *,
                           reference: np.ndarray | None = None) -> np.ndarray:
    """Hold a network's class map to the image's boxes (rules in the module docstring).

    Parameters
    ----------
    prediction : (H, W) integer array
        The network's arg-max class per pixel (0 background).
    boxes : (N, 5) array
        ``[class, x0, y0, x1, y1]`` in pixels, x1/y1 exclusive; coordinates are clipped to the image.
    reference : (H, W) uint8, optional
        The labels the network was trained from, or their confident part (255 = no opinion).

    Returns
    -------
    (H, W) uint8 mask in ``{0..K-1, 255}``.
    """
    prediction = np.asarray(prediction)
    height, width = prediction.shape
    if reference is not None and reference.shape != prediction.shape:
        raise ValueError(f"reference is {reference.shape}, the prediction {prediction.shape}")
    out = np.full((height, width), BACKGROUND, np.uint8)
    inside = np.zeros((height, width), bool)
    claimed = np.zeros((height, width), bool)
    regions = []
    for cls, x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 5):
        x0, x1 = max(0, int(x0)), min(width, int(x1))
        y0, y1 = max(0, int(y0)), min(height, int(y1))
        if x1 <= x0 or y1 <= y0:
            continue
        region = (slice(y0, y1), slice(x0, x1))
        regions.append((int(cls), region))
        inside[region] = True
        hit = prediction[region] == cls
        out[region][hit] = cls
        claimed[region] |= hit
    out[inside & ~claimed & (prediction != BACKGROUND)] = IGNORE
    if reference is not None:
        for cls, region in regions:
            if not (out[region] == cls).any():
                of_class = reference[region] == cls
                out[region][of_class] = cls
        confident = reference != IGNORE
        out[confident & (out != reference)] = IGNORE
    return out
